"""Cluster mode end to end: three `kilonova broker`s on one etcd (cluster.py),
with the real Pulsar client given ONE broker's URL (broker 0's).

What is checked, as Pulsar behaves:
  - lookups: any broker answers; an unowned bundle is placed on the least
    loaded live broker, and a broker that is not that one answers an
    authoritative Redirect; the chosen broker takes the bundle. So one client
    reaches topics owned by every broker;
  - subscriptions of every type on a topic another broker owns;
  - unloads (a namespace, a bundle): topics are closed on their owners and
    clients reconnect and carry on;
  - a broker's death (kill -9) or pause (SIGSTOP past its session ttl): its
    bundles are free once its session expires and clients carry on through
    the other brokers; a paused broker that wakes up closes its clients.

Most tests run brokers without an object store: topics then keep their data
on the broker that served them, and a moved topic starts empty on its new
owner. So they count only what was sent after the move, and give the
namespace an infinite retention so that a moved topic keeps what arrives
before its consumer is back. The tests at the end run brokers with an
object store (`shared_cluster`): messages and subscription positions follow
a topic to its next owner, and a killed broker loses nothing acknowledged.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
import zlib

import pulsar
import pytest

import wire
from cluster import bundle_index, bundle_name, split_topic
from conftest import (CLIENT_LOGGER, http, assert_no_more, collect_from, payloads, receive_n, unique,
                      wait_until)

LOOKUP_REDIRECT = 0
LOOKUP_CONNECT = 1
LOOKUP_FAILED = 2
ANSWERS = "pulsar_broker_lookup_answers"
REDIRECTS = "pulsar_broker_lookup_redirects"
SHORT_TTL = {"session_ttl_secs": 3}
# How long a client may take to get going again once a dead or paused
# broker's session expired: the C++ client's reconnection backoff doubles
# from 100 ms, so it may wait ~13 s more after a ~3 s outage.
RECOVERY_TIMEOUT_S = 40.0
# A broker renews its session every third of its ttl, so a broker that
# stops can lose its session as early as two thirds of the ttl later (the
# last renewal may have been a third of the ttl before it stopped).
EARLIEST_EXPIRY = 2 / 3


# ---------------------------------------------------------------- helpers


def make_client(cluster, i: int = 0, **kwargs) -> pulsar.Client:
    kwargs.setdefault("operation_timeout_seconds", 30)
    kwargs.setdefault("logger", CLIENT_LOGGER)
    return pulsar.Client(cluster.broker(i).service_url, **kwargs)


@pytest.fixture
def client0(cluster):
    """A client given broker 0's URL only."""
    c = make_client(cluster)
    yield c
    c.close()


def retain_everything(cluster, ns: str = "public/default") -> None:
    """Infinite retention: a topic that moved to a new owner keeps what
    arrives there before its consumer subscribes again."""
    status, body = cluster.rest(0, "POST", f"/admin/v2/namespaces/{ns}/retention",
                                {"retentionTimeInMinutes": -1, "retentionSizeInMB": -1})
    assert status in (200, 204), f"setting the retention of {ns}: {status} {body[:300]!r}"


def topic_stats(cluster, i: int, topic: str) -> dict | None:
    """Topic stats as broker `i` answers them (None unless 200)."""
    _, tenant, ns, local = split_topic(topic)
    try:
        status, body = cluster.rest(i, "GET", f"/admin/v2/persistent/{tenant}/{ns}/{local}/stats",
                                    timeout=3.0)
    except OSError:
        return None
    return json.loads(body) if status == 200 else None


def served_at(cluster, i: int, topic: str, producer: str | None = None, sub: str | None = None) -> bool:
    """Whether broker `i` serves `topic` with producer `producer` and a
    consumer on subscription `sub` connected."""
    stats = topic_stats(cluster, i, topic)
    if stats is None:
        return False
    if producer is not None and producer not in {p.get("producerName") for p in stats.get("publishers", [])}:
        return False
    if sub is not None and not stats.get("subscriptions", {}).get(sub, {}).get("consumers"):
        return False
    return True


def raw_lookup(port: int, topic: str, authoritative: bool = False, request_id: int = 1) -> wire.Frame:
    """One binary LOOKUP (field 3: authoritative) on a fresh connection."""
    with wire.RawConnection("127.0.0.1", port) as conn:
        conn.handshake()
        conn.send(wire.frame(wire.base_command(
            wire.LOOKUP, wire.pb((1, topic), (2, request_id), (3, authoritative)))))
        return conn.expect(wire.LOOKUP_RESPONSE)


def spread_topics(cluster, per_bundle: int, prefix: str) -> list[str]:
    """`per_bundle` fresh topics in each bundle of public/default."""
    return [t for ts in cluster.topics_in_bundles(per_bundle=per_bundle, prefix=prefix) for t in ts]


def spread_clients(cluster, client, prefix: str):
    """Two fresh topics in each bundle of public/default, each with a
    consumer (subscription "s", from the earliest) and an unbatched producer
    that retries for a minute: (topics, consumers, producers, owners)."""
    topics = spread_topics(cluster, per_bundle=2, prefix=prefix)
    consumers = {t: client.subscribe(t, "s", initial_position=pulsar.InitialPosition.Earliest)
                 for t in topics}
    producers = {t: client.create_producer(t, batching_enabled=False, send_timeout_millis=60_000)
                 for t in topics}
    owners = {t: cluster.owner_of(t) for t in topics}
    return topics, consumers, producers, owners


class Pump(threading.Thread):
    """Sends `topic|seq` to every producer in turn with send_async, until
    stopped; records which sequence numbers each topic had acknowledged, and
    when each acknowledgement arrived."""

    def __init__(self, producers: dict, interval: float = 0.02):
        super().__init__(daemon=True)
        self.producers = producers
        self.interval = interval
        self.lock = threading.Lock()
        self.next_seq = {t: 0 for t in producers}
        self.acked = {t: set() for t in producers}
        self.ack_times: list[float] = []  # time.monotonic() of each acknowledgement
        self.failed = {t: [] for t in producers}
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            for t, p in self.producers.items():
                with self.lock:
                    seq = self.next_seq[t]
                    self.next_seq[t] += 1
                try:
                    p.send_async(f"{t}|{seq}".encode(), self._callback(t, seq))
                except pulsar.PulsarException as e:
                    with self.lock:
                        self.failed[t].append((seq, str(e)))
            self.halt.wait(self.interval)

    def _callback(self, topic: str, seq: int):
        def done(result, _msg_id):
            with self.lock:
                if result == pulsar.Result.Ok:
                    self.acked[topic].add(seq)
                    self.ack_times.append(time.monotonic())
                else:
                    self.failed[topic].append((seq, str(result)))
        return done

    def mark(self) -> dict[str, int]:
        """Each topic's next sequence number: what is sent from now on is at or past it."""
        with self.lock:
            return dict(self.next_seq)

    def acked_since(self, topic: str, mark: int) -> set[int]:
        with self.lock:
            return {s for s in self.acked[topic] if s >= mark}

    def acks_between(self, start: float, end: float) -> int:
        """How many acknowledgements (of any topic) arrived within [start, end] (monotonic)."""
        with self.lock:
            return sum(1 for at in self.ack_times if start <= at <= end)

    def wait_acked(self, topics, mark: dict[str, int], n: int, timeout: float, what: str) -> None:
        wait_until(lambda: all(len(self.acked_since(t, mark[t])) >= n for t in topics), timeout,
                   f"{n} sends acknowledged on each of {len(list(topics))} topics {what} "
                   f"(acknowledged: { {t: len(self.acked_since(t, mark[t])) for t in topics} }, "
                   f"last failures: { {t: self.failed[t][-2:] for t in topics if self.failed[t]} })",
                   interval=0.1)

    def finish(self) -> None:
        """Stops sending and waits for every send's answer."""
        self.halt.set()
        self.join(10)
        for p in self.producers.values():
            try:
                p.flush()
            except pulsar.PulsarException:
                pass
        # flush() may return before the client ran the last callbacks: every
        # sequence number sent ends up acknowledged or failed, at the latest
        # at the client's send timeout (30 s). A send the client never
        # answers (seen with pulsar-client around a termination) only
        # counts as not acknowledged: what follows reads `acked` as final,
        # and a missing entry there can only weaken its checks.
        try:
            wait_until(self._all_answered, 35, "every send's callback ran")
        except AssertionError:
            pass

    def _all_answered(self) -> bool:
        with self.lock:
            answered = sum(map(len, self.acked.values())) + sum(map(len, self.failed.values()))
            return answered == sum(self.next_seq.values())


def receive_payloads_until(consumer, want: set[bytes], timeout: float) -> list[bytes]:
    """Receives (and acks) until every payload in `want` arrived; returns all received."""
    got: list[bytes] = []
    deadline = time.monotonic() + timeout
    while not want <= set(got):
        left = int((deadline - time.monotonic()) * 1000)
        if left <= 0:
            raise AssertionError(f"missing {sorted(want - set(got))} after {timeout}s (received {got})")
        try:
            m = consumer.receive(timeout_millis=min(left, 500))
        except pulsar.Timeout:
            continue
        got.append(m.data())
        consumer.acknowledge(m)
    return got


def receive_seqs(consumer, topic: str, want: set[int], timeout: float) -> set[int]:
    """Receives (and acks) from `consumer` until every sequence number in
    `want` has arrived; returns every sequence number received."""
    seen: set[int] = set()
    deadline = time.monotonic() + timeout
    while not want <= seen:
        left = int((deadline - time.monotonic()) * 1000)
        if left <= 0:
            missing = sorted(want - seen)
            raise AssertionError(f"{len(missing)} of {len(want)} acknowledged messages on {topic} "
                                 f"not received within {timeout}s: {missing[:20]}")
        try:
            m = consumer.receive(timeout_millis=min(left, 500))
        except pulsar.Timeout:
            continue
        name, _, seq = m.data().decode().rpartition("|")
        assert name == topic, f"{topic}'s consumer received {m.data()!r}"
        seen.add(int(seq))
        consumer.acknowledge(m)
    return seen


# ---------------------------------------------------------------- the fixtures themselves


def test_the_etcd_fixture_answers_healthy(etcd):
    from conftest import http
    status, body = http("GET", f"{etcd.endpoint}/health")
    assert status == 200 and json.loads(body)["health"] == "true", body


def test_every_broker_lists_the_three_brokers(cluster):
    want = sorted(f"127.0.0.1:{b.http_port}" for b in cluster.brokers)
    for i in range(3):
        assert sorted(cluster.listed(i) or []) == want, f"broker {i} lists {cluster.listed(i)}"


# ---------------------------------------------------------------- lookups and placement


def test_a_lookup_for_an_unowned_bundle_redirects_to_the_least_loaded_broker_which_takes_it(cluster):
    """Raw LOOKUPs on broker 0, one bundle after the other: each bundle goes
    to a broker owning fewest bundles; an answer naming another broker is an
    authoritative Redirect, and that broker, asked authoritatively, takes the
    bundle and answers Connect to itself."""
    topics = [ts[0] for ts in cluster.topics_in_bundles(per_bundle=1, prefix="raw")]
    owned = {0: 0, 1: 0, 2: 0}
    redirects = 0
    for n, topic in enumerate(topics):
        f = raw_lookup(cluster.broker(0).pulsar_port, topic, request_id=n + 1)
        kind = wire.first(f.body, 3)
        url = wire.first(f.body, 1, b"").decode()
        target = cluster.index_of_url(url)
        assert target is not None, f"lookup of {topic} names no broker of the cluster: {f}"
        assert owned[target] == min(owned.values()), (
            f"bundle {n} placed on broker {target}, which owns {owned[target]} bundles (owned: {owned})")
        if target == 0:
            assert kind == LOOKUP_CONNECT, f"broker 0 chose itself but answered {f}"
        else:
            assert kind == LOOKUP_REDIRECT, f"broker 0 chose broker {target} but answered {f}"
            assert wire.first(f.body, 5) == 1, f"a redirect must be authoritative: {f}"
            redirects += 1
            g = raw_lookup(cluster.broker(target).pulsar_port, topic, authoritative=True)
            assert wire.first(g.body, 3) == LOOKUP_CONNECT, f"broker {target} asked authoritatively: {g}"
            assert wire.first(g.body, 1, b"").decode() == cluster.broker(target).service_url, g
        owned[target] += 1
        for via in range(3):
            assert cluster.owner_of(topic, via) == target, f"broker {via}'s HTTP lookup of {topic}"
    assert sorted(owned.values()) == [1, 1, 2], f"4 bundles over 3 brokers: {owned}"
    assert redirects >= 2
    assert cluster.metric(0, REDIRECTS) >= redirects


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def http_lookup_once(cluster, via: int, topic: str, query: dict | None = None,
                     headers: dict | None = None) -> tuple[int, str | None, object]:
    """An HTTP lookup on broker `via` (with `query` parameters and `headers`)
    whose redirect is not followed: (status, Location, JSON or body)."""
    _, tenant, ns, local = split_topic(topic)
    path = "/".join(urllib.parse.quote(p, safe="") for p in (tenant, ns, local))
    url = f"{cluster.broker(via).http_url}/lookup/v2/topic/persistent/{path}"
    if query:
        url += "?" + urllib.parse.urlencode(query)
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.build_opener(_NoRedirects).open(req, timeout=10) as r:
            return r.status, None, json.loads(r.read())
    except urllib.error.HTTPError as e:
        body = e.read()
        try:
            return e.code, e.headers.get("Location"), json.loads(body)
        except ValueError:
            return e.code, e.headers.get("Location"), body


def test_an_http_lookup_for_an_unowned_bundle_redirects_to_the_chosen_broker_which_takes_it(cluster):
    """As Pulsar's: a broker that places a bundle elsewhere answers 307 to the
    chosen broker's lookup URL with authoritative=true; that broker takes
    the bundle and answers itself. (A 200 naming another broker would be an
    answer nobody stands behind: the next lookup may place it elsewhere.)"""
    topics = [ts[0] for ts in cluster.topics_in_bundles(per_bundle=1, prefix="httplookup")]
    owned = {0: 0, 1: 0, 2: 0}
    for topic in topics:
        status, location, doc = http_lookup_once(cluster, 0, topic)
        if status == 200:
            assert doc["brokerUrl"] == cluster.broker(0).service_url, (
                f"broker 0 answered 200 for {topic} naming another broker (no redirect, nobody took "
                f"the bundle): {doc}")
            target = 0
        else:
            assert status == 307 and location, f"HTTP lookup of {topic} on broker 0: {status} {location} {doc!r}"
            parts = urllib.parse.urlsplit(location)
            target = cluster.index_of_url(f"{parts.scheme}://{parts.netloc}")
            assert target not in (None, 0), f"redirected to {location}"
            assert urllib.parse.parse_qs(parts.query).get("authoritative") == ["true"], location
            status, _, doc = http_lookup_once(cluster, target, topic)  # cannot be redirected again
            assert status == 200 and doc["brokerUrl"] == cluster.broker(target).service_url, (status, doc)
        owned[target] += 1
        # It owns it now: a binary lookup anywhere answers Connect to it.
        for via in range(3):
            f = raw_lookup(cluster.broker(via).pulsar_port, topic)
            assert wire.first(f.body, 3) == LOOKUP_CONNECT, f"broker {via}: {f}"
            assert wire.first(f.body, 1, b"").decode() == cluster.broker(target).service_url, f"broker {via}: {f}"
    assert sorted(owned.values()) == [1, 1, 2], f"4 bundles over 3 brokers: {owned}"


def test_one_client_given_one_broker_serves_topics_owned_by_all_three(cluster, client0):
    topics = spread_topics(cluster, per_bundle=3, prefix="spread")  # 12 topics, 3 per bundle
    assert cluster.metric(0, REDIRECTS) == 0, "a fresh cluster has redirected nothing"
    answers_before = cluster.metric(0, ANSWERS)
    consumers = {t: client0.subscribe(t, "s", initial_position=pulsar.InitialPosition.Earliest)
                 for t in topics}
    producers = {t: client0.create_producer(t, batching_enabled=False) for t in topics}
    for t, p in producers.items():
        for j in range(5):
            p.send(f"{t}|{j}".encode())
    for t, c in consumers.items():
        got = receive_n(c, 5, what=f"messages on {t}")
        assert payloads(got) == [f"{t}|{j}".encode() for j in range(5)]
        for m in got:
            c.acknowledge(m)

    owners = {t: cluster.owner_of(t) for t in topics}
    assert set(owners.values()) == {0, 1, 2}, f"owners: {owners}"
    # Each topic is served by its owner: its producer and consumer are there.
    for t in topics:
        assert served_at(cluster, owners[t], t, producers[t].producer_name(), "s"), (
            f"broker {owners[t]} (the owner) does not serve {t}'s producer and consumer: "
            f"{topic_stats(cluster, owners[t], t)}")
    # Every broker agrees on the owners.
    for via in (1, 2):
        assert {t: cluster.owner_of(t, via) for t in topics} == owners
    redirects = cluster.metric(0, REDIRECTS)
    assert redirects >= 2, f"broker 0 redirected {redirects} lookups (2 bundles at least are elsewhere)"
    assert cluster.metric(0, ANSWERS) - answers_before >= len(topics), "every topic was looked up on broker 0"


def test_a_12_partition_topic_spreads_over_the_brokers_and_a_consumer_gets_every_message(cluster, client0):
    ranges = cluster.bundle_ranges()
    while True:  # a name whose partitions fall in every bundle
        local = unique("parts")
        names = [f"persistent://public/default/{local}-partition-{p}" for p in range(12)]
        if len({bundle_index(ranges, zlib.crc32(n.encode())) for n in names}) == len(ranges):
            break
    topic = f"persistent://public/default/{local}"
    status, body = cluster.rest(0, "PUT", f"/admin/v2/persistent/public/default/{local}/partitions", 12)
    assert status in (200, 204), f"creating {topic}: {status} {body[:300]!r}"
    # Every broker knows the partition count (it is metadata, in etcd).
    for i in range(3):
        status, body = cluster.rest(i, "GET", f"/admin/v2/persistent/public/default/{local}/partitions")
        assert status == 200 and json.loads(body)["partitions"] == 12, f"broker {i}: {status} {body!r}"

    consumer = client0.subscribe(topic, "s", initial_position=pulsar.InitialPosition.Earliest)
    producer = client0.create_producer(
        topic, batching_enabled=False,
        message_routing_mode=pulsar.PartitionsRoutingMode.RoundRobinDistribution)
    sent = [f"p-{j}".encode() for j in range(120)]
    for p in sent:
        producer.send(p)
    got = receive_n(consumer, len(sent), timeout=30, what=f"messages on {topic}")
    assert sorted(payloads(got)) == sorted(sent)
    partitions = {m.topic_name().rsplit("-partition-", 1)[1] for m in got}
    assert len(partitions) == 12, f"round robin over 12 partitions reached {sorted(partitions)}"
    owners = {n: cluster.owner_of(n) for n in names}
    assert set(owners.values()) == {0, 1, 2}, f"the partitions' owners: {owners}"


def elsewhere(cluster, prefix: str, not_on: int = 0) -> tuple[str, int]:
    """A fresh topic placed (by a client's lookup on broker 0) on a broker other
    than `not_on`, and that broker. Four bundles over three brokers: two at
    least are elsewhere."""
    for topic in [ts[0] for ts in cluster.topics_in_bundles(per_bundle=1, prefix=prefix)]:
        owner = cluster.client_lookup(topic)
        assert owner is not None, f"the lookup of {topic} failed"
        assert cluster.owner_of(topic) == owner, f"the HTTP lookup of {topic} disagrees with the client's"
        if owner != not_on:
            return topic, owner
    raise AssertionError(f"every bundle of public/default was placed on broker {not_on}")


def test_a_policy_set_through_one_broker_applies_on_the_broker_serving_the_topic(cluster, client0):
    """Policies live in etcd; every broker's policy cache watches them. A
    namespace's maxProducersPerTopic set through broker 0 holds on a topic
    another broker serves, and lifting it there lets a second producer in."""
    topic, owner = elsewhere(cluster, "policy")
    first = client0.create_producer(topic)
    status, body = cluster.rest(0, "POST", "/admin/v2/namespaces/public/default/maxProducersPerTopic", 1)
    assert status in (200, 204), (status, body)
    wait_until(lambda: second_producer_refused(client0, topic), 10,
               f"broker {owner} refusing a second producer under maxProducersPerTopic=1 set through broker 0")
    status, body = cluster.rest(0, "DELETE", "/admin/v2/namespaces/public/default/maxProducersPerTopic")
    assert status in (200, 204), (status, body)
    wait_until(lambda: not second_producer_refused(client0, topic), 10,
               f"broker {owner} letting a second producer in once the policy is removed")
    first.close()


def second_producer_refused(client, topic: str) -> bool:
    """Whether one more producer on `topic` is refused as busy."""
    try:
        p = client.create_producer(topic)
    except pulsar.ProducerBusy:
        return True
    p.close()
    return False


def test_partitioned_topic_admin_reaches_every_partition_whichever_broker_serves_it(cluster, client0):
    """A partitioned topic's partitions spread over the brokers; asked of
    broker 0, each per-partition operation runs on every partition where it
    is served (repeated on the owners with the caller's request, as Pulsar
    fans it out): stats add up every partition's, subscriptions are listed,
    a backlog is cleared, the topic unloaded and deleted."""
    topic = unique("persistent://public/default/fanout")
    local = topic.rsplit("/", 1)[1]
    cluster.admin_ok(0, "topics", "create-partitioned-topic", topic, "-p", "12")
    consumer = client0.subscribe(topic, "s", initial_position=pulsar.InitialPosition.Earliest)
    producer = client0.create_producer(topic, batching_enabled=False,
                                       message_routing_mode=pulsar.PartitionsRoutingMode.RoundRobinDistribution)
    for i in range(60):
        producer.send(f"m{i}".encode())
    owners = {cluster.owner_of(f"{topic}-partition-{i}") for i in range(12)}
    assert owners == {0, 1, 2}, f"partitions served by {owners}"

    stats = json.loads(cluster.admin_ok(0, "topics", "partitioned-stats", topic))
    assert stats["msgInCounter"] == 60, stats
    assert stats["subscriptions"]["s"]["msgBacklog"] == 60, stats["subscriptions"]
    assert cluster.admin_ok(0, "topics", "subscriptions", topic).split() == ["s"]

    cluster.admin_ok(0, "topics", "clear-backlog", topic, "-s", "s")
    stats = json.loads(cluster.admin_ok(0, "topics", "partitioned-stats", topic))
    assert stats["subscriptions"]["s"]["msgBacklog"] == 0, stats["subscriptions"]

    cluster.admin_ok(0, "topics", "unload", topic)
    producer.send(b"after the unload")  # the producers found their partitions again
    # (Messages the consumer had prefetched before the backlog was cleared come first.)
    wait_until(lambda: consumer.receive(10_000).data() == b"after the unload", 30,
               "the consumer receiving the message sent after the unload")

    consumer.close()
    producer.close()
    cluster.admin_ok(0, "topics", "delete-partitioned-topic", topic, "-f")
    listed = cluster.admin_ok(1, "topics", "list", "public/default").split()
    assert not [t for t in listed if local in t], f"left after the delete: {listed}"


@pytest.mark.parametrize("bundles", [6, 8])
def test_a_namespace_created_on_one_broker_is_served_by_all_with_its_bundles_spread_evenly(
        cluster, client0, bundles):
    ns = f"public/{unique('ns')}"
    cluster.admin_ok(1, "namespaces", "create", ns, "--bundles", bundles)
    ranges = cluster.bundle_ranges(ns, via=2)
    assert len(ranges) == bundles, f"{ns} seen from broker 2: {ranges}"
    # Pulsar's boundaries: i * (2^32 / n), the last one 0xffffffff.
    step = (1 << 32) // bundles
    assert ranges == [(i * step, (i + 1) * step if i < bundles - 1 else 0xFFFFFFFF) for i in range(bundles)], (
        [bundle_name(ranges, i) for i in range(len(ranges))])
    topics = [ts[0] for ts in cluster.topics_in_bundles(ns, per_bundle=1, prefix="ns")]
    # The broker puts each where this harness computed (CRC-32 of the full name).
    for i, t in enumerate(topics):
        assert cluster.admin_ok(0, "topics", "bundle-range", t).strip() == bundle_name(ranges, i), t
    for t in topics:  # one after the other: each placement sees the previous ones
        consumer = client0.subscribe(t, "s", initial_position=pulsar.InitialPosition.Earliest)
        client0.create_producer(t).send(t.encode())
        assert payloads(receive_n(consumer, 1, what=f"the message on {t}")) == [t.encode()]
    owners = [cluster.owner_of(t) for t in topics]
    counts = [owners.count(i) for i in range(3)]
    assert max(counts) - min(counts) <= 1, (
        f"{bundles} bundles placed one by one on the least loaded broker: owners {owners}")


def test_a_producer_or_subscription_on_a_broker_not_owning_the_bundle_is_refused_as_not_ready(cluster):
    """Pulsar refuses PRODUCER / SUBSCRIBE for a topic whose bundle another
    broker owns with ServiceNotReady (the client then looks it up again)."""
    topic, owner = elsewhere(cluster, "notmine")
    other = next(i for i in range(3) if i != owner)
    with wire.RawConnection("127.0.0.1", cluster.broker(other).pulsar_port) as conn:
        conn.handshake()
        conn.send(wire.producer_cmd(topic, 1, 1))
        f = conn.expect(wire.ERROR)
        assert wire.first(f.body, 2) == 6, f"PRODUCER on broker {other} (not the owner): {f}"
        conn.send(wire.subscribe_cmd(topic, "s", 1, 2))
        f = conn.expect(wire.ERROR)
        assert wire.first(f.body, 2) == 6, f"SUBSCRIBE on broker {other} (not the owner): {f}"
    with wire.RawConnection("127.0.0.1", cluster.broker(owner).pulsar_port) as conn:
        conn.handshake()
        conn.send(wire.producer_cmd(topic, 1, 1))
        conn.expect(wire.PRODUCER_SUCCESS)
    assert cluster.owner_of(topic) == owner, "the refused requests did not move the bundle"


def test_admin_requests_for_a_topic_through_another_broker_reach_its_owner(cluster, client0):
    """As Pulsar's: a topic's admin request on a broker that does not own it
    is answered 307 to the owner (the admin CLI follows it)."""
    topic, owner = elsewhere(cluster, "adminredirect")
    other = next(i for i in range(3) if i != owner)
    producer = client0.create_producer(topic, batching_enabled=False)
    consumer = client0.subscribe(topic, "s")
    producer.send(b"one")
    _, tenant, ns, local = split_topic(topic)
    path = f"/admin/v2/persistent/{tenant}/{ns}/{local}/stats"
    try:
        with urllib.request.build_opener(_NoRedirects).open(cluster.broker(other).http_url + path, timeout=10) as r:
            raise AssertionError(f"stats of {topic} on broker {other} (not the owner) answered {r.status}")
    except urllib.error.HTTPError as e:
        assert e.code == 307, f"stats of {topic} on broker {other}: {e.code} {e.read()[:300]!r}"
        location = urllib.parse.urlsplit(e.headers.get("Location") or "")
        assert cluster.index_of_url(f"{location.scheme}://{location.netloc}") == owner, e.headers.get("Location")
    out = cluster.admin_ok(other, "topics", "stats", topic)
    assert producer.producer_name() in out, f"`topics stats` through broker {other}:\n{out}"
    # A deletion through the other broker deletes it on its owner.
    third = next(i for i in range(3) if i not in (owner, other))
    assert topic in cluster.admin_ok(third, "topics", "list", f"{tenant}/{ns}"), "listed before its deletion"
    producer.close()
    consumer.close()
    cluster.admin_ok(other, "topics", "delete", topic, "--force")
    assert topic_stats(cluster, owner, topic) is None, f"{topic} still has stats on broker {owner}"
    listed = cluster.admin_ok(third, "topics", "list", f"{tenant}/{ns}")
    assert topic not in listed, f"{topic} still listed:\n{listed}"


SUB_TYPE_NAMES = {
    pulsar.ConsumerType.Exclusive: "Exclusive",
    pulsar.ConsumerType.Shared: "Shared",
    pulsar.ConsumerType.Failover: "Failover",
    pulsar.ConsumerType.KeyShared: "Key_Shared",
}


@pytest.mark.parametrize("sub_type", list(SUB_TYPE_NAMES), ids=list(SUB_TYPE_NAMES.values()))
def test_each_subscription_type_works_on_a_topic_another_broker_owns(cluster, client0, sub_type):
    topic, owner = elsewhere(cluster, "subtype")
    sub = unique("sub")
    producer = client0.create_producer(topic, batching_enabled=False)

    def consumer(name: str, **kw):
        return client0.subscribe(topic, sub, consumer_type=sub_type, consumer_name=name, **kw)

    if sub_type == pulsar.ConsumerType.Exclusive:
        first = consumer("a")
        with pytest.raises(pulsar.ConsumerBusy):
            consumer("b")
        sent = [f"x-{j}".encode() for j in range(10)]
        for p in sent:
            producer.send(p)
        assert payloads(receive_n(first, 10)) == sent
    elif sub_type == pulsar.ConsumerType.Shared:
        cs = [consumer(f"c{i}", receiver_queue_size=5) for i in range(2)]
        sent = {f"s-{j:02d}".encode() for j in range(40)}
        for p in sorted(sent):
            producer.send(p)
        got = collect_from(cs, len(sent))
        data = {i: payloads(ms) for i, ms in got.items()}
        assert len(data[0]) >= 10 and len(data[1]) >= 10, f"not shared: {len(data[0])} / {len(data[1])}"
        assert sorted(data[0] + data[1]) == sorted(sent), "each message once, to one consumer"
    elif sub_type == pulsar.ConsumerType.Failover:
        b = consumer("b-consumer")
        a = consumer("a-consumer")  # sorts first: the active one
        sent = [f"f-{j}".encode() for j in range(10)]
        for p in sent:
            producer.send(p)
        got = receive_n(a, 10, what="messages on the active consumer")
        assert payloads(got) == sent
        assert_no_more(b, 300, "inactive failover consumer")
        for m in got:
            a.acknowledge(m)
        a.close()
        later = [f"f-{j}".encode() for j in range(10, 15)]
        for p in later:
            producer.send(p)
        # b gets the new messages (and perhaps some of the first ten again:
        # acks are asynchronous, a's last ones may not have reached the broker).
        taken = receive_payloads_until(b, set(later), timeout=10)
        assert set(taken) <= set(sent) | set(later), taken
    else:
        cs = [consumer(f"k{i}") for i in range(2)]
        keys = [f"key-{k:02d}" for k in range(16)]
        for j in range(48):
            producer.send(f"{keys[j % 16]}|{j}".encode(), partition_key=keys[j % 16])
        got = collect_from(cs, 48)
        owner_of_key: dict[str, int] = {}
        for i, ms in got.items():
            for m in ms:
                k = m.partition_key()
                assert owner_of_key.setdefault(k, i) == i, f"key {k} went to both consumers"
        assert sorted(p for ms in got.values() for p in payloads(ms)) == sorted(
            f"{keys[j % 16]}|{j}".encode() for j in range(48))

    stats = topic_stats(cluster, owner, topic)
    assert stats is not None, f"broker {owner} (the owner) has no stats of {topic}"
    assert stats["subscriptions"][sub]["type"] == SUB_TYPE_NAMES[sub_type], stats["subscriptions"][sub]
    assert cluster.owner_of(topic) == owner, "the topic stayed on its owner"


# ---------------------------------------------------------------- unloads


def unload(cluster, how: str) -> None:
    if how == "namespace-cli":
        cluster.admin_ok(0, "namespaces", "unload", "public/default")
    elif how == "namespace-rest":
        status, body = cluster.rest(0, "PUT", "/admin/v2/namespaces/public/default/unload")
        assert status in (200, 204), f"namespace unload: {status} {body[:300]!r}"
    else:
        ranges = cluster.bundle_ranges()
        for i in range(len(ranges)):
            status, body = cluster.rest(0, "PUT", f"/admin/v2/namespaces/public/default/"
                                                  f"{bundle_name(ranges, i)}/unload")
            assert status in (200, 204), f"unloading bundle {bundle_name(ranges, i)}: {status} {body[:300]!r}"


@pytest.mark.parametrize("how", ["namespace-cli", "namespace-rest", "every-bundle-rest"])
def test_producers_and_consumers_carry_on_across_an_unload(cluster, client0, how):
    retain_everything(cluster)
    topics = spread_topics(cluster, per_bundle=2, prefix="unload")  # 8 topics, over every broker
    consumers = {t: client0.subscribe(t, "s", initial_position=pulsar.InitialPosition.Earliest)
                 for t in topics}
    producers = {t: client0.create_producer(t, batching_enabled=False) for t in topics}
    owners = {t: cluster.owner_of(t) for t in topics}
    assert set(owners.values()) == {0, 1, 2}, f"owners before the unload: {owners}"
    pump = Pump(producers)
    pump.start()
    try:
        pump.wait_acked(topics, {t: 0 for t in topics}, 5, 20, "before the unload")
        answers_before = cluster.metric(0, ANSWERS)
        unload(cluster, how)
        mark = pump.mark()
        pump.wait_acked(topics, mark, 20, 30, "after the unload")
    finally:
        pump.finish()
    # Every bundle went to another broker, named to the clients in the
    # close commands (Pulsar's assigned broker URL): they reconnected there
    # straight away, without looking the topics up again.
    moved = {t: cluster.owner_of(t) for t in topics}
    assert all(moved[t] != owners[t] for t in topics), f"owners before {owners}, after {moved}"
    lookups = cluster.metric(0, ANSWERS) - answers_before - len(topics)  # owner_of's own
    assert lookups < len(topics), f"{lookups} lookups after the unload: the clients did not go straight to the next owner"
    for t in topics:
        want = pump.acked_since(t, mark[t])
        receive_seqs(consumers[t], t, want, timeout=20)
    # Each topic is served by one broker, which serves its producer and
    # consumer; every producer registered again (its msgInCounter there
    # misses what it sent before the unload), wherever its topic was.
    for t in topics:
        owner = cluster.owner_of(t)
        assert served_at(cluster, owner, t, producers[t].producer_name(), "s"), (
            f"{t} after the unload: broker {owner} (the owner) does not serve its clients: "
            f"{topic_stats(cluster, owner, t)}")
        count = producer_msg_in(cluster, owner, t, producers[t].producer_name())
        acked = len(pump.acked[t])
        assert count is not None and count < acked, (
            f"{t} (on broker {owners[t]} before the unload, {owner} after): its producer's msgInCounter "
            f"is {count} of {acked} acknowledged sends: it was not closed by the unload")


def producer_msg_in(cluster, i: int, topic: str, producer: str) -> int | None:
    """msgInCounter of `producer` on broker `i` (counted from the producer's
    registration there, as Pulsar's publisher stats: a reconnected producer
    starts again from 0)."""
    stats = topic_stats(cluster, i, topic) or {}
    for p in stats.get("publishers", []):
        if p.get("producerName") == producer:
            return p.get("msgInCounter")
    return None


@pytest.mark.parametrize("how", ["rest", "cli"])
def test_unloading_one_bundle_reconnects_only_its_topics_clients(cluster, client0, how):
    per_bundle = cluster.topics_in_bundles(per_bundle=2, prefix="onebundle")
    topics = [t for ts in per_bundle for t in ts]
    producers = {t: client0.create_producer(t, batching_enabled=False) for t in topics}
    for t, p in producers.items():
        for j in range(3):
            p.send(f"{t}|{j}".encode())
    owners = {t: cluster.owner_of(t) for t in topics}
    counts = {t: producer_msg_in(cluster, owners[t], t, producers[t].producer_name()) for t in topics}
    assert all(c == 3 for c in counts.values()), f"each producer's msgInCounter on its owner: {counts}"
    ranges = cluster.bundle_ranges()
    # A bundle broker 0 does not own: the unload is forwarded to its owner.
    b = next(i for i, ts in enumerate(per_bundle) if owners[ts[0]] != 0)
    if how == "cli":
        cluster.admin_ok(0, "namespaces", "unload", "public/default", "--bundle", bundle_name(ranges, b))
    else:
        status, body = cluster.rest(0, "PUT", f"/admin/v2/namespaces/public/default/{bundle_name(ranges, b)}/unload")
        assert status in (200, 204), f"unloading bundle {bundle_name(ranges, b)}: {status} {body[:300]!r}"
    for t in topics:
        producers[t].send(f"{t}|3".encode())
    for bi, ts in enumerate(per_bundle):
        for t in ts:
            owner = cluster.owner_of(t)
            count = producer_msg_in(cluster, owner, t, producers[t].producer_name())
            if bi == b:
                assert count == 1, f"{t} (unloaded bundle): its producer, registered again on broker {owner}, " \
                                   f"has msgInCounter {count}, not 1"
            else:
                assert owner == owners[t], f"{t} (another bundle) moved from broker {owners[t]} to {owner}"
                assert count == 4, f"{t} (another bundle): its producer's msgInCounter is {count}, not 4"


def test_a_stopped_broker_gives_its_bundles_up_at_once_and_rejoins_on_restart(cluster, client0):
    """SIGTERM: the broker closes its clients and releases its bundles as it
    leaves, so its producers carry on on other brokers well before its
    session ttl (10 s) could have freed them."""
    topics = spread_topics(cluster, per_bundle=1, prefix="stop")
    producers = {t: client0.create_producer(t, batching_enabled=False) for t in topics}
    owners = {t: cluster.owner_of(t) for t in topics}  # the client's lookups placed them
    assert set(owners.values()) == {0, 1, 2}, f"owners: {owners}"
    victim = max((1, 2), key=lambda i: list(owners.values()).count(i))
    mine = [t for t in topics if owners[t] == victim]
    started = time.monotonic()
    assert cluster.stop(victim) == 0, "a broker stopped with SIGTERM exits 0"
    for t in topics:
        producers[t].send(f"{t}|after".encode())
    took = time.monotonic() - started
    assert took < cluster.session_ttl_secs, (
        f"sends on the stopped broker's topics resumed after {took:.1f}s: freed by its ttl, not its leaving")
    for t in mine:
        assert cluster.owner_of(t) in {0, 1, 2} - {victim}, f"{t} is still owned by the stopped broker"
    wait_until(lambda: len(cluster.listed(0) or []) == 2, 5, "broker 0 listing 2 brokers")
    cluster.restart(victim)
    cluster.wait_members(20)
    # It answers lookups again.
    assert cluster.client_lookup(f"persistent://public/default/{unique('back')}", via=victim) is not None


# ---------------------------------------------------------------- death and pauses


def test_a_broker_restarted_after_kill_9_frees_its_old_bundles_at_once(cluster, client0):
    """A broker coming back with the same id ends the session it had before
    the crash, so its old bundles are free at once, not after the ttl (10 s)."""
    topics = spread_topics(cluster, per_bundle=1, prefix="restart")
    producers = {t: client0.create_producer(t, batching_enabled=False) for t in topics}
    owners = {t: cluster.owner_of(t) for t in topics}
    victim = max((1, 2), key=lambda i: list(owners.values()).count(i))
    mine = [t for t in topics if owners[t] == victim]
    assert mine, f"owners: {owners}"
    started = time.monotonic()
    cluster.kill(victim)
    cluster.restart(victim)
    for t in mine:
        producers[t].send(f"{t}|after".encode())
    took = time.monotonic() - started
    assert took < cluster.session_ttl_secs * 0.8, (
        f"sends on the restarted broker's topics resumed after {took:.1f}s: the old session was not ended")
    cluster.wait_members(10)
    for t in mine:
        owner = cluster.owner_of(t)
        assert served_at(cluster, owner, t, producers[t].producer_name()), (
            f"{t}: broker {owner} (the owner) does not serve its producer: {topic_stats(cluster, owner, t)}")


@pytest.mark.parametrize("cluster", [SHORT_TTL], indirect=True, ids=["ttl3"])
@pytest.mark.parametrize("service_url", ["broker-0", "all-three"])
def test_after_kill_9_of_a_broker_its_topics_resume_on_the_others_once_its_session_expires(
        cluster, service_url):
    """With broker 0's URL, another broker is killed (the client could not
    look anything up without broker 0); with all three URLs
    (`pulsar://a,b,c`), broker 0 itself is killed."""
    retain_everything(cluster)
    if service_url == "all-three":
        url = "pulsar://" + ",".join(f"127.0.0.1:{b.pulsar_port}" for b in cluster.brokers)
        client = pulsar.Client(url, operation_timeout_seconds=30, logger=CLIENT_LOGGER)
    else:
        client = make_client(cluster)
    try:
        topics, consumers, producers, owners = spread_clients(cluster, client, "kill")
        assert set(owners.values()) == {0, 1, 2}, f"owners: {owners}"
        if service_url == "all-three":
            victim = 0
        else:
            victim = max((1, 2), key=lambda i: list(owners.values()).count(i))
        via = 1 if victim == 0 else 0  # a live broker to ask
        dead = [t for t in topics if owners[t] == victim]
        alive = [t for t in topics if owners[t] != victim]
        pump = Pump(producers)
        pump.start()
        try:
            pump.wait_acked(topics, {t: 0 for t in topics}, 5, 20, "before the kill")
            cluster.kill(victim)
            killed_at = time.monotonic()
            mark = pump.mark()
            # The other brokers' topics are not disturbed: they carry on within the ttl.
            pump.wait_acked(alive, mark, 5, cluster.session_ttl_secs,
                            "on the live brokers' topics while the dead broker's session lives on")
            # The dead broker's topics resume once its session expired.
            pump.wait_acked(dead, mark, 5, RECOVERY_TIMEOUT_S, f"on broker {victim}'s topics after its death")
            recovered_after = time.monotonic() - killed_at
        finally:
            pump.finish()
        assert recovered_after >= cluster.session_ttl_secs * EARLIEST_EXPIRY, (
            f"broker {victim}'s topics resumed {recovered_after:.1f}s after its death, before its session "
            f"ttl ({cluster.session_ttl_secs}s) could have freed its bundles")
        for t in dead:
            assert cluster.owner_of(t, via) in {0, 1, 2} - {victim}, f"{t} is still owned by the dead broker"
        wait_until(lambda: sorted(cluster.listed(via) or []) == sorted(
            f"127.0.0.1:{cluster.broker(i).http_port}" for i in (0, 1, 2) if i != victim), 10,
            f"broker {via} no longer listing the dead broker {victim}")
        for t in topics:
            receive_seqs(consumers[t], t, pump.acked_since(t, mark[t]), timeout=30)
        print(f"broker {victim}'s {len(dead)} topics resumed {recovered_after:.1f}s after kill -9 "
              f"(session ttl {cluster.session_ttl_secs}s)")
    finally:
        client.close()


@pytest.mark.parametrize("cluster", [SHORT_TTL], indirect=True, ids=["ttl3"])
def test_a_broker_paused_past_its_ttl_closes_its_clients_when_it_wakes_and_they_move_on(cluster):
    retain_everything(cluster)
    client = make_client(cluster)
    try:
        topics, consumers, producers, owners = spread_clients(cluster, client, "pause")
        victim = max((1, 2), key=lambda i: list(owners.values()).count(i))
        mine = [t for t in topics if owners[t] == victim]
        assert mine, f"owners: {owners}"
        pump = Pump(producers)
        pump.start()
        try:
            pump.wait_acked(topics, {t: 0 for t in topics}, 5, 20, "before the pause")
            cluster.pause(victim)
            paused_at = time.monotonic()
            # Its session expires; the next lookups place its bundles on the others.
            wait_until(lambda: all(cluster.client_lookup(t) not in (None, victim) for t in mine),
                       cluster.session_ttl_secs + 20,
                       f"paused broker {victim}'s topics placed on another broker")
            assert time.monotonic() - paused_at >= cluster.session_ttl_secs * EARLIEST_EXPIRY, (
                "its bundles were placed elsewhere before its session could expire")
            new_owners = {t: cluster.owner_of(t) for t in mine}
            cluster.resume(victim)
            # Awake, it finds its session gone and closes its producers and
            # consumers: they look their topics up again and reach the new owners.
            for t in mine:
                wait_until(lambda: served_at(cluster, new_owners[t], t, producers[t].producer_name(), "s"),
                           RECOVERY_TIMEOUT_S,
                           f"{t}'s producer and consumer served by broker {new_owners[t]} after broker "
                           f"{victim} woke up (there: {topic_stats(cluster, new_owners[t], t)})",
                           interval=0.2)
            mark = pump.mark()
            pump.wait_acked(topics, mark, 10, RECOVERY_TIMEOUT_S, "after the paused broker woke up")
        finally:
            pump.finish()
        # The woken broker knows it no longer owns them.
        for t in mine:
            assert cluster.owner_of(t, via=victim) == new_owners[t], f"broker {victim}'s lookup of {t}"
        # It registered again.
        cluster.wait_members(20)
        for t in topics:
            receive_seqs(consumers[t], t, pump.acked_since(t, mark[t]), timeout=30)
    finally:
        client.close()


@pytest.mark.parametrize("cluster", [SHORT_TTL], indirect=True, ids=["ttl3"])
def test_a_pause_shorter_than_the_ttl_moves_nothing(cluster, client0):
    """A broker stopped for a third of its ttl keeps its session, its
    bundles and its clients: nothing reconnects."""
    topics = spread_topics(cluster, per_bundle=1, prefix="blip")
    producers = {t: client0.create_producer(t, batching_enabled=False) for t in topics}
    for t, p in producers.items():
        p.send(f"{t}|0".encode())
    owners = {t: cluster.owner_of(t) for t in topics}
    victim = max((1, 2), key=lambda i: list(owners.values()).count(i))
    cluster.pause(victim)
    time.sleep(cluster.session_ttl_secs / 3)  # the fault's length, not a synchronisation
    cluster.resume(victim)
    for t, p in producers.items():
        p.send(f"{t}|1".encode())
    for t in topics:
        assert cluster.owner_of(t) == owners[t], f"{t} moved from broker {owners[t]} after a short pause"
        count = producer_msg_in(cluster, owners[t], t, producers[t].producer_name())
        assert count == 2, f"{t}'s producer on broker {owners[t]} has msgInCounter {count}: it reconnected"
    assert sorted(cluster.listed(0) or []) == sorted(f"127.0.0.1:{b.http_port}" for b in cluster.brokers)


@pytest.mark.parametrize("cluster", [SHORT_TTL], indirect=True, ids=["ttl3"])
def test_a_broker_woken_after_losing_its_session_acknowledges_no_write_for_the_lost_bundle(cluster):
    """A SEND that reached a paused broker's socket after its bundle went to
    another broker must not be acknowledged when it wakes: the new owner
    serves the topic now (in Pulsar the old owner's write fails on the
    fenced ledger). It may be refused, or the producer or connection closed."""
    topic, owner = elsewhere(cluster, "fence")
    with wire.RawConnection("127.0.0.1", cluster.broker(owner).pulsar_port) as conn:
        conn.handshake()
        conn.send(wire.producer_cmd(topic, 1, 1))
        name = wire.first(conn.expect(wire.PRODUCER_SUCCESS).body, 2).decode()
        conn.send(wire.send_cmd(1, 0, name, b"before"))
        conn.expect(wire.SEND_RECEIPT)
        cluster.pause(owner)
        wait_until(lambda: cluster.client_lookup(topic) not in (None, owner), cluster.session_ttl_secs + 20,
                   f"paused broker {owner}'s bundle placed on another broker")
        new_owner = cluster.owner_of(topic)
        conn.send(wire.send_cmd(1, 1, name, b"while-paused"))  # waits in the paused broker's socket
        cluster.resume(owner)
        seen = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                f = conn.read_frame(max(0.1, deadline - time.monotonic()))
            except (wire.Closed, TimeoutError):
                break
            seen.append(f)
            if f.type in (wire.SEND_RECEIPT, wire.SEND_ERROR, wire.CLOSE_PRODUCER):
                break
        receipts = [f for f in seen if f.type == wire.SEND_RECEIPT]
        assert not receipts, (
            f"broker {owner} acknowledged a write to {topic} after broker {new_owner} took its bundle: {seen}")
    assert cluster.owner_of(topic, via=owner) == new_owner


# ---------------------------------------------------------------- bad input


@pytest.fixture
def own_etcd(tmp_path):
    """An etcd of the test's own (the test restarts it)."""
    from cluster import Etcd, etcd_binary

    binary = etcd_binary()
    if binary is None:
        pytest.skip("no `etcd` binary (apt-get install etcd-server)")
    (tmp_path / "own-etcd").mkdir()
    e = Etcd(binary, tmp_path / "own-etcd")
    e.start()
    yield e
    e.kill()


@pytest.mark.parametrize("down_s,ttl_s", [(2, 10), (6, 3)], ids=["within-ttl", "past-ttl"])
def test_clients_carry_on_across_an_etcd_restart(kilonova_bin, tmp_path, own_etcd, request, down_s, ttl_s):
    """etcd killed and restarted (same data) while producers send to topics
    on every broker. Down for less than the session ttl: the brokers keep
    their sessions and bundles and keep acknowledging (publishing needs no
    metadata). Down for longer: each broker's session lapses, it stops
    acknowledging and closes its clients, and once etcd is back it registers
    again; the clients find the topics again and carry on. Either way every
    producer gets acknowledgements after the restart, and new topics can be
    created."""
    from cluster import Cluster

    cluster = Cluster(kilonova_bin, tmp_path, own_etcd, session_ttl_secs=ttl_s)
    request.node.kilonova_brokers = cluster.brokers
    request.node.kilonova_etcd = own_etcd
    cluster.start()
    client = make_client(cluster)
    try:
        retain_everything(cluster)
        topics = spread_topics(cluster, per_bundle=1, prefix="etcd")
        producers = {t: client.create_producer(t, batching_enabled=False, send_timeout_millis=60_000)
                     for t in topics}
        owners = {t: cluster.owner_of(t) for t in topics}
        assert set(owners.values()) == {0, 1, 2}, f"owners: {owners}"
        pump = Pump(producers)
        pump.start()
        try:
            pump.wait_acked(topics, {t: 0 for t in topics}, 5, 20, "before etcd's restart")
            own_etcd.restart(down_for=down_s)
            mark = pump.mark()
            pump.wait_acked(topics, mark, 5, RECOVERY_TIMEOUT_S, "after etcd's restart")
        finally:
            pump.finish()
        lost = [cluster.metric(i, "kilonova_cluster_sessions_lost_total") for i in range(3)]
        if down_s < ttl_s:
            assert {t: cluster.owner_of(t) for t in topics} == owners, "no bundle moved"
            assert lost == [0, 0, 0], f"sessions lost per broker: {lost}"
        else:
            assert all(n >= 1 for n in lost), f"every broker's session lapsed: {lost}"
        # Metadata writes work again: a new topic is created and served.
        fresh = unique("persistent://public/default/after-etcd")
        p = client.create_producer(fresh, send_timeout_millis=30_000)
        p.send(b"after")
    finally:
        client.close()
        failures = cluster.shutdown()
    assert not failures, failures


def test_a_secured_cluster_sends_admin_requests_on_to_owners_with_their_credentials(
        kilonova_bin, etcd, tmp_path, request):
    """Token authentication on every broker: `kilonova admin` given broker
    0 reaches topics other brokers serve (a 307 it follows with its token),
    a namespace unload reaches every owner (forwarded with the caller's
    credentials), and a request without a token is refused, not redirected."""
    from cluster import Cluster

    def cli(*args):
        proc = subprocess.run([str(kilonova_bin), *args], capture_output=True, text=True, timeout=30)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.strip()

    secret = tmp_path / "secret.key"
    cli("tokens", "create-secret-key", "--output", str(secret))
    token = cli("tokens", "create", "--secret-key", f"file:{secret}", "--subject", "admin")
    auth = ("[auth]\nauthentication_enabled = true\nsuper_user_roles = [\"admin\"]\n"
            f"token_secret_key = {json.dumps('file:' + str(secret))}\n")
    cluster = Cluster(kilonova_bin, tmp_path, etcd, extra_toml=auth, admin_token=token)
    request.node.kilonova_brokers = cluster.brokers
    request.node.kilonova_etcd = etcd
    cluster.start()
    client = pulsar.Client(cluster.broker(0).service_url, authentication=pulsar.AuthenticationToken(token),
                           operation_timeout_seconds=30, logger=CLIENT_LOGGER)
    try:
        topics = spread_topics(cluster, per_bundle=1, prefix="secure")
        producers = {t: client.create_producer(t) for t in topics}
        for p in producers.values():
            p.send(b"x")
        owners = {t: cluster.owner_of(t) for t in topics}
        elsewhere = [t for t in topics if owners[t] != 0]
        assert elsewhere, f"owners: {owners}"
        for t in elsewhere:
            stats = json.loads(cluster.admin_ok(0, "topics", "stats", t))
            assert stats["msgInCounter"] == 1, f"{t} (on broker {owners[t]}): {stats}"
        _, tenant, ns, local = split_topic(elsewhere[0])
        status, _ = http("GET", f"{cluster.broker(0).http_url}/admin/v2/persistent/{tenant}/{ns}/{local}/stats")
        assert status == 401, f"a request without a token: {status}"
        cluster.admin_ok(0, "namespaces", "unload", "public/default")
        # Every owner unloaded its bundles: the producers were handed over
        # to other brokers, where they send again.
        for p in producers.values():
            p.send(b"y")
        moved = {t: cluster.owner_of(t) for t in topics}
        assert all(moved[t] != owners[t] for t in topics), f"before {owners}, after {moved}"
    finally:
        client.close()
        failures = cluster.shutdown()
    assert not failures, failures


def test_a_lookup_in_a_namespace_that_does_not_exist_answers_an_error_on_every_broker(cluster):
    for topic in ("persistent://public/no-such-ns/t", "persistent://no-such-tenant/default/t"):
        for i in range(3):
            started = time.monotonic()
            status, doc = cluster.lookup(topic, via=i, timeout=10)
            assert status == 404, f"HTTP lookup of {topic} on broker {i}: {status} {doc!r}"
            f = raw_lookup(cluster.broker(i).pulsar_port, topic)
            assert wire.first(f.body, 3) == LOOKUP_FAILED, f"binary lookup of {topic} on broker {i}: {f}"
            assert time.monotonic() - started < 5, "answered, not left hanging"
    client = make_client(cluster, operation_timeout_seconds=5)
    try:
        started = time.monotonic()
        with pytest.raises(pulsar.PulsarException):
            client.create_producer("persistent://public/no-such-ns/t")
        assert time.monotonic() - started < 10, "the client got an error, not a hang"
    finally:
        client.close()
    # The brokers keep serving.
    for i in range(3):
        assert cluster.owner_of(f"persistent://public/default/{unique('after')}", via=i) in (0, 1, 2)


def test_unloading_a_namespace_or_bundle_that_does_not_exist_is_refused(cluster):
    ranges = cluster.bundle_ranges()
    lo, hi = ranges[0]
    cases = [
        ("/admin/v2/namespaces/public/no-such-ns/unload", "a namespace that does not exist"),
        (f"/admin/v2/namespaces/public/no-such-ns/{bundle_name(ranges, 0)}/unload", "a bundle of no namespace"),
        (f"/admin/v2/namespaces/public/default/{lo:#010x}_{(lo + hi) // 2:#010x}/unload", "half a bundle"),
        ("/admin/v2/namespaces/public/default/nonsense/unload", "a malformed bundle"),
    ]
    for path, what in cases:
        for i in range(3):
            status, body = cluster.rest(i, "PUT", path, timeout=10)
            assert 400 <= status < 500, f"unloading {what} on broker {i}: {status} {body[:300]!r}"
    proc = cluster.admin(0, "namespaces", "unload", "public/no-such-ns")
    assert proc.returncode != 0 and "no-such-ns" in proc.stderr, (proc.returncode, proc.stdout, proc.stderr)
    for i in range(3):
        assert cluster.client_lookup(f"persistent://public/default/{unique('after')}", via=i) is not None


# ---------------------------------------------------------------- data following a topic (shared storage)


@pytest.fixture
def shared_cluster(kilonova_bin, etcd, seaweed, tmp_path, request):
    """A cluster whose brokers keep their topics' data in the object store
    (a SeaweedFS of the test's own): a topic's messages and subscriptions
    follow it to its next owner. Parametrized as `cluster` is."""
    from cluster import Cluster

    settings = dict(getattr(request, "param", None) or {})
    store = "\n[offload]\n[offload.store]\n" + seaweed.offload_config("kilonova-cluster",
                                                                      prefix=uuid.uuid4().hex[:12])
    settings["extra_toml"] = settings.get("extra_toml", "") + store
    c = Cluster(kilonova_bin, tmp_path, etcd, **settings)
    request.node.kilonova_brokers = c.brokers
    request.node.kilonova_etcd = etcd
    c.start()
    yield c
    failures = c.shutdown()
    if failures:
        raise failures[0]


def test_messages_stored_before_their_broker_stopped_are_delivered_by_the_new_owner(shared_cluster):
    """Stopping the owner (not an unload, which may place a bundle back on
    the same broker) makes its topics move. The consumer is away while the
    topic moves (a connected one would have the messages prefetched)."""
    cluster = shared_cluster
    client0 = make_client(cluster)
    try:
        topic, owner = elsewhere(cluster, "follow")
        client0.subscribe(topic, "s").close()  # the subscription keeps what follows
        producer = client0.create_producer(topic, batching_enabled=False)
        for j in range(10):
            producer.send(f"{topic}|{j}".encode())
        assert cluster.stop(owner) == 0
        assert cluster.client_lookup(topic, via=0) not in (None, owner)
        consumer = client0.subscribe(topic, "s")
        receive_seqs(consumer, topic, set(range(10)), timeout=20)
    finally:
        client0.close()


def test_a_subscriptions_position_follows_a_moved_topic(shared_cluster):
    cluster = shared_cluster
    client0 = make_client(cluster)
    try:
        topic, owner = elsewhere(cluster, "cursor")
        consumer = client0.subscribe(topic, "s")
        producer = client0.create_producer(topic, batching_enabled=False)
        for j in range(10):
            producer.send(f"{topic}|{j}".encode())
        got = receive_n(consumer, 10)
        for m in got[:5]:
            consumer.acknowledge(m)
        consumer.close()  # its acknowledgements are flushed as it closes
        assert cluster.stop(owner) == 0
        assert cluster.client_lookup(topic, via=0) not in (None, owner)
        consumer = client0.subscribe(topic, "s")
        want = [f"{topic}|{j}".encode() for j in range(5, 10)]
        assert payloads(receive_n(consumer, 5)) == want, "the unacknowledged half, and only it"
        assert_no_more(consumer)
    finally:
        client0.close()


@pytest.mark.parametrize("shared_cluster", [SHORT_TTL], indirect=True, ids=["ttl3"])
def test_acknowledged_messages_survive_their_owner_being_killed(shared_cluster):
    cluster = shared_cluster
    client = make_client(cluster)
    try:
        topic, owner = elsewhere(cluster, "survive")
        client.subscribe(topic, "s").close()  # the subscription keeps what follows
        producer = client.create_producer(topic, batching_enabled=False)
        for j in range(20):
            producer.send(f"{topic}|{j}".encode())
        cluster.kill(owner)
        wait_until(lambda: cluster.client_lookup(topic) not in (None, owner), cluster.session_ttl_secs + 20,
                   f"the killed broker {owner}'s bundle placed on another broker")
        consumer = client.subscribe(topic, "s")
        receive_seqs(consumer, topic, set(range(20)), timeout=RECOVERY_TIMEOUT_S)
    finally:
        client.close()

def all_brokers_client(cluster) -> pulsar.Client:
    """A client given every broker's URL."""
    url = "pulsar://" + ",".join(f"127.0.0.1:{b.pulsar_port}" for b in cluster.brokers)
    return pulsar.Client(url, operation_timeout_seconds=30, logger=CLIENT_LOGGER)


def subscribed_producers(client, topics) -> dict:
    """Creates each topic's subscription "s" from the earliest (it keeps
    everything sent from now on) and returns an unbatched producer per
    topic that retries for a minute."""
    for t in topics:
        client.subscribe(t, "s", initial_position=pulsar.InitialPosition.Earliest).close()
    return {t: client.create_producer(t, batching_enabled=False, send_timeout_millis=60_000)
            for t in topics}


def receive_every_acknowledged(client, pump: Pump, topics) -> int:
    """A consumer per topic on subscription "s" receives every sequence
    number `pump` had acknowledged there (at least one each); returns how
    many there were in all."""
    total = 0
    for t in topics:
        with pump.lock:
            acked = set(pump.acked[t])
        assert acked, f"nothing acknowledged on {t}"
        consumer = client.subscribe(t, "s")
        receive_seqs(consumer, t, acked, timeout=RECOVERY_TIMEOUT_S)
        consumer.close()
        total += len(acked)
    return total


# Rounds of kill -9 under load: a few in CI, more behind
# KILONOVA_CLUSTER_KILL_ROUNDS (docs/cluster.md: `KILONOVA_CLUSTER_KILL_ROUNDS=10`).
KILL_ROUNDS = int(os.environ.get("KILONOVA_CLUSTER_KILL_ROUNDS", "2"))


class Drain(threading.Thread):
    """Consumes subscription "c" of every topic without pause, acknowledging
    each message, and records when each (topic, seq) was first acknowledged
    and which came again after that."""

    def __init__(self, client, topics):
        super().__init__(daemon=True)
        self.consumers = {t: client.subscribe(t, "c", initial_position=pulsar.InitialPosition.Earliest)
                          for t in topics}
        self.acked: dict[tuple[str, int], float] = {}
        self.again: list[tuple[str, int]] = []
        # Messages a topic's consumer got that name another topic (checked
        # by the test: an assert in this thread would fail nothing).
        self.strays: list[tuple[str, bytes]] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            for t, c in self.consumers.items():
                try:
                    m = c.receive(timeout_millis=10)
                except pulsar.Timeout:
                    continue
                except pulsar.PulsarException:
                    continue  # reconnecting: the client retries
                name, _, seq = m.data().decode().rpartition("|")
                if name != t:
                    self.strays.append((t, m.data()))
                    continue
                if (t, int(seq)) in self.acked:
                    self.again.append((t, int(seq)))
                try:
                    c.acknowledge(m)
                except pulsar.PulsarException:
                    continue
                self.acked.setdefault((t, int(seq)), time.monotonic())

    def finish(self) -> None:
        self.halt.set()
        self.join(30)
        for c in self.consumers.values():
            c.close()


# How long after an acknowledgement its subscription's position is stored
# at the latest: cursor_persist_interval_ms (1 s), a write in flight before
# it, and this shared machine's scheduling.
POSITION_STORED_WITHIN_S = 3.0


@pytest.mark.parametrize("shared_cluster", [SHORT_TTL], indirect=True, ids=["ttl3"])
def test_kill_9_rounds_under_load_lose_no_acknowledged_message(shared_cluster):
    """Producers send without pause to topics on every broker while, round
    after round, the broker owning the most of them is killed with SIGKILL
    and started again. The client knows all three brokers. In the end a
    subscription created before the first send receives every message that
    was ever acknowledged, on every topic. Meanwhile a consumer on another
    subscription acknowledges everything it gets, and its positions survive
    every round: no message acknowledged there before the first kill (its
    position stored by then) comes again, through all the kills, moves and
    restarts. Later ones may (at-least-once: an acknowledgement not yet
    stored when its owner died, one sent to a dead broker, a message sent
    twice because its receipt was lost in a kill), and they are counted."""
    cluster = shared_cluster
    client = all_brokers_client(cluster)
    try:
        topics = spread_topics(cluster, per_bundle=1, prefix="kill9")
        drain = Drain(client, topics)
        pump = Pump(subscribed_producers(client, topics), interval=0.005)
        drain.start()
        pump.start()
        kills: list[float] = []
        try:
            pump.wait_acked(topics, {t: 0 for t in topics}, 5, 30, "before the first kill")
            for round_ in range(KILL_ROUNDS):
                owners = {t: cluster.try_owner_of(t) for t in topics}
                victim = max(range(len(cluster)), key=lambda i: list(owners.values()).count(i))
                cluster.kill(victim)
                kills.append(time.monotonic())
                mark = pump.mark()
                # Every topic acknowledges again (those of the victim once its
                # session expired and another broker rebuilt them).
                pump.wait_acked(topics, mark, 3, cluster.session_ttl_secs + RECOVERY_TIMEOUT_S,
                                f"after kill -9 of broker {victim} (round {round_ + 1})")
                cluster.restart(victim)
                cluster.wait_members()
        finally:
            pump.finish()
            drain.finish()
        assert not drain.strays, f"consumers got other topics' messages: {drain.strays[:5]}"
        total = receive_every_acknowledged(client, pump, topics)
        # Subscription "c": what comes again was acknowledged just before a
        # kill of its topic's owner; everything acknowledged by the producer
        # was received there at least once.
        def came_again(t: str, seq: int) -> None:
            acked_at = drain.acked[(t, seq)]
            assert acked_at > kills[0] - POSITION_STORED_WITHIN_S, \
                f"{t}|{seq} acknowledged at {acked_at:.1f}, before any kill, came again; kills: {kills}"

        for t, seq in drain.again:
            came_again(t, seq)
        again = len(drain.again)
        for t in topics:
            consumer = client.subscribe(t, "c")
            seen = set()
            while True:
                try:
                    m = consumer.receive(timeout_millis=3000)
                except pulsar.Timeout:
                    break  # nothing more: the subscription is drained
                seq = int(m.data().decode().rpartition("|")[2])
                seen.add(seq)
                consumer.acknowledge(m)
                if (t, seq) in drain.acked:
                    again += 1
                    came_again(t, seq)
            consumer.close()
            with pump.lock:
                acked = set(pump.acked[t])
            missing = acked - seen - {s for (topic, s) in drain.acked if topic == t}
            assert not missing, f"{len(missing)} acknowledged messages of {t} never reached subscription c"
        print(f"{KILL_ROUNDS} kill -9 rounds: {total} acknowledged messages on {len(topics)} topics, "
              f"every one received; {len(drain.acked)} acknowledged by a consumer, {again} of them again "
              "(all after the first kill)")
    finally:
        client.close()


# The object store's outage in the test below: its length, and how long an
# acknowledgement may still arrive after the store died (see the docstring).
STORE_DOWN_S = 10.0
STORE_DEATH_GRACE_S = 2.0
# From the store being back to every producer acknowledged again: topics
# whose appends failed are fenced and reloaded (reading their committed
# entries back from the store), and the C++ client's reconnection backoff,
# doubling from 100 ms through the outage, may wait ~13 s more.
STORE_RECOVERY_TIMEOUT_S = 60.0


def test_the_object_store_down_for_10_s_under_load_loses_no_acknowledged_message(shared_cluster, seaweed):
    """Producers send without pause to topics on every broker while the
    object store (SeaweedFS, SIGKILL) is down for 10 s, then back on the same
    ports and data.

    While it is down nothing new may be acknowledged: a receipt needs the
    send's write-ahead object durable in the store. Checked two ways:
      - no send made after the store died (sequence number at or past the
        mark taken once the kill returned) is acknowledged before it is back:
        its object cannot have been written;
      - no acknowledgement at all arrives from STORE_DEATH_GRACE_S after the
        kill until the restart. Sends from before the kill may be
        acknowledged just after it, honestly: their object was stored before
        the kill and only the flush's metadata commit (etcd, still up) and the
        receipt were still on their way — milliseconds, given 2 s here
        because this machine's two cores are shared.
    Once the store is back, every producer is acknowledged again within
    STORE_RECOVERY_TIMEOUT_S, and in the end a subscription created before
    the first send receives every message that was ever acknowledged, on
    every topic."""
    cluster = shared_cluster
    client = all_brokers_client(cluster)
    try:
        topics = spread_topics(cluster, per_bundle=2, prefix="s3down")
        producers = subscribed_producers(client, topics)
        owners = {t: cluster.owner_of(t) for t in topics}
        assert set(owners.values()) == set(range(len(cluster))), f"topics not on every broker: {owners}"
        pump = Pump(producers, interval=0.01)
        pump.start()
        try:
            pump.wait_acked(topics, {t: 0 for t in topics}, 5, 30, "before the object store went down")
            seaweed.kill()
            died = time.monotonic()
            mark = pump.mark()
            time.sleep(STORE_DOWN_S)  # the fault's length: nothing to wait for
            down_end = time.monotonic()
            after_death = {t: sorted(pump.acked_since(t, mark[t]))[:10] for t in topics}
            after_death = {t: s for t, s in after_death.items() if s}
            assert not after_death, (
                f"sends made after the object store died were acknowledged while it was down: {after_death}")
            late = pump.acks_between(died + STORE_DEATH_GRACE_S, down_end)
            assert late == 0, (
                f"{late} acknowledgements arrived from {STORE_DEATH_GRACE_S} s after the object store died "
                f"until it came back ({pump.acks_between(died, down_end)} since it died)")
            seaweed.restart()
            back, restarted = pump.mark(), time.monotonic()
            pump.wait_acked(topics, back, 3, STORE_RECOVERY_TIMEOUT_S,
                            "after the object store came back")
            recovered_s = time.monotonic() - restarted
        finally:
            pump.finish()
        # Every broker served topics: each saw its flushes fail, and commits again.
        for i in range(len(cluster)):
            assert cluster.metric(i, "kilonova_cluster_wal_flush_failures_total") > 0, f"broker {i}"
            assert cluster.metric(i, "kilonova_cluster_flush_commits_total") > 0, f"broker {i}"
        total = receive_every_acknowledged(client, pump, topics)
        print(f"object store down {STORE_DOWN_S:.0f} s: every producer acknowledged again {recovered_s:.1f} s "
              f"after it was back; {total} acknowledged messages on {len(topics)} topics, every one received; "
              f"{pump.acks_between(died, died + STORE_DEATH_GRACE_S)} acknowledged in the grace after the kill")
    finally:
        client.close()


def test_a_split_with_shared_storage_loses_nothing_and_clients_follow(shared_cluster):
    """A bundle split on its owner carries each topic's history to its half:
    the producer and consumer reconnect and go on, every message once, and
    the history read by another broker after the half moves is whole."""
    c = shared_cluster
    ns = f"public/{unique('split')}"
    c.admin_ok(0, "namespaces", "create", ns, "--bundles", "1")
    topic = f"persistent://{ns}/{unique('t')}"
    client = pulsar.Client(c.broker(0).service_url, operation_timeout_seconds=30,
                           logger=CLIENT_LOGGER)
    try:
        consumer = client.subscribe(topic, "s")
        # A subscription that holds every message (read after the move).
        client.subscribe(topic, "late").close()
        producer = client.create_producer(topic, batching_enabled=False)
        for i in range(20):
            producer.send(f"m{i}".encode())
        owner = c.owner_of(topic)
        c.admin_ok((owner + 1) % 3, "namespaces", "split-bundle", ns, "-b",
                   "0x00000000_0xffffffff")
        assert len(c.bundle_ranges(ns)) == 2
        for i in range(20, 30):
            producer.send(f"m{i}".encode())
        got = payloads(receive_n(consumer, 30, timeout=30))
        assert got == [f"m{i}".encode() for i in range(30)], got
        consumer.close()
        # The topic's half moves elsewhere: its history there is whole.
        ranges = c.bundle_ranges(ns)
        half = bundle_name(ranges, bundle_index(ranges, zlib.crc32(topic.encode())))
        status, body = c.rest(0, "PUT", f"/admin/v2/namespaces/{ns}/{half}/unload")
        assert status == 204, body
        late = client.subscribe(topic, "late")
        got = payloads(receive_n(late, 30, timeout=30))
        assert got == [f"m{i}".encode() for i in range(30)], got
    finally:
        client.close()
