"""Topic kinds and names: partitioned, pattern subscriptions, non-persistent,
invalid names and namespaces, schemas."""

import json
import re
from collections import defaultdict

import pulsar
import pytest
from pulsar.schema import Integer, JsonSchema, Record, String, StringSchema

import wire
from conftest import (
    assert_no_more,
    http,
    make_client,
    payloads,
    receive_n,
    topic_name,
    unique,
    wait_until,
)


def test_partitioned_topic(broker, client):
    local = unique("parted")
    topic = f"persistent://public/default/{local}"
    assert broker.create_partitioned_topic(local, 4) == 204
    assert broker.get_partitions(local) == (200, {"partitions": 4})
    assert client.get_topic_partitions(topic) == [f"{topic}-partition-{i}" for i in range(4)]
    # A partition is a topic of its own, not partitioned (as Pulsar answers).
    assert broker.get_partitions(f"{local}-partition-1") == (200, {"partitions": 0})
    assert client.get_topic_partitions(f"{topic}-partition-1") == [f"{topic}-partition-1"]

    consumer = client.subscribe(topic, unique("sub"), consumer_type=pulsar.ConsumerType.Shared,
                                initial_position=pulsar.InitialPosition.Earliest)
    producer = client.create_producer(topic, batching_enabled=False)
    keys = [f"k{i}" for i in range(40)]
    sent = []
    for round_no in range(2):
        for key in keys:
            data = f"{key}:{round_no}".encode()
            producer.send(data, partition_key=key)
            sent.append(data)

    got = receive_n(consumer, len(sent))
    assert sorted(payloads(got)) == sorted(sent)
    partition_of_key = {}
    order = defaultdict(list)
    for m in got:
        key, round_no = m.data().decode().split(":")
        part = m.topic_name()
        assert re.fullmatch(re.escape(topic) + r"-partition-[0-3]", part), part
        assert partition_of_key.setdefault(key, part) == part, f"{key} routed to two partitions"
        order[key].append(int(round_no))
    assert len(set(partition_of_key.values())) == 4, (
        f"keys reached only {sorted(set(partition_of_key.values()))}"
    )
    assert all(v == [0, 1] for v in order.values()), dict(order)
    for m in got:
        consumer.acknowledge(m)
    assert_no_more(consumer)


# Pulsar answers a partition count over maxNumPartitionsPerPartitionedTopic
# with 406 NOT_ACCEPTABLE "Number of partitions should be less than or equal to N".
OVER_THE_CAP = 406
DEFAULT_MAX_PARTITIONS = 4096


def reason_of(body: bytes) -> str:
    try:
        return json.loads(body)["reason"]
    except (ValueError, KeyError, TypeError):
        raise AssertionError(f"error body is not {{\"reason\": ...}}: {body[:300]!r}") from None


def partitioned_topics(broker) -> list:
    status, body = http("GET", f"{broker.http_url}/admin/v2/persistent/public/default/partitioned")
    assert status == 200, (status, body[:300])
    return json.loads(body)


@pytest.mark.parametrize("count", [DEFAULT_MAX_PARTITIONS + 1, 2**32 - 1])
def test_creating_more_partitions_than_the_cap_is_refused(broker, count):
    local = unique("too-many")
    path = f"{broker.http_url}/admin/v2/persistent/public/default/{local}/partitions"
    status, body = http("PUT", path, json.dumps(count).encode(), "application/json")
    assert status == OVER_THE_CAP, f"PUT {count} partitions: {status} {body[:300]!r}"
    assert str(DEFAULT_MAX_PARTITIONS) in reason_of(body), body
    assert f"persistent://public/default/{local}" not in partitioned_topics(broker)
    # The namespace still lists (the issue: the listing after such a create
    # aborted the broker on a 343 GB allocation).
    status, _ = http("GET", f"{broker.http_url}/admin/v2/persistent/public/default")
    assert status == 200


def test_growing_past_the_cap_is_refused(broker):
    local = unique("grow")
    assert broker.create_partitioned_topic(local, DEFAULT_MAX_PARTITIONS) == 204
    path = f"{broker.http_url}/admin/v2/persistent/public/default/{local}/partitions"
    for count in (DEFAULT_MAX_PARTITIONS + 1, 2**32 - 1):
        status, body = http("POST", path, json.dumps(count).encode(), "application/json")
        assert status == OVER_THE_CAP, f"POST {count} partitions: {status} {body[:300]!r}"
        assert str(DEFAULT_MAX_PARTITIONS) in reason_of(body), body
    assert broker.get_partitions(local) == (200, {"partitions": DEFAULT_MAX_PARTITIONS})
    status, body = http("GET", f"{broker.http_url}/admin/v2/persistent/public/default")
    assert status == 200
    assert len([t for t in json.loads(body) if f"/{local}-partition-" in t]) == DEFAULT_MAX_PARTITIONS


def test_auto_creation_over_the_cap_is_refused(make_broker):
    b = make_broker(config=(
        "[broker]\n"
        "max_num_partitions_per_partitioned_topic = 8\n"
        "auto_topic_creation_type = \"partitioned\"\n"
        "default_num_partitions = 16\n"
    ))
    topic = f"persistent://public/default/{unique('auto')}"
    with wire.RawConnection("127.0.0.1", b.pulsar_port) as conn:
        conn.handshake()
        conn.send(wire.partitioned_metadata_cmd(topic, request_id=1))
        f = conn.expect(wire.PARTITIONED_METADATA_RESPONSE)
        assert wire.first(f.body, 3) == 1, f"expected response=Failed: {f!r}"
        assert wire.SERVER_ERRORS.get(wire.first(f.body, 4)) == "NotAllowedError", f
    assert topic not in partitioned_topics(b)
    # A namespace policy over the cap is refused as well.
    status, body = http(
        "POST", f"{b.http_url}/admin/v2/namespaces/public/default/autoTopicCreation",
        json.dumps({"allowAutoTopicCreation": True, "topicType": "partitioned",
                    "defaultNumPartitions": 9}).encode(), "application/json")
    assert status == OVER_THE_CAP, (status, body[:300])
    assert "8" in reason_of(body), body
    # Within the cap, auto-creation works.
    status, body = http(
        "POST", f"{b.http_url}/admin/v2/namespaces/public/default/autoTopicCreation",
        json.dumps({"allowAutoTopicCreation": True, "topicType": "partitioned",
                    "defaultNumPartitions": 8}).encode(), "application/json")
    assert status == 204, (status, body[:300])
    c = make_client(b)
    try:
        c.create_producer(topic).send(b"x")
        assert len(c.get_topic_partitions(topic)) == 8
    finally:
        c.close()


def test_pattern_consumer(client):
    prefix = unique("pat")
    base = "persistent://public/default/"
    matching = [f"{base}{prefix}-{s}" for s in ("a", "b", "c")]
    other = f"{base}other-{prefix}"
    producers = {t: client.create_producer(t) for t in matching + [other]}
    for t, p in producers.items():
        for i in range(3):
            p.send(f"{t}|{i}".encode())

    consumer = client.subscribe(
        re.compile(re.escape(base + prefix) + "-.*"), unique("sub"),
        initial_position=pulsar.InitialPosition.Earliest,
    )
    got = receive_n(consumer, 9, what="messages of the 3 matching topics")
    by_topic = defaultdict(list)
    for m in got:
        t, i = m.data().decode().split("|")
        assert m.topic_name() == t
        by_topic[t].append(int(i))
    assert set(by_topic) == set(matching)
    assert all(v == [0, 1, 2] for v in by_topic.values()), dict(by_topic)
    for m in got:
        consumer.acknowledge(m)

    # Live messages on the matching topics arrive; the other topic's never do.
    for t, p in producers.items():
        p.send(f"{t}|live".encode())
    live = receive_n(consumer, 3)
    assert sorted(m.data().decode() for m in live) == sorted(f"{t}|live" for t in matching)
    assert_no_more(consumer, 500, "pattern consumer")


def test_non_persistent_topic(client):
    topic = f"non-persistent://public/default/{unique('np')}"
    producer = client.create_producer(topic)
    # Nobody is subscribed: these are dropped, not stored.
    producer.send(b"nobody-listens-1")
    producer.send(b"nobody-listens-2")

    consumer = client.subscribe(topic, unique("sub"), initial_position=pulsar.InitialPosition.Earliest)
    sent = [f"live-{i}".encode() for i in range(5)]
    for p in sent:
        producer.send(p)
    assert payloads(receive_n(consumer, 5)) == sent
    assert_no_more(consumer, 500, "non-persistent consumer")

    # A late subscriber (even from earliest) sees nothing of the past.
    late = client.subscribe(topic, unique("sub"), initial_position=pulsar.InitialPosition.Earliest)
    assert_no_more(late, 500, "late non-persistent subscriber")
    producer.send(b"after-late")
    assert payloads(receive_n(late, 1)) == [b"after-late"]
    assert payloads(receive_n(consumer, 1)) == [b"after-late"]


BAD_TOPICS = [
    # The client passes these on; the broker must refuse them.
    pytest.param("persistent://public/default/bad$name", id="invalid-name"),
    pytest.param("persistent://public/default/a/b", id="too-many-parts"),
    pytest.param("persistent://nosuch/ns/t", id="missing-namespace"),
    # "." and ".." are not names (they would be creatable, then unreachable).
    pytest.param("persistent://public/default/..", id="dot-dot-topic"),
    pytest.param("persistent://public/default/.", id="dot-topic"),
    pytest.param("persistent://public/../t", id="dot-dot-namespace"),
    pytest.param("persistent://../default/t", id="dot-dot-tenant"),
]


def check_serving(client):
    topic = topic_name("still-serving")
    consumer = client.subscribe(topic, unique("sub"))
    client.create_producer(topic).send(b"ok")
    assert payloads(receive_n(consumer, 1, what="a message on a good topic")) == [b"ok"]
    consumer.close()


@pytest.mark.parametrize("bad_topic", BAD_TOPICS)
def test_bad_topic_fails_and_broker_keeps_serving(broker, client, bad_topic):
    # The C++ client retries every error outside its "fatal" list (TopicNotFound,
    # NotAllowedError, ... are fatal; InvalidTopicName, MetadataError,
    # ServiceNotReady are retried) until the operation timeout, then raises
    # Timeout. A short operation timeout keeps either outcome quick; what the
    # broker answers is checked on the wire below.
    bad_client = make_client(broker, operation_timeout_seconds=2)
    try:
        with pytest.raises(pulsar.PulsarException):
            bad_client.create_producer(bad_topic)
        check_serving(client)
        with pytest.raises(pulsar.PulsarException):
            bad_client.subscribe(bad_topic, unique("sub"))
        check_serving(client)
    finally:
        bad_client.close()


@pytest.mark.parametrize("bad_topic", BAD_TOPICS)
def test_bad_topic_is_answered_with_an_error(broker, client, bad_topic):
    """On the wire: PARTITIONED_METADATA and PRODUCER for a bad topic get a
    prompt error answer for their request id, and the connection stays usable."""
    with wire.RawConnection("127.0.0.1", broker.pulsar_port) as conn:
        conn.handshake()
        conn.send(wire.partitioned_metadata_cmd(bad_topic, request_id=1))
        f = conn.expect(wire.PARTITIONED_METADATA_RESPONSE)
        assert wire.first(f.body, 2) == 1, f
        assert wire.first(f.body, 3) == 1, f"expected response=Failed: {f!r}"
        assert wire.first(f.body, 4) is not None, f"no error code: {f!r}"

        conn.send(wire.producer_cmd(bad_topic, producer_id=1, request_id=2))
        f = conn.expect(wire.ERROR)
        assert wire.first(f.body, 1) == 2, f
        print(f"{bad_topic}: PRODUCER refused with "
              f"{wire.SERVER_ERRORS.get(wire.first(f.body, 2))}: {wire.first(f.body, 3)!r}")

        good = topic_name("wire-good")
        conn.send(wire.producer_cmd(good, producer_id=2, request_id=3))
        f = conn.expect(wire.PRODUCER_SUCCESS)
        assert wire.first(f.body, 1) == 3, f
    check_serving(client)


class Reading(Record):
    sensor = String()
    value = Integer()


def test_schema_round_trip(client):
    topic = topic_name("schema-str")
    consumer = client.subscribe(topic, unique("sub"), schema=StringSchema())
    producer = client.create_producer(topic, schema=StringSchema())
    texts = ["plain", "héllo wörld", ""]
    for t in texts:
        producer.send(t)
    assert [m.value() for m in receive_n(consumer, 3)] == texts

    topic = topic_name("schema-json")
    consumer = client.subscribe(topic, unique("sub"), schema=JsonSchema(Reading))
    producer = client.create_producer(topic, schema=JsonSchema(Reading))
    readings = [Reading(sensor=f"s{i}", value=i * 10) for i in range(3)]
    for r in readings:
        producer.send(r)
    got = [m.value() for m in receive_n(consumer, 3)]
    assert [(r.sensor, r.value) for r in got] == [(r.sensor, r.value) for r in readings]
    assert all(isinstance(r, Reading) for r in got)


DOT_NAMES = [
    pytest.param(".", id="dot"),
    pytest.param("..", id="dot-dot"),
    pytest.param("%2E", id="encoded-dot"),
    pytest.param("%2E%2E", id="encoded-dot-dot"),
    pytest.param("%2e%2e", id="encoded-dot-dot-lower"),
]


@pytest.mark.parametrize("name", DOT_NAMES)
def test_dot_names_are_refused_over_rest(broker, name):
    """Literal and percent-encoded `.` / `..` as a tenant, namespace or topic
    (the path is sent as written: urllib does not normalise it)."""
    base = f"{broker.http_url}/admin/v2"
    attempts = [
        ("PUT", f"/tenants/{name}", json.dumps({"allowedClusters": ["standalone"]}).encode()),
        ("PUT", f"/namespaces/public/{name}", None),
        ("PUT", f"/persistent/public/default/{name}", None),
        ("PUT", f"/persistent/public/default/{name}/partitions", b"2"),
        ("PUT", f"/persistent/public/{name}/t", None),
    ]
    for method, path, body in attempts:
        status, answer = http(method, base + path, body, "application/json")
        # Pulsar answers 412 to invalid names; Kilonova's bad names are 400.
        assert status in (400, 412), f"{method} {path}: {status} {answer[:300]!r}"
        assert "are not names" in reason_of(answer), f"{method} {path}: {answer[:300]!r}"

    def listed(path):
        status, answer = http("GET", base + path)
        assert status == 200, (path, status, answer[:300])
        return json.loads(answer)

    assert not {".", ".."} & set(listed("/tenants"))
    assert not {"public/.", "public/.."} & set(listed("/namespaces/public"))
    topics = listed("/persistent/public/default") + listed("/persistent/public/default/partitioned")
    assert not [t for t in topics if t.rsplit("/", 1)[-1] in (".", "..")], topics


def test_dot_topic_names_are_not_created_over_the_protocol(broker):
    """A producer on `persistent://public/default/..` gets InvalidTopicName
    and no topic is created."""
    with wire.RawConnection("127.0.0.1", broker.pulsar_port) as conn:
        conn.handshake()
        for i, topic in enumerate(["persistent://public/default/..", "persistent://public/default/."]):
            conn.send(wire.producer_cmd(topic, producer_id=i, request_id=i))
            f = conn.expect(wire.ERROR)
            assert wire.first(f.body, 1) == i, f
            assert wire.SERVER_ERRORS.get(wire.first(f.body, 2)) == "InvalidTopicName", f
    status, answer = http("GET", f"{broker.http_url}/admin/v2/persistent/public/default")
    assert status == 200
    assert not [t for t in json.loads(answer) if t.rsplit("/", 1)[-1] in (".", "..")]


def topics_loaded(broker) -> int:
    status, body = http("GET", f"{broker.http_url}/metrics")
    assert status == 200
    m = re.search(r"^pulsar_topics_count\{[^}]*\} (\d+)$", body.decode(), re.M)
    assert m, "no pulsar_topics_count in /metrics"
    return int(m.group(1))


def test_partitioned_stats_of_2000_partitions_loads_none(broker, client):
    """partitioned-stats answers from loaded partitions and from the stored
    state of the others: it loads none (the issue: 20,000 partitions loaded
    them all, 39 s and 390 MB)."""
    local = unique("wide")
    topic = f"persistent://public/default/{local}"
    assert broker.create_partitioned_topic(local, 2000) == 204
    # Partition 7 gets a backlog of 5 on subscription "s", then unloads: its
    # backlog is then only in its stored state.
    p7 = f"{topic}-partition-7"
    consumer = client.subscribe(p7, "s")
    producer = client.create_producer(p7)
    for i in range(5):
        producer.send(f"m{i}".encode())
    producer.close()
    consumer.close()
    status, body = http("PUT", f"{broker.http_url}/admin/v2/persistent/public/default/{local}-partition-7/unload")
    assert status == 204, (status, body[:300])
    wait_until(lambda: topics_loaded(broker) == 0, 10, "partition 7 to unload")

    status, body = http("GET", f"{broker.http_url}/admin/v2/persistent/public/default/{local}/partitioned-stats")
    assert status == 200, (status, body[:300])
    stats = json.loads(body)
    assert topics_loaded(broker) == 0, "partitioned-stats loaded partitions"
    assert stats["metadata"]["partitions"] == 2000
    assert len(stats["partitions"]) == 2000
    assert stats["subscriptions"]["s"]["msgBacklog"] == 5, stats["subscriptions"]
    p7_stats = stats["partitions"][p7]
    assert p7_stats["subscriptions"]["s"]["msgBacklog"] == 5
    assert p7_stats["storageSize"] > 0 and stats["storageSize"] == p7_stats["storageSize"]
