"""Storage behaviour seen from a client: names of any length, what deletion leaves."""

import json
import urllib.parse
import uuid

import pulsar

from conftest import http, make_client, receive_n, topic_name


def long_name(length: int) -> str:
    """A unique name of exactly `length` bytes."""
    tag = uuid.uuid4().hex
    return tag + "s" * (length - len(tag))


def subscriptions(broker, topic: str) -> list[str]:
    local = topic.split("/", 4)[-1]
    status, body = http(
        "GET", f"{broker.http_url}/admin/v2/persistent/public/default/{local}/subscriptions"
    )
    assert status == 200, (status, body)
    return json.loads(body)


def sub_url(broker, topic: str, sub: str) -> str:
    local = topic.split("/", 4)[-1]
    quoted = urllib.parse.quote(sub, safe="")
    return f"{broker.http_url}/admin/v2/persistent/public/default/{local}/subscription/{quoted}"


def test_a_200_byte_subscription_name_subscribes_acks_survives_a_restart_and_deletes(broker):
    topic = topic_name("long-sub")
    sub = long_name(200)
    client = make_client(broker)
    consumer = client.subscribe(topic, sub)
    producer = client.create_producer(topic)
    producer.send(b"first")
    (m,) = receive_n(consumer, 1)
    assert m.data() == b"first"
    consumer.acknowledge(m)
    assert subscriptions(broker, topic) == [sub]
    consumer.close()
    producer.close()
    client.close()

    # The cursor (and its ack) is stored durably under any name.
    broker.stop()
    broker.restart()
    assert subscriptions(broker, topic) == [sub]
    client = make_client(broker)
    producer = client.create_producer(topic)
    producer.send(b"second")
    consumer = client.subscribe(topic, sub)
    (m,) = receive_n(consumer, 1)
    assert m.data() == b"second", "the acknowledged message came back after the restart"
    consumer.acknowledge(m)
    consumer.close()

    status, body = http("DELETE", sub_url(broker, topic, sub))
    assert status == 204, (status, body)
    assert subscriptions(broker, topic) == []

    # Unsubscribing from the client removes one as well.
    other = long_name(200)
    consumer = client.subscribe(topic, other)
    assert subscriptions(broker, topic) == [other]
    consumer.unsubscribe()
    assert subscriptions(broker, topic) == []
    client.close()


def log_dirs(broker) -> set[str]:
    path = broker.data_dir / "state" / "logs"
    return {p.name for p in path.iterdir()} if path.exists() else set()


def test_deleting_a_partitioned_topic_removes_every_partitions_state(broker):
    before = log_dirs(broker)
    local = long_name(40)
    topic = f"persistent://public/default/{local}"
    assert broker.create_partitioned_topic(local, 8) == 204
    client = make_client(broker)
    consumer = client.subscribe(topic, "sub", consumer_type=pulsar.ConsumerType.Shared)
    producer = client.create_producer(topic)
    for i in range(16):
        producer.send(f"m{i}".encode(), partition_key=str(i))
    receive_n(consumer, 16)
    producer.close()
    consumer.close()
    client.close()
    assert len(log_dirs(broker) - before) == 8, "each partition keeps its state while it exists"

    status, body = http(
        "DELETE", f"{broker.http_url}/admin/v2/persistent/public/default/{local}/partitions?force=true"
    )
    assert status == 204, (status, body)
    assert log_dirs(broker) == before, "a deleted topic's state directories are left behind"


def test_start_up_removes_the_state_of_a_log_deleted_part_way(broker):
    # What a crash in the middle of a topic deletion leaves: a log's state
    # directory whose metadata is already gone.
    broker.stop()
    left = broker.data_dir / "state" / "logs" / "987654321"
    left.mkdir(parents=True)
    (left / "cursor-0").write_bytes(b"left behind")
    broker.restart()
    assert not left.exists()
    assert "reclaimed storage no log owns" in broker.log_path.read_text(errors="replace")
