"""A topic that is only written to runs its housekeeping at the quiet pace
(`quiet_topic_tick_ms`) instead of every `cursor_persist_interval_ms`, driven
by the real Python client.

What must hold: such a topic's ticks slow down (counted by
`kilonova_topic_housekeeping_ticks_total`), a subscription brings the
frequent pace back, so does a roll-over (retention trims what it sealed at
once, not a quiet period later), a namespace policy changed meanwhile
or on the topic itself reaches it within the frequent pace (a publish rate
throttles its producer at once, not a quiet period later) while changes to
other topics' records or other namespaces' policies leave it quiet, and the
stats API computes its rates when asked (a rate over the time since they
were last computed, not one a quiet period old).

Each broker ticks every 100 ms while frequent and every 60 s while quiet,
so that the two paces cannot be mistaken for each other in a test's time.
"""

from __future__ import annotations

import time

import pytest

from conftest import wait_until
from test_metrics import scrape
from test_policies import (api, clients, create_namespace, ns_topic, produce,  # noqa: F401
                           pumps, set_ns_policy, set_policy, stats, storage_size, topic_path)

TICKS = "kilonova_topic_housekeeping_ticks_total"
FREQUENT_S = 0.1
CONFIG = "[broker]\ncursor_persist_interval_ms = 100\nquiet_topic_tick_ms = 60000\n"


def ticks(broker) -> float:
    value = scrape(broker).value(TICKS)
    assert value is not None, f"{TICKS} is exported"
    return value


def ticks_over(broker, seconds: float) -> float:
    """Housekeeping ticks of the broker's loaded topics over `seconds` (a
    count over a fixed window: the pace is what is measured)."""
    before = ticks(broker)
    time.sleep(seconds)
    return ticks(broker) - before


def wait_quiet(broker) -> None:
    """Waits until the broker's topics tick at the quiet pace: no tick over
    five frequent periods."""
    wait_until(lambda: ticks_over(broker, 5 * FREQUENT_S) == 0, 10,
               "the topic's ticks slowed to the quiet pace")


def quiet_topic(broker, clients, ns: str, prefix: str):
    """A topic of `ns` with a producer that sent one message, once the
    broker's topics tick at the quiet pace: (topic, client, producer)."""
    topic = ns_topic(ns, prefix)
    c = clients(broker)
    producer = c.create_producer(topic, batching_enabled=False)
    producer.send(b"first")
    wait_quiet(broker)
    return topic, c, producer


def test_a_topic_only_written_to_ticks_slowly_until_it_has_a_subscription(make_broker, clients):
    broker = make_broker(config=CONFIG)
    topic, c, producer = quiet_topic(broker, clients, create_namespace(broker), "quiet")
    for i in range(20):
        producer.send(f"m-{i}".encode())
    assert ticks_over(broker, 10 * FREQUENT_S) == 0, "a topic only written to ticks at the quiet pace"

    consumer = c.subscribe(topic, "sub")
    frequent = ticks_over(broker, 10 * FREQUENT_S)
    assert frequent >= 5, f"with a subscription the topic ticks every 100 ms again ({frequent} in 1 s)"

    consumer.unsubscribe()
    wait_quiet(broker)


def test_a_roll_over_brings_a_quiet_topics_tick_and_retention_trims_at_once(make_broker, clients):
    broker = make_broker(config=CONFIG + "max_segment_entries = 10\n")
    ns = create_namespace(broker)
    set_ns_policy(broker, ns, "retention", {"retentionTimeInMinutes": 0, "retentionSizeInMB": 0})
    topic = ns_topic(ns, "quiet-trim")
    c = clients(broker)
    producer = c.create_producer(topic, batching_enabled=False)
    produce(producer, 5, size=1000)
    wait_quiet(broker)

    produce(producer, 100, size=1000, start=5)  # ten roll-overs
    # Well inside the quiet period (60 s): only the roll-over's tick trims.
    wait_until(lambda: storage_size(broker, topic) <= 10 * (1000 + 256), 10,
               "the consumed segments trimmed (retention 0, no subscription)")


@pytest.mark.parametrize("level", ["namespace", "topic"])
def test_a_policy_change_reaches_a_quiet_topic_within_the_frequent_pace(make_broker, clients, pumps,
                                                                        level):
    # No roll-over within the test: a roll-over is a turn of the topic's task,
    # which would see the new policies' generation and hurry the tick itself.
    broker = make_broker(config=CONFIG + "max_segment_entries = 100000000\n")
    ns = create_namespace(broker)
    topic = ns_topic(ns, "quiet-rate")
    c = clients(broker)
    producer = c.create_producer(topic, batching_enabled=False, max_pending_messages=200,
                                 block_if_queue_full=True)
    pump = pumps(producer)
    pump.settle(lambda r: r > 200, "the producer running unthrottled")
    wait_quiet(broker)

    set_policy(broker, level, topic, "publishRate",
               {"publishThrottlingRateInMsg": 50, "publishThrottlingRateInByte": -1})
    # Well inside the quiet period (60 s): only the policy's wake-up applies it.
    pump.settle(lambda r: 0 < r <= 100, "the producer throttled near 50 msg/s", timeout=10)
    pump.stop()


def test_changes_to_other_topics_and_namespaces_leave_a_quiet_topic_quiet(make_broker, clients):
    broker = make_broker(config=CONFIG + "max_segment_entries = 100000000\n")
    ns = create_namespace(broker)
    other_ns = create_namespace(broker)
    _, _, producer = quiet_topic(broker, clients, ns, "quiet-alone")

    before = ticks(broker)
    for i in range(5):
        # Records of other topics of its namespace (metadata only: partitioned
        # topics' partitions are not loaded), another namespace's policy.
        api(broker, "PUT", f"{topic_path(ns_topic(ns, 'other'))}/partitions", 2)
        set_ns_policy(broker, other_ns, "publishRate",
                      {"publishThrottlingRateInMsg": 50 + i, "publishThrottlingRateInByte": -1})
    # A wake-up would have brought a tick within one frequent period.
    time.sleep(3 * FREQUENT_S)
    assert ticks(broker) - before == 0, "changes elsewhere do not wake a quiet topic"
    producer.send(b"still served")


def test_the_stats_of_a_quiet_topic_have_rates_computed_when_asked(make_broker, clients):
    broker = make_broker(config=CONFIG)
    ns = create_namespace(broker)
    topic = ns_topic(ns, "quiet-stats")
    c = clients(broker)
    producer = c.create_producer(topic, producer_name="p1", batching_enabled=False)
    producer.send(b"first")
    wait_quiet(broker)
    stats(broker, topic)  # rates from here on

    sent = 0
    t0 = time.monotonic()
    while time.monotonic() - t0 < 1.0:
        producer.send(b"x" * 100)
        sent += 1
    s = stats(broker, topic)
    elapsed = time.monotonic() - t0
    assert s["msgRateIn"] > 0.5 * sent / elapsed, (sent, elapsed, s["msgRateIn"])
    assert s["msgRateIn"] <= 1.5 * sent / elapsed, (sent, elapsed, s["msgRateIn"])
    [p] = s["publishers"]
    assert p["producerName"] == "p1" and p["msgRateIn"] > 0.5 * sent / elapsed, p

    # Nothing sent since: over the next window the rate is 0.
    time.sleep(3 * FREQUENT_S)  # a rate over a window with no messages
    s = stats(broker, topic)
    assert s["msgRateIn"] == 0, s["msgRateIn"]
    assert s["publishers"][0]["msgRateIn"] == 0, s["publishers"]
