"""`kilonova client produce | consume | read` against a real broker, checked
with the Python pulsar-client (and the reverse): payloads, keys and properties
round-trip, readers start where asked, acks land, tokens and TLS work, and
non-UTF-8 payloads survive; `kilonova perf` takes the same token and TLS
flags."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import http, receive_n, topic_name, wait_until
from test_security import (  # noqa: F401  (keys and certs are fixtures)
    SUPER_USER,
    certs,
    keys,
    secret_line,
    security_config,
    tls_broker,
)

CLI_TIMEOUT_S = 30


def cli(binary: Path, *args: str, ok: bool = True) -> subprocess.CompletedProcess:
    """Runs `kilonova client ARGS`; with `ok`, asserts it succeeded."""
    proc = subprocess.run(
        [str(binary), "client", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        timeout=CLI_TIMEOUT_S,
    )
    if ok:
        assert proc.returncode == 0, f"kilonova client {args[0]} failed: {proc.stderr.decode()}"
    return proc


def perf(binary: Path, *args: str) -> dict:
    """Runs a short `kilonova perf ARGS` to its end; its JSON summary."""
    proc = subprocess.run(
        [str(binary), "perf", *args, "--warmup-secs", "0", "--duration-secs", "0", "--output", "json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=CLI_TIMEOUT_S,
    )
    assert proc.returncode == 0, f"kilonova perf {args[0]} failed: {proc.stderr.decode()}"
    return json.loads(proc.stdout)


def json_lines(proc: subprocess.CompletedProcess) -> list[dict]:
    return [json.loads(line) for line in proc.stdout.decode().splitlines() if line.strip()]


def backlog(broker, topic: str, subscription: str) -> int:
    path = topic.replace("persistent://", "persistent/")
    status, body = http("GET", f"{broker.http_url}/admin/v2/{path}/stats")
    assert status == 200, body
    return json.loads(body)["subscriptions"][subscription]["msgBacklog"]


def subscriptions(broker, topic: str) -> dict:
    """The topic's subscriptions ({} before the topic exists)."""
    path = topic.replace("persistent://", "persistent/")
    status, body = http("GET", f"{broker.http_url}/admin/v2/{path}/stats")
    if status == 404:
        return {}
    assert status == 200, body
    return json.loads(body)["subscriptions"]


def test_produced_messages_keys_and_properties_reach_a_python_consumer(broker, client, kilonova_bin):
    topic = topic_name("cli-produce")
    consumer = client.subscribe(topic, "py")
    cli(kilonova_bin, "produce", topic, "--url", broker.service_url,
        "-m", "first", "-m", "second", "-n", "2", "-k", "the-key", "-p", "a=1", "-p", "b=x=y")
    got = receive_n(consumer, 4)
    assert [m.data() for m in got] == [b"first", b"second", b"first", b"second"]
    for m in got:
        assert m.partition_key() == "the-key"
        assert m.properties() == {"a": "1", "b": "x=y"}


def test_separator_splits_and_disable_batching_sends_one_entry_each(broker, client, kilonova_bin):
    topic = topic_name("cli-split")
    consumer = client.subscribe(topic, "py")
    cli(kilonova_bin, "produce", topic, "--url", broker.service_url,
        "-m", "a,b,c", "-s", ",", "-db")
    got = receive_n(consumer, 3)
    assert [m.data() for m in got] == [b"a", b"b", b"c"]
    # Unbatched: three entries, each its own message id (batch index -1).
    assert len({(m.message_id().ledger_id(), m.message_id().entry_id()) for m in got}) == 3


def test_a_file_of_non_utf8_bytes_round_trips_both_ways(broker, client, kilonova_bin, tmp_path):
    topic = topic_name("cli-binary")
    payload = bytes([0, 255, 254, 10, 13, 128]) + b"tail"
    f = tmp_path / "payload.bin"
    f.write_bytes(payload)
    consumer = client.subscribe(topic, "py")
    cli(kilonova_bin, "produce", topic, "--url", broker.service_url, "-f", str(f))
    assert receive_n(consumer, 1)[0].data() == payload
    # --file (the spelling) is an alias of pulsar-client's --files.
    cli(kilonova_bin, "produce", topic, "--url", broker.service_url, "--file", str(f))
    assert receive_n(consumer, 1)[0].data() == payload
    # And back: kilonova client consume prints it as hex (JSON) and as hex text.
    out = cli(kilonova_bin, "consume", topic, "--url", broker.service_url, "-s", "cli",
              "-p", "Earliest", "-n", "1", "--output", "json")
    (line,) = json_lines(out)
    assert bytes.fromhex(line["payload_hex"]) == payload
    assert "payload" not in line
    out = cli(kilonova_bin, "consume", topic, "--url", broker.service_url, "-s", "cli-text",
              "--earliest", "-n", "1")
    assert f"content(hex):{payload.hex()}" in out.stdout.decode()


def test_python_produced_messages_are_printed_and_acknowledged(broker, client, kilonova_bin):
    topic = topic_name("cli-consume")
    producer = client.create_producer(topic, batching_enabled=True, batching_max_publish_delay_ms=5)
    for i in range(3):
        producer.send_async(f"m{i}".encode(), None, partition_key=f"k{i}", properties={"i": str(i)})
    producer.send(b"last", partition_key="k3", properties={"i": "3"})
    out = cli(kilonova_bin, "consume", topic, "--url", broker.service_url, "-s", "sub",
              "-t", "Shared", "-p", "Earliest", "-n", "4", "--output", "json")
    lines = json_lines(out)
    assert [line["payload"] for line in lines] == ["m0", "m1", "m2", "last"]
    assert [line["key"] for line in lines] == ["k0", "k1", "k2", "k3"]
    assert [line["properties"] for line in lines] == [{"i": str(i)} for i in range(4)]
    assert all(line["topic"] == topic for line in lines)
    # What was printed was acknowledged.
    wait_until(lambda: backlog(broker, topic, "sub") == 0, 10, "the printed messages acknowledged")


@pytest.mark.parametrize("sub_type", ["Exclusive", "Failover", "Key_Shared"])
def test_consume_subscribes_with_the_type_asked(broker, client, kilonova_bin, sub_type):
    topic = topic_name(f"cli-type-{sub_type.lower()}")
    producer = client.create_producer(topic)
    for i in range(3):
        producer.send(f"m{i}".encode(), partition_key=f"k{i}")
    out = cli(kilonova_bin, "consume", topic, "--url", broker.service_url, "-s", "typed",
              "-t", sub_type, "-p", "Earliest", "-n", "3", "--output", "json")
    assert sorted(line["payload"] for line in json_lines(out)) == ["m0", "m1", "m2"]
    assert subscriptions(broker, topic)["typed"]["type"] == sub_type


def test_produce_holds_the_rate_asked(broker, client, kilonova_bin):
    topic = topic_name("cli-rate")
    consumer = client.subscribe(topic, "py")
    started = time.monotonic()
    cli(kilonova_bin, "produce", topic, "--url", broker.service_url, "-m", "x", "-n", "20",
        "-r", "10")
    took = time.monotonic() - started
    assert len(receive_n(consumer, 20)) == 20
    # 20 messages at 10/s: the 20th leaves 19 intervals of 100 ms after the
    # first (unlimited, the whole run takes a fraction of that).
    assert took >= 1.8, f"-r 10 sent 20 messages in {took:.3f} s"


def test_text_output_is_pulsar_clients(broker, client, kilonova_bin):
    topic = topic_name("cli-text")
    producer = client.create_producer(topic)
    producer.send(b"hello", partition_key="k", properties={"a": "1"})
    out = cli(kilonova_bin, "consume", topic, "--url", broker.service_url, "-s", "s",
              "-p", "Earliest", "-n", "1")
    assert out.stdout.decode() == "----- got message -----\nkey:[k], properties:[a=1], content:hello\n"


def test_consume_waits_for_messages_produced_later_and_exits_after_n(broker, kilonova_bin):
    topic = topic_name("cli-later")
    consumer = subprocess.Popen(
        [str(kilonova_bin), "client", "consume", topic, "--url", broker.service_url,
         "-s", "sub", "-n", "2", "--output", "json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        # The subscription exists once the consumer is up; then produce.
        wait_until(lambda: "sub" in subscriptions(broker, topic), 10, "the consumer subscribed")
        cli(kilonova_bin, "produce", topic, "--url", broker.service_url, "-m", "x", "-m", "y", "-m", "z")
        stdout, stderr = consumer.communicate(timeout=CLI_TIMEOUT_S)
    finally:
        if consumer.poll() is None:
            consumer.kill()
    assert consumer.returncode == 0, stderr.decode()
    assert [json.loads(line)["payload"] for line in stdout.decode().splitlines()] == ["x", "y"]
    assert backlog(broker, topic, "sub") == 1


def test_ctrl_c_stops_consume_cleanly_after_acking_what_it_printed(broker, client, kilonova_bin):
    topic = topic_name("cli-ctrlc")
    producer = client.create_producer(topic)
    for i in range(3):
        producer.send(f"m{i}".encode())
    consumer = subprocess.Popen(
        [str(kilonova_bin), "client", "consume", topic, "--url", broker.service_url,
         "-s", "sub", "-p", "Earliest", "-n", "0", "--output", "json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        lines = []
        deadline = time.monotonic() + CLI_TIMEOUT_S
        while len(lines) < 3 and time.monotonic() < deadline:
            line = consumer.stdout.readline()
            if not line:
                break
            lines.append(json.loads(line))
        assert [m["payload"] for m in lines] == ["m0", "m1", "m2"]
        consumer.send_signal(signal.SIGINT)
        _, stderr = consumer.communicate(timeout=CLI_TIMEOUT_S)
    finally:
        if consumer.poll() is None:
            consumer.kill()
    assert consumer.returncode == 0, stderr.decode()
    assert "3 messages successfully consumed" in stderr.decode()
    wait_until(lambda: backlog(broker, topic, "sub") == 0, 10, "the printed messages acknowledged")


def test_read_from_earliest_and_from_a_message_id_leaves_no_subscription(broker, client, kilonova_bin):
    topic = topic_name("cli-read")
    producer = client.create_producer(topic, batching_enabled=False)
    for i in range(5):
        producer.send(f"r{i}".encode())
    out = cli(kilonova_bin, "read", topic, "--url", broker.service_url,
              "-m", "earliest", "-n", "5", "--output", "json")
    lines = json_lines(out)
    assert [m["payload"] for m in lines] == [f"r{i}" for i in range(5)]
    third = lines[2]["message_id"]
    out = cli(kilonova_bin, "read", topic, "--url", broker.service_url,
              "-m", third, "-n", "2", "--output", "json")
    assert [m["payload"] for m in json_lines(out)] == ["r3", "r4"], "after the start id"
    out = cli(kilonova_bin, "read", topic, "--url", broker.service_url,
              "-m", third, "-i", "-n", "2", "--output", "json")
    assert [m["payload"] for m in json_lines(out)] == ["r2", "r3"], "from the start id"
    # Readers are non-durable: nothing is left behind.
    wait_until(lambda: subscriptions(broker, topic) == {}, 10, "the readers' subscriptions gone")


def test_partitioned_topic_round_robin_produce_and_consume_of_every_partition(broker, client, kilonova_bin):
    topic = topic_name("cli-parts")
    path = topic.replace("persistent://", "persistent/")
    status, body = http("PUT", f"{broker.http_url}/admin/v2/{path}/partitions", b"3", "application/json")
    assert status in (200, 204), body
    consumer = client.subscribe(topic, "py")
    cli(kilonova_bin, "produce", topic, "--url", broker.service_url,
        "-m", "a", "-m", "b", "-m", "c", "-n", "2")
    got = receive_n(consumer, 6)
    assert sorted(m.data() for m in got) == sorted([b"a", b"b", b"c"] * 2)
    assert len({m.topic_name() for m in got}) == 3, "round robin over the partitions"
    out = cli(kilonova_bin, "consume", topic, "--url", broker.service_url, "-s", "cli",
              "-p", "Earliest", "-n", "6", "--output", "json")
    assert sorted(m["payload"] for m in json_lines(out)) == sorted(["a", "b", "c"] * 2)


def test_bad_service_url_and_missing_messages_fail_clearly(broker, kilonova_bin):
    proc = cli(kilonova_bin, "produce", "t", "--url", "http://127.0.0.1:1", "-m", "x", ok=False)
    assert proc.returncode == 1
    assert "pulsar://host:port" in proc.stderr.decode()
    proc = cli(kilonova_bin, "produce", "t", "--url", broker.service_url, ok=False)
    assert proc.returncode == 1
    assert "nothing to send" in proc.stderr.decode()


def test_token_authentication_with_auth_token_and_auth_params(make_broker, keys, kilonova_bin):
    b = make_broker(config=security_config(secret_line(keys)), admin_token=keys.token(SUPER_USER))
    token = keys.token(SUPER_USER)
    topic = topic_name("cli-auth")
    # Without a token: refused, a clear error, exit code 1.
    proc = cli(kilonova_bin, "produce", topic, "--url", b.service_url, "-m", "x", ok=False)
    assert proc.returncode == 1
    assert "Authentication" in proc.stderr.decode(), proc.stderr.decode()
    cli(kilonova_bin, "produce", topic, "--url", b.service_url, "--auth-token", token, "-m", "one")
    cli(kilonova_bin, "produce", topic, "--url", b.service_url,
        "--auth-plugin", "org.apache.pulsar.client.impl.auth.AuthenticationToken",
        "--auth-params", f"token:{token}", "-m", "two")
    out = cli(kilonova_bin, "read", topic, "--url", b.service_url, "--auth-params", f"token:{token}",
              "-m", "earliest", "-n", "2", "--output", "json")
    assert [m["payload"] for m in json_lines(out)] == ["one", "two"]
    # kilonova perf takes the same flags.
    summary = perf(kilonova_bin, "produce", "--service-url", b.service_url, "--auth-token", token,
                   "--topic", topic, "-m", "100")
    assert summary["messages"] == 100, summary


def test_tls_with_a_trusted_ca_and_a_token(make_broker, keys, certs, kilonova_bin):
    b = tls_broker(make_broker, keys, certs)
    token = keys.token(SUPER_USER)
    topic = topic_name("cli-tls")
    common = ["--url", b.tls_service_url, "--tls-trust-cert-path", str(certs.ca), "--auth-token", token]
    cli(kilonova_bin, "produce", topic, *common, "-m", "secret")
    out = cli(kilonova_bin, "read", topic, *common, "-m", "earliest", "-n", "1", "--output", "json")
    assert json_lines(out)[0]["payload"] == "secret"
    summary = perf(kilonova_bin, "e2e", "--service-url", b.tls_service_url,
                   "--tls-trust-cert-path", str(certs.ca), "--auth-token", token,
                   "--topic", topic_name("perf-tls"), "-m", "100")
    assert summary["messages"] == 100, summary
    # A CA the broker's certificate does not chain to: refused.
    proc = cli(kilonova_bin, "produce", topic, "--url", b.tls_service_url,
               "--tls-trust-cert-path", str(certs.other_ca), "--auth-token", token, "-m", "x", ok=False)
    assert proc.returncode == 1
    assert "TLS" in proc.stderr.decode(), proc.stderr.decode()
