"""SASL/PLAIN on the Kafka listener with authentication on: the password is
a Kilonova token, the username the namespace of the client's topics."""

import json
import subprocess
import time
import uuid

import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from conftest import Broker, bearer, http

SUPER = "kafka-admin"


def cli(binary, *args):
    p = subprocess.run([str(binary), *args], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    return p.stdout.strip()


@pytest.fixture
def secured(kilonova_bin, tmp_path):
    """A broker with token authentication and authorization on; a token
    factory (HS256 secret key)."""
    secret = tmp_path / "secret.key"
    cli(kilonova_bin, "tokens", "create-secret-key", "--output", str(secret))
    config = "\n".join([
        "[auth]",
        "authentication_enabled = true",
        "authorization_enabled = true",
        f'super_user_roles = ["{SUPER}"]',
        f'token_secret_key = "file:{secret}"',
        'token_auth_claim = "sub"',
        "[kafka]",
        "group_initial_rebalance_delay_ms = 0",
    ]) + "\n"
    b = Broker(kilonova_bin, tmp_path / "data", tmp_path / "kilonova.log", config=config,
               admin_token=cli(kilonova_bin, "tokens", "create", "--secret-key",
                               f"file:{secret}", "--subject", SUPER))
    b.start()
    token = lambda role: cli(kilonova_bin, "tokens", "create", "--secret-key",
                             f"file:{secret}", "--subject", role)
    yield b, token
    if b.running:
        b.stop()


def sasl(broker, token, **config):
    return {"bootstrap.servers": broker.kafka_bootstrap, "security.protocol": "SASL_PLAINTEXT",
            "sasl.mechanisms": "PLAIN", "sasl.username": "public/default",
            "sasl.password": token, **config}


def produce_one(config, topic):
    reports = []
    p = Producer({**config, "message.timeout.ms": 5000})
    p.produce(topic, value=b"v", on_delivery=lambda err, msg: reports.append(err))
    p.flush(15)
    return reports


def first_value(config, topic):
    """The first record's value a group consumer with `config` gets from `topic`."""
    c = Consumer({**config, "auto.offset.reset": "earliest"})
    c.subscribe([topic])
    got, deadline = None, time.monotonic() + 30
    while got is None and time.monotonic() < deadline:
        m = c.poll(0.5)
        if m is not None and m.error() is None:
            got = m.value()
    c.close()
    return got


def test_a_valid_token_produces_and_consumes(secured):
    b, token = secured
    topic = f"sasl-{uuid.uuid4().hex[:8]}"
    assert produce_one(sasl(b, token(SUPER)), topic) == [None]
    assert first_value(sasl(b, token(SUPER), **{"group.id": "g"}), topic) == b"v"


def test_a_bad_token_or_no_sasl_is_refused(secured):
    b, token = secured
    topic = f"sasl-{uuid.uuid4().hex[:8]}"
    bad = produce_one(sasl(b, token(SUPER)[:-4] + "AAAA"), topic)
    assert bad and bad[0] is not None, "a forged token produced"
    plain = produce_one({"bootstrap.servers": b.kafka_bootstrap}, topic)
    assert plain and plain[0] is not None, "a client without SASL produced"


def test_a_role_without_permission_gets_authorization_errors(secured):
    b, token = secured
    topic = f"sasl-{uuid.uuid4().hex[:8]}"
    reports = produce_one(sasl(b, token("nobody")), topic)
    assert reports and reports[0] is not None
    assert reports[0].code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, reports[0]


def test_a_namespace_grant_lets_a_role_produce_but_not_consume(secured):
    b, token = secured
    status, body = http("POST", f"{b.http_url}/admin/v2/namespaces/public/default/permissions/writer",
                        json.dumps(["produce"]).encode(), "application/json",
                        headers=bearer(b.admin_token))
    assert status in (200, 204), body
    topic = f"sasl-{uuid.uuid4().hex[:8]}"
    assert produce_one(sasl(b, token("writer")), topic) == [None]
    c = Consumer(sasl(b, token("writer"), **{"group.id": "w", "auto.offset.reset": "earliest"}))
    c.assign([TopicPartition(topic, 0, 0)])
    err, deadline = None, time.monotonic() + 20
    while err is None and time.monotonic() < deadline:
        m = c.poll(0.5)
        if m is not None and m.error() is not None:
            err = m.error()
        assert m is None or m.error() is not None, "a role without consume read a record"
    c.close()
    assert err is not None and err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, err


def test_kafka_python_authenticates_too(secured):
    from kafka import KafkaConsumer, KafkaProducer
    from kafka import TopicPartition as KTP
    b, token = secured
    topic = f"sasl-{uuid.uuid4().hex[:8]}"
    auth = dict(bootstrap_servers=b.kafka_bootstrap, security_protocol="SASL_PLAINTEXT",
                sasl_mechanism="PLAIN", sasl_plain_username="public/default",
                sasl_plain_password=token(SUPER))
    producer = KafkaProducer(acks="all", **auth)
    assert producer.send(topic, b"kpy").get(timeout=20).offset == 0
    producer.close()
    consumer = KafkaConsumer(group_id=None, consumer_timeout_ms=10_000, **auth)
    consumer.assign([KTP(topic, 0)])
    consumer.seek_to_beginning()
    assert [m.value for _, m in zip(range(1), consumer)] == [b"kpy"]
    consumer.close()


def test_kafka_over_tls_with_a_token(kilonova_bin, tmp_path):
    from test_security import Certs
    certs = Certs(tmp_path)
    secret = tmp_path / "secret.key"
    cli(kilonova_bin, "tokens", "create-secret-key", "--output", str(secret))
    config = "\n".join([
        "[auth]",
        "authentication_enabled = true",
        f'super_user_roles = ["{SUPER}"]',
        f'token_secret_key = "file:{secret}"',
        "[tls]",
        f'cert_file = "{certs.server_cert}"',
        f'key_file = "{certs.server_key}"',
    ]) + "\n"
    admin = cli(kilonova_bin, "tokens", "create", "--secret-key", f"file:{secret}", "--subject", SUPER)
    b = Broker(kilonova_bin, tmp_path / "data", tmp_path / "kilonova.log", config=config,
               admin_token=admin, ca_file=certs.ca)
    b.start()
    try:
        # Both ports: a client that came in by TLS must be told the TLS port.
        assert b.kafka_port and b.kafka_tls_port, (b.kafka_port, b.kafka_tls_port)
        topic = f"tls-{uuid.uuid4().hex[:8]}"
        config = {"bootstrap.servers": f"127.0.0.1:{b.kafka_tls_port}",
                  "security.protocol": "SASL_SSL", "ssl.ca.location": str(certs.ca),
                  "ssl.endpoint.identification.algorithm": "none",
                  "sasl.mechanisms": "PLAIN", "sasl.username": "public/default",
                  "sasl.password": admin}
        assert produce_one(config, topic) == [None]
        assert first_value({**config, "group.id": "tls"}, topic) == b"v"
        # A client trusting another CA is refused at the handshake.
        wrong = produce_one({**config, "ssl.ca.location": str(certs.other_ca)}, topic)
        assert wrong and wrong[0] is not None
    finally:
        b.stop()
