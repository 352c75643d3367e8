"""Redelivery: negative acks, ack timeouts, consumers leaving with unacked messages.

Redelivery counts are asserted on Shared subscriptions: there the client asks
for specific message ids (REDELIVER_UNACKNOWLEDGED_MESSAGES with ids) and a
Pulsar broker counts each redelivery. (For Exclusive/Failover the C++ client
asks to redeliver everything unacked and Pulsar keeps no count.)
"""

import time

import pulsar

from conftest import assert_no_more, collect_from, msg_key, payloads, receive_n, topic_name, unique

# The C++ client (4.2, inside pulsar-client 3.13) refuses ack timeouts below
# 10 s with ValueError("Unacknowledged message timeout should be greater than
# 10 seconds"), so 10 000 ms is the smallest usable value.
ACK_TIMEOUT_MS = 10_000


def test_negative_ack_redelivers_with_count(client):
    topic = topic_name("nack")
    consumer = client.subscribe(
        topic, unique("sub"),
        consumer_type=pulsar.ConsumerType.Shared,
        negative_ack_redelivery_delay_ms=100,
    )
    producer = client.create_producer(topic)
    ids = [producer.send(p) for p in (b"a", b"b", b"c")]
    got = receive_n(consumer, 3)
    assert payloads(got) == [b"a", b"b", b"c"]
    assert [m.redelivery_count() for m in got] == [0, 0, 0]
    consumer.acknowledge(got[0])
    consumer.acknowledge(got[2])
    consumer.negative_acknowledge(got[1])

    for expected_count in (1, 2):
        (m,) = receive_n(consumer, 1, what=f"redelivery #{expected_count} of the nacked message")
        assert m.data() == b"b"
        assert msg_key(m.message_id()) == msg_key(ids[1])
        assert m.redelivery_count() == expected_count
        if expected_count == 1:
            consumer.negative_acknowledge(m)
        else:
            consumer.acknowledge(m)
    # Acked once: no further redelivery (5x the nack delay).
    assert_no_more(consumer, 500)


def test_ack_timeout_redelivers(client):
    topic = topic_name("acktimeout")
    consumer = client.subscribe(
        topic, unique("sub"),
        consumer_type=pulsar.ConsumerType.Shared,
        unacked_messages_timeout_ms=ACK_TIMEOUT_MS,
    )
    producer = client.create_producer(topic)
    producer.send(b"acked")
    producer.send(b"forgotten")
    first, second = receive_n(consumer, 2)
    received_at = time.monotonic()
    assert (first.data(), second.data()) == (b"acked", b"forgotten")
    consumer.acknowledge(first)

    (again,) = receive_n(consumer, 1, timeout=ACK_TIMEOUT_MS / 1000 + 10,
                         what="the unacked message after the ack timeout")
    elapsed = time.monotonic() - received_at
    assert again.data() == b"forgotten"
    assert msg_key(again.message_id()) == msg_key(second.message_id())
    assert again.redelivery_count() == 1
    # It came back because of the timeout, not spontaneously.
    assert elapsed >= ACK_TIMEOUT_MS / 1000 / 2, f"redelivered after only {elapsed:.1f}s"
    consumer.acknowledge(again)
    assert_no_more(consumer, 500)


def test_closed_shared_consumer_unacked_go_to_the_other(client):
    topic = topic_name("shared-close")
    sub = unique("sub")
    consumers = [
        client.subscribe(topic, sub, consumer_type=pulsar.ConsumerType.Shared,
                         consumer_name=f"c{i}", receiver_queue_size=5)
        for i in range(2)
    ]
    producer = client.create_producer(topic)
    sent = [f"u-{i:02d}".encode() for i in range(30)]
    for p in sent:
        producer.send(p)

    got = collect_from(consumers, len(sent))
    assert got[0] and got[1], {i: len(v) for i, v in got.items()}
    for m in got[1]:
        consumers[1].acknowledge(m)
    left_unacked = sorted(payloads(got[0]))
    consumers[0].close()  # leaves with every message it received unacked

    redelivered = receive_n(consumers[1], len(left_unacked),
                            what="the closed consumer's unacked messages")
    assert sorted(payloads(redelivered)) == left_unacked
    for m in redelivered:
        consumers[1].acknowledge(m)
    assert_no_more(consumers[1], 500, "remaining consumer")
