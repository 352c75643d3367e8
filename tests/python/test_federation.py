"""Kafka federation (docs/federation.md): three single-node Kilonova
clusters on loopback as the physical clusters, a controller and proxies,
driven by confluent-kafka and kafka-python through the proxies."""

import json
import shutil
import socket
import subprocess
import struct
import threading
import time
import uuid
from collections import defaultdict

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from conftest import http, wait_until
from federation import Federation, tail


@pytest.fixture
def fed(kilonova_bin, tmp_path, request):
    """Three clusters c1..c3 in a federation with one controller; no proxy yet."""
    f = Federation(kilonova_bin, tmp_path)
    try:
        for name in ("c1", "c2", "c3"):
            f.start_cluster(name)
        f.start_controller()
        for name, b in f.clusters.items():
            f.cli("clusters", "add", name, "--bootstrap", b.kafka_bootstrap)
    except BaseException:
        print(f.logs())
        f.shutdown()
        raise
    yield f
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        print(f.logs())
    f.shutdown()
    if rep is not None and rep.passed:
        shutil.rmtree(tmp_path, ignore_errors=True)


def topic_name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


class Load:
    """A confluent-kafka producer in a thread: keyed records `key:seq` until
    stopped; every delivery report kept."""

    def __init__(self, bootstrap: str, topic: str, keys: int = 8, pause: float = 0.002,
                 **config):
        self.topic = topic
        self.keys = keys
        self.pause = pause
        self.acked: list[tuple[str, int]] = []
        self.failed: list = []
        self.sent = 0
        self._stop = threading.Event()
        # librdkafka's own metadata refresh (5 minutes): the proxies tell it
        # to refresh when a topic grows.
        self.producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 2,
                                  "acks": "all", **config})
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _report(self, err, msg):
        if err is not None:
            self.failed.append(err)
        else:
            key, seq = msg.value().decode().split(":")
            self.acked.append((key, int(seq)))

    def _run(self):
        seq = defaultdict(int)
        i = 0
        while not self._stop.is_set():
            key = f"k{i % self.keys}"
            self.producer.produce(self.topic, key=key.encode(),
                                  value=f"{key}:{seq[key]}".encode(), on_delivery=self._report)
            seq[key] += 1
            i += 1
            self.sent += 1
            self.producer.poll(0)
            if self.pause:
                time.sleep(self.pause)
            elif len(self.producer) > 5000:
                self.producer.poll(0.01)

    def start(self):
        self.thread.start()
        return self

    def stop(self):
        self._stop.set()
        self.thread.join(10)
        left = self.producer.flush(60)
        assert left == 0, f"{left} records not delivered"


def consume_group(bootstrap: str, topic: str, group: str, want: int, consumers: int = 1,
                  timeout: float = 60.0, commit: bool = True,
                  values: set | None = None) -> list[tuple[str, int, int]]:
    """Reads `want` records (or, given `values`, until each of them is read)
    with `consumers` confluent-kafka members of `group`; returns (value,
    logical partition, offset) in the order each member read them (members'
    lists concatenated)."""
    cs = [Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                    "auto.offset.reset": "earliest", "enable.auto.commit": False,
                    "topic.metadata.refresh.interval.ms": 500}) for _ in range(consumers)]
    for c in cs:
        c.subscribe([topic])
    got: list[list] = [[] for _ in cs]
    deadline = time.monotonic() + timeout
    try:
        def done():
            if values is not None:
                return values <= {r[0] for member in got for r in member}
            return sum(map(len, got)) >= want

        while not done() and time.monotonic() < deadline:
            for i, c in enumerate(cs):
                m = c.poll(0.2)
                if m is None or m.error() is not None:
                    continue
                got[i].append((m.value().decode(), m.partition(), m.offset()))
                if commit:
                    c.commit(message=m, asynchronous=False)
    finally:
        for c in cs:
            c.close()
    return [r for member in got for r in member]


def assert_each_once_in_key_order(records, acked):
    values = [v for v, _, _ in records]
    assert len(values) == len(set(values)), "duplicates"
    missing = {f"{k}:{s}" for k, s in acked} - set(values)
    assert not missing, f"{len(missing)} acknowledged records never read, e.g. {sorted(missing)[:5]}"
    by_partition = defaultdict(list)
    for v, p, off in records:
        by_partition[p].append((off, v))
    # Per key, in the order of the partition it is in.
    last = {}
    for p, rs in by_partition.items():
        for _, v in sorted(rs):
            key, seq = v.split(":")
            assert last.get((p, key), -1) < int(seq), f"key {key} out of order in partition {p}"
            last[(p, key)] = int(seq)


def assert_none_lost(records, acked):
    """At least once: every acknowledged record is read. (A batch written
    but not acknowledged when a proxy or cluster died is sent again by the
    client: without idempotent producers it may be read twice.)"""
    missing = {f"{k}:{s}" for k, s in acked} - {v for v, _, _ in records}
    assert not missing, f"{len(missing)} acknowledged records lost, e.g. {sorted(missing)[:5]}"


def records_on(fed: Federation, topic: str) -> dict[str, int]:
    """Records per physical cluster of `topic`, by the controller's scan."""
    per = defaultdict(int)
    for t in fed.status()["topics"]:
        if t["name"] == topic:
            for p in t["partitions"]:
                per[p["cluster"]] += (p["latest"] or 0) - (p["earliest"] or 0)
    return per


def end_offset(cluster, topic: str, partition: int = 0) -> int:
    """The physical partition's end offset, asked of the cluster itself."""
    c = Consumer({"bootstrap.servers": cluster.kafka_bootstrap, "group.id": "probe"})
    try:
        return c.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)[1]
    finally:
        c.close()


def test_groups_read_through_the_proxies_everything_produced_through_them(fed):
    topic = topic_name("orders")
    fed.cli("topics", "create", topic, "--partitions-per-cluster", "2")
    fed.start_proxy(1)
    fed.start_proxy(2)
    load = Load(fed.producers_bootstrap(), topic).start()
    wait_until(lambda: len(load.acked) >= 400, 60, "400 records acknowledged")
    load.stop()
    assert not load.failed
    # Logical partitions 0..5 are two on each cluster: all three hold data.
    wait_until(lambda: all(n > 0 for n in records_on(fed, topic).values())
               and len(records_on(fed, topic)) == 3, 10, "records on every cluster")
    got = consume_group(fed.consumers_bootstrap(), topic, "g-orders", len(load.acked),
                        consumers=2)
    assert_each_once_in_key_order(got, load.acked)
    assert {p for _, p, _ in got} == set(range(6))
    # The group's offsets are with the controller, per logical partition.
    status = fed.status()
    assert status["group_lag"]["g-orders"] == 0, status["group_lag"]


def test_kafka_python_produces_and_reads_with_a_group_through_a_proxy(fed):
    from kafka import KafkaConsumer, KafkaProducer
    topic = topic_name("kpy")
    fed.cli("topics", "create", topic, "--partitions-per-cluster", "1")
    fed.start_proxy(1)
    producer = KafkaProducer(bootstrap_servers=fed.producers_bootstrap(), acks="all")
    futures = [producer.send(topic, key=f"k{i % 3}".encode(), value=f"v{i}".encode())
               for i in range(60)]
    metas = [f.get(timeout=30) for f in futures]
    producer.close()
    assert {m.partition for m in metas} <= {0, 1, 2}
    consumer = KafkaConsumer(topic, bootstrap_servers=fed.consumers_bootstrap(),
                             group_id="kpy-group", auto_offset_reset="earliest",
                             enable_auto_commit=False, consumer_timeout_ms=20_000)
    got = []
    for m in consumer:
        got.append(m.value.decode())
        if len(got) == 60:
            break
    consumer.commit()
    consumer.close()
    assert sorted(got) == sorted(f"v{i}" for i in range(60))


def test_committed_offsets_outlive_a_proxy_killed_with_sigkill(fed):
    topic = topic_name("resume")
    fed.cli("topics", "create", topic, "--partitions-per-cluster", "1")
    proxy = fed.start_proxy(1)
    p = Producer({"bootstrap.servers": fed.producers_bootstrap()})
    for i in range(100):
        p.produce(topic, value=f"r:{i}".encode(), partition=i % 3)
    assert p.flush(30) == 0
    first = consume_group(fed.consumers_bootstrap(), topic, "resumer", 40)
    assert len(first) >= 40
    proxy.kill()
    fed.restart_proxy(proxy)
    rest = consume_group(fed.consumers_bootstrap(), topic, "resumer", 100 - len(first))
    values = [v for v, _, _ in first + rest]
    assert sorted(values) == sorted(f"r:{i}" for i in range(100)), "each record once"


def test_a_cluster_added_under_load_keeps_keys_in_place_until_rebalanced(fed):
    keyed = topic_name("keyed")
    spread = topic_name("spread")
    fed.cli("topics", "create", keyed, "--partitions-per-cluster", "1")
    fed.cli("topics", "create", spread, "--partitions-per-cluster", "1", "--key-policy", "spread")
    fed.start_proxy(1)
    keyed_load = Load(fed.producers_bootstrap(), keyed).start()
    spread_load = Load(fed.producers_bootstrap(), spread).start()
    wait_until(lambda: len(keyed_load.acked) > 50 and len(spread_load.acked) > 50, 30,
               "load running")
    c4 = fed.start_cluster("c4")
    started = time.monotonic()
    fed.cli("clusters", "add", "c4", "--bootstrap", c4.kafka_bootstrap)
    # The spread topic's producers use c4 after their next metadata refresh.
    wait_until(lambda: records_on(fed, spread).get("c4", 0) > 0, 30, "records on c4")
    took = time.monotonic() - started
    print(f"cluster added -> first record stored on it: {took:.2f} s")
    assert records_on(fed, keyed).get("c4", 0) == 0, "a keyed topic's keys stay in place"
    fed.cli("topics", "rebalance", keyed)
    wait_until(lambda: records_on(fed, keyed).get("c4", 0) > 0, 30, "keyed records on c4")
    keyed_load.stop()
    spread_load.stop()
    assert not keyed_load.failed and not spread_load.failed
    for load, topic in ((keyed_load, keyed), (spread_load, spread)):
        got = consume_group(fed.consumers_bootstrap(), topic, f"g-{topic}", len(load.acked))
        assert_each_once_in_key_order(got, load.acked)


def test_a_spread_expansion_keeps_each_partitions_order_with_many_batches_in_flight(fed):
    # A producer as fast as it can go keeps several requests in flight per
    # connection. When the topic grows, the proxy refuses its batches so it
    # refreshes its metadata; a batch in flight behind a refused one, if
    # written, would put a key's later records before the refused ones'
    # retry in the same partition.
    topic = topic_name("burst")
    fed.cli("topics", "create", topic, "--partitions-per-cluster", "1", "--key-policy", "spread")
    fed.start_proxy(1)
    load = Load(fed.producers_bootstrap(), topic, keys=4, pause=0, **{"linger.ms": 0}).start()
    wait_until(lambda: len(load.acked) > 2000, 30, "load running")
    c4 = fed.start_cluster("c4")
    fed.cli("clusters", "add", "c4", "--bootstrap", c4.kafka_bootstrap)
    wait_until(lambda: records_on(fed, topic).get("c4", 0) > 0, 30, "records on c4")
    load.stop()
    assert not load.failed
    got = consume_group(fed.consumers_bootstrap(), topic, f"g-{topic}", len(load.acked),
                        timeout=120, commit=False)
    assert_each_once_in_key_order(got, load.acked)


def test_a_drained_cluster_takes_no_more_writes_and_leaves_once_consumed(fed):
    topic = topic_name("drain")
    fed.cli("topics", "create", topic, "--partitions-per-cluster", "1", "--key-policy", "spread")
    fed.start_proxy(1)
    load = Load(fed.producers_bootstrap(), topic).start()
    wait_until(lambda: records_on(fed, topic).get("c1", 0) > 20, 30, "records on c1")
    # An active cluster cannot be removed; a drained one holding data neither.
    refused = fed.cli("clusters", "remove", "c1", check=False)
    assert refused.returncode != 0 and "drain it first" in refused.stderr
    fed.cli("clusters", "drain", "c1")
    wait_until(lambda: fed.proxy_version(fed.proxies[0]) == fed.status()["version"], 10,
               "the proxy serves the drained map")
    # From here c1's log stops growing: what producers send for its
    # partition is written on the others. (Read once the records in flight
    # at the switch are answered: the proxy answers in order.)
    after = len(load.acked)
    wait_until(lambda: len(load.acked) > after + 50, 30, "records after the drain")
    at_drain = end_offset(fed.clusters["c1"], topic)
    wait_until(lambda: len(load.acked) > after + 400, 30, "more records after the drain")
    load.stop()
    assert not load.failed
    assert end_offset(fed.clusters["c1"], topic) == at_drain, "c1 took writes after the drain"
    refused = fed.cli("clusters", "remove", "c1", check=False)
    assert refused.returncode != 0 and "still holds data" in refused.stderr
    # Consumers read everything, c1's records included; once the group has
    # consumed c1's partition the controller removes c1 by itself.
    got = consume_group(fed.consumers_bootstrap(), topic, "drainer", len(load.acked))
    assert_each_once_in_key_order(got, load.acked)
    wait_until(lambda: next(c for c in fed.status()["clusters"] if c["name"] == "c1")["state"]
               == "removed", 20, "c1 removed once consumed")
    c1_partition = next(p for t in fed.status()["topics"] if t["name"] == topic
                        for p in t["partitions"] if p["cluster"] == "c1")
    assert c1_partition["retired_at"] == at_drain
    # The partition count never goes down: the retired partition answers empty.
    fed.clusters["c1"].stop()
    c = Consumer({"bootstrap.servers": fed.consumers_bootstrap(), "group.id": "after"})
    md = c.list_topics(topic, timeout=10)
    assert len(md.topics[topic].partitions) == 3
    lo, hi = c.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
    c.close()
    assert (lo, hi) == (at_drain, at_drain)


def test_nothing_acknowledged_is_lost_when_a_proxy_and_a_cluster_are_killed(fed):
    topic = topic_name("kill")
    fed.cli("topics", "create", topic, "--partitions-per-cluster", "1", "--key-policy", "spread")
    proxy = fed.start_proxy(1)
    load = Load(fed.producers_bootstrap(), topic).start()
    wait_until(lambda: len(load.acked) > 100, 30, "load running")
    # A physical cluster dies: the proxy writes its partition's records on
    # the others; what it acknowledged before is back when it is.
    c2 = fed.clusters["c2"]
    c2.kill()
    before = len(load.acked)
    wait_until(lambda: len(load.acked) > before + 200, 60, "writes go on without c2")
    # The failure shows: in the proxy's metrics and the controller's status.
    metrics = fed.proxy_metrics(proxy)
    assert metrics["kilonova_federation_proxy_failing_clusters"] == 1, metrics
    assert metrics["kilonova_federation_proxy_upstream_errors_total"] >= 1, metrics
    wait_until(lambda: not next(c for c in fed.status()["clusters"]
                                if c["name"] == "c2")["health"]["reachable"], 10,
               "the controller's scan sees c2 down")
    c2.restart()
    # The proxy dies: clients reconnect once it is back.
    proxy.kill()
    fed.restart_proxy(proxy)
    before = len(load.acked)
    wait_until(lambda: len(load.acked) > before + 100, 60, "writes go on after the proxy restart")
    load.stop()
    assert not load.failed, load.failed[:3]
    got = consume_group(fed.consumers_bootstrap(), topic, "after-kills", len(load.acked),
                        values={f"{k}:{s}" for k, s in load.acked})
    assert_none_lost(got, load.acked)


def test_the_controller_restarted_mid_change_keeps_one_map_and_proxies_serve_through(fed):
    topic = topic_name("ctl")
    fed.cli("topics", "create", topic, "--partitions-per-cluster", "1")
    proxy = fed.start_proxy(1)
    load = Load(fed.producers_bootstrap(), topic).start()
    wait_until(lambda: len(load.acked) > 50, 30, "load running")
    c4 = fed.start_cluster("c4")
    # The controller is killed in the middle of the add: once it has created
    # the physical topic on c4 (the add's first step), around its commit.
    adder = threading.Thread(target=lambda: fed.cli("clusters", "add", "c4", "--bootstrap",
                                                    c4.kafka_bootstrap, check=False))
    adder.start()
    wait_until(lambda: f"Kafka client created a topic topic=persistent://public/default/{topic}"
               in c4.log_path.read_text(errors="replace"), 30,
               "the add created the physical topic on c4")
    fed.controller.kill()
    adder.join(60)
    # Proxies serve the map they hold while no controller answers.
    before = len(load.acked)
    wait_until(lambda: len(load.acked) > before + 50, 30, "writes go on without the controller")
    fed.start_controller()
    status = fed.status()
    names = [c["name"] for c in status["clusters"]]
    assert names in (["c1", "c2", "c3"], ["c1", "c2", "c3", "c4"]), names
    # Either the add happened whole (c4 in every topic) or not at all.
    t = next(t for t in status["topics"] if t["name"] == topic)
    assert ("c4" in names) == any(p["cluster"] == "c4" for p in t["partitions"])
    if "c4" not in names:
        fed.cli("clusters", "add", "c4", "--bootstrap", c4.kafka_bootstrap)
    wait_until(lambda: fed.proxy_version(proxy) == fed.status()["version"], 20,
               "the proxy follows the restarted controller")
    load.stop()
    assert not load.failed
    got = consume_group(fed.consumers_bootstrap(), topic, "g-ctl", len(load.acked))
    assert_each_once_in_key_order(got, load.acked)


def test_bad_input_gets_errors_and_the_proxy_serves_on(fed):
    topic = topic_name("bad")
    fed.cli("topics", "create", topic)
    proxy = fed.start_proxy(1)
    # Bad names and unknown things at the controller: 4xx with a message.
    status, body = fed.api("POST", "/federation/v1/topics",
                           {"name": "no/slashes", "partitions_per_cluster": 1})
    assert status == 400 and "invalid name" in body["error"]
    status, body = fed.api("POST", "/federation/v1/topics",
                           {"name": "huge", "partitions_per_cluster": 10**6})
    assert status == 400, body
    status, body = fed.api("POST", "/federation/v1/clusters/nope/drain", {})
    assert status == 404 and "no cluster nope" in body["error"]
    status, body = fed.api("POST", "/federation/v1/clusters",
                           {"name": "dead", "bootstrap": ["127.0.0.1:1"]})
    assert status == 502, body
    # Garbage, an absurd size and an unknown API at the proxy.
    port = proxy.ports["producer"]
    for payload in (b"\xff" * 64, struct.pack(">i", 2**31 - 1) + b"x" * 16,
                    struct.pack(">ihhi", 8, 999, 0, 7)):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(payload)
            s.settimeout(5)
            try:
                s.recv(64)
            except (ConnectionResetError, socket.timeout):
                pass
    # Unknown topics are refused, not created.
    p = Producer({"bootstrap.servers": fed.producers_bootstrap(), "message.timeout.ms": 3000})
    errors = []
    p.produce("never-created", value=b"x", on_delivery=lambda e, m: errors.append(e))
    p.flush(10)
    assert errors and errors[0] is not None
    # And the proxy serves everyone else.
    p = Producer({"bootstrap.servers": fed.producers_bootstrap()})
    p.produce(topic, value=b"ok:0")
    assert p.flush(20) == 0
    got = consume_group(fed.consumers_bootstrap(), topic, "g-bad", 1)
    assert [v for v, _, _ in got] == ["ok:0"]


def test_controllers_on_etcd_elect_one_leader_and_a_follower_takes_over(kilonova_bin, etcd,
                                                                        tmp_path):
    """Two controllers share an etcd: one leads, the other redirects changes
    to it; when the leader is killed the other takes over (within the
    leader session's 10 s), and the proxy, given both URLs, follows."""
    from federation import Process
    f = Federation(kilonova_bin, tmp_path)
    root = f"/federation-test-{uuid.uuid4().hex[:8]}"
    controllers = [
        Process(kilonova_bin, ["controller", "--listen", "127.0.0.1:0", "--etcd", etcd.endpoint,
                               "--etcd-root", root, "--scan-interval-ms", "300"],
                tmp_path / f"controller-{i}.log")
        for i in range(2)]
    try:
        c1 = f.start_cluster("c1")
        for c in controllers:
            c.start()
        urls = [f"http://127.0.0.1:{c.ports['http']}" for c in controllers]
        f.controller = controllers[0]

        def status_of(url):
            code, body = http("GET", url + "/federation/v1/status")
            assert code == 200, body
            return json.loads(body)

        wait_until(lambda: status_of(urls[0])["leader"] is not None
                   and status_of(urls[0])["leader"] == status_of(urls[1])["leader"], 20,
                   "one leader, known to both")
        leader_url = status_of(urls[0])["leader"]
        leader = urls.index(leader_url)
        follower = 1 - leader
        # A change sent to the follower is redirected to the leader.
        f.controller = controllers[follower]
        f.cli("clusters", "add", "c1", "--bootstrap", c1.kafka_bootstrap)
        f.cli("topics", "create", "ha", "--partitions-per-cluster", "2")
        wait_until(lambda: status_of(urls[follower])["version"] == 2, 10,
                   "the follower sees the leader's change")
        proxy = f.start_proxy(1, controllers=urls)
        load = Load(f.producers_bootstrap(), "ha").start()
        wait_until(lambda: len(load.acked) > 50, 30, "load running")
        controllers[leader].kill()
        wait_until(lambda: status_of(urls[follower])["leader"] == urls[follower], 30,
                   "the follower takes over")
        f.controller = controllers[follower]
        c2 = f.start_cluster("c2")
        f.cli("clusters", "add", "c2", "--bootstrap", c2.kafka_bootstrap)
        wait_until(lambda: f.proxy_version(proxy) == status_of(urls[follower])["version"], 20,
                   "the proxy follows the new leader")
        load.stop()
        assert not load.failed
        got = consume_group(f.consumers_bootstrap(), "ha", "g-ha", len(load.acked))
        assert_each_once_in_key_order(got, load.acked)
    except BaseException:
        print(f.logs())
        for c in controllers:
            print(tail(c.log))
        raise
    finally:
        for c in controllers:
            c.stop()
        f.shutdown()


def test_sasl_tokens_at_the_proxy_and_the_name_service_by_identity(fed, tmp_path):
    """A proxy with authentication on takes SASL/PLAIN with a token as the
    password (bad or missing ones are refused, everyone else is served),
    and the name service maps the token's role to the proxy group."""
    def tokens(*args):
        p = subprocess.run([str(fed.binary), "tokens", *args], capture_output=True, text=True,
                           timeout=60)
        assert p.returncode == 0, p.stderr
        return p.stdout.strip()

    secret = tmp_path / "secret.key"
    tokens("create-secret-key", "--output", str(secret))
    token = lambda role: tokens("create", "--secret-key", f"file:{secret}", "--subject", role)
    topic = topic_name("sasl")
    fed.cli("topics", "create", topic)
    key = ("--token-secret-key", f"file:{secret}")
    edge = fed.start_proxy(1, group="edge", extra=key)
    fed.start_proxy(2, extra=key)
    fed.cli("names", "set", "app-role", "edge")

    def sasl(bootstrap, password):
        return {"bootstrap.servers": bootstrap, "security.protocol": "SASL_PLAINTEXT",
                "sasl.mechanisms": "PLAIN", "sasl.username": "any",
                "sasl.password": password}

    # Refused: no SASL, a forged token.
    for config in ({"bootstrap.servers": fed.producers_bootstrap()},
                   sasl(fed.producers_bootstrap(), token("app-role")[:-4] + "AAAA")):
        reports = []
        p = Producer({**config, "message.timeout.ms": 4000})
        p.produce(topic, value=b"no", on_delivery=lambda e, m: reports.append(e))
        p.flush(15)
        assert reports and reports[0] is not None, config
    # Served: a valid token; its role's group ("edge") is what Metadata lists.
    p = Producer(sasl(fed.producers_bootstrap(), token("app-role")))
    p.produce(topic, value=b"ok:0")
    assert p.flush(20) == 0
    md = p.list_topics(topic, timeout=10)
    assert sorted(b.port for b in md.brokers.values()) == [edge.ports["producer"]]
    c = Consumer({**sasl(fed.consumers_bootstrap(), token("other")), "group.id": "g-sasl",
                  "auto.offset.reset": "earliest"})
    c.subscribe([topic])
    got = None
    deadline = time.monotonic() + 30
    while got is None and time.monotonic() < deadline:
        m = c.poll(0.5)
        if m is not None and m.error() is None:
            got = m.value()
    # A role with no group of its own gets the default group's proxies.
    md = c.list_topics(topic, timeout=10)
    c.close()
    assert got == b"ok:0"
    assert sorted(b.port for b in md.brokers.values()) == [fed.proxies[1].ports["consumer"]]


def fetch_request(correlation_id: int, topic: str, partition: int, offset: int,
                  max_bytes: int) -> bytes:
    """A Fetch v4 request, framed (Kafka's protocol guide: replica id,
    max wait, min bytes, max bytes, isolation level, topics)."""
    name = topic.encode()
    client = b"raw"
    body = struct.pack(">hhih", 1, 4, correlation_id, len(client)) + client
    body += struct.pack(">iiiib", -1, 100, 1, max_bytes, 0)
    body += struct.pack(">ih", 1, len(name)) + name
    body += struct.pack(">iiqi", 1, partition, offset, max_bytes)
    return struct.pack(">i", len(body)) + body


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_a_client_that_never_reads_holds_only_its_budget_and_others_are_served(fed):
    topic = topic_name("budget")
    fed.cli("topics", "create", topic)
    proxy = fed.start_proxy(1, extra=("--max-connection-bytes", str(4 << 20)))
    p = Producer({"bootstrap.servers": fed.producers_bootstrap(), "linger.ms": 20})
    for i in range(4000):
        p.produce(topic, value=b"x" * 1000, partition=0)
    assert p.flush(60) == 0
    baseline = rss_bytes(proxy.proc.pid)
    fetches_before = fed.proxy_metrics(proxy)["kilonova_federation_proxy_fetches_total"]
    # 200 fetches of ~4 MB each, their answers never read: unbounded, the
    # proxy would hold every answer it fetched (hundreds of MB).
    hostile = socket.create_connection(("127.0.0.1", proxy.ports["consumer"]))
    hostile.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    hostile.settimeout(5)
    sent = 0
    try:
        for i in range(200):
            hostile.sendall(fetch_request(i, topic, 0, 0, 4 << 20))
            sent += 1
    except socket.timeout:
        pass  # the proxy stopped reading: the requests wait in the socket
    wait_until(lambda: fed.proxy_metrics(proxy)["kilonova_federation_proxy_fetches_total"]
               > fetches_before, 10, "the hostile fetches reach the proxy")
    # Everyone else is served meanwhile, and the proxy stays within bounds.
    p.produce(topic, value=b"still-served", partition=0)
    assert p.flush(20) == 0
    got = consume_group(fed.consumers_bootstrap(), topic, "g-budget", 4001)
    assert len(got) == 4001
    held = rss_bytes(proxy.proc.pid) - baseline
    hostile.close()
    assert sent >= 1
    assert held < 64 << 20, f"the proxy grew by {held >> 20} MiB for a client that never reads"
