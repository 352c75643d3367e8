"""Durability: subscription positions across reconnects and restarts, and no
loss of an acknowledged message across SIGTERM or SIGKILL."""

import functools
import os
import random
import threading
import time

import pulsar
import pytest

from conftest import (
    Broker,
    assert_no_more,
    make_client,
    msg_key,
    payloads,
    receive_n,
    topic_name,
    unique,
)


def test_reconnect_resumes_after_mark_delete(client):
    topic = topic_name("resume")
    sub = unique("sub")
    consumer = client.subscribe(topic, sub, initial_position=pulsar.InitialPosition.Earliest)
    producer = client.create_producer(topic)
    sent = [f"r-{i:02d}".encode() for i in range(20)]
    for p in sent:
        producer.send(p)
    got = receive_n(consumer, 20)
    # Ack 0..9 (the mark-delete position moves to 9) and 12 (an individual ack
    # past it); 10, 11 and 13.. stay unacked.
    for m in got[:10] + [got[12]]:
        consumer.acknowledge(m)
    consumer.close()

    again = client.subscribe(topic, sub, initial_position=pulsar.InitialPosition.Earliest)
    expected = sent[10:12] + sent[13:]
    assert payloads(receive_n(again, len(expected))) == expected
    assert_no_more(again)


def test_restart_keeps_messages_and_positions(broker):
    topic = topic_name("restart")
    c = make_client(broker)
    producer = c.create_producer(topic)
    sent = [f"d-{i:02d}".encode() for i in range(30)]
    ids = [producer.send(p) for p in sent]  # each send returned: each is acknowledged
    partly = c.subscribe(topic, "partly", initial_position=pulsar.InitialPosition.Earliest)
    got = receive_n(partly, 30)
    for m in got[:10] + [got[12]]:
        partly.acknowledge(m)
    c.subscribe(topic, "untouched", initial_position=pulsar.InitialPosition.Earliest)
    c.close()  # flushes the acks

    assert broker.stop() == 0, "SIGTERM should exit with code 0\n" + broker.log_tail()
    broker.restart()

    c = make_client(broker)
    try:
        partly = c.subscribe(topic, "partly")
        expected = sent[10:12] + sent[13:]
        got = receive_n(partly, len(expected), what="messages of the partly acked subscription")
        assert payloads(got) == expected
        assert_no_more(partly)

        untouched = c.subscribe(topic, "untouched")
        got = receive_n(untouched, 30)
        assert payloads(got) == sent
        assert [msg_key(m.message_id()) for m in got] == [msg_key(i) for i in ids]

        # The topic keeps growing after the restart, after the old messages.
        producer = c.create_producer(topic)
        new_id = producer.send(b"after-restart")
        assert (new_id.ledger_id(), new_id.entry_id()) > (ids[-1].ledger_id(), ids[-1].entry_id())
        assert payloads(receive_n(untouched, 1)) == [b"after-restart"]
        assert payloads(receive_n(partly, 1)) == [b"after-restart"]
    finally:
        c.close()


KILL_ROUNDS = 20
MAX_IN_FLIGHT = 500


def test_a_second_instance_on_a_live_data_dir_is_refused_and_loses_nothing(broker, tmp_path):
    # The reproduction of a data loss: a second `standalone` on the same data
    # dir used to open the segment store (rewriting its checkpoint) before it
    # failed on the port or the metadata lock; the first one's later
    # acknowledged messages were then gone after a kill -9.
    topic = topic_name("two-instances")
    c = make_client(broker)
    # A subscription keeps the messages (with no retention, a topic without
    # one keeps nothing).
    c.subscribe(topic, "keep", initial_position=pulsar.InitialPosition.Earliest).close()
    producer = c.create_producer(topic, batching_enabled=False, block_if_queue_full=True)
    failed = []
    for i in range(2000):
        producer.send_async(f"m-{i}".encode(), lambda res, _id: res == pulsar.Result.Ok or failed.append(res))
    producer.flush()
    assert not failed, failed

    first_pid = broker.proc.pid
    second = Broker(broker.binary, broker.data_dir, tmp_path / "second.log")
    with pytest.raises(AssertionError, match="exited with code 1"):
        second.start(timeout=30)
    for i in range(2000, 5000):
        producer.send(f"m-{i}".encode())  # returns once acknowledged
    c.close()
    broker.kill()
    broker.restart()

    c = make_client(broker)
    try:
        consumer = c.subscribe(topic, "keep")
        got = payloads(receive_n(consumer, 5000, timeout=60, what="acknowledged messages after kill -9"))
        assert got == [f"m-{i}".encode() for i in range(5000)]
    finally:
        c.close()
    # The refusal is one clear line, not a backtrace.
    lines = [l for l in (tmp_path / "second.log").read_text().splitlines()
             if l.strip() and not l.startswith("=====")]
    assert lines == [f"error: another kilonova (pid {first_pid}) is using {broker.data_dir}"], lines

def _publish_until_killed(broker, topic, rnd, delay_s, batching):
    """Publishes at full speed (send_async, at most MAX_IN_FLIGHT unanswered)
    until the broker is SIGKILLed `delay_s` after publishing starts. Returns
    (sequence numbers whose callback reported Ok, number sent)."""
    acked = set()
    lock = threading.Lock()
    in_flight = threading.Semaphore(MAX_IN_FLIGHT)
    killed = threading.Event()

    def on_sent(res, _msg_id, seq):
        if res == pulsar.Result.Ok:
            with lock:
                acked.add(seq)
        in_flight.release()

    def kill():
        broker.kill()
        killed.set()

    client = make_client(broker)
    sent = 0
    try:
        producer = client.create_producer(
            topic,
            batching_enabled=batching,
            batching_max_publish_delay_ms=1,
            max_pending_messages=MAX_IN_FLIGHT * 2,
            block_if_queue_full=False,
            send_timeout_millis=30_000,
        )
        timer = threading.Timer(delay_s, kill)
        timer.start()
        while not killed.is_set():
            if not in_flight.acquire(timeout=0.02):
                continue
            producer.send_async(f"k{rnd}-{sent:08d}".encode(), functools.partial(on_sent, seq=sent))
            sent += 1
        timer.join()
    finally:
        # With the broker gone the client fails what is still pending (those
        # callbacks report errors and are not counted as acknowledged). Its
        # close may itself report the lost connection: that is expected here.
        try:
            client.close()
        except pulsar.NotConnected:
            pass
    with lock:
        return set(acked), sent


def _verify_topic(broker, topic, rnd, acked, sent, seed):
    """A new subscription from earliest gets every acknowledged message, in
    publish order, each once; extra (stored but unacknowledged) messages are
    allowed."""
    ctx = f"(round {rnd}, seed {seed})"
    client = make_client(broker)
    try:
        consumer = client.subscribe(topic, unique("verify"), initial_position=pulsar.InitialPosition.Earliest)
        seqs, ids = [], set()
        missing = set(acked)
        deadline = time.monotonic() + 30
        while missing:
            remaining_ms = int((deadline - time.monotonic()) * 1000)
            assert remaining_ms > 0, (
                f"{len(missing)} of {len(acked)} acknowledged messages never came back {ctx}; "
                f"first missing: {sorted(missing)[:10]}; received {len(seqs)}"
            )
            try:
                m = consumer.receive(timeout_millis=remaining_ms)
            except pulsar.Timeout:
                continue
            data = m.data().decode()
            prefix, _, num = data.partition("-")
            assert prefix == f"k{rnd}" and num.isdigit(), f"foreign payload {data!r} {ctx}"
            seq = int(num)
            assert seq < sent, f"payload {data!r} was never sent {ctx}"
            seqs.append(seq)
            ids.add(msg_key(m.message_id()))
            missing.discard(seq)
        # Whatever else was stored: collect it to check uniqueness and order.
        while True:
            try:
                m = consumer.receive(timeout_millis=250)
            except pulsar.Timeout:
                break
            seqs.append(int(m.data().decode().partition("-")[2]))
            ids.add(msg_key(m.message_id()))
        assert len(ids) == len(seqs), f"message ids repeat {ctx}"
        assert len(set(seqs)) == len(seqs), f"a message was stored twice {ctx}"
        assert seqs == sorted(seqs), f"stored order differs from publish order {ctx}: {seqs[:50]}"
        return len(seqs)
    finally:
        client.close()


def test_kill9_loses_no_acknowledged_message(broker):
    seed = int(os.environ.get("KILONOVA_KILL_SEED", random.randrange(2**32)))
    print(f"kill -9 test seed: {seed} (rerun with KILONOVA_KILL_SEED={seed})")
    rng = random.Random(seed)
    started = time.monotonic()
    rounds = []
    for rnd in range(KILL_ROUNDS):
        topic = topic_name(f"kill{rnd}")
        delay = rng.uniform(0.05, 0.5)
        batching = rnd % 2 == 1
        acked, sent = _publish_until_killed(broker, topic, rnd, delay, batching)
        broker.restart()
        stored = _verify_topic(broker, topic, rnd, acked, sent, seed)
        rounds.append((topic, acked, sent))
        print(f"round {rnd:2d}: kill after {delay * 1000:3.0f} ms, batching={batching!s:5}, "
              f"sent {sent:6d}, acknowledged {len(acked):6d}, stored {stored:6d}")

    # Earlier rounds survived the later crashes and recoveries too.
    for rnd, (topic, acked, sent) in enumerate(rounds):
        _verify_topic(broker, topic, rnd, acked, sent, seed)

    total_acked = sum(len(a) for _, a, _ in rounds)
    assert total_acked > 0, "no message was ever acknowledged: the test proved nothing"
    print(f"{KILL_ROUNDS} rounds, {total_acked} acknowledged messages, "
          f"{time.monotonic() - started:.1f}s")
