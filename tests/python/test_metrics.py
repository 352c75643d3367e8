"""End-to-end tests of the Prometheus endpoint, GET {http_url}/metrics (issue #13).

Traffic is made with the real Pulsar client; the document is parsed with
prometheus_client's parser, which raises on malformed input.

Per-topic metrics use Pulsar's names and labels (cluster, namespace, topic);
the storage engine's own metrics are Kilonova's. Every metric name is a
constant below, so a rename in the implementation is a one-line change here.
"""

from __future__ import annotations

import time
import urllib.request

import pulsar
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import payloads, receive_n, unique

# Rate windows and CPU readings: run alone (scripts/test).
pytestmark = pytest.mark.serial

METRICS_PATH = "/metrics"
CLUSTER = "standalone"

# Pulsar's per-topic metrics (exposeTopicLevelMetricsInPrometheus).
IN_MESSAGES = "pulsar_in_messages_total"  # counter: messages published
OUT_MESSAGES = "pulsar_out_messages_total"  # counter: messages dispatched to consumers
IN_BYTES = "pulsar_in_bytes_total"  # counter
OUT_BYTES = "pulsar_out_bytes_total"  # counter
PRODUCERS = "pulsar_producers_count"  # gauge
CONSUMERS = "pulsar_consumers_count"  # gauge
SUBSCRIPTIONS = "pulsar_subscriptions_count"  # gauge
BACKLOG = "pulsar_msg_backlog"  # gauge: unacknowledged messages, summed over subscriptions
STORAGE_SIZE = "pulsar_storage_size"  # gauge: bytes stored for the topic

# Kilonova's storage engine and entry cache.
FSYNC_SECONDS = "kilonova_storage_fsync_seconds"  # histogram: duration of each fsync/fdatasync
GROUP_COMMIT_ENTRIES = "kilonova_storage_group_commit_entries"  # histogram: entries per group commit
CACHE_HITS = "kilonova_entry_cache_hits_total"  # counter
CACHE_MISSES = "kilonova_entry_cache_misses_total"  # counter
CACHE_MISS_BYTES = "kilonova_entry_cache_miss_bytes_total"  # counter
PUBLISH_STAGE = "kilonova_publish_stage_seconds"  # histogram per stage of a persistent SEND
PUBLISH_STAGES = ("appended", "written", "durable", "answered", "sent")

# Pulsar's entry-cache series (ManagedLedgerCacheMetrics): gauges labelled cluster.
ML_COUNT = "pulsar_ml_count"
ML_CACHE_USED_SIZE = "pulsar_ml_cache_used_size"
ML_CACHE_ENTRIES = "pulsar_ml_cache_entries"
ML_CACHE_INSERTED = "pulsar_ml_cache_inserted_entries_total"
ML_CACHE_EVICTED = "pulsar_ml_cache_evicted_entries_total"
ML_CACHE_EVICTIONS = "pulsar_ml_cache_evictions"
ML_CACHE_HITS_RATE = "pulsar_ml_cache_hits_rate"
ML_CACHE_HITS_THROUGHPUT = "pulsar_ml_cache_hits_throughput"
ML_CACHE_MISSES_RATE = "pulsar_ml_cache_misses_rate"
ML_CACHE_MISSES_THROUGHPUT = "pulsar_ml_cache_misses_throughput"
ML_CACHE_POOL = ["pulsar_ml_cache_pool_allocated", "pulsar_ml_cache_pool_used",
                 "pulsar_ml_cache_pool_active_allocations",
                 "pulsar_ml_cache_pool_active_allocations_small",
                 "pulsar_ml_cache_pool_active_allocations_normal",
                 "pulsar_ml_cache_pool_active_allocations_huge"]
ML_CACHE_SERIES = [ML_COUNT, ML_CACHE_USED_SIZE, ML_CACHE_ENTRIES, ML_CACHE_INSERTED, ML_CACHE_EVICTED,
                   ML_CACHE_EVICTIONS, ML_CACHE_HITS_RATE, ML_CACHE_HITS_THROUGHPUT,
                   ML_CACHE_MISSES_RATE, ML_CACHE_MISSES_THROUGHPUT, *ML_CACHE_POOL]

WAIT_S = 10.0
# Rates are measured over the time between two of a topic's housekeeping ticks
# (cursor_persist_interval_ms, 1 s): a window is shorter than that when the
# previous tick's work ran late, so a bound on a rate allows for half of it.
MIN_RATE_WINDOW_S = 0.5


# ---------------------------------------------------------------- scraping


class Scrape:
    def __init__(self, text: str, content_type: str):
        self.text = text
        self.content_type = content_type
        try:
            self.families = list(text_string_to_metric_families(text))
        except Exception as e:  # the parser raises ValueError and friends
            raise AssertionError(f"/metrics is not valid Prometheus text ({e!r}):\n{text[:3000]}") from None

    def samples(self, name: str, **labels) -> list:
        return [s for f in self.families for s in f.samples
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]

    def value(self, name: str, **labels):
        """The one sample `name` whose labels include `labels`; None if absent."""
        found = self.samples(name, **labels)
        assert len(found) <= 1, f"{name}{labels} is ambiguous: {[(s.labels, s.value) for s in found]}"
        return found[0].value if found else None

    def family_with_sample(self, sample_name: str):
        for f in self.families:
            if any(s.name == sample_name for s in f.samples):
                return f
        return None


def scrape(broker) -> Scrape:
    url = broker.http_url + METRICS_PATH
    with urllib.request.urlopen(url, timeout=15) as r:
        assert r.status == 200, f"GET {url}: {r.status}"
        return Scrape(r.read().decode("utf-8"), r.headers.get("Content-Type", ""))


def topic_labels(topic: str) -> dict:
    _, rest = topic.split("://", 1)
    tenant, ns, _local = rest.split("/", 2)
    return {"cluster": CLUSTER, "namespace": f"{tenant}/{ns}", "topic": topic}


def topic_value(broker, name: str, topic: str):
    return scrape(broker).value(name, **topic_labels(topic))


def wait_for_metric(broker, name: str, topic: str, expected, timeout: float = WAIT_S):
    """Polls until the topic's `name` equals `expected` (metrics may be computed
    periodically); fails naming the last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = topic_value(broker, name, topic)
        if value == expected:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(
                f"timed out after {timeout}s waiting for {name}{topic_labels(topic)} to be {expected!r}; "
                f"last value {value!r}"
            )
        time.sleep(0.05)


def histogram_count(s: Scrape, name: str) -> float:
    value = s.value(f"{name}_count")
    assert value is not None, f"histogram {name} has no {name}_count sample"
    return value


def histogram_sum(s: Scrape, name: str) -> float:
    value = s.value(f"{name}_sum")
    assert value is not None, f"histogram {name} has no {name}_sum sample"
    return value


def send_all(producer, items) -> None:
    for p in items:
        producer.send(p)


# ---------------------------------------------------------------- the document


def test_metrics_document_parses_and_every_family_has_help_and_type(broker, client):
    topic = f"persistent://public/default/{unique('doc')}"
    consumer = client.subscribe(topic, unique("sub"))
    producer = client.create_producer(topic)
    send_all(producer, [b"a", b"b"])
    receive_n(consumer, 2)
    wait_for_metric(broker, IN_MESSAGES, topic, 2)

    s = scrape(broker)
    assert s.content_type.startswith("text/plain"), (
        f"Prometheus text format is served as text/plain, got {s.content_type!r}"
    )
    assert s.families, "the document has no metric families"
    untyped = [f.name for f in s.families if f.type == "unknown"]
    assert not untyped, f"these families have no (or an unknown) # TYPE: {untyped}"
    undocumented = [f.name for f in s.families if not f.documentation.strip()]
    assert not undocumented, f"these families have no # HELP: {undocumented}"
    names = [f.name for f in s.families]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    assert not duplicated, f"these families are declared more than once: {duplicated}"


# ---------------------------------------------------------------- per-topic metrics


def test_topic_message_and_byte_counters(broker, client):
    topic = f"persistent://public/default/{unique('counters')}"
    consumer = client.subscribe(topic, unique("sub"))
    producer = client.create_producer(topic)
    sent = [f"counted-{i}".encode() * 4 for i in range(8)]
    send_all(producer, sent)
    got = receive_n(consumer, len(sent))
    assert payloads(got) == sent
    for m in got:
        consumer.acknowledge(m)

    wait_for_metric(broker, IN_MESSAGES, topic, len(sent))
    wait_for_metric(broker, OUT_MESSAGES, topic, len(sent))
    s = scrape(broker)
    labels = topic_labels(topic)
    payload_bytes = sum(map(len, sent))
    in_bytes = s.value(IN_BYTES, **labels)
    out_bytes = s.value(OUT_BYTES, **labels)
    assert in_bytes is not None and in_bytes >= payload_bytes, (
        f"{IN_BYTES}{labels} should be at least the {payload_bytes} payload bytes, got {in_bytes}"
    )
    assert out_bytes is not None and out_bytes >= payload_bytes, (
        f"{OUT_BYTES}{labels} should be at least the {payload_bytes} payload bytes, got {out_bytes}"
    )
    for name in (IN_MESSAGES, OUT_MESSAGES, IN_BYTES, OUT_BYTES):
        family = s.family_with_sample(name)
        assert family is not None and family.type == "counter", (
            f"{name} should be a counter, got {family.type if family else 'no family'}"
        )


def test_connection_gauges_follow_producers_consumers_and_subscriptions(broker, client):
    topic = f"persistent://public/default/{unique('gauges')}"
    sub_a, sub_b = unique("sub-a"), unique("sub-b")
    producers = [client.create_producer(topic) for _ in range(2)]
    consumers = [
        client.subscribe(topic, sub_a, consumer_type=pulsar.ConsumerType.Shared),
        client.subscribe(topic, sub_a, consumer_type=pulsar.ConsumerType.Shared),
        client.subscribe(topic, sub_b),
    ]
    wait_for_metric(broker, PRODUCERS, topic, 2)
    wait_for_metric(broker, CONSUMERS, topic, 3)
    wait_for_metric(broker, SUBSCRIPTIONS, topic, 2)

    producers[0].close()
    consumers[0].close()
    wait_for_metric(broker, PRODUCERS, topic, 1)
    wait_for_metric(broker, CONSUMERS, topic, 2)
    wait_for_metric(broker, SUBSCRIPTIONS, topic, 2)  # durable subscriptions stay

    s = scrape(broker)
    for name in (PRODUCERS, CONSUMERS, SUBSCRIPTIONS):
        family = s.family_with_sample(name)
        assert family is not None and family.type == "gauge", (
            f"{name} should be a gauge, got {family.type if family else 'no family'}"
        )


def test_backlog_gauge_counts_unacknowledged_messages(broker, client):
    topic = f"persistent://public/default/{unique('backlog')}"
    acking = client.subscribe(topic, unique("acking"))
    lagging = client.subscribe(topic, unique("lagging"))
    producer = client.create_producer(topic)
    sent = [f"b{i}".encode() for i in range(10)]
    send_all(producer, sent)

    for m in receive_n(acking, len(sent)):
        acking.acknowledge(m)
    got = receive_n(lagging, len(sent))
    for m in got[:3]:
        lagging.acknowledge(m)

    # The first subscription acknowledged everything; the second 3 of 10.
    wait_for_metric(broker, BACKLOG, topic, len(sent) - 3)


def test_storage_size_gauge(broker, client):
    topic = f"persistent://public/default/{unique('size')}"
    keeper = client.subscribe(topic, unique("keeps-it"))  # acknowledges nothing: all is retained
    producer = client.create_producer(topic)
    send_all(producer, [b"x" * 1000 for _ in range(5)])
    deadline = time.monotonic() + WAIT_S
    while True:
        size = topic_value(broker, STORAGE_SIZE, topic)
        if size is not None and size >= 5000:
            break
        assert time.monotonic() < deadline, (
            f"{STORAGE_SIZE}{topic_labels(topic)} should reach the 5000 stored payload bytes, last {size}"
        )
        time.sleep(0.05)
    keeper.close()


# ---------------------------------------------------------------- storage and cache


def test_storage_histograms_and_entry_cache_counters(broker, client):
    before = scrape(broker)
    for name, kind in ((FSYNC_SECONDS, "histogram"), (GROUP_COMMIT_ENTRIES, "histogram"),
                       (CACHE_HITS, "counter"), (CACHE_MISSES, "counter"),
                       (CACHE_MISS_BYTES, "counter")):
        sample = f"{name}_count" if kind == "histogram" else name
        family = before.family_with_sample(sample)
        assert family is not None, f"no {kind} {name} in /metrics"
        assert family.type == kind, f"{name} should be a {kind}, got {family.type}"
    for name in (FSYNC_SECONDS, GROUP_COMMIT_ENTRIES):
        inf = before.value(f"{name}_bucket", le="+Inf")
        assert inf == histogram_count(before, name), (
            f"{name}: the +Inf bucket ({inf}) must equal _count ({histogram_count(before, name)})"
        )

    topic = f"persistent://public/default/{unique('storage')}"
    producer = client.create_producer(topic)
    sent = [f"stored-{i}".encode() for i in range(20)]
    send_all(producer, sent)  # each send returns once the entry is durable

    # Reading the entries back goes through the entry cache (a hit or a miss).
    reader = client.subscribe(topic, unique("replay"), initial_position=pulsar.InitialPosition.Earliest)
    assert payloads(receive_n(reader, len(sent))) == sent

    after = scrape(broker)
    assert histogram_count(after, FSYNC_SECONDS) > histogram_count(before, FSYNC_SECONDS), (
        f"durable publishes must fsync: {FSYNC_SECONDS}_count did not grow"
    )
    grown = histogram_sum(after, GROUP_COMMIT_ENTRIES) - histogram_sum(before, GROUP_COMMIT_ENTRIES)
    assert grown >= len(sent), (
        f"{GROUP_COMMIT_ENTRIES}_sum should grow by at least the {len(sent)} entries written, grew by {grown}"
    )
    lookups_before = before.value(CACHE_HITS) + before.value(CACHE_MISSES)
    lookups_after = after.value(CACHE_HITS) + after.value(CACHE_MISSES)
    assert lookups_after > lookups_before, (
        f"replaying {len(sent)} entries should count cache hits or misses "
        f"({CACHE_HITS} + {CACHE_MISSES}: {lookups_before} -> {lookups_after})"
    )


def test_pulsar_entry_cache_series_move_with_publishes_and_reads(broker, client):
    def ml(s: Scrape, name: str) -> float:
        v = s.value(name, cluster=CLUSTER)
        assert v is not None, f"no {name}{{cluster={CLUSTER!r}}} in /metrics"
        return v

    before = scrape(broker)  # also starts the first rate window
    for name in ML_CACHE_SERIES:
        family = before.family_with_sample(name)
        assert family is not None and family.type == "gauge", f"{name} should be a gauge: {family}"
    assert ml(before, ML_COUNT) == 0 and ml(before, ML_CACHE_USED_SIZE) == 0

    # A subscription left behind at the start keeps what is published cached;
    # a consumer waiting at the end gets it from the cache.
    topic = f"persistent://public/default/{unique('mlcache')}"
    client.subscribe(topic, "behind").close()
    consumer = client.subscribe(topic, "tail", consumer_type=pulsar.ConsumerType.Shared)
    producer = client.create_producer(topic, batching_enabled=False)
    sent = [f"cached-{i}".encode() * 10 for i in range(20)]
    send_all(producer, sent)
    published = scrape(broker)
    assert ml(published, ML_COUNT) == 1, "one loaded persistent topic, one managed log"
    assert ml(published, ML_CACHE_INSERTED) >= len(sent)
    assert ml(published, ML_CACHE_ENTRIES) == len(sent), "the unread entries are cached"
    assert ml(published, ML_CACHE_USED_SIZE) >= sum(len(p) for p in sent)
    assert ml(published, "pulsar_ml_cache_pool_used") == ml(published, ML_CACHE_USED_SIZE)
    assert ml(published, "pulsar_ml_cache_pool_active_allocations") == len(sent)
    assert ml(published, "pulsar_ml_cache_pool_active_allocations_small") == len(sent)

    got = receive_n(consumer, len(sent))
    assert sorted(payloads(got)) == sorted(sent)
    for m in got:
        consumer.acknowledge(m)

    # Rates are measured over the time between scrapes (at least 1 s).
    last: dict = {}

    def hits_measured() -> bool:
        s = scrape(broker)
        last.update(rate=ml(s, ML_CACHE_HITS_RATE), bytes=ml(s, ML_CACHE_HITS_THROUGHPUT),
                    hits=s.value(CACHE_HITS))
        return last["rate"] > 0 and last["bytes"] > 0

    deadline = time.monotonic() + WAIT_S
    while not hits_measured():
        assert time.monotonic() < deadline, f"{ML_CACHE_HITS_RATE} stayed 0 after cached reads: {last}"
        time.sleep(0.2)
    assert last["hits"] >= len(sent), f"the {len(sent)} dispatched entries were cache hits: {last}"

    # The subscription behind reads and acknowledges them too: the cache lets them go.
    behind = client.subscribe(topic, "behind", consumer_type=pulsar.ConsumerType.Shared)
    for m in receive_n(behind, len(sent)):
        behind.acknowledge(m)
    deadline = time.monotonic() + WAIT_S
    while ml(scrape(broker), ML_CACHE_EVICTED) < len(sent):
        assert time.monotonic() < deadline, f"{ML_CACHE_EVICTED} did not reach {len(sent)}"
        time.sleep(0.2)
    assert ml(scrape(broker), ML_CACHE_USED_SIZE) == 0

    # A new subscription from the earliest message reads them from storage: misses.
    replay = client.subscribe(topic, "replay", initial_position=pulsar.InitialPosition.Earliest)
    assert sorted(payloads(receive_n(replay, len(sent)))) == sorted(sent)

    def misses_measured() -> bool:
        s = scrape(broker)
        return ml(s, ML_CACHE_MISSES_RATE) > 0 and ml(s, ML_CACHE_MISSES_THROUGHPUT) > 0

    deadline = time.monotonic() + WAIT_S
    while not misses_measured():
        assert time.monotonic() < deadline, f"{ML_CACHE_MISSES_RATE} stayed 0 after reads from storage"
        time.sleep(0.2)
    for c in (consumer, behind, replay, producer):
        c.close()


@pytest.mark.parametrize("name", [IN_MESSAGES, OUT_MESSAGES, PRODUCERS, CONSUMERS, SUBSCRIPTIONS,
                                  BACKLOG, STORAGE_SIZE])
def test_topic_metrics_carry_cluster_namespace_and_topic_labels(broker, client, name):
    topic = f"persistent://public/default/{unique('labels')}"
    consumer = client.subscribe(topic, unique("sub"))
    producer = client.create_producer(topic)
    producer.send(b"labelled")
    receive_n(consumer, 1)
    deadline = time.monotonic() + WAIT_S
    while True:
        found = scrape(broker).samples(name, topic=topic)
        if found:
            break
        assert time.monotonic() < deadline, f"no {name} sample with topic={topic!r}"
        time.sleep(0.05)
    assert len(found) == 1, f"one {name} sample per topic, got {[(s.labels, s.value) for s in found]}"
    producer.close()
    labels = found[0].labels
    assert labels.get("cluster") == CLUSTER and labels.get("namespace") == "public/default", (
        f"{name} should be labelled cluster={CLUSTER!r}, namespace='public/default': {labels}"
    )


# ---------------------------------------------------------------- Pulsar parity (issue #23)


def sub_labels(topic: str, sub: str) -> dict:
    return {**topic_labels(topic), "subscription": sub}


def poll(broker, check, what: str, timeout: float = WAIT_S) -> Scrape:
    """Scrapes until `check(scrape)` is true (rates and per-subscription
    series are refreshed once per `cursor_persist_interval_ms` tick, 1 s by
    default); fails saying `what` did not happen, with the last document's tail."""
    deadline = time.monotonic() + timeout
    while True:
        s = scrape(broker)
        if check(s):
            return s
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}:\n{s.text[-4000:]}")
        time.sleep(0.05)


def bytes_per_message(s: Scrape, topic: str, direction: str) -> float:
    """The topic's bytes per message so far, `in` or `out` (every entry of a
    test that calls this has the same size, so a rate window's bytes per
    message must be this)."""
    labels = topic_labels(topic)
    return (s.value(f"pulsar_{direction}_bytes_total", **labels)
            / s.value(f"pulsar_{direction}_messages_total", **labels))


def assert_close(actual: float, expected: float, what: str, rel: float = 0.01) -> None:
    assert abs(actual - expected) <= rel * expected, f"{what}: {actual}, expected {expected}"


def test_subscription_series_count_backlog_unacked_and_rates(broker, client):
    topic = f"persistent://public/default/{unique('subm')}"
    consumer = client.subscribe(topic, "s", consumer_type=pulsar.ConsumerType.Shared)
    idle = client.subscribe(topic, "idle")
    idle.close()  # no consumer: the subscription only keeps a backlog
    producer = client.create_producer(topic, batching_enabled=False)
    # Entries of one size: a rate window's bytes per message is that size.
    send_all(producer, [f"message-{i}".encode() * 30 for i in range(6)])
    got = receive_n(consumer, 6)
    for m in got[:2]:
        consumer.acknowledge(m)

    labels = sub_labels(topic, "s")
    s = poll(broker, lambda s: (s.value("pulsar_subscription_unacked_messages", **labels) == 4
                                and s.value("pulsar_subscription_back_log", **labels) == 4
                                and s.value("pulsar_subscription_back_log", **sub_labels(topic, "idle")) == 6
                                and (s.value("pulsar_subscription_msg_rate_out", **labels) or 0) > 0),
             "backlog 4 / 6, 4 unacked and a dispatch rate for the 6 messages sent")
    rate = s.value("pulsar_subscription_msg_rate_out", **labels)
    throughput = s.value("pulsar_subscription_msg_throughput_out", **labels)
    assert 0 < rate <= 6 / MIN_RATE_WINDOW_S, f"6 messages dispatched in one rate window: {rate}/s"
    entry_bytes = bytes_per_message(s, topic, "out")
    assert entry_bytes > 300, f"each entry holds a 300-byte payload: {entry_bytes}"
    assert_close(throughput / rate, entry_bytes, "pulsar_subscription_msg_throughput_out per message")
    assert s.value("pulsar_subscription_msg_rate_redeliver", **labels) == 0, "nothing was redelivered"
    assert s.value("pulsar_subscription_blocked_on_unacked_messages", **labels) == 0, "no limit is set"
    assert s.value("pulsar_subscription_consumers_count", **labels) == 1
    assert s.value("pulsar_subscription_consumers_count", **sub_labels(topic, "idle")) == 0
    assert s.value("pulsar_subscription_msg_rate_out", **sub_labels(topic, "idle")) == 0
    assert s.value("pulsar_subscription_delayed", **labels) == 0
    consumer.close()
    producer.close()


def test_subscription_redeliver_rate_counts_negatively_acknowledged_messages(broker, client):
    topic = f"persistent://public/default/{unique('redeliver')}"
    consumer = client.subscribe(topic, "s", consumer_type=pulsar.ConsumerType.Shared,
                                negative_ack_redelivery_delay_ms=100)
    producer = client.create_producer(topic, batching_enabled=False)
    send_all(producer, [f"r{i}".encode() for i in range(5)])
    first = receive_n(consumer, 5)
    labels = sub_labels(topic, "s")
    s = poll(broker, lambda s: (s.value("pulsar_subscription_msg_rate_out", **labels) or 0) > 0,
             "a dispatch rate for the first delivery")
    assert s.value("pulsar_subscription_msg_rate_redeliver", **labels) == 0, (
        "a first delivery is not a redelivery"
    )

    for m in first:
        consumer.negative_acknowledge(m)
    again = receive_n(consumer, 5, what="the negatively acknowledged messages again")
    assert all(m.redelivery_count() >= 1 for m in again), [m.redelivery_count() for m in again]
    s = poll(broker, lambda s: (s.value("pulsar_subscription_msg_rate_redeliver", **labels) or 0) > 0,
             "pulsar_subscription_msg_rate_redeliver to count the 5 redeliveries")
    rate = s.value("pulsar_subscription_msg_rate_redeliver", **labels)
    assert rate <= 5 / MIN_RATE_WINDOW_S, f"5 messages redelivered in one rate window: {rate}/s"
    for m in again:
        consumer.acknowledge(m)
    consumer.close()
    producer.close()


def test_subscription_blocked_gauge_follows_max_unacked_messages(broker, client):
    from test_admin_cli import Cli
    from test_topic_stats import new_namespace
    cli = Cli(broker)
    ns = new_namespace(cli)
    cli.ok("namespaces", "set-max-unacked-messages-per-subscription", ns, "-m", "4")
    topic = f"persistent://{ns}/t"
    consumer = client.subscribe(topic, "s", consumer_type=pulsar.ConsumerType.Shared,
                                receiver_queue_size=20)
    producer = client.create_producer(topic, batching_enabled=False)
    send_all(producer, [f"b{i}".encode() for i in range(6)])
    labels = sub_labels(topic, "s")
    blocked = "pulsar_subscription_blocked_on_unacked_messages"
    unacked = "pulsar_subscription_unacked_messages"

    poll(broker, lambda s: s.value(blocked, **labels) == 1 and s.value(unacked, **labels) == 4,
         f"{blocked} 1 with the subscription's 4 allowed messages unacknowledged")
    first = receive_n(consumer, 4)
    for m in first:
        consumer.acknowledge(m)
    # The acknowledgements make room: the last 2 are dispatched, under the limit.
    rest = receive_n(consumer, 2, what="the 2 messages the acknowledgements made room for")
    poll(broker, lambda s: s.value(blocked, **labels) == 0 and s.value(unacked, **labels) == 2,
         f"{blocked} back to 0 with 2 of 4 allowed messages unacknowledged")
    for m in rest:
        consumer.acknowledge(m)
    consumer.close()
    producer.close()


def test_write_latency_and_entry_size_buckets_count_appends(broker, client):
    topic = f"persistent://public/default/{unique('buckets')}"
    producer = client.create_producer(topic, batching_enabled=False)
    send_all(producer, [b"x" * 10, b"y" * 10, b"z" * 3000])
    s = scrape(broker)
    labels = topic_labels(topic)
    latency = ["0_5", "1", "5", "10", "20", "50", "100", "200", "1000", "overflow"]
    sizes = ["128", "512", "1_kb", "2_kb", "4_kb", "16_kb", "100_kb", "1_mb", "overflow"]
    assert sum(s.value(f"pulsar_storage_write_latency_le_{b}", **labels) for b in latency) == 3
    by_size = {b: s.value(f"pulsar_entry_size_le_{b}", **labels) for b in sizes}
    assert by_size["128"] == 2 and by_size["4_kb"] == 1 and sum(by_size.values()) == 3, by_size
    producer.close()


def test_connection_broker_and_process_series(broker, client):
    topic = f"persistent://public/default/{unique('agg')}"
    producer = client.create_producer(topic)
    producer.send(b"x")
    s = scrape(broker)
    cluster = {"cluster": CLUSTER}
    assert s.value("pulsar_broker_topics_count", **cluster) == 1
    assert s.value("pulsar_broker_producers_count", **cluster) == 1
    assert s.value("pulsar_broker_consumers_count", **cluster) == 0
    assert s.value("process_resident_memory_bytes") > 1_000_000
    assert s.value("process_open_fds") > 3
    assert s.value("process_cpu_seconds_total") > 0
    assert abs(s.value("process_start_time_seconds") - time.time()) < 3600
    producer.close()


def test_broker_totals_sum_the_topics_rates_backlog_and_storage(broker, client):
    cluster = {"cluster": CLUSTER}
    counts = {f"persistent://public/default/{unique('brk')}": n for n in (7, 4)}
    readers, producers = [], []
    for topic in counts:
        client.subscribe(topic, "lagging").close()  # keeps a backlog of everything
        readers.append(client.subscribe(topic, "reading"))
        producers.append(client.create_producer(topic, batching_enabled=False))
    payload = b"total-" * 60  # one size: every entry is as big
    for producer, n in zip(producers, counts.values()):
        send_all(producer, [payload] * n)
    for reader, n in zip(readers, counts.values()):
        for m in receive_n(reader, n):
            reader.acknowledge(m)
    total = sum(counts.values())
    series = ("rate_in", "rate_out", "throughput_in", "throughput_out")

    def summed(s: Scrape, name: str) -> float:
        return sum(s.value(name, **topic_labels(t)) for t in counts)

    def rated(s: Scrape) -> bool:
        return all((s.value(f"pulsar_broker_{n}", **cluster) or 0) > 0
                   and s.value(f"pulsar_broker_{n}", **cluster) == summed(s, f"pulsar_{n}")
                   for n in series)

    s = poll(broker, rated, "pulsar_broker_rate_in/out and throughput_in/out to be the topics' summed, not 0")
    for direction in ("in", "out"):
        rate = s.value(f"pulsar_broker_rate_{direction}", **cluster)
        assert rate <= total / MIN_RATE_WINDOW_S, f"{total} messages {direction} in one rate window: {rate}/s"
        per_message = s.value(f"pulsar_broker_throughput_{direction}", **cluster) / rate
        assert per_message > len(payload), f"{direction}: entries of a {len(payload)}-byte payload: {per_message}"
        for topic in counts:
            assert_close(per_message, bytes_per_message(s, topic, direction),
                         f"pulsar_broker_throughput_{direction} per message")

    # Each "lagging" holds everything, each "reading" acknowledged everything.
    s = poll(broker, lambda s: s.value("pulsar_broker_msg_backlog", **cluster) == total,
             f"pulsar_broker_msg_backlog to be the {total} messages the 'lagging' subscriptions hold")
    for topic, n in counts.items():
        assert s.value(BACKLOG, **topic_labels(topic)) == n
    s = poll(broker, lambda s: (s.value("pulsar_broker_storage_size", **cluster) or 0) >= total * len(payload),
             "pulsar_broker_storage_size to hold the published payloads")
    assert s.value("pulsar_broker_storage_size", **cluster) == summed(s, STORAGE_SIZE)
    assert s.value("pulsar_broker_topics_count", **cluster) == len(counts)
    assert s.value("pulsar_broker_subscriptions_count", **cluster) == 2 * len(counts)
    assert s.value("pulsar_broker_consumers_count", **cluster) == len(counts)
    for c in readers + producers:
        c.close()


def test_connection_counts_follow_a_client_that_opens_and_closes(broker):
    cluster = {"cluster": CLUSTER}
    created, closed = "pulsar_connection_created_total_count", "pulsar_connection_closed_total_count"
    before = scrape(broker)
    other = pulsar.Client(broker.service_url, operation_timeout_seconds=10,
                          logger=pulsar.ConsoleLogger(pulsar.LoggerLevel.Warn))
    producer = other.create_producer(f"persistent://public/default/{unique('conn')}")
    producer.send(b"x")
    opened = scrape(broker)
    assert opened.value(created, **cluster) > before.value(created, **cluster)
    active = opened.value("pulsar_active_connections", **cluster)
    assert active >= 1
    assert opened.value(closed, **cluster) == before.value(closed, **cluster)

    other.close()
    s = poll(broker, lambda s: s.value(closed, **cluster) > opened.value(closed, **cluster),
             f"{closed} to count the closed client's connection")
    assert s.value("pulsar_active_connections", **cluster) < active
    assert s.value(closed, **cluster) <= s.value(created, **cluster)


def test_histogram_bounds_are_written_as_short_decimals(broker, client):
    producer = client.create_producer(f"persistent://public/default/{unique('le')}")
    producer.send(b"x")
    text = scrape(broker).text
    bounds = [line.split('le="', 1)[1].split('"', 1)[0] for line in text.splitlines()
              if line.startswith(FSYNC_SECONDS + "_bucket")]
    assert bounds and bounds[-1] == "+Inf", bounds
    for b in bounds[:-1]:
        assert len(b) <= 8 and float(b) > 0, f"le bound {b!r} is not a short decimal: {bounds}"
    assert "0.00005" in bounds or "0.0001" in bounds, bounds
    producer.close()


def test_publish_stage_histograms_count_every_stored_send_once_per_stage(broker, client):
    """Each stage of a persistent SEND (frame read -> append asked -> journal
    group written -> fdatasync done -> receipt queued -> receipt written) is
    one series of one histogram family, observed once per SEND."""
    before = scrape(broker)
    family = before.family_with_sample(f"{PUBLISH_STAGE}_count")
    assert family is not None and family.type == "histogram", f"no histogram {PUBLISH_STAGE}"

    def count(s: Scrape, stage: str) -> float:
        value = s.value(f"{PUBLISH_STAGE}_count", stage=stage)
        assert value is not None, f"{PUBLISH_STAGE} has no series for stage {stage!r}"
        return value

    counted = {stage: count(before, stage) for stage in PUBLISH_STAGES}
    topic = f"persistent://public/default/{unique('stages')}"
    producer = client.create_producer(topic, batching_enabled=False)
    n = 25
    send_all(producer, [f"staged-{i}".encode() for i in range(n)])
    # The receipt's own stage ends once the writer wrote it: the client may
    # hold the receipt a moment before the broker counts that stage.
    after = poll(
        broker,
        lambda s: all(count(s, st) - counted[st] >= n for st in PUBLISH_STAGES),
        f"every stage of {PUBLISH_STAGE} to count the {n} sends",
    )
    for stage in PUBLISH_STAGES:
        inf = after.value(f"{PUBLISH_STAGE}_bucket", stage=stage, le="+Inf")
        assert inf == count(after, stage), f"stage {stage}: +Inf bucket {inf} != _count"
    durable = after.value(f"{PUBLISH_STAGE}_sum", stage="durable") - before.value(
        f"{PUBLISH_STAGE}_sum", stage="durable")
    assert durable > 0, "an fdatasync takes time: the durable stage's sum must grow"
    producer.close()
