"""Plain SENDs appended by the connection that read them, without a turn of
their topic's task (ADR 0026), driven by the real Python client.

What must hold whichever way a SEND goes: every acknowledged message is
stored, a producer's messages are stored and acknowledged in the order sent
(its SENDs switch between the two ways mid-stream: the connection's lane
leaves roll-overs to the topic's task, and closes while the topic has
consumers), a termination in the middle of a stream ends the topic after
every acknowledged message, and `connection_appends = false` sends
everything through the task. `kilonova_appends_by_connection_total` counts
the lane's entries per topic.

The receipts of those SENDs are written to the socket by the journal's
thread at the end of each group commit's answers when nothing is queued for
the connection's writer (`kilonova_receipts_sent_by_journal_total`), else by
the writer; either way each producer's receipts arrive in the order sent.
"""

from __future__ import annotations

import threading

import pulsar

from conftest import make_client, payloads, read_n, topic_name, unique, wait_until
from test_metrics import scrape, topic_labels
from test_policies import (create_namespace, create_topic, drain, ns_topic, set_ns_policy, stats,
                           wait_dedup)
from test_terminate import terminate

APPENDS_BY_CONNECTION = "kilonova_appends_by_connection_total"
RECEIPTS_BY_JOURNAL = "kilonova_receipts_sent_by_journal_total"
RECEIVE_MS = 10_000


def appended_by_connection(broker, topic: str) -> float:
    value = scrape(broker).value(APPENDS_BY_CONNECTION, **topic_labels(topic))
    assert value is not None, f"{APPENDS_BY_CONNECTION} of {topic} is exported"
    return value


def send_all(producer, payloads: list[bytes]) -> list:
    """Sends every payload asynchronously (all in flight at once) and returns
    their message ids in the order the acknowledgements came; fails on any
    error."""
    acked: list = []
    errors: list = []
    lock = threading.Lock()

    def done(res, msg_id):
        with lock:
            if res == pulsar.Result.Ok:
                acked.append(msg_id)
            else:
                errors.append(res)

    for p in payloads:
        producer.send_async(p, done)
    producer.flush()
    # flush() returns once every send is acknowledged, which may be before
    # the client's thread has run the last callbacks.
    wait_until(lambda: len(acked) + len(errors) == len(payloads), 10, "every send's callback ran")
    assert not errors, errors[:5]
    assert len(acked) == len(payloads)
    return acked


def position(msg_id) -> tuple[int, int]:
    return (msg_id.ledger_id(), msg_id.entry_id())


def receive_all(consumer, n: int) -> list[bytes]:
    got = []
    for _ in range(n):
        m = consumer.receive(RECEIVE_MS)
        got.append(m.data())
        consumer.acknowledge(m)
    return got


def test_a_plain_producers_sends_are_appended_by_its_connection_and_acknowledged_in_order(
        broker, client):
    topic = topic_name("lane")
    producer = client.create_producer(topic, batching_enabled=False,
                                      max_pending_messages=1000, block_if_queue_full=True)
    sent = [f"m-{i}".encode() for i in range(2000)]
    acked = send_all(producer, sent)
    positions = [position(m) for m in acked]
    assert positions == sorted(set(positions)), "acknowledged in the order sent, each once"
    lane = appended_by_connection(broker, topic)
    assert lane > len(sent) / 2, f"most SENDs took the connection's lane: {lane}"
    consumer = client.subscribe(topic, "s", initial_position=pulsar.InitialPosition.Earliest)
    assert receive_all(consumer, len(sent)) == sent
    s = stats(broker, topic)
    assert s["msgInCounter"] == len(sent), s
    assert [p["msgInCounter"] for p in s["publishers"]] == [len(sent)], s["publishers"]


def receipts_by_journal(broker) -> float:
    value = scrape(broker).value(RECEIPTS_BY_JOURNAL)
    assert value is not None, f"{RECEIPTS_BY_JOURNAL} is exported"
    return value


def test_receipts_written_by_the_journals_thread_keep_each_producers_order(broker, client):
    before = receipts_by_journal(broker)
    topics = [topic_name("by-journal") for _ in range(3)]
    # One client: its three producers share one connection, so the receipts
    # of one group commit interleave there with each other's.
    producers = [client.create_producer(t, batching_enabled=False, max_pending_messages=500,
                                        block_if_queue_full=True) for t in topics]
    n = 1500
    acked: list[list] = [[] for _ in producers]
    errors: list = []
    lock = threading.Lock()

    def done_for(i):
        def done(res, msg_id):
            with lock:
                if res == pulsar.Result.Ok:
                    acked[i].append(msg_id)
                else:
                    errors.append(res)
        return done

    for k in range(n):
        for i, p in enumerate(producers):
            p.send_async(f"{i}-{k}".encode(), done_for(i))
    for p in producers:
        p.flush()
    wait_until(lambda: sum(map(len, acked)) + len(errors) == len(producers) * n, 10,
               "every send's callback ran")
    assert not errors, errors[:5]
    for i, ids in enumerate(acked):
        assert len(ids) == n, f"producer {i}: {len(ids)} of {n} acknowledged"
        positions = [position(m) for m in ids]
        assert positions == sorted(set(positions)), f"producer {i}: acknowledged out of order"
    written = receipts_by_journal(broker) - before
    assert written > 0, "no receipt was written by the journal's thread"
    assert written <= 3 * n
    for i, t in enumerate(topics):
        reader = client.create_reader(t, pulsar.MessageId.earliest)
        assert payloads(read_n(reader, n)) == [f"{i}-{k}".encode() for k in range(n)]


def test_with_a_consumer_attached_receipts_go_through_the_writer(broker, client):
    topic = topic_name("by-writer")
    consumer = client.subscribe(topic, "s")
    producer = client.create_producer(topic, batching_enabled=False)
    before = receipts_by_journal(broker)
    # Sent one at a time: each is answered by the journal's call, which
    # wakes the task to dispatch; the receipt goes with that, via the writer.
    for i in range(50):
        producer.send(f"m-{i}".encode())
    assert receive_all(consumer, 50) == [f"m-{i}".encode() for i in range(50)]
    assert receipts_by_journal(broker) == before, "a receipt skipped the writer"
    consumer.close()
    producer.send(b"alone")
    assert receipts_by_journal(broker) > before, "no consumer: the journal writes it"


def test_sends_switch_between_the_connection_and_the_topic_across_roll_overs(make_broker):
    # Segments of 20 entries: the lane stops half way until the next segment
    # is ready and at the end of each, where the topic's task rolls over.
    # Everything is retained: the subscription comes after the sends (it
    # would close the lane), and with the default retention of 0 a tick in
    # between trims every sealed segment of a topic without subscriptions.
    broker = make_broker(config="[broker]\nmax_segment_entries = 20\n"
                                "retention_minutes = -1\nretention_size_mb = -1\n")
    client = make_client(broker)
    topic = topic_name("lane-roll")
    producers = [client.create_producer(topic, batching_enabled=False,
                                        producer_name=unique(f"p{k}"),
                                        max_pending_messages=500, block_if_queue_full=True)
                 for k in range(3)]
    per_producer = 1500
    results: dict[int, list] = {}

    def run(k: int) -> None:
        results[k] = send_all(producers[k], [f"{k}-{i}".encode() for i in range(per_producer)])

    threads = [threading.Thread(target=run, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [0, 1, 2]
    ledgers = set()
    for k, acked in results.items():
        positions = [position(m) for m in acked]
        assert positions == sorted(set(positions)), f"producer {k}: acknowledged in order"
        ledgers.update(p[0] for p in positions)
    total = 3 * per_producer
    lane = appended_by_connection(broker, topic)
    consumer = client.subscribe(topic, "s", initial_position=pulsar.InitialPosition.Earliest)
    got = receive_all(consumer, total)
    for k in range(3):
        mine = [g for g in got if g.startswith(f"{k}-".encode())]
        assert mine == [f"{k}-{i}".encode() for i in range(per_producer)], f"producer {k}'s order"
    assert len(ledgers) >= total // 20, f"rolled over: {len(ledgers)} segments"
    # Every roll-over was the task's append: both ways were taken.
    assert 0 < lane < total, lane
    client.close()


def test_a_termination_mid_stream_ends_the_topic_after_every_acknowledged_message(broker, client):
    topic = topic_name("lane-terminate")
    producer = client.create_producer(topic, batching_enabled=False,
                                      max_pending_messages=200, block_if_queue_full=True)
    send_all(producer, [b"warm-up"])
    acked: list = []
    lock = threading.Lock()
    stop = threading.Event()
    first_ack = threading.Event()

    def done(res, msg_id):
        if res == pulsar.Result.Ok:
            with lock:
                acked.append(msg_id)
            first_ack.set()

    def run():
        i = 0
        while not stop.is_set():
            try:
                producer.send_async(f"t-{i}".encode(), done)
            except pulsar.PulsarException:
                return
            i += 1

    t = threading.Thread(target=run)
    t.start()
    assert first_ack.wait(10), "the stream is acknowledged"
    end = terminate(broker, topic)
    stop.set()
    t.join(10)
    try:
        producer.flush()
    except pulsar.PulsarException:
        pass  # the producer was closed by the termination
    last = (end["ledgerId"], end["entryId"])
    with lock:
        acked_positions = {position(m) for m in acked}
    assert acked_positions, "messages were acknowledged before the end"
    assert max(acked_positions) <= last, "nothing acknowledged after the end"
    reader = client.create_reader(topic, pulsar.MessageId.earliest)
    read = set()
    while reader.has_message_available():
        read.add(position(reader.read_next(RECEIVE_MS).message_id()))
    assert max(read) == last
    assert acked_positions <= read, "every acknowledged message is readable"


def test_the_lane_closes_while_the_topic_has_consumers(broker, client):
    topic = topic_name("lane-consumers")
    producer = client.create_producer(topic, batching_enabled=False)
    send_all(producer, [b"before"] * 50)
    before = appended_by_connection(broker, topic)
    assert before > 0, "no consumer yet: the lane takes SENDs"
    consumer = client.subscribe(topic, "s")
    # Sent one at a time: the topic saw the SUBSCRIBE before these SENDs.
    for i in range(50):
        producer.send(f"with-{i}".encode())
    assert appended_by_connection(broker, topic) == before, "with a consumer: the task's way"
    assert receive_all(consumer, 50) == [f"with-{i}".encode() for i in range(50)]
    consumer.close()
    for i in range(50):
        producer.send(f"after-{i}".encode())
    assert appended_by_connection(broker, topic) > before, "the consumer gone: the lane again"


def test_a_deduplicated_topic_keeps_every_send_on_the_task(broker, client):
    # No consumer attached while publishing: only deduplication keeps the
    # lane closed, and a resend taking it would be stored twice.
    ns = create_namespace(broker)
    topic = ns_topic(ns, "lane-dedup")
    create_topic(broker, topic)
    set_ns_policy(broker, ns, "deduplication", True)
    wait_dedup(client, topic, active=True)
    producer = client.create_producer(topic, producer_name=unique("writer"),
                                      batching_enabled=False)
    for s in list(range(10)) + list(range(5, 10)):
        producer.send(f"seq-{s}".encode(), sequence_id=s)
    assert appended_by_connection(broker, topic) == 0
    consumer = client.subscribe(topic, "s", initial_position=pulsar.InitialPosition.Earliest)
    stored = [m.data() for m in drain(consumer) if m.data().startswith(b"seq-")]
    assert stored == [f"seq-{s}".encode() for s in range(10)], stored


def test_with_connection_appends_off_every_send_goes_through_the_topic(make_broker):
    broker = make_broker(config="[broker]\nconnection_appends = false\n")
    client = make_client(broker)
    topic = topic_name("no-lane")
    producer = client.create_producer(topic, batching_enabled=False)
    sent = [f"m-{i}".encode() for i in range(200)]
    send_all(producer, sent)
    assert appended_by_connection(broker, topic) == 0
    consumer = client.subscribe(topic, "s", initial_position=pulsar.InitialPosition.Earliest)
    assert receive_all(consumer, len(sent)) == sent
    client.close()
