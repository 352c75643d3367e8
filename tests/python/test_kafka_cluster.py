"""The Kafka listener on a cluster of three `kilonova broker`s (a real etcd):
Metadata names every broker and each partition's leader (the broker
serving its topic), producers and consumers reach the partitions wherever
they are served, and consumer groups find one coordinator whichever broker
they ask."""

from __future__ import annotations

import time
import uuid

import pytest

from confluent_kafka import Consumer, KafkaError, Producer
from confluent_kafka.admin import AdminClient, NewTopic


def test_kafka_clients_use_every_broker_of_a_cluster(cluster):
    bootstrap = [b.kafka_bootstrap for b in cluster.brokers]
    admin = AdminClient({"bootstrap.servers": bootstrap[0]})
    topic = f"spread-{uuid.uuid4().hex[:10]}"
    admin.create_topics([NewTopic(topic, num_partitions=12, replication_factor=1)])[topic].result(30)

    # Produced through broker 0's bootstrap, each record goes to its leader.
    reports = []
    p = Producer({"bootstrap.servers": bootstrap[0], "acks": "all", "linger.ms": 5})
    for i in range(240):
        p.produce(topic, key=f"k{i % 24}".encode(), value=f"v{i}".encode(),
                  on_delivery=lambda err, msg: reports.append((err, msg.partition())))
    assert p.flush(60) == 0
    assert [e for e, _ in reports if e is not None] == []
    assert len({part for _, part in reports}) >= 6, "keys spread over the partitions"

    # Every broker is a node, and each partition is led by the broker that
    # serves its topic (a bundle nobody owned yet was named with the broker
    # a lookup places it on, which took it when the producer came): asking
    # any broker gives the same map.
    maps = []
    for b in bootstrap:
        md = AdminClient({"bootstrap.servers": b}).list_topics(topic, timeout=30)
        ports = sorted(n.port for n in md.brokers.values())
        assert ports == sorted(int(x.split(":")[1]) for x in bootstrap), md.brokers
        parts = md.topics[topic].partitions
        assert sorted(parts) == list(range(12))
        assert all(p.error is None for p in parts.values()), parts
        maps.append({i: p.leader for i, p in parts.items()})
    assert maps[0] == maps[1] == maps[2], maps
    leaders = set(maps[0].values())
    assert len(leaders) >= 2, f"12 partitions all led by one broker: {maps[0]}"

    # A consumer group bootstrapped from broker 2 reads them all once.
    c = Consumer({"bootstrap.servers": bootstrap[2], "group.id": f"g-{topic}",
                  "auto.offset.reset": "earliest", "enable.auto.commit": True})
    c.subscribe([topic])
    got = []
    try:
        deadline = time.monotonic() + 60
        while len(got) < 240 and time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is None:
                continue
            assert m.error() is None or m.error().code() == KafkaError._PARTITION_EOF, m.error()
            if m.error() is None:
                got.append(m.value())
    finally:
        c.close()
    assert sorted(got) == sorted(f"v{i}".encode() for i in range(240))


@pytest.mark.parametrize("cluster", [{"session_ttl_secs": 3}], indirect=True)
def test_a_producer_goes_on_when_a_leader_dies(cluster):
    bootstrap = ",".join(b.kafka_bootstrap for b in cluster.brokers)
    admin = AdminClient({"bootstrap.servers": bootstrap})
    topic = f"failover-{uuid.uuid4().hex[:10]}"
    admin.create_topics([NewTopic(topic, num_partitions=6, replication_factor=1)])[topic].result(30)
    reports = []
    p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5,
                  "message.timeout.ms": 60_000})

    def produce(n: int, prefix: str) -> None:
        # To every partition in turn: the dead leader's too, which have to
        # wait for a new one.
        for i in range(n):
            p.produce(topic, value=f"{prefix}{i}".encode(), partition=i % 6,
                      on_delivery=lambda err, msg: reports.append((err, msg.partition())))
        assert p.flush(90) == 0

    produce(60, "before-")
    md = admin.list_topics(topic, timeout=30)
    port_of = {n.id: n.port for n in md.brokers.values()}
    leader = md.topics[topic].partitions[0].leader
    victim = next(i for i, b in enumerate(cluster.brokers) if b.kafka_port == port_of[leader])
    cluster.kill(victim)
    # The dead broker's bundles are free once its session expires; the
    # producer's retries find the partitions' new leaders.
    produce(60, "after-")
    assert [e for e, _ in reports if e is not None] == [], reports
    assert len(reports) == 120
    alive = next(b for i, b in enumerate(cluster.brokers) if i != victim)
    md = AdminClient({"bootstrap.servers": alive.kafka_bootstrap}).list_topics(topic, timeout=30)
    assert leader not in md.brokers, "the dead broker is no longer a node"
    assert all(part.leader in md.brokers for part in md.topics[topic].partitions.values())
