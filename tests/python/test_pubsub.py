"""Publishing and consuming: payloads, batching, metadata round trips, ordering."""

import time

import pulsar
import pytest

from conftest import (assert_no_more, entry_key, msg_key, payloads, receive_n, topic_name, unique,
                      wait_until)


def test_produce_consume_basic(client):
    topic = topic_name("basic")
    consumer = client.subscribe(topic, unique("sub"))
    producer = client.create_producer(topic)
    sent = [f"hello-{i}".encode() for i in range(10)]
    ids = [producer.send(p) for p in sent]

    got = receive_n(consumer, len(sent))
    assert payloads(got) == sent
    # The ids the consumer sees are the ids the send receipts reported.
    assert [msg_key(m.message_id()) for m in got] == [msg_key(i) for i in ids]
    assert len({entry_key(i) for i in ids}) == len(ids), "two messages share an entry"
    assert all(m.topic_name() == topic for m in got)
    assert all(m.redelivery_count() == 0 for m in got)
    for m in got:
        consumer.acknowledge(m)
    assert_no_more(consumer)


@pytest.mark.parametrize("batching", [False, True], ids=["unbatched", "batched"])
def test_batching(client, batching):
    topic = topic_name("batching")
    sub = unique("sub")
    consumer = client.subscribe(topic, sub)
    producer = client.create_producer(
        topic,
        batching_enabled=batching,
        batching_max_messages=10,
        batching_max_publish_delay_ms=50,
    )
    sent = [f"m-{i:03d}".encode() for i in range(50)]
    results = []
    for p in sent:
        producer.send_async(p, lambda res, mid: results.append(res))
    producer.flush()
    # flush() may return before the client ran the last callbacks.
    wait_until(lambda: len(results) == len(sent), 10, "every send's callback ran")
    assert len(results) == len(sent) and all(r == pulsar.Result.Ok for r in results), results

    got = receive_n(consumer, len(sent))
    assert payloads(got) == sent
    ids = [m.message_id() for m in got]
    assert len({msg_key(i) for i in ids}) == len(sent), "message ids are not unique"
    entries = {entry_key(i) for i in ids}
    if batching:
        # Batches reach the consumer as entries of several messages, each with its index.
        assert len(entries) < len(sent), "batching on, yet every message is its own entry"
        assert all(i.batch_index() >= 0 for i in ids)
    else:
        assert len(entries) == len(sent)
        assert all(i.batch_index() == -1 for i in ids)

    for m in got:
        consumer.acknowledge(m)
    consumer.close()
    # Every message of every batch was acked: nothing comes back on the subscription.
    again = client.subscribe(topic, sub)
    assert_no_more(again, 500, "resubscribed consumer")


@pytest.mark.parametrize("batching", [False, True], ids=["unbatched", "batched"])
def test_properties_key_event_time_round_trip(client, batching):
    topic = topic_name("meta")
    consumer = client.subscribe(topic, unique("sub"))
    producer = client.create_producer(
        topic, producer_name=unique("named-producer"), batching_enabled=batching
    )
    props = {"a": "1", "with space": "x y", "unicode": "héllo", "empty": ""}
    event_ts = 1_234_567_890_123
    before = int(time.time() * 1000)
    producer.send(b"one", properties=props, partition_key="key-1", event_timestamp=event_ts)
    producer.send(b"two", partition_key="key-2", ordering_key="ord-2")
    producer.send(b"three")
    after = int(time.time() * 1000)

    m1, m2, m3 = receive_n(consumer, 3)
    assert m1.data() == b"one"
    assert m1.properties() == props
    assert m1.partition_key() == "key-1"
    assert m1.event_timestamp() == event_ts
    assert m2.data() == b"two"
    assert m2.partition_key() == "key-2"
    assert m2.ordering_key() == "ord-2"
    assert m2.properties() == {}
    assert m2.event_timestamp() == 0
    assert m3.partition_key() == ""
    for m in (m1, m2, m3):
        assert m.producer_name() == producer.producer_name()
        assert before <= m.publish_timestamp() <= after, (before, m.publish_timestamp(), after)


def test_per_producer_ordering(client):
    topic = topic_name("order")
    consumer = client.subscribe(topic, unique("sub"))
    producers = [
        client.create_producer(topic, batching_enabled=False),
        client.create_producer(topic, batching_enabled=True, batching_max_publish_delay_ms=5),
    ]
    n = 200
    results = []

    def cb(res, _mid):
        results.append(res)

    for i in range(n):
        for p_idx, p in enumerate(producers):
            p.send_async(f"p{p_idx}-{i}".encode(), cb)
    for p in producers:
        p.flush()
    # flush() may return before the client ran the last callbacks.
    wait_until(lambda: len(results) == 2 * n, 10, "every send's callback ran")
    failures = [r for r in results if r != pulsar.Result.Ok]
    assert not failures, failures

    got = receive_n(consumer, 2 * n)
    seen = {0: [], 1: []}
    for m in got:
        p_idx, i = m.data().decode().split("-")
        seen[int(p_idx[1:])].append(int(i))
    for p_idx, seq in seen.items():
        assert seq == list(range(n)), f"producer {p_idx} order broken: {seq[:30]}..."
    assert_no_more(consumer)
