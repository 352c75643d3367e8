"""Topic compaction as Pulsar does it: `topics compact` and its status, a
readCompacted reader seeing the latest value of each key (deleted keys gone,
keyless messages left out) then the log after the horizon, batches compacted
per message (compressed ones too), the namespace compaction threshold, the
compacted view across a restart, TableView on top, readCompacted refused on a
shared subscription, and partitioned topics compacted partition by
partition."""

from __future__ import annotations

import json
import time

import pulsar
import pytest
import wire
from conftest import http, make_client, payloads, topic_name, unique, wait_until


def toml(broker: dict) -> str:
    return "[broker]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in broker.items())


def rest_path(topic: str) -> str:
    return "/admin/v2/" + topic.replace("://", "/")


def create_partitioned(broker, topic: str, partitions: int) -> None:
    status, body = http("PUT", broker.http_url + rest_path(topic) + "/partitions",
                        json.dumps(partitions).encode(), "application/json")
    assert status == 204, body


def compact(broker, topic: str) -> None:
    status, body = http("PUT", broker.http_url + rest_path(topic) + "/compaction")
    assert status == 204, body


def compaction_status(broker, topic: str) -> dict:
    status, body = http("GET", broker.http_url + rest_path(topic) + "/compaction")
    assert status == 200, body
    return json.loads(body)


def wait_compacted(broker, topic: str, timeout: float = 20.0) -> None:
    def done():
        s = compaction_status(broker, topic)
        assert s["status"] != "ERROR", s
        return s["status"] == "SUCCESS"

    wait_until(done, timeout, f"compaction of {topic} did not reach SUCCESS")


def test_a_topic_compaction_threshold_overrides_the_namespaces(make_broker):
    from test_admin_cli import Cli
    broker = make_broker(config=toml({"compaction_check_interval_secs": 1,
                                      "cursor_persist_interval_ms": 100}))
    cli = Cli(broker)
    ns = f"public/{unique('ns')}"
    cli.ok("namespaces", "create", ns)
    cli.ok("namespaces", "set-compaction-threshold", ns, "-t", "1G")
    topic = f"persistent://{ns}/{unique('auto')}"
    cli.ok("topics", "create", topic)
    cli.ok("topics", "set-compaction-threshold", topic, "-t", "1K")
    assert cli.json("topics", "get-compaction-threshold", topic) == 1024

    c = make_client(broker)
    try:
        producer = c.create_producer(topic, batching_enabled=False)
        latest = {}
        for i in range(40):
            key = f"k{i % 3}"
            latest[key] = f"{key}-{i}-{'x' * 40}".encode()
            producer.send(latest[key], partition_key=key)
        wait_compacted(broker, topic)  # 40 messages of ~50 bytes: past 1 KiB, far from 1 GiB
        got = kv(read_all(c, topic, compacted=True))
        assert sorted(got) == sorted(latest.items())
    finally:
        c.close()


def read_all(client, topic: str, compacted: bool, timeout_ms: int = 1500) -> list:
    """Everything a reader from the earliest message gets until it is idle."""
    reader = client.create_reader(topic, pulsar.MessageId.earliest, is_read_compacted=compacted)
    out = []
    try:
        while True:
            try:
                out.append(reader.read_next(timeout_millis=timeout_ms))
            except pulsar.Timeout:
                return out
    finally:
        reader.close()


def kv(messages) -> list[tuple[str, bytes]]:
    return [(m.partition_key(), m.data()) for m in messages]


def produce_updates(producer, keys: int, rounds: int) -> dict[str, bytes]:
    """Each key written `rounds` times; the latest value of each."""
    latest = {}
    for r in range(rounds):
        for k in range(keys):
            key, value = f"k{k}", f"k{k}-v{r}".encode()
            producer.send(value, partition_key=key)
            latest[key] = value
    return latest


def test_compacted_reader_sees_latest_per_key_then_the_log(broker, client):
    topic = topic_name("compact")
    producer = client.create_producer(topic, batching_enabled=False)
    latest = produce_updates(producer, keys=5, rounds=4)
    producer.send(b"deleted-soon", partition_key="gone")
    producer.send(b"", partition_key="gone")  # an empty value deletes the key
    producer.send(b"no-key")  # no key: left out of the compacted view
    assert compaction_status(broker, topic)["status"] == "NOT_RUN"

    compact(broker, topic)
    wait_compacted(broker, topic)
    assert compaction_status(broker, topic) == {"status": "SUCCESS", "lastError": ""}

    producer.send(b"k0-after", partition_key="k0")
    producer.send(b"keyless-after")

    got = read_all(client, topic, compacted=True)
    # The compacted part: one message per key with its latest value, in log order.
    assert kv(got[:5]) == sorted(latest.items(), key=lambda kv: int(kv[0][1:]))
    # After the horizon, the log as it is.
    assert payloads(got[5:]) == [b"k0-after", b"keyless-after"]

    # A reader that does not ask for the compacted view sees every message.
    assert len(read_all(client, topic, compacted=False)) == 20 + 3 + 2


def test_compaction_again_keeps_the_previous_view_and_applies_deletes(broker, client):
    topic = topic_name("recompact")
    producer = client.create_producer(topic, batching_enabled=False)
    for k in ("a", "b", "c"):
        producer.send(f"{k}1".encode(), partition_key=k)
    compact(broker, topic)
    wait_compacted(broker, topic)
    producer.send(b"", partition_key="b")
    producer.send(b"a2", partition_key="a")
    compact(broker, topic)
    wait_compacted(broker, topic)
    assert kv(read_all(client, topic, compacted=True)) == [("c", b"c1"), ("a", b"a2")]


def test_batched_messages_are_compacted_per_message(broker, client):
    topic = topic_name("compact-batch")
    producer = client.create_producer(
        topic, batching_enabled=True, batching_max_messages=100,
        batching_max_publish_delay_ms=50,
    )
    for r in range(3):
        for k in range(4):
            producer.send_async(f"k{k}-v{r}".encode(), None, partition_key=f"k{k}")
        producer.flush()
    compact(broker, topic)
    wait_compacted(broker, topic)
    got = kv(read_all(client, topic, compacted=True))
    assert sorted(got) == [(f"k{k}", f"k{k}-v2".encode()) for k in range(4)]


@pytest.mark.parametrize("codec", ["NONE", "LZ4", "ZSTD"])
def test_compressed_batches_are_compacted_per_message(broker, client, codec):
    # Pulsar decompresses a batch, keeps each key's latest message and
    # rewrites the batch with its codec; a compressed batch kept whole would
    # show the overwritten values too.
    topic = topic_name(f"compact-{codec.lower()}")
    producer = client.create_producer(
        topic, batching_enabled=True, batching_max_messages=100,
        batching_max_publish_delay_ms=50,
        compression_type=getattr(pulsar.CompressionType, codec),
    )
    latest = {}
    for r in range(3):
        for k in range(6):
            key, value = f"k{k}", f"k{k}-v{r}-{'x' * 100}".encode()
            producer.send_async(value, None, partition_key=key)
            latest[key] = value
        if r == 1:
            # Deletes in a batch of their own and beside updates.
            producer.send_async(b"", None, partition_key="k1")
        producer.flush()
    producer.send_async(b"", None, partition_key="k4")
    producer.send_async(b"k5-last", None, partition_key="k5")
    producer.flush()
    del latest["k4"]
    latest["k5"] = b"k5-last"
    # k1 was deleted in round 1 and written again in round 2: it is back.
    compact(broker, topic)
    wait_compacted(broker, topic)
    got = kv(read_all(client, topic, compacted=True))
    assert sorted(got) == sorted(latest.items())
    # The compacted view's batches are still compressed with the codec and
    # read back the same by a second compaction.
    producer.send(b"k0-after", partition_key="k0")
    compact(broker, topic)
    wait_compacted(broker, topic)
    latest["k0"] = b"k0-after"
    assert sorted(kv(read_all(client, topic, compacted=True))) == sorted(latest.items())
    # TableView reads to the last kept message, though batches of the view
    # end with compacted-out ones.
    table = client.create_table_view(topic)
    try:
        seen = {}
        table.for_each(lambda k, v: seen.__setitem__(k, v))
        assert seen == latest
    finally:
        table.close()


def test_table_view_is_built_on_the_compacted_topic(broker, client):
    topic = topic_name("table")
    producer = client.create_producer(topic, batching_enabled=False)
    latest = produce_updates(producer, keys=10, rounds=3)
    producer.send(b"", partition_key="k3")
    del latest["k3"]
    compact(broker, topic)
    wait_compacted(broker, topic)
    table = client.create_table_view(topic)
    try:
        # Created once it has read the topic to its end.
        assert {k: table.get(k) for k in latest} == latest
        assert table.get("k3") is None
        seen = {}
        table.for_each(lambda k, v: seen.__setitem__(k, v))
        assert seen == latest
    finally:
        table.close()


def subscribe_cmd(topic: str, sub: str, sub_type: int, read_compacted: bool) -> bytes:
    # CommandSubscribe: topic, subscription, subType, consumer_id, request_id,
    # initialPosition Earliest (13), read_compacted (11).
    body = wire.pb((1, topic), (2, sub), (3, sub_type), (4, 1), (5, 1), (13, 1),
                   (11, int(read_compacted)))
    return wire.frame(wire.base_command(wire.SUBSCRIBE, body))


def test_read_compacted_on_a_shared_subscription_is_refused(broker, client):
    # The Python client refuses it itself (InvalidConfiguration): the broker's
    # answer is seen on the wire, as Pulsar's: NotAllowedError.
    topic = topic_name("compact-shared")
    client.create_producer(topic).send(b"x", partition_key="k")
    for sub_type in (1, 3):  # Shared, Key_Shared
        with wire.RawConnection("127.0.0.1", broker.pulsar_port) as conn:
            conn.handshake()
            conn.send(subscribe_cmd(topic, unique("sub"), sub_type, read_compacted=True))
            error = conn.expect(wire.ERROR)
            assert wire.SERVER_ERRORS[wire.first(error.body, 2)] == "NotAllowedError"
            assert b"readCompacted" in wire.first(error.body, 3)
    # Exclusive and failover subscriptions may read compacted.
    c = client.subscribe(topic, unique("sub"), consumer_type=pulsar.ConsumerType.Failover,
                         is_read_compacted=True,
                         initial_position=pulsar.InitialPosition.Earliest)
    assert c.receive(timeout_millis=5000).data() == b"x"
    c.close()


def test_compacted_view_survives_a_restart(broker):
    topic = topic_name("compact-restart")
    c = make_client(broker)
    producer = c.create_producer(topic, batching_enabled=False)
    latest = produce_updates(producer, keys=4, rounds=3)
    compact(broker, topic)
    wait_compacted(broker, topic)
    c.close()
    assert broker.stop() == 0, broker.log_tail()
    broker.restart()

    c = make_client(broker)
    try:
        got = kv(read_all(c, topic, compacted=True))
        assert sorted(got) == sorted(latest.items())
    finally:
        c.close()


@pytest.mark.parametrize("partitions", [0, 2])
def test_the_compaction_threshold_compacts_automatically(make_broker, partitions):
    # On a partitioned topic, each partition compacts itself once over the
    # namespace threshold.
    broker = make_broker(config=toml({"compaction_check_interval_secs": 1,
                                      "cursor_persist_interval_ms": 100}))
    ns = f"public/{unique('ns')}"
    status, body = http("PUT", f"{broker.http_url}/admin/v2/namespaces/{ns}")
    assert status in (200, 204), body
    status, body = http("POST", f"{broker.http_url}/admin/v2/namespaces/{ns}/compactionThreshold",
                        b"1000", "application/json")
    assert status in (200, 204), body
    status, body = http("GET", f"{broker.http_url}/admin/v2/namespaces/{ns}/compactionThreshold")
    assert (status, json.loads(body)) == (200, 1000)

    topic = f"persistent://{ns}/{unique('auto')}"
    if partitions:
        create_partitioned(broker, topic, partitions)
    c = make_client(broker)
    try:
        producer = c.create_producer(topic, batching_enabled=False)
        latest = {}
        for i in range(120):
            key = f"k{i % 6}"
            latest[key] = f"{key}-{i}-{'x' * 40}".encode()
            producer.send(latest[key], partition_key=key)
        wait_compacted(broker, topic)
        if partitions:
            s = compaction_status(broker, topic)
            assert len(s["partitions"]) == partitions, s
        got = kv(read_all(c, topic, compacted=True))
        assert sorted(got) == sorted(latest.items())
    finally:
        c.close()


# ---------------------------------------------------------------- partitioned topics


def test_compacting_a_partitioned_topic_compacts_every_partition(broker, client):
    # Pulsar's admin compacts each partition of a partitioned topic (204);
    # compaction-status answers an aggregate with each partition's status (a
    # Kilonova extension: Pulsar answers 404 for the partitioned name).
    from test_admin_cli import Cli

    cli = Cli(broker)
    topic = topic_name("compact-parted")
    create_partitioned(broker, topic, 3)
    producer = client.create_producer(topic, batching_enabled=True,
                                      batching_max_publish_delay_ms=20)
    latest = {}
    for r in range(3):
        for k in range(30):
            key, value = f"k{k}", f"k{k}-v{r}".encode()
            producer.send_async(value, None, partition_key=key)
            latest[key] = value
        producer.flush()
    producer.send(b"", partition_key="k7")
    del latest["k7"]
    before = cli.json("topics", "compaction-status", topic)
    assert before["status"] == "NOT_RUN", before
    assert sorted(before["partitions"]) == [f"{topic}-partition-{i}" for i in range(3)], before

    cli.ok("topics", "compact", topic)

    def done():
        s = cli.json("topics", "compaction-status", topic)
        assert s["status"] != "ERROR", s
        return s if s["status"] == "SUCCESS" else None

    final = wait_until(done, 20.0, f"compaction of every partition of {topic}")
    assert {p["status"] for p in final["partitions"].values()} == {"SUCCESS"}, final
    # Each partition has its own compacted view.
    for i in range(3):
        assert compaction_status(broker, f"{topic}-partition-{i}")["status"] == "SUCCESS"

    got = kv(read_all(client, topic, compacted=True))
    assert sorted(got) == sorted(latest.items())
    # A consumer reading compacted sees the same (Failover: readCompacted is
    # for exclusive and failover subscriptions; a durable consumer is also
    # sent the empty, keyless compacted-out messages of a batch, as from Pulsar).
    consumer = client.subscribe(topic, unique("sub"), consumer_type=pulsar.ConsumerType.Failover,
                                is_read_compacted=True,
                                initial_position=pulsar.InitialPosition.Earliest)
    seen = {}
    try:
        while True:
            try:
                m = consumer.receive(timeout_millis=1500)
            except pulsar.Timeout:
                break
            if m.partition_key():
                seen[m.partition_key()] = m.data()
    finally:
        consumer.close()
    assert seen == latest


def test_compacting_a_missing_partitioned_topic_is_not_found(broker):
    topic = topic_name("no-such")
    status, _ = http("PUT", broker.http_url + rest_path(topic) + "/compaction")
    assert status == 404
    status, _ = http("GET", broker.http_url + rest_path(topic) + "/compaction")
    assert status == 404


def test_a_durable_compacted_consumer_acknowledges_batches_of_the_view(broker, client):
    # A batch of the view with compacted-out messages: the C++ client
    # acknowledges it once every message of it was, so a durable consumer is
    # sent them all (as from Pulsar; the compacted-out ones are empty and
    # keyless) and, once it acknowledged what it got, nothing comes back.
    topic = topic_name("compact-durable")
    producer = client.create_producer(topic, batching_enabled=True,
                                      batching_max_publish_delay_ms=50)
    for k in ("a", "b", "c"):
        producer.send_async(f"{k}1".encode(), None, partition_key=k)
    producer.flush()
    producer.send(b"b2", partition_key="b")
    compact(broker, topic)
    wait_compacted(broker, topic)

    sub = unique("sub")

    def drain():
        c = client.subscribe(topic, sub, is_read_compacted=True,
                             initial_position=pulsar.InitialPosition.Earliest)
        got = []
        try:
            while True:
                try:
                    m = c.receive(timeout_millis=1500)
                except pulsar.Timeout:
                    return got
                got.append(m)
                c.acknowledge(m)
        finally:
            c.close()

    got = drain()
    assert {(k, v) for k, v in kv(got) if k} == {("a", b"a1"), ("c", b"c1"), ("b", b"b2")}
    assert drain() == []
