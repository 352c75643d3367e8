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
