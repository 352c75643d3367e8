"""Lookups end to end: clients created with an http:// or https:// service URL
(Pulsar's HTTP lookup, `/lookup/v2/topic/…`, and the partition count from
`/admin/v2/…/partitions`), with tokens and TLS, and advertised listeners
(a client's listener name picks the URLs a lookup answers, on the binary
protocol and over HTTP).

Listener URLs must name the broker's real port, which the system chooses at
the first start: the listener tests start a broker, stop it, write the
listeners into its configuration and restart it on the same ports.
"""

from __future__ import annotations

import json
import time
import urllib.parse

import pulsar
import pytest

import wire
from conftest import CLIENT_LOGGER, bearer, http, receive_n, tls_context, unique
from test_admin_cli import run_admin
from test_security import SUPER_USER, Certs, Keys, secret_line, security_config

LOOKUP_CONNECT = 1
LOOKUP_FAILED = 2
SERVICE_NOT_READY = 6
# A lookup Pulsar answers with ServiceNotReady is retried by the C++ client
# until its operation timeout: keep it short where one is expected.
REFUSED_OP_TIMEOUT_S = 2


@pytest.fixture(scope="module")
def keys(kilonova_bin, tmp_path_factory) -> Keys:
    return Keys(kilonova_bin, tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Certs:
    return Certs(tmp_path_factory.mktemp("certs"))


def http_client(url: str, **kwargs) -> pulsar.Client:
    kwargs.setdefault("operation_timeout_seconds", 10)
    kwargs.setdefault("logger", CLIENT_LOGGER)
    return pulsar.Client(url, **kwargs)


def round_trip(client: pulsar.Client, topic: str, n: int = 6) -> list:
    """Publishes `n` keyed messages and receives them all on a fresh
    subscription; returns the messages received."""
    consumer = client.subscribe(topic, unique("sub"), initial_position=pulsar.InitialPosition.Earliest)
    producer = client.create_producer(topic, batching_enabled=False)
    sent = [f"m-{i}".encode() for i in range(n)]
    for i, p in enumerate(sent):
        producer.send(p, partition_key=f"k{i}")
    got = receive_n(consumer, n, what=f"messages on {topic}")
    assert sorted(m.data() for m in got) == sorted(sent)
    for m in got:
        consumer.acknowledge(m)
    producer.close()
    consumer.close()
    return got


def lookup_path(local: str, query: dict | None = None) -> str:
    path = f"/lookup/v2/topic/persistent/public/default/{local}"
    return path + ("?" + urllib.parse.urlencode(query) if query else "")


def get_json(url: str, headers=None, context=None) -> tuple[int, object]:
    status, body = http("GET", url, headers=headers, context=context)
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body


def raw_lookup(port: int, topic: str, listener: str | None, request_id: int = 1,
               conn: wire.RawConnection | None = None, authoritative: bool = False) -> wire.Frame:
    """A binary LOOKUP naming `listener` (field 7, advertised_listener_name),
    authoritative (field 3) if asked."""
    fields = [(1, topic), (2, request_id)]
    if authoritative:
        fields.append((3, True))
    if listener is not None:
        fields.append((7, listener))
    own = conn is None
    conn = conn or wire.RawConnection("127.0.0.1", port)
    try:
        if own:
            conn.handshake()
        conn.send(wire.frame(wire.base_command(wire.LOOKUP, wire.pb(*fields))))
        return conn.expect(wire.LOOKUP_RESPONSE)
    finally:
        if own:
            conn.close()


# ---------------------------------------------------------------- http:// service URLs


def test_http_lookup_answers_pulsars_lookup_data(broker):
    status, doc = get_json(broker.http_url + lookup_path(unique("t"), {"authoritative": "false"}))
    assert status == 200, doc
    assert doc == {
        "brokerUrl": broker.service_url,
        "brokerUrlTls": None,
        "httpUrl": broker.http_url,
        "httpUrlTls": None,
        "nativeUrl": broker.service_url,
    }
    status, doc = get_json(f"{broker.http_url}/lookup/v2/topic/persistent/public/nope/t")
    assert status == 404 and "nope" in doc["reason"], doc


def test_http_service_url_client_produces_and_consumes(broker):
    client = http_client(broker.http_url)
    try:
        round_trip(client, f"persistent://public/default/{unique('http')}")
    finally:
        client.close()


def test_http_service_url_client_serves_a_partitioned_topic(broker):
    local = unique("http-parts")
    assert broker.create_partitioned_topic(local, 3) in (200, 204)
    client = http_client(broker.http_url)
    try:
        got = round_trip(client, f"persistent://public/default/{local}", n=30)
    finally:
        client.close()
    partitions = {m.topic_name().rsplit("-partition-", 1)[1] for m in got}
    assert len(partitions) > 1, f"all 30 keyed messages went to partitions {partitions}"


def test_admin_topics_lookup_prints_the_broker_url(broker):
    topic = f"persistent://public/default/{unique('cli')}"
    proc = run_admin(broker.binary, ["topics", "lookup", topic], broker.http_url)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == broker.service_url
    proc = run_admin(broker.binary, ["topics", "lookup", topic], broker.http_url, output_json=True)
    assert json.loads(proc.stdout)["httpUrl"] == broker.http_url


# ---------------------------------------------------------------- tokens and TLS


@pytest.fixture
def token_broker(make_broker, keys):
    return make_broker(config=security_config(secret_line(keys)), admin_token=keys.token(SUPER_USER))


def test_http_service_url_client_with_a_token_produces_and_consumes(token_broker, keys):
    client = http_client(token_broker.http_url, authentication=pulsar.AuthenticationToken(keys.token(SUPER_USER)))
    try:
        round_trip(client, f"persistent://public/default/{unique('http-token')}")
    finally:
        client.close()


def test_http_lookup_without_the_lookup_permission_is_refused_and_the_broker_keeps_serving(
    token_broker, keys
):
    url = token_broker.http_url + lookup_path(unique("t"))
    assert get_json(url)[0] == 401
    stranger = keys.token("stranger")
    status, doc = get_json(url, headers=bearer(stranger))
    assert status == 403 and "stranger" in doc["reason"], doc
    client = http_client(
        token_broker.http_url,
        authentication=pulsar.AuthenticationToken(stranger),
        operation_timeout_seconds=REFUSED_OP_TIMEOUT_S,
    )
    started = time.monotonic()
    try:
        with pytest.raises(pulsar.PulsarException):
            client.create_producer(f"persistent://public/default/{unique('refused')}")
    finally:
        client.close()
    assert time.monotonic() - started < REFUSED_OP_TIMEOUT_S + 8
    admin = http_client(token_broker.http_url, authentication=pulsar.AuthenticationToken(keys.token(SUPER_USER)))
    try:
        round_trip(admin, f"persistent://public/default/{unique('after')}")
    finally:
        admin.close()


def test_https_service_url_client_with_a_token_uses_the_tls_ports(make_broker, keys, certs):
    b = make_broker(
        config=security_config(secret_line(keys), certs=certs), admin_token=keys.token(SUPER_USER)
    )
    token = keys.token(SUPER_USER)
    status, doc = get_json(b.https_url + lookup_path(unique("t")), headers=bearer(token),
                           context=tls_context(certs.ca))
    assert status == 200, doc
    assert doc["brokerUrlTls"] == b.tls_service_url and doc["httpUrlTls"] == b.https_url, doc
    client = http_client(
        b.https_url,
        authentication=pulsar.AuthenticationToken(token),
        tls_trust_certs_file_path=str(certs.ca),
    )
    try:
        round_trip(client, f"persistent://public/default/{unique('https')}")
        round_trip(client, f"persistent://public/default/{unique('https')}")
    finally:
        client.close()


# ---------------------------------------------------------------- advertised listeners


@pytest.fixture
def listener_broker(make_broker):
    """Listeners `internal` (pulsar://127.0.0.1:P) and `external`
    (pulsar://localhost:P) on the broker's own Pulsar port P."""
    b = make_broker()
    port = b.pulsar_port
    b.stop()
    b.config = (
        'internal_listener_name = "internal"\n'
        "[advertised_listeners]\n"
        f'internal = ["pulsar://127.0.0.1:{port}"]\n'
        f'external = ["pulsar://localhost:{port}"]\n'
    )
    b.restart()
    assert b.pulsar_port == port
    return b


def test_a_lookup_naming_a_listener_answers_its_url(listener_broker):
    b = listener_broker
    topic = f"persistent://public/default/{unique('l')}"
    external, internal = f"pulsar://localhost:{b.pulsar_port}", f"pulsar://127.0.0.1:{b.pulsar_port}"
    for listener, want in [("external", external), ("internal", internal), (None, internal), ("", internal)]:
        f = raw_lookup(b.pulsar_port, topic, listener)
        assert wire.first(f.body, 3) == LOOKUP_CONNECT, f
        assert wire.first(f.body, 1, b"").decode() == want, f"listener {listener!r}: {f}"
    local = topic.rsplit("/", 1)[1]
    assert get_json(b.http_url + lookup_path(local, {"listenerName": "external"}))[1]["brokerUrl"] == external
    assert get_json(b.http_url + lookup_path(local),
                    headers={"X-Pulsar-ListenerName": "external"})[1]["brokerUrl"] == external
    assert get_json(b.http_url + lookup_path(local))[1]["brokerUrl"] == internal


def test_a_client_with_a_listener_name_produces_and_consumes(listener_broker):
    client = http_client(listener_broker.service_url, listener_name="external")
    try:
        round_trip(client, f"persistent://public/default/{unique('external')}")
    finally:
        client.close()


def test_an_unknown_listener_is_refused_as_pulsar_refuses_it_and_the_broker_keeps_serving(listener_broker):
    b = listener_broker
    topic = f"persistent://public/default/{unique('nope')}"
    with wire.RawConnection("127.0.0.1", b.pulsar_port) as conn:
        conn.handshake()
        f = raw_lookup(b.pulsar_port, topic, "nope", request_id=7, conn=conn)
        assert wire.first(f.body, 3) == LOOKUP_FAILED, f
        assert wire.first(f.body, 6) == SERVICE_NOT_READY, f
        assert wire.first(f.body, 7, b"").decode() == "the broker do not have nope listener"
        # The connection is still served.
        f = raw_lookup(b.pulsar_port, topic, "external", request_id=8, conn=conn)
        assert wire.first(f.body, 3) == LOOKUP_CONNECT, f
    status, doc = get_json(b.http_url + lookup_path("t", {"listenerName": "nope"}))
    assert status == 404 and doc["reason"] == "the broker do not have nope listener", doc
    client = http_client(b.service_url, listener_name="nope", operation_timeout_seconds=REFUSED_OP_TIMEOUT_S)
    started = time.monotonic()
    try:
        with pytest.raises(pulsar.PulsarException):
            client.create_producer(topic)
    finally:
        client.close()
    assert time.monotonic() - started < REFUSED_OP_TIMEOUT_S + 8
    client = http_client(b.service_url, listener_name="internal")
    try:
        round_trip(client, topic)
    finally:
        client.close()


def test_a_listener_for_a_port_not_served_stops_the_start(make_broker):
    b = make_broker()
    b.stop()
    b.config = '[advertised_listeners]\nexternal = ["pulsar+ssl://localhost:6651"]\n'
    with pytest.raises(AssertionError, match="Pulsar TLS port"):
        b.restart(timeout=10)
