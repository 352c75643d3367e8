"""Seek (by message id and by publish time), readers, last message id.

What the C++ client (4.2) does, which the broker has to fit:
* seek(msg_id) sends SEEK with that id; a Pulsar broker resets the cursor so
  that the message *at* the id is the next one delivered. The client then drops
  every message of that ledger with entry id <= the sought one (< with
  start_message_id_inclusive=True), so users see the sought message only with
  start_message_id_inclusive=True.
* A reader is a non-durable SUBSCRIBE with start_message_id; the broker must
  start delivering *at* that id (Pulsar steps back one entry), and the client
  drops the start message unless start_message_id_inclusive=True.
* has_message_available() sends GET_LAST_MESSAGE_ID; for a reader started at
  `latest` it compares the response's consumer_mark_delete_position with the
  last message id, so the broker must send the mark-delete position.
"""

import time

import pulsar
import pytest

import wire

from conftest import (
    assert_no_more,
    entry_key,
    msg_key,
    payloads,
    read_n,
    receive_n,
    topic_name,
    unique,
    wait_until,
)


def publish(client, topic, n, prefix="m"):
    producer = client.create_producer(topic, batching_enabled=False)
    sent = [f"{prefix}-{i}".encode() for i in range(n)]
    ids = [producer.send(p) for p in sent]
    return producer, sent, ids


def test_seek_by_message_id(client):
    topic = topic_name("seek-id")
    _, sent, ids = publish(client, topic, 10)

    inclusive = client.subscribe(topic, unique("sub"), initial_position=pulsar.InitialPosition.Earliest,
                                 start_message_id_inclusive=True)
    # Nothing is acked before seeking: the client flushes grouped acks only after
    # the seek succeeds, which would race with the redelivery.
    assert payloads(receive_n(inclusive, 10)) == sent
    inclusive.seek(ids[3])
    again = receive_n(inclusive, 7, what="messages after seeking back to message 3")
    assert payloads(again) == sent[3:]
    assert [msg_key(m.message_id()) for m in again] == [msg_key(i) for i in ids[3:]]
    assert_no_more(inclusive)

    # Default consumer: the client filters the sought message out itself.
    default = client.subscribe(topic, unique("sub"), initial_position=pulsar.InitialPosition.Earliest)
    assert payloads(receive_n(default, 10)) == sent
    default.seek(ids[3])
    assert payloads(receive_n(default, 6)) == sent[4:]
    assert_no_more(default)

    # Seeking forward skips messages never received.
    forward = client.subscribe(topic, unique("sub"), initial_position=pulsar.InitialPosition.Earliest,
                               start_message_id_inclusive=True)
    forward.seek(ids[8])
    assert payloads(receive_n(forward, 2)) == sent[8:]
    assert_no_more(forward)


def test_seek_by_publish_time(client):
    topic = topic_name("seek-time")
    producer = client.create_producer(topic, batching_enabled=False)
    consumer = client.subscribe(topic, unique("sub"), initial_position=pulsar.InitialPosition.Earliest)

    early = [f"early-{i}".encode() for i in range(5)]
    for p in early:
        producer.send(p)
    got = receive_n(consumer, 5)
    last_early = max(m.publish_timestamp() for m in got)
    first_early = min(m.publish_timestamp() for m in got)
    # The client stamps publish_time at send: let its clock pass the early batch
    # by 2 ms so a timestamp strictly between the batches exists.
    wait_until(lambda: time.time() * 1000 > last_early + 2, 5, "the clock to advance")
    late = [f"late-{i}".encode() for i in range(5)]
    for p in late:
        producer.send(p)
    got += receive_n(consumer, 5)
    assert payloads(got) == early + late
    first_late = min(m.publish_timestamp() for m in got[5:])
    assert first_late > last_early + 1

    consumer.seek(last_early + 1)  # between the batches
    assert payloads(receive_n(consumer, 5, what="messages after the seek time")) == late
    assert_no_more(consumer)

    consumer.seek(first_early - 1)  # before everything
    assert payloads(receive_n(consumer, 10, what="all messages after seeking to the start")) == early + late
    assert_no_more(consumer)


def test_reader_from_earliest(client):
    topic = topic_name("reader-earliest")
    producer, sent, ids = publish(client, topic, 5)
    reader = client.create_reader(topic, pulsar.MessageId.earliest)
    assert reader.has_message_available()
    got = read_n(reader, 5)
    assert payloads(got) == sent
    assert [msg_key(m.message_id()) for m in got] == [msg_key(i) for i in ids]
    assert not reader.has_message_available()

    producer.send(b"m-5")
    assert reader.has_message_available()
    assert payloads(read_n(reader, 1)) == [b"m-5"]
    assert not reader.has_message_available()


def test_reader_from_latest(client):
    topic = topic_name("reader-latest")
    producer, _, _ = publish(client, topic, 3)
    reader = client.create_reader(topic, pulsar.MessageId.latest)
    assert not reader.has_message_available()
    try:
        m = reader.read_next(timeout_millis=300)
        raise AssertionError(f"reader at latest read an old message {m.data()!r}")
    except pulsar.Timeout:
        pass

    producer.send(b"new-0")
    producer.send(b"new-1")
    assert reader.has_message_available()
    assert payloads(read_n(reader, 2)) == [b"new-0", b"new-1"]
    assert not reader.has_message_available()


def test_reader_from_message_id(client):
    topic = topic_name("reader-id")
    _, sent, ids = publish(client, topic, 10)

    exclusive_start = client.create_reader(topic, ids[4])
    assert payloads(read_n(exclusive_start, 5)) == sent[5:]
    assert not exclusive_start.has_message_available()

    inclusive_start = client.create_reader(topic, ids[4], start_message_id_inclusive=True)
    assert payloads(read_n(inclusive_start, 6)) == sent[4:]
    assert not inclusive_start.has_message_available()

    # A serialized id (as an application would store it) works the same.
    restored = pulsar.MessageId.deserialize(ids[7].serialize())
    from_restored = client.create_reader(topic, restored)
    assert payloads(read_n(from_restored, 2)) == sent[8:]
    try:
        m = from_restored.read_next(timeout_millis=300)
        raise AssertionError(f"reader read past the end: {m.data()!r}")
    except pulsar.Timeout:
        pass


def test_get_last_message_id(client):
    topic = topic_name("last-id")
    producer, _, ids = publish(client, topic, 5)
    consumer = client.subscribe(topic, unique("sub"))
    assert entry_key(consumer.get_last_message_id()) == entry_key(ids[-1])
    more = producer.send(b"one-more")
    assert entry_key(consumer.get_last_message_id()) == entry_key(more)


# ---------------------------------------------------------------- seek by message id is exclusive
#
# After seek(id) the next message is the one after `id` (start_message_id_inclusive
# reads `id` itself), for readers and consumers, batched or not, wherever `id` is.
# The broker closes the subscription's consumers *before* answering the seek, as
# Pulsar does: the C++ client then completes the seek with its reconnection and
# starts from the sought id. Answered first, it restarted a reader from the last
# message it had read (a seek to the 34th message returned the 3rd).

SEEK_MESSAGES = 50


def publish_for_seek(client, topic, batched):
    """Publishes SEEK_MESSAGES messages, in batches of 10 if `batched`; returns
    (payloads, message ids) in publish order."""
    if batched:
        producer = client.create_producer(topic, batching_enabled=True, batching_max_messages=10,
                                          batching_max_publish_delay_ms=10_000)
    else:
        producer = client.create_producer(topic, batching_enabled=False)
    sent = [f"m-{i}".encode() for i in range(SEEK_MESSAGES)]
    results = []
    for p in sent:
        producer.send_async(p, lambda res, mid: results.append((res, mid)))
    producer.flush()
    wait_until(lambda: len(results) == len(sent), 10, "every send's receipt")
    assert all(r == pulsar.Result.Ok for r, _ in results), results
    ids = [mid for _, mid in results]
    entries = {entry_key(i) for i in ids}
    if batched:
        assert len(entries) >= 5 and any(i.batch_index() > 0 for i in ids), (
            f"expected several batches, got entries {sorted(entries)}")
    else:
        assert len(entries) == len(sent)
    return producer, sent, ids


def open_seeker(client, topic, kind, inclusive=False):
    """A reader or a consumer from the start of the topic, and its receive function."""
    if kind == "reader":
        r = client.create_reader(topic, pulsar.MessageId.earliest, start_message_id_inclusive=inclusive)
        return r, lambda n: read_n(r, n)
    c = client.subscribe(topic, unique("sub"), initial_position=pulsar.InitialPosition.Earliest,
                         start_message_id_inclusive=inclusive)
    return c, lambda n: receive_n(c, n)


def assert_nothing_next(seeker, kind, what):
    if kind == "reader":
        try:
            m = seeker.read_next(timeout_millis=300)
        except pulsar.Timeout:
            return
        raise AssertionError(f"{what}: read an unexpected message {m.data()!r}")
    assert_no_more(seeker, what=what)


@pytest.mark.parametrize("batched", [False, True], ids=["non-batched", "batched"])
@pytest.mark.parametrize("kind", ["reader", "consumer"])
def test_seek_by_message_id_resumes_after_the_sought_message(client, kind, batched):
    topic = topic_name(f"seek-excl-{kind}")
    producer, sent, ids = publish_for_seek(client, topic, batched)
    for k in (0, 33, SEEK_MESSAGES - 1):
        seeker, take = open_seeker(client, topic, kind)
        # Read a little first: what the client took before must not decide
        # where it resumes.
        assert payloads(take(2)) == sent[:2]
        seeker.seek(ids[k])
        expected = sent[k + 1:k + 6]
        if expected:
            got = take(len(expected))
            assert payloads(got) == expected, f"{kind} after seek to message {k}"
            assert msg_key(got[0].message_id()) == msg_key(ids[k + 1])
        else:
            assert_nothing_next(seeker, kind, f"{kind} after seek to the last message")
        seeker.close()
    # After a seek to the last message, the next one published is the next read.
    seeker, take = open_seeker(client, topic, kind)
    take(2)
    seeker.seek(ids[-1])
    producer.send(b"after-the-last")
    assert payloads(take(1)) == [b"after-the-last"]


@pytest.mark.parametrize("batched", [False, True], ids=["non-batched", "batched"])
@pytest.mark.parametrize("kind", ["reader", "consumer"])
def test_seek_with_inclusive_start_resumes_at_the_sought_message(client, kind, batched):
    topic = topic_name(f"seek-incl-{kind}")
    _, sent, ids = publish_for_seek(client, topic, batched)
    for k in (0, 33, SEEK_MESSAGES - 1):
        seeker, take = open_seeker(client, topic, kind, inclusive=True)
        assert payloads(take(2)) == sent[:2]
        seeker.seek(ids[k])
        expected = sent[k:k + 5]
        got = take(len(expected))
        assert payloads(got) == expected, f"inclusive {kind} after seek to message {k}"
        assert msg_key(got[0].message_id()) == msg_key(ids[k])
        seeker.close()


@pytest.mark.parametrize("kind", ["reader", "consumer"])
def test_seek_to_earliest_and_latest(client, kind):
    topic = topic_name(f"seek-ends-{kind}")
    producer, sent, _ = publish_for_seek(client, topic, batched=True)
    seeker, take = open_seeker(client, topic, kind)
    assert payloads(take(5)) == sent[:5]
    seeker.seek(pulsar.MessageId.latest)
    assert_nothing_next(seeker, kind, f"{kind} after seek to latest")
    producer.send(b"new")
    assert payloads(take(1)) == [b"new"]
    seeker.seek(pulsar.MessageId.earliest)
    assert payloads(take(SEEK_MESSAGES + 1)) == sent + [b"new"]
    assert_nothing_next(seeker, kind, f"{kind} after reading everything again")


def test_reader_seek_by_publish_time(client):
    topic = topic_name("reader-seek-time")
    producer = client.create_producer(topic, batching_enabled=False)
    early = [f"early-{i}".encode() for i in range(5)]
    for p in early:
        producer.send(p)
    reader = client.create_reader(topic, pulsar.MessageId.earliest)
    got = read_n(reader, 5)
    assert payloads(got) == early
    last_early = max(m.publish_timestamp() for m in got)
    wait_until(lambda: time.time() * 1000 > last_early + 2, 5, "the clock to advance")
    late = [f"late-{i}".encode() for i in range(5)]
    for p in late:
        producer.send(p)
    assert payloads(read_n(reader, 2)) == late[:2]

    # Back to between the batches: the reader resubscribes with no start
    # position (a seek by time has none); the broker kept its moved cursor.
    reader.seek(last_early + 1)
    assert payloads(read_n(reader, 5)) == late
    reader.seek(0)
    assert payloads(read_n(reader, 10)) == early + late


# Command types wire.py does not name.
SEEK = 28
FLOW = 11
CLOSE_CONSUMER = 16


def test_seek_answers_after_closing_the_consumer_and_applies_the_ack_set(broker, client):
    # On the wire: CLOSE_CONSUMER goes before the SEEK's SUCCESS (what makes
    # clients complete the seek with their reconnection), and an ack_set on
    # the id (the Java client sends one for a message inside a batch, its
    # bits cleared for the messages before it) comes back on the batch's
    # MESSAGE, so clients skip those messages.
    topic = topic_name("seek-ack-set")
    producer = client.create_producer(topic, batching_enabled=True, batching_max_messages=5,
                                      batching_max_publish_delay_ms=10_000)
    results = []
    for i in range(5):
        producer.send_async(f"m-{i}".encode(), lambda res, mid: results.append(mid))
    producer.flush()
    wait_until(lambda: len(results) == 5, 10, "the batch's receipts")
    assert len({entry_key(m) for m in results}) == 1, "one batch"
    ledger, entry = entry_key(results[0])
    bits = 0b11100  # messages 0 and 1 acknowledged

    with wire.RawConnection("127.0.0.1", broker.pulsar_port) as conn:
        conn.handshake()

        def subscribe(consumer_id, request_id):
            conn.send(wire.frame(wire.base_command(wire.SUBSCRIBE, wire.pb(
                (1, topic), (2, "s"), (3, 0), (4, consumer_id), (5, request_id), (13, 1)))))
            conn.expect(wire.SUCCESS)

        subscribe(1, 1)
        message_id = wire.pb((1, ledger), (2, entry), (5, bits))
        conn.send(wire.frame(wire.base_command(SEEK, wire.pb((1, 1), (2, 2), (3, message_id)))))
        closed = conn.expect(CLOSE_CONSUMER)
        assert wire.first(closed.body, 1) == 1
        answer = conn.expect(wire.SUCCESS)
        assert wire.first(answer.body, 1) == 2

        subscribe(2, 3)
        conn.send(wire.frame(wire.base_command(FLOW, wire.pb((1, 2), (2, 100)))))
        msg = conn.expect(wire.MESSAGE)
        got_id = wire.unpb(wire.first(msg.body, 2))
        assert (wire.first(got_id, 1), wire.first(got_id, 2)) == (ledger, entry)
        ack_set = msg.body.get(4, [])
        if ack_set and isinstance(ack_set[0], bytes):  # packed
            ack_set = [wire.read_varint(ack_set[0], 0)[0]]
        assert ack_set == [bits], msg.body

