"""The Kafka listener, driven by real Kafka clients nobody here wrote: kcat
(librdkafka's CLI), confluent-kafka (librdkafka) and kafka-python. Kafka and
Pulsar applications share topics: a Kafka topic `t` is
persistent://public/default/t, an offset its message index."""

import json
import os
import random
import socket
import struct
import subprocess
import threading
import time
import uuid

import pulsar
import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from conftest import Broker, http, make_client, receive_n

CODECS = ["none", "gzip", "snappy", "lz4", "zstd"]


def kafka_topic(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def produce_all(broker, topic, records, partition=-1, **config):
    """Produces `records` ((key, value, headers)) with confluent-kafka (to
    `partition`, or where its partitioner puts them); returns the delivery
    reports as (error, partition, offset)."""
    reports = []
    p = Producer({"bootstrap.servers": broker.kafka_bootstrap, "linger.ms": 5, **config})
    for key, value, headers in records:
        p.produce(topic, key=key, value=value, headers=headers, partition=partition,
                  on_delivery=lambda err, msg: reports.append(
                      (err, msg.partition(), msg.offset())))
    left = p.flush(30)
    assert left == 0, f"{left} records not delivered within 30 s"
    return reports


def consume_from(broker, topic, n, partition=0, offset=0, timeout=20.0, **config):
    """Reads n records of one partition from `offset` with confluent-kafka (no group)."""
    c = Consumer({"bootstrap.servers": broker.kafka_bootstrap, "group.id": "unused",
                  "enable.auto.commit": False, **config})
    c.assign([TopicPartition(topic, partition, offset)])
    got = []
    deadline = time.monotonic() + timeout
    try:
        while len(got) < n and time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is None:
                continue
            assert m.error() is None or m.error().code() == KafkaError._PARTITION_EOF, m.error()
            if m.error() is None:
                got.append(m)
    finally:
        c.close()
    assert len(got) == n, f"received {len(got)} of {n} records of {topic}[{partition}]"
    return got


def test_kcat_produces_and_consumes_with_keys_and_dense_offsets(broker):
    topic = kafka_topic("kcat")
    lines = "".join(f"key-{i}:value-{i}\n" for i in range(20))
    subprocess.run(["kcat", "-b", broker.kafka_bootstrap, "-P", "-t", topic, "-K:"],
                   input=lines, text=True, check=True, timeout=30)
    out = subprocess.run(["kcat", "-b", broker.kafka_bootstrap, "-C", "-t", topic,
                          "-o", "beginning", "-e", "-f", "%o %k %s\n"],
                         capture_output=True, text=True, check=True, timeout=30).stdout
    assert out.splitlines() == [f"{i} key-{i} value-{i}" for i in range(20)]


def test_kcat_compresses_with_every_codec_and_kafka_python_reads_them(broker):
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition as KTP
    for codec in ["gzip", "snappy", "lz4", "zstd"]:
        topic = kafka_topic(f"kcat-{codec}")
        lines = "".join(f"{codec}-{i}-" + "x" * 200 + "\n" for i in range(30))
        subprocess.run(["kcat", "-b", broker.kafka_bootstrap, "-P", "-t", topic, "-z", codec,
                        "-X", "linger.ms=50"],
                       input=lines, text=True, check=True, timeout=30)
        c = KafkaConsumer(bootstrap_servers=broker.kafka_bootstrap, enable_auto_commit=False,
                          consumer_timeout_ms=10_000)
        c.assign([KTP(topic, 0)])
        c.seek_to_beginning()
        got = [m.value.decode() for _, m in zip(range(30), c)]
        c.close()
        assert got == lines.splitlines(), codec
    # kafka-python compresses with gzip (its other codecs need extra
    # modules); kcat reads it.
    topic = kafka_topic("kp-gzip")
    p = KafkaProducer(bootstrap_servers=broker.kafka_bootstrap, acks="all",
                      compression_type="gzip", linger_ms=20)
    for i in range(25):
        p.send(topic, f"kp-{i}".encode())
    p.flush(30)
    p.close()
    out = subprocess.run(["kcat", "-b", broker.kafka_bootstrap, "-C", "-t", topic,
                          "-o", "beginning", "-e", "-f", "%o %s\n"],
                         capture_output=True, text=True, check=True, timeout=30).stdout
    assert out.splitlines() == [f"{i} kp-{i}" for i in range(25)]


@pytest.mark.parametrize("acks", ["0", "1", "all"])
def test_every_acks_level_and_codec_round_trips(broker, acks):
    for codec in CODECS:
        topic = kafka_topic(f"acks{acks}-{codec}")
        records = [(f"k{i}".encode(), f"{codec}-{i}".encode() * 20, None) for i in range(50)]
        reports = produce_all(broker, topic, records, acks=acks, **{"compression.type": codec})
        assert all(err is None for err, _, _ in reports), reports[:3]
        if acks != "0":
            # Durable answers carry the offsets, dense from 0 in send order.
            assert [o for _, _, o in reports] == list(range(50)), (codec, reports[:5])
        got = consume_from(broker, topic, 50)
        assert [m.value() for m in got] == [v for _, v, _ in records], codec
        assert [m.key() for m in got] == [k for k, _, _ in records], codec
        assert [m.offset() for m in got] == list(range(50)), codec


def test_kafka_python_produces_and_consumes(broker):
    from kafka import KafkaConsumer, KafkaProducer
    topic = kafka_topic("kpy")
    producer = KafkaProducer(bootstrap_servers=broker.kafka_bootstrap, acks="all")
    futures = [producer.send(topic, key=b"k", value=f"v{i}".encode(), headers=[("h", b"x")])
               for i in range(10)]
    offsets = [f.get(timeout=20).offset for f in futures]
    assert offsets == list(range(10))
    producer.close()
    consumer = KafkaConsumer(bootstrap_servers=broker.kafka_bootstrap, group_id=None,
                             enable_auto_commit=False, consumer_timeout_ms=10_000)
    from kafka import TopicPartition as KTP
    consumer.assign([KTP(topic, 0)])
    consumer.seek_to_beginning()
    got = [(m.offset, m.value, m.headers) for _, m in zip(range(10), consumer)]
    consumer.close()
    assert got == [(i, f"v{i}".encode(), [("h", b"x")]) for i in range(10)]


def test_pulsar_and_kafka_applications_share_a_topic(broker):
    topic = kafka_topic("shared")
    full = f"persistent://public/default/{topic}"
    client = make_client(broker)
    consumer = client.subscribe(full, "pulsar-side",
                                initial_position=pulsar.InitialPosition.Earliest)
    # Kafka → Pulsar: key, headers as properties, timestamp as event time.
    ts = 1_700_000_000_123
    p = Producer({"bootstrap.servers": broker.kafka_bootstrap})
    p.produce(topic, key=b"user-7", value=b"from-kafka", headers={"trace": b"abc"}, timestamp=ts)
    assert p.flush(20) == 0
    (m,) = receive_n(consumer, 1)
    assert (m.data(), m.partition_key(), m.properties(), m.event_timestamp()) == (
        b"from-kafka", "user-7", {"trace": "abc"}, ts)
    # Pulsar → Kafka: the next offset, key, properties as headers.
    producer = client.create_producer(full, batching_enabled=False)
    producer.send(b"from-pulsar", partition_key="user-8", properties={"a": "b"},
                  event_timestamp=ts + 1)
    # A batch of three from Pulsar: three records with consecutive offsets.
    batcher = client.create_producer(full, batching_enabled=True, batching_max_messages=3,
                                     batching_max_publish_delay_ms=1000)
    for i in range(3):
        batcher.send_async(f"batched-{i}".encode(), None, partition_key=f"b{i}")
    batcher.flush()
    client.close()
    got = consume_from(broker, topic, 5)
    assert [m.offset() for m in got] == [0, 1, 2, 3, 4]
    assert (got[1].value(), got[1].key(), got[1].headers(), got[1].timestamp()[1]) == (
        b"from-pulsar", b"user-8", [("a", b"b")], ts + 1)
    assert [(m.key(), m.value()) for m in got[2:]] == [
        (f"b{i}".encode(), f"batched-{i}".encode()) for i in range(3)]


def test_a_partitioned_topics_partitions_are_kafka_partitions(broker):
    topic = kafka_topic("parts")
    assert broker.create_partitioned_topic(topic, 3) == 204
    admin = AdminClient({"bootstrap.servers": broker.kafka_bootstrap})
    meta = admin.list_topics(topic, timeout=10)
    assert sorted(meta.topics[topic].partitions) == [0, 1, 2]
    p = Producer({"bootstrap.servers": broker.kafka_bootstrap})
    for part in range(3):
        p.produce(topic, value=f"to-{part}".encode(), partition=part)
    assert p.flush(20) == 0
    client = make_client(broker)
    for part in range(3):
        c = client.subscribe(f"persistent://public/default/{topic}-partition-{part}", "s",
                             initial_position=pulsar.InitialPosition.Earliest)
        (m,) = receive_n(c, 1)
        assert m.data() == f"to-{part}".encode()
    client.close()
    # A partition the topic does not have is refused, not created.
    reports = produce_all(broker, topic, [(None, b"x", None)], partition=7,
                          **{"message.timeout.ms": 3000})
    assert reports[0][0] is not None


def test_list_offsets_earliest_latest_and_by_timestamp(broker):
    topic = kafka_topic("offsets")
    p = Producer({"bootstrap.servers": broker.kafka_bootstrap, "linger.ms": 0})
    for i in range(10):
        p.produce(topic, value=f"v{i}".encode())
        assert p.flush(20) == 0
    c = Consumer({"bootstrap.servers": broker.kafka_bootstrap, "group.id": "unused"})
    low, high = c.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
    assert (low, high) == (0, 10)
    # By time: publish time is what Kilonova indexes; every record so far was
    # published before now, none after.
    now_ms = int(time.time() * 1000)
    found = c.offsets_for_times([TopicPartition(topic, 0, 0)], timeout=10)
    assert found[0].offset == 0
    later = c.offsets_for_times([TopicPartition(topic, 0, now_ms + 60_000)], timeout=10)
    assert later[0].offset in (-1, 10), later  # none: Kafka's -1 (librdkafka may show the end)
    c.close()


def test_an_empty_fetch_waits_for_the_next_record_not_the_whole_wait(broker):
    topic = kafka_topic("longpoll")
    produce_all(broker, topic, [(None, b"first", None)])
    c = Consumer({"bootstrap.servers": broker.kafka_bootstrap, "group.id": "unused",
                  "fetch.wait.max.ms": 20_000, "socket.timeout.ms": 60_000})
    c.assign([TopicPartition(topic, 0, 1)])
    got = []

    def poll():
        deadline = time.monotonic() + 30
        while not got and time.monotonic() < deadline:
            m = c.poll(0.2)
            if m is not None and m.error() is None:
                got.append((m.value(), time.monotonic()))

    t = threading.Thread(target=poll)
    t.start()
    # The consumer's first fetch is parked at the end by now or soon; the
    # record below must end it well before its 20 s wait.
    time.sleep(1.0)  # absence window: let the fetch reach the broker and park
    sent_at = time.monotonic()
    produce_all(broker, topic, [(None, b"second", None)])
    t.join()
    c.close()
    assert got and got[0][0] == b"second", got
    assert got[0][1] - sent_at < 10, f"delivered {got[0][1] - sent_at:.1f} s after the send"


def test_auto_creation_off_refuses_unknown_topics(kilonova_bin, tmp_path):
    b = Broker(kilonova_bin, tmp_path / "data", tmp_path / "kilonova.log",
               config="[broker]\nallow_auto_topic_creation = false\n")
    b.start()
    try:
        reports = produce_all(b, kafka_topic("nope"), [(None, b"x", None)],
                              **{"message.timeout.ms": 3000})
        assert reports[0][0] is not None, "a record to a topic that may not be created was stored"
    finally:
        b.stop()


# ---------------------------------------------------------------- bad input


def request(api_key, version, correlation_id, body=b"", client_id=b"raw"):
    header = struct.pack(">hhih", api_key, version, correlation_id, len(client_id)) + client_id
    payload = header + body
    return struct.pack(">i", len(payload)) + payload


def read_response(sock):
    size = struct.unpack(">i", recv_exact(sock, 4))[0]
    return recv_exact(sock, size)


def recv_exact(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    return buf


def test_bad_requests_get_errors_and_the_broker_keeps_serving(broker):
    host, port = broker.kafka_bootstrap.split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        # An unknown API key: the correlation id and UNSUPPORTED_VERSION (35).
        s.sendall(request(999, 0, 41))
        assert read_response(s) == struct.pack(">ih", 41, 35)
        # ApiVersions at a version not served: Kafka's v0 answer with error 35
        # and the versions served.
        s.sendall(request(18, 99, 42))
        r = read_response(s)
        assert struct.unpack(">ih", r[:6]) == (42, 35)
        assert struct.unpack(">i", r[6:10])[0] >= 5, "the served APIs are listed"
        # Metadata v12 whose body ends too soon: INVALID_REQUEST (42), and
        # the connection stays open.
        s.sendall(request(3, 12, 43, b"\x05"))
        assert struct.unpack(">ih", read_response(s)[:6]) == (43, 42)
        s.sendall(request(18, 0, 44))
        assert struct.unpack(">ih", read_response(s)[:6]) == (44, 0)
    # A size no request may have: the connection closes at once.
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(struct.pack(">i", 0x7FFFFFF0))
        with pytest.raises((ConnectionError, socket.timeout)):
            recv_exact(s, 1)
    # Garbage as a produce's record batch: CORRUPT_MESSAGE for that partition.
    topic = kafka_topic("garbage").encode()
    records = os.urandom(200)
    # Produce v3: transactional_id(null), acks, timeout, [topic [partition records]]
    body = (struct.pack(">hhi", -1, -1, 5000) + struct.pack(">i", 1)
            + struct.pack(">h", len(topic)) + topic + struct.pack(">i", 1)
            + struct.pack(">ii", 0, len(records)) + records)
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(request(0, 3, 45, body))
        r = read_response(s)
        assert struct.unpack(">i", r[:4])[0] == 45
        # ... [topics: 1][name][partitions: 1][index 0][error code]
        at = 4 + 4 + 2 + len(topic) + 4 + 4
        assert struct.unpack(">h", r[at:at + 2])[0] in (2, 87), r  # CORRUPT_MESSAGE / INVALID_RECORD
    # Everyone else is served as before.
    t = kafka_topic("after")
    produce_all(broker, t, [(b"k", b"still serving", None)])
    assert consume_from(broker, t, 1)[0].value() == b"still serving"


# ---------------------------------------------------------------- durability

# CI runs 3; `KILONOVA_KAFKA_KILL_ROUNDS=10 pytest tests/python/test_kafka.py -k kill9`
# runs the 10 (docs/testing.md).
KILL_ROUNDS = int(os.environ.get("KILONOVA_KAFKA_KILL_ROUNDS", "3"))


def test_kill9_under_kafka_load_loses_no_acknowledged_record(broker):
    """acks=all records whose delivery report said OK are all there after
    kill -9 and a restart (a short version of the soak; seeded)."""
    seed = int(os.environ.get("KILONOVA_KILL_SEED", random.randrange(2**32)))
    rng = random.Random(seed)
    print(f"seed {seed} (rerun with KILONOVA_KILL_SEED={seed})")
    for rnd in range(KILL_ROUNDS):
        topic = kafka_topic(f"kill{rnd}")
        acked = []
        stop, loaded = threading.Event(), threading.Event()

        def delivered(err, value):
            if err is None:
                acked.append(value)
                if len(acked) >= 200:
                    loaded.set()

        def produce():
            p = Producer({"bootstrap.servers": broker.kafka_bootstrap, "acks": "all",
                          "linger.ms": 2, "message.timeout.ms": 5000,
                          "enable.idempotence": False, "retries": 0})
            i = 0
            while not stop.is_set():
                value = f"r{rnd}-{i}".encode()
                try:
                    p.produce(topic, value=value,
                              on_delivery=lambda err, msg, v=value: delivered(err, v))
                except BufferError:
                    p.poll(0.05)
                    continue
                i += 1
                p.poll(0)
            p.flush(10)

        t = threading.Thread(target=produce)
        t.start()
        assert loaded.wait(30), f"only {len(acked)} records acknowledged in 30 s"
        time.sleep(rng.uniform(0.0, 0.3))  # the kill's random moment, under load
        broker.kill()
        stop.set()
        t.join()
        broker.restart()
        assert acked, "nothing was acknowledged before the kill: the round proved nothing"
        kept = set(acked)
        c = Consumer({"bootstrap.servers": broker.kafka_bootstrap, "group.id": "unused"})
        low, high = c.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
        c.close()
        stored = {m.value() for m in consume_from(broker, topic, high - low)}
        lost = kept - stored
        assert not lost, f"round {rnd}: lost {len(lost)} of {len(kept)} acknowledged (seed {seed})"


def test_a_topic_a_kafka_client_creates_keeps_records_for_kafkas_retention(broker):
    # Kafka keeps records for a time whether or not anyone read them; a
    # Kilonova topic without a subscription keeps nothing unless retention
    # says so: a topic created through the Kafka listener gets Kafka's 7 days.
    topic = kafka_topic("retained")
    produce_all(broker, topic, [(None, b"kept", None)])
    status, body = http("GET", f"{broker.http_url}/admin/v2/persistent/public/default/{topic}/retention")
    assert status == 200, body
    assert json.loads(body) == {"retentionTimeInMinutes": 10080, "retentionSizeInMB": -1}


# ---------------------------------------------------------------- consumer groups


@pytest.fixture
def group_broker(kilonova_bin, tmp_path):
    """A broker whose empty groups wait half a second for more members."""
    b = Broker(kilonova_bin, tmp_path / "data", tmp_path / "kilonova.log",
               config="[kafka]\ngroup_initial_rebalance_delay_ms = 500\n")
    b.start()
    yield b
    if b.running:
        b.stop()


def group_consumer(broker, group, **config):
    return Consumer({"bootstrap.servers": broker.kafka_bootstrap, "group.id": group,
                     "auto.offset.reset": "earliest", "enable.auto.commit": False,
                     "heartbeat.interval.ms": 500, "session.timeout.ms": 6000, **config})


def poll_until(consumers, seen, want, uncommitted=None, timeout=60.0):
    """Polls `consumers` in turn until `seen` ((partition, offset) → count)
    holds `want` distinct records; commits each record as it goes. A commit
    Kafka refuses (REBALANCE_IN_PROGRESS between a join and the new
    assignment) is noted in `uncommitted`: only those records may come again."""
    deadline = time.monotonic() + timeout
    while len(seen) < want and time.monotonic() < deadline:
        for c in consumers:
            m = c.poll(0.1)
            if m is None or m.error():
                continue
            key = (m.partition(), m.offset())
            seen[key] = seen.get(key, 0) + 1
            try:
                c.commit(message=m, asynchronous=False)
            except KafkaException as e:
                assert uncommitted is not None, f"commit refused: {e}"
                uncommitted.add(key)
    assert len(seen) >= want, f"received {len(seen)} of {want}"


def test_a_group_of_three_shares_the_partitions_and_a_leave_loses_and_repeats_nothing(group_broker):
    b = group_broker
    topic = kafka_topic("group")
    assert b.create_partitioned_topic(topic, 3) == 204
    def produce(n):
        for p in range(3):
            produce_all(b, topic, [(None, f"p{p}-{i}".encode(), None) for i in range(n)],
                        partition=p)

    produce(30)
    consumers = [group_consumer(b, "three") for _ in range(3)]
    for c in consumers:
        c.subscribe([topic])
    seen, uncommitted = {}, set()
    poll_until(consumers, seen, 90, uncommitted)
    assert {k for k, n in seen.items() if n > 1} <= uncommitted, "a committed record came again"
    assignments = [sorted(tp.partition for tp in c.assignment()) for c in consumers]
    assert sorted(p for a in assignments for p in a) == [0, 1, 2], assignments
    # One member leaves: the others take its partition from its commits on.
    consumers[0].close()
    produce(10)
    poll_until(consumers[1:], seen, 120, uncommitted)
    again = {k for k, n in seen.items() if n > 1}
    assert again <= uncommitted, f"committed records came again: {sorted(again - uncommitted)[:5]}"
    assert sorted(tp.partition for c in consumers[1:] for tp in c.assignment()) == [0, 1, 2]
    for c in consumers[1:]:
        c.close()


def test_committed_offsets_survive_a_restart(group_broker):
    b = group_broker
    topic = kafka_topic("committed")
    produce_all(b, topic, [(None, f"v{i}".encode(), None) for i in range(10)])
    c = group_consumer(b, "durable")
    c.subscribe([topic])
    seen = {}
    poll_until([c], seen, 10)
    c.close()
    b.stop()
    b.restart()
    produce_all(b, topic, [(None, b"after-restart", None)])
    c = group_consumer(b, "durable")
    c.subscribe([topic])
    deadline = time.monotonic() + 30
    first = None
    while first is None and time.monotonic() < deadline:
        m = c.poll(0.5)
        if m is not None and m.error() is None:
            first = (m.offset(), m.value())
    c.close()
    assert first == (10, b"after-restart"), first


def test_kafka_python_and_kcat_join_groups(group_broker):
    from kafka import KafkaConsumer
    b = group_broker
    topic = kafka_topic("kpygroup")
    produce_all(b, topic, [(None, f"v{i}".encode(), None) for i in range(5)])
    consumer = KafkaConsumer(topic, bootstrap_servers=b.kafka_bootstrap, group_id="kpy",
                             auto_offset_reset="earliest", consumer_timeout_ms=20_000)
    got = [m.value for _, m in zip(range(5), consumer)]
    consumer.commit()
    consumer.close()
    assert got == [f"v{i}".encode() for i in range(5)]
    # kcat's balanced consumer (-G) in the same group starts after the commit.
    produce_all(b, topic, [(None, b"for-kcat", None)])
    out = subprocess.run(["kcat", "-b", b.kafka_bootstrap, "-G", "kpy", topic, "-c", "1",
                          "-f", "%o %s\n"], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "5 for-kcat", (out.stdout, out.stderr[-500:])


def test_an_idempotent_producer_survives_kill9_without_duplicates(broker):
    """enable.idempotence: batches in flight at a kill -9 are retried after
    the restart with their sequence numbers, and the topic (its
    deduplication rebuilt from the log) stores each record exactly once."""
    topic = kafka_topic("idem")
    acked = set()
    loaded, stop = threading.Event(), threading.Event()
    sent = []

    def delivered(err, msg):
        if err is None:
            acked.add(msg.value())
            if len(acked) >= 2000:
                loaded.set()

    p = Producer({"bootstrap.servers": broker.kafka_bootstrap, "enable.idempotence": True,
                  "acks": "all", "linger.ms": 1, "message.timeout.ms": 60_000})

    def produce():
        i = 0
        while not stop.is_set():
            value = f"i{i}".encode()
            try:
                p.produce(topic, value=value, on_delivery=delivered)
            except BufferError:
                p.poll(0.01)
                continue
            sent.append(value)
            i += 1
            p.poll(0)

    t = threading.Thread(target=produce)
    t.start()
    try:
        assert loaded.wait(30), f"only {len(acked)} records acknowledged in 30 s"
        broker.kill()  # under load: batches are in flight
        broker.restart()
    finally:
        stop.set()
        t.join()
    assert p.flush(60) == 0, "records left undelivered after the restart"
    assert len(acked) == len(sent), f"{len(sent) - len(acked)} records not acknowledged"
    c = Consumer({"bootstrap.servers": broker.kafka_bootstrap, "group.id": "unused"})
    low, high = c.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
    c.close()
    values = [m.value() for m in consume_from(broker, topic, high - low)]
    dupes = len(values) - len(set(values))
    assert dupes == 0, f"{dupes} records stored twice"
    assert set(values) == acked


def idempotent_produce(broker, topic, producer_id, sequence, values, correlation_id):
    """One Produce v3 (acks=all) of an idempotent batch, built with
    kafka-python's record batch builder; returns (error code, base offset)."""
    from kafka.protocol.produce import ProduceRequest, ProduceResponse
    from kafka.record.default_records import DefaultRecordBatchBuilder
    batch = DefaultRecordBatchBuilder(magic=2, compression_type=0, is_transactional=False,
                                      producer_id=producer_id, producer_epoch=0,
                                      base_sequence=sequence, batch_size=1 << 20)
    for i, v in enumerate(values):
        batch.append(i, timestamp=None, key=None, value=v, headers=[])
    # (kafka-python's encode holds its object weakly: keep a reference.)
    req = ProduceRequest[3](transactional_id=None, required_acks=-1, timeout=10_000,
                            topics=[(topic, [(0, bytes(batch.build()))])])
    body = req.encode()
    host, port = broker.kafka_bootstrap.split(":")
    with socket.create_connection((host, int(port)), timeout=15) as s:
        s.sendall(request(0, 3, correlation_id, body))
        r = read_response(s)
    assert struct.unpack(">i", r[:4])[0] == correlation_id
    resp = ProduceResponse[3].decode(r[4:])
    (_, partitions), = resp.topics
    (_, error, offset, _), = partitions
    return error, offset


def test_a_retried_idempotent_batch_is_answered_with_its_offset_and_stored_once(broker):
    # The retry a client sends when an answer was lost (a connection cut, a
    # kill -9 after the fdatasync): the same producer id and sequence.
    topic = kafka_topic("retry")
    pid = 4242
    assert idempotent_produce(broker, topic, pid, 0, [b"a", b"b", b"c"], 1) == (0, 0)
    assert idempotent_produce(broker, topic, pid, 0, [b"a", b"b", b"c"], 2) == (0, 0)
    assert idempotent_produce(broker, topic, pid, 3, [b"d"], 3) == (0, 3)
    # After kill -9 the topic rebuilds what it stored per producer from the log.
    broker.kill()
    broker.restart()
    assert idempotent_produce(broker, topic, pid, 3, [b"d"], 4) == (0, 3)
    assert idempotent_produce(broker, topic, pid, 4, [b"e"], 5) == (0, 4)
    values = [m.value() for m in consume_from(broker, topic, 5)]
    assert values == [b"a", b"b", b"c", b"d", b"e"]
    c = Consumer({"bootstrap.servers": broker.kafka_bootstrap, "group.id": "unused"})
    assert c.get_watermark_offsets(TopicPartition(topic, 0), timeout=10) == (0, 5)
    c.close()


def test_an_admin_client_creates_topics_and_grows_their_partitions(broker):
    from confluent_kafka.admin import NewPartitions, NewTopic
    admin = AdminClient({"bootstrap.servers": broker.kafka_bootstrap})
    t, kept, bad = kafka_topic("admin"), kafka_topic("kept"), kafka_topic("bad")
    futures = admin.create_topics([
        NewTopic(t, num_partitions=2, replication_factor=1),
        NewTopic(kept, num_partitions=1, replication_factor=1, config={"retention.ms": "3600000"}),
        NewTopic(bad, num_partitions=1, replication_factor=1, config={"cleanup.policy": "compact"}),
    ])
    futures[t].result(10)
    futures[kept].result(10)
    with pytest.raises(Exception) as refused:
        futures[bad].result(10)
    assert "cleanup.policy" in str(refused.value)
    # Created as Pulsar sees it: partitioned, with its retention.
    status, body = http("GET", f"{broker.http_url}/admin/v2/persistent/public/default/{t}/partitions")
    assert status == 200 and json.loads(body)["partitions"] == 2, body
    status, body = http("GET", f"{broker.http_url}/admin/v2/persistent/public/default/{kept}/retention")
    assert json.loads(body) == {"retentionTimeInMinutes": 60, "retentionSizeInMB": -1}, body
    with pytest.raises(Exception) as exists:
        admin.create_topics([NewTopic(t, num_partitions=2, replication_factor=1)])[t].result(10)
    assert "TOPIC_ALREADY_EXISTS" in str(exists.value)
    # Grown to 4: Metadata and producers see the new partitions.
    admin.create_partitions([NewPartitions(t, 4)])[t].result(10)
    assert sorted(admin.list_topics(t, timeout=10).topics[t].partitions) == [0, 1, 2, 3]
    reports = produce_all(broker, t, [(None, b"to-3", None)], partition=3)
    assert reports[0][0] is None, reports
    with pytest.raises(Exception):
        admin.create_partitions([NewPartitions(t, 2)])[t].result(10)


def kafka_samples(broker, name: str) -> dict:
    """The broker's samples of metric `name`, by their labels but `cluster`."""
    from prometheus_client.parser import text_string_to_metric_families
    status, body = http("GET", f"{broker.http_url}/metrics")
    assert status == 200
    return {tuple(sorted((k, v) for k, v in s.labels.items() if k != "cluster")): s.value
            for f in text_string_to_metric_families(body.decode()) for s in f.samples
            if s.name == name}


def test_a_batch_after_a_sequence_gap_is_refused_out_of_order(broker):
    topic = kafka_topic("gap")
    pid = 5151
    assert idempotent_produce(broker, topic, pid, 0, [b"a", b"b"], 1) == (0, 0)
    # Sequence 2 is next: 5 means batches 2..4 went missing.
    error, _ = idempotent_produce(broker, topic, pid, 5, [b"x"], 2)
    assert error == 45, f"expected OUT_OF_ORDER_SEQUENCE_NUMBER (45), got {error}"
    # The refused batch left no trace: sequence 2 still follows.
    assert idempotent_produce(broker, topic, pid, 2, [b"c"], 3) == (0, 2)
    values = [m.value() for m in consume_from(broker, topic, 3)]
    assert values == [b"a", b"b", b"c"]
    errors = kafka_samples(broker, "kilonova_kafka_request_errors_total")
    assert errors.get((("api", "Produce"), ("error", "OUT_OF_ORDER_SEQUENCE_NUMBER"))) == 1, errors
    produced = kafka_samples(broker, "kilonova_kafka_produced_records_total")
    assert produced[()] >= 4, produced
    took = kafka_samples(broker, "kilonova_kafka_request_seconds_count")
    assert took[(("api", "Produce"),)] >= 3, took


def test_an_admin_client_describes_and_alters_topic_configs(broker):
    from confluent_kafka.admin import (AlterConfigOpType, ConfigEntry, ConfigResource,
                                       NewTopic, ResourceType)
    admin = AdminClient({"bootstrap.servers": broker.kafka_bootstrap})
    t = kafka_topic("configs")
    admin.create_topics([NewTopic(t, num_partitions=1, replication_factor=1,
                                  config={"retention.ms": "3600000"})])[t].result(10)

    def described():
        res = ConfigResource(ResourceType.TOPIC, t)
        return admin.describe_configs([res])[res].result(10)

    configs = described()
    assert configs["retention.ms"].value == "3600000"
    assert configs["retention.ms"].source == 1  # TOPIC_CONFIG
    assert configs["cleanup.policy"].value == "delete" and configs["cleanup.policy"].is_read_only

    # Incremental: one config set, the others kept.
    res = ConfigResource(ResourceType.TOPIC, t, incremental_configs=[
        ConfigEntry("retention.bytes", "2097152",
                    incremental_operation=AlterConfigOpType.SET)])
    admin.incremental_alter_configs([res])[res].result(10)
    configs = described()
    assert (configs["retention.ms"].value, configs["retention.bytes"].value) == ("3600000", "2097152")
    status, body = http("GET", f"{broker.http_url}/admin/v2/persistent/public/default/{t}/retention")
    assert json.loads(body) == {"retentionTimeInMinutes": 60, "retentionSizeInMB": 2}, body

    # Deleting both retention configs gives the topic back its namespace's.
    res = ConfigResource(ResourceType.TOPIC, t, incremental_configs=[
        ConfigEntry(n, None, incremental_operation=AlterConfigOpType.DELETE)
        for n in ("retention.ms", "retention.bytes")])
    admin.incremental_alter_configs([res])[res].result(10)
    assert described()["retention.ms"].source != 1

    # A config Kilonova does not have is refused by name, nothing changed.
    res = ConfigResource(ResourceType.TOPIC, t, incremental_configs=[
        ConfigEntry("segment.ms", "1000", incremental_operation=AlterConfigOpType.SET)])
    with pytest.raises(KafkaException) as refused:
        admin.incremental_alter_configs([res])[res].result(10)
    assert "segment.ms" in str(refused.value)

    # The (deprecated, whole-set) AlterConfigs: what is not named reverts.
    res = ConfigResource(ResourceType.TOPIC, t, set_config={"max.message.bytes": "65536"})
    admin.alter_configs([res])[res].result(10)
    configs = described()
    assert configs["max.message.bytes"].value == "65536" and configs["max.message.bytes"].source == 1
    big = produce_all(broker, t, [(None, b"x" * 100_000, None)], partition=0)
    assert big[0][0] is not None and big[0][0].code() == KafkaError.MSG_SIZE_TOO_LARGE, big

    # The broker's own configs are shown, and read-only.
    broker_res = ConfigResource(ResourceType.BROKER, "0")
    shown = admin.describe_configs([broker_res])[broker_res].result(10)
    assert shown["auto.create.topics.enable"].value == "true" and shown["message.max.bytes"].is_read_only
    missing = ConfigResource(ResourceType.TOPIC, kafka_topic("nosuch"))
    with pytest.raises(KafkaException) as unknown:
        admin.describe_configs([missing])[missing].result(10)
    assert unknown.value.args[0].code() == KafkaError.UNKNOWN_TOPIC_OR_PART


def test_admin_clients_delete_topics(broker):
    from confluent_kafka.admin import NewTopic
    from kafka.admin import KafkaAdminClient
    admin = AdminClient({"bootstrap.servers": broker.kafka_bootstrap})
    t, auto = kafka_topic("del"), kafka_topic("delauto")
    admin.create_topics([NewTopic(t, num_partitions=3, replication_factor=1)])[t].result(10)
    produce_all(broker, t, [(None, b"v", None)] * 6)
    # A consumer attached does not keep it: Kafka deletes regardless.
    c = Consumer({"bootstrap.servers": broker.kafka_bootstrap, "group.id": "unused"})
    c.assign([TopicPartition(t, 0, 0)])
    c.poll(1)
    admin.delete_topics([t])[t].result(10)
    c.close()
    status, body = http("GET", f"{broker.http_url}/admin/v2/persistent/public/default/partitioned")
    assert status == 200 and f"persistent://public/default/{t}" not in json.loads(body), body
    with pytest.raises(KafkaException) as gone:
        admin.delete_topics([t])[t].result(10)
    assert gone.value.args[0].code() == KafkaError.UNKNOWN_TOPIC_OR_PART
    # kafka-python deletes an auto-created (non-partitioned) topic.
    produce_all(broker, auto, [(None, b"v", None)])
    # Its first request probes the API versions within 2 s by default: two
    # test workers and a debug build on two cores have taken longer.
    kp = KafkaAdminClient(bootstrap_servers=broker.kafka_bootstrap,
                          api_version_auto_timeout_ms=10_000)
    try:
        kp.delete_topics([auto], timeout_ms=10_000)
    finally:
        kp.close()
    status, body = http("GET", f"{broker.http_url}/admin/v2/persistent/public/default")
    assert f"persistent://public/default/{auto}" not in json.loads(body), body


def test_a_fetch_asking_for_gigabytes_gets_a_bounded_answer(broker):
    from kafka.protocol.fetch import FetchRequest
    topic = kafka_topic("bigfetch")
    value = b"x" * (100 << 10)
    produce_all(broker, topic, [(None, value, None)] * 200)  # 20 MiB
    req = FetchRequest[4](replica_id=-1, max_wait_time=0, min_bytes=0, max_bytes=2**31 - 1,
                          isolation_level=0, topics=[(topic, [(0, 0, 2**31 - 1)])])
    body = req.encode()
    host, port = broker.kafka_bootstrap.split(":")
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(request(1, 4, 7, body))
        size = struct.unpack(">i", recv_exact(s, 4))[0]
        # The broker's cap is 16 MiB of records (plus the answer's framing).
        assert 1 << 20 < size <= (16 << 20) + (1 << 20), size
        recv_exact(s, size)


def test_kafka_admin_tools_describe_show_lag_reset_and_delete_groups(group_broker):
    from confluent_kafka import ConsumerGroupTopicPartitions
    b = group_broker
    topic = kafka_topic("adm")
    produce_all(b, topic, [(None, f"v{i}".encode(), None) for i in range(10)])
    c = group_consumer(b, "adm")
    c.subscribe([topic])
    seen = {}
    poll_until([c], seen, 5)
    c.commit(offsets=[TopicPartition(topic, 0, 5)], asynchronous=False)
    admin = AdminClient({"bootstrap.servers": b.kafka_bootstrap})
    (desc,) = [f.result(10) for f in admin.describe_consumer_groups(["adm"]).values()]
    assert desc.state.name == "STABLE" and len(desc.members) == 1, desc
    assert desc.members[0].host.endswith("127.0.0.1"), desc.members[0].host
    refused = admin.delete_consumer_groups(["adm"])["adm"]
    with pytest.raises(Exception) as busy:
        refused.result(10)
    assert "NON_EMPTY_GROUP" in str(busy.value)
    c.close()

    def committed():
        f = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions("adm")])["adm"]
        return {tp.partition: tp.offset for tp in f.result(10).topic_partitions}

    # Lag: the end of the partition minus the committed offset.
    assert committed() == {0: 5}
    low, high = Consumer({"bootstrap.servers": b.kafka_bootstrap, "group.id": "x"}) \
        .get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
    assert high - committed()[0] == 5
    # Reset (the group is empty now), then delete.
    alter = admin.alter_consumer_group_offsets(
        [ConsumerGroupTopicPartitions("adm", [TopicPartition(topic, 0, 2)])])["adm"]
    alter.result(10)
    assert committed() == {0: 2}
    admin.delete_consumer_groups(["adm"])["adm"].result(10)
    assert committed() == {}


def test_kilonova_admin_lists_groups_shows_lag_resets_and_deletes(group_broker, kilonova_bin):
    b = group_broker
    topic = kafka_topic("cli")
    produce_all(b, topic, [(None, f"v{i}".encode(), None) for i in range(10)])
    c = group_consumer(b, "cli-group")
    c.subscribe([topic])
    poll_until([c], {}, 3)
    c.commit(offsets=[TopicPartition(topic, 0, 3)], asynchronous=False)

    def admin(*args, ok=True):
        p = subprocess.run([str(kilonova_bin), "admin", "--admin-url", b.http_url,
                            "--output", "json", "kafka-groups", *args],
                           capture_output=True, text=True, timeout=60)
        assert (p.returncode == 0) == ok, (args, p.stdout, p.stderr)
        return json.loads(p.stdout) if ok and p.stdout.strip() else p.stderr

    assert "cli-group" in admin("list", "public/default")
    d = admin("describe", "public/default", "cli-group")
    assert (d["state"], d["members"]) == ("Stable", 1), d
    assert d["partitions"] == [{"topic": topic, "partition": 0, "committed": 3,
                                "logEnd": 10, "lag": 7}], d
    # A group with members keeps its offsets.
    assert "members" in admin("reset", "public/default", "cli-group", "--topic", topic,
                              "--to", "earliest", ok=False)
    c.close()
    admin("reset", "public/default", "cli-group", "--topic", topic, "--to", "latest")
    assert admin("describe", "public/default", "cli-group")["partitions"][0]["lag"] == 0
    admin("reset", "public/default", "cli-group", "--topic", topic, "--to", "1")
    assert admin("describe", "public/default", "cli-group")["partitions"][0]["committed"] == 1
    admin("delete", "public/default", "cli-group")
    assert "cli-group" not in admin("list", "public/default")
