"""Subscription types: exclusive, failover, shared, key_shared."""

import threading
from collections import defaultdict

import pulsar
import pytest

from conftest import assert_no_more, collect_from, payloads, receive_n, topic_name, unique


def test_exclusive_rejects_a_second_consumer(client):
    topic = topic_name("excl")
    sub = unique("sub")
    first = client.subscribe(topic, sub, consumer_type=pulsar.ConsumerType.Exclusive)
    with pytest.raises(pulsar.ConsumerBusy):
        client.subscribe(topic, sub, consumer_type=pulsar.ConsumerType.Exclusive)
    # The first consumer is unaffected.
    producer = client.create_producer(topic)
    producer.send(b"still-mine")
    (m,) = receive_n(first, 1)
    assert m.data() == b"still-mine"
    first.acknowledge(m)
    # Once it leaves, the subscription takes a new exclusive consumer.
    first.close()
    second = client.subscribe(topic, sub, consumer_type=pulsar.ConsumerType.Exclusive)
    producer.send(b"for-second")
    (m,) = receive_n(second, 1)
    assert m.data() == b"for-second"


def test_failover_one_active_then_handover(client):
    topic = topic_name("failover")
    sub = unique("sub")
    # The Python client cannot set a priority level, so all consumers share the
    # default one and the name decides: "a-..." sorts first and is active even
    # though "b-..." subscribed first.
    b = client.subscribe(topic, sub, consumer_type=pulsar.ConsumerType.Failover, consumer_name="b-consumer")
    a = client.subscribe(topic, sub, consumer_type=pulsar.ConsumerType.Failover, consumer_name="a-consumer")
    producer = client.create_producer(topic)
    sent = [f"f-{i}".encode() for i in range(10)]
    for p in sent:
        producer.send(p)

    got = receive_n(a, len(sent), what="messages on the active consumer a-consumer")
    assert payloads(got) == sent
    assert_no_more(b, 300, "inactive failover consumer")

    # a acks the first half and leaves; b takes over and gets the rest again.
    for m in got[:5]:
        a.acknowledge(m)
    a.close()
    redelivered = receive_n(b, 5, what="unacked messages redelivered to b-consumer")
    assert payloads(redelivered) == sent[5:]
    later = [f"f-{i}".encode() for i in range(10, 15)]
    for p in later:
        producer.send(p)
    assert payloads(receive_n(b, 5)) == later
    assert_no_more(b)


def test_shared_round_robin(client):
    topic = topic_name("shared")
    sub = unique("sub")
    # Small receiver queues so that neither consumer can prefetch everything.
    consumers = [
        client.subscribe(topic, sub, consumer_type=pulsar.ConsumerType.Shared,
                         consumer_name=f"c{i}", receiver_queue_size=5)
        for i in range(2)
    ]
    producer = client.create_producer(topic)
    n = 40
    sent = {f"s-{i}".encode() for i in range(n)}
    for p in sorted(sent):
        producer.send(p)

    got = collect_from(consumers, n)
    data = {i: payloads(ms) for i, ms in got.items()}
    assert len(data[0]) >= n // 4 and len(data[1]) >= n // 4, (
        f"not distributed between the consumers: {len(data[0])} / {len(data[1])}"
    )
    all_received = data[0] + data[1]
    assert len(all_received) == len(set(all_received)), "a message went to both consumers"
    assert set(all_received) == sent
    for i, ms in got.items():
        for m in ms:
            consumers[i].acknowledge(m)
    for c in consumers:
        assert_no_more(c, 300, "shared consumer after all acked")


def test_key_shared_keys_stick_and_order_holds(client):
    topic = topic_name("keyshared")
    sub = unique("sub")
    consumers = [
        client.subscribe(topic, sub, consumer_type=pulsar.ConsumerType.KeyShared, consumer_name=f"k{i}")
        for i in range(2)
    ]
    producer = client.create_producer(topic, batching_enabled=False)
    keys = [f"key-{k:02d}" for k in range(24)]
    per_key = 4

    def publish(round_no):
        for i in range(per_key):
            seq = round_no * per_key + i
            for key in keys:
                producer.send(f"{key}:{seq}".encode(), partition_key=key)

    def parse(m):
        key, seq = m.data().decode().split(":")
        assert m.partition_key() == key
        return key, int(seq)

    publish(0)
    got = collect_from(consumers, len(keys) * per_key)
    owner = {}
    for i, ms in got.items():
        seqs = defaultdict(list)
        for m in ms:
            key, seq = parse(m)
            assert owner.setdefault(key, i) == i, f"{key} went to both consumers"
            seqs[key].append(seq)
        for key, s in seqs.items():
            assert s == list(range(per_key)), f"consumer {i}: {key} out of order or incomplete: {s}"
    assert set(owner) == set(keys)
    assert set(owner.values()) == {0, 1}, "one consumer got every key"

    # Consumer 0 acks everything; consumer 1 acks nothing and leaves. Its keys
    # move to consumer 0, which must see each of them from the first unacked
    # message on, in order, before any newer message of that key.
    for m in got[0]:
        consumers[0].acknowledge(m)
    consumers[1].close()
    publish(1)
    moved = [k for k, o in owner.items() if o == 1]
    expect = len(moved) * per_key + len(keys) * per_key
    after = receive_n(consumers[0], expect, what="messages after the other consumer left")
    seqs = defaultdict(list)
    for m in after:
        key, seq = parse(m)
        seqs[key].append(seq)
    for key in keys:
        want = list(range(2 * per_key)) if owner[key] == 1 else list(range(per_key, 2 * per_key))
        assert seqs[key] == want, f"{key} (first owner {owner[key]}): got {seqs[key]}, want {want}"
    assert_no_more(consumers[0])


@pytest.mark.parametrize("joiner_range", [(0, 32767), (32768, 65535)])
def test_key_shared_second_consumer_gets_its_keys_on_a_topic_not_starting_at_segment_zero(client, joiner_range):
    # Another topic first, so this topic's first segment id is not 0 (as for
    # every topic but a broker's first): the newcomer's join position and the
    # subscription's ack floor must compare as positions of this log.
    warm = client.create_producer(topic_name("warm-up"))
    warm.send(b"x")
    topic = topic_name("keyshared-backlog")
    sub = unique("sub")
    other = (32768, 65535) if joiner_range[0] == 0 else (0, 32767)
    policy = lambda r: pulsar.ConsumerKeySharedPolicy(  # noqa: E731
        key_shared_mode=pulsar.KeySharedMode.Sticky, sticky_ranges=[r])
    # Both join before anything is published: the second one's join position
    # is the first entry, whose key (in one of the two cases) is its own, so
    # it must not wait for an acknowledgement only it can give.
    first = client.subscribe(topic, sub, consumer_type=pulsar.ConsumerType.KeyShared,
                             key_shared_policy=policy(other), consumer_name="first")
    joiner = client.subscribe(topic, sub, consumer_type=pulsar.ConsumerType.KeyShared,
                              key_shared_policy=policy(joiner_range), consumer_name="joiner")
    producer = client.create_producer(topic, batching_enabled=False)
    total = 60
    for i in range(total):
        producer.send(f"{i}".encode(), partition_key=f"key-{i % 20}")
    got = {"first": [], "joiner": []}
    def drain(name, consumer):
        while True:
            try:
                m = consumer.receive(timeout_millis=3000)
            except pulsar.Timeout:
                return
            got[name].append(m.data())
            consumer.acknowledge(m)

    threads = [threading.Thread(target=drain, args=(n, c)) for n, c in
               (("first", first), ("joiner", joiner))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    counts = {n: len(v) for n, v in got.items()}
    assert sum(counts.values()) == total, f"stalled: {counts} of {total}"
    assert counts["joiner"] > 0 and counts["first"] > 0, counts
