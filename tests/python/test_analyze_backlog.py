"""Pulsar's analyze-backlog (`kilonova admin topics analyze-backlog`, `POST
…/subscription/{s}/analyzeBacklog`): a backlog produced and partly
acknowledged with the real Python client, then counted by reading it —
entries and messages (a batch is one entry of several messages), within the
broker's scan limits."""

from __future__ import annotations

import json

import pulsar

from conftest import http, make_client, receive_n, topic_name, wait_until
from test_admin_cli import Cli, topic_rest_path

WAIT_S = 10.0


def analyze(cli: Cli, topic: str, sub: str, *extra: str) -> dict:
    return cli.json("topics", "analyze-backlog", topic, "-s", sub, *extra)


def produce_batch(client, topic: str, n: int) -> None:
    """One entry of `n` messages."""
    producer = client.create_producer(topic, batching_enabled=True, batching_max_messages=n,
                                      batching_max_publish_delay_ms=60_000)
    for i in range(n):
        producer.send_async(f"b{i}".encode(), None)
    producer.flush()
    producer.close()


def test_analyze_backlog_counts_entries_and_messages_left_after_acks(broker, client):
    cli = Cli(broker)
    topic = topic_name("analyze")
    consumer = client.subscribe(topic, "s", consumer_type=pulsar.ConsumerType.Shared)
    producer = client.create_producer(topic, batching_enabled=False)
    ids = [producer.send(f"m{i}".encode()) for i in range(10)]
    produce_batch(client, topic, 4)

    empty = {"entries": 0, "messages": 0}
    full = analyze(cli, topic, "s")
    assert full == {
        "entries": 11, "messages": 14,
        "filterAcceptedEntries": 11, "filterAcceptedMessages": 14,
        "filterRejectedEntries": 0, "filterRejectedMessages": 0,
        "filterRescheduledEntries": 0, "filterRescheduledMessages": 0,
        "aborted": False,
        "firstMessageId": f"{ids[0].ledger_id()}:{ids[0].entry_id()}",
        "lastMessageId": full["lastMessageId"],
    }, full
    assert full != empty

    # Acknowledge m0, m1 (the mark-delete position moves) and m5 (a hole).
    got = {m.data(): m for m in receive_n(consumer, 14, what="every message")}
    for payload in (b"m0", b"m1", b"m5"):
        consumer.acknowledge(got[payload])

    def counts():
        r = analyze(cli, topic, "s")
        return (r["entries"], r["messages"], r["firstMessageId"])

    expected = (8, 11, f"{ids[2].ledger_id()}:{ids[2].entry_id()}")
    wait_until(lambda: counts() == expected, WAIT_S,
               f"the backlog to be 7 single messages and the batch of 4 (last {counts()})")

    # From a start position: m6..m9 and the batch.
    start = analyze(cli, topic, "s", "-p", f"{ids[6].ledger_id()}:{ids[6].entry_id()}")
    assert (start["entries"], start["messages"]) == (5, 8), start

    # The REST route as Pulsar's admin client calls it (POST, no body).
    status, body = http("POST", f"{broker.http_url}{topic_rest_path(topic)}/subscription/s/analyzeBacklog")
    assert status == 200, body
    assert json.loads(body)["messages"] == 11

    # Everything acknowledged: an empty backlog.
    for payload, m in got.items():
        if payload not in (b"m0", b"m1", b"m5"):
            consumer.acknowledge(m)
    wait_until(lambda: analyze(cli, topic, "s")["entries"] == 0, WAIT_S, "an empty backlog")
    r = analyze(cli, topic, "s")
    assert (r["messages"], r["aborted"]) == (0, False) and "firstMessageId" not in r, r

    cli.fails("topics", "analyze-backlog", topic, "-s", "missing")
    consumer.close()
    producer.close()


def test_analyze_backlog_stops_at_the_scan_limit_and_says_aborted(make_broker):
    broker = make_broker(config="[broker]\nsubscription_backlog_scan_max_entries = 5\n")
    cli = Cli(broker)
    client = make_client(broker)
    try:
        topic = topic_name("analyze-limit")
        consumer = client.subscribe(topic, "s", consumer_type=pulsar.ConsumerType.Shared)
        producer = client.create_producer(topic, batching_enabled=False)
        for i in range(12):
            producer.send(f"m{i}".encode())
        r = analyze(cli, topic, "s")
        assert (r["entries"], r["messages"], r["aborted"]) == (5, 5, True), r

        for m in receive_n(consumer, 7, what="the first 7 messages"):
            consumer.acknowledge(m)
        wait_until(lambda: analyze(cli, topic, "s")["entries"] == 5 and
                   not analyze(cli, topic, "s")["aborted"], WAIT_S,
                   "exactly the limit left: counted whole, not aborted")
        consumer.close()
        producer.close()
    finally:
        client.close()


def test_analyze_backlog_of_a_partitioned_topic_is_refused_as_pulsar_does(broker, client):
    cli = Cli(broker)
    topic = topic_name("analyze-partitioned")
    cli.ok("topics", "create-partitioned-topic", topic, "-p", "2")
    cli.ok("topics", "create-subscription", topic, "-s", "s")
    status, body = http("POST", f"{broker.http_url}{topic_rest_path(topic)}/subscription/s/analyzeBacklog")
    assert status == 405, (status, body)
    r = analyze(cli, f"{topic}-partition-0", "s")
    assert (r["entries"], r["aborted"]) == (0, False), r
