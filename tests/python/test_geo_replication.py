"""Geo-replication between independently run clusters (issue #24): three
standalones named a, b and c, each registering the other two in its own
metadata, driven by the real Python client.

Every message published in one cluster reaches every cluster its namespace
(or the message itself) names, exactly once, in per-producer order; a
replicated message is never sent on (no loops in the full mesh); killing a
remote or the source with kill -9 loses and doubles nothing. A topic's own
replication clusters replace its namespace's, and a replicator dispatch rate
paces what a replicator sends without slowing local publishing.
"""

from __future__ import annotations

import collections
import json
import os
import threading
import time

import pulsar
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import assert_no_more, bearer, http, make_client, unique, wait_until
from test_admin_cli import Cli
from test_security import keys  # noqa: F401 (a fixture)

NAMES = ("a", "b", "c")
WAIT_S = 30.0
# How long a killed cluster stays down in the kill -9 tests: 0 in CI (it is
# restarted at once); `KILONOVA_GEO_OUTAGE_SECS=30` for the long version
# (docs/testing.md).
OUTAGE_S = float(os.environ.get("KILONOVA_GEO_OUTAGE_SECS", "0"))


def config(name: str) -> str:
    return (
        "[broker]\n"
        f'cluster_name = "{name}"\n'
        "cursor_persist_interval_ms = 100\n"
        "replicator_idle_timeout_secs = 1\n"
    )


def rest(broker, method: str, path: str, body=None):
    data = None if body is None else json.dumps(body).encode()
    status, text = http(method, broker.http_url + path, data,
                        "application/json" if data is not None else None)
    assert status in (200, 204), (method, path, status, text)
    return json.loads(text) if text else None


def register_peers(clusters: dict) -> None:
    """Each cluster registers the others locally, as an operator would."""
    for name, broker in clusters.items():
        for other, peer in clusters.items():
            if other != name:
                rest(broker, "PUT", f"/admin/v2/clusters/{other}",
                     {"serviceUrl": peer.http_url, "brokerServiceUrl": peer.service_url})


def replicated_namespace(clusters: dict, members=None) -> str:
    """A tenant and namespace created on every cluster, replicated to `members`."""
    members = list(members or clusters)
    tenant = unique("fl")
    ns = f"{tenant}/{unique('ns')}"
    for broker in clusters.values():
        rest(broker, "PUT", f"/admin/v2/tenants/{tenant}",
             {"adminRoles": [], "allowedClusters": list(clusters)})
        rest(broker, "PUT", f"/admin/v2/namespaces/{ns}")
        rest(broker, "POST", f"/admin/v2/namespaces/{ns}/replication", members)
    return ns


@pytest.fixture
def mesh(make_broker):
    clusters = {n: make_broker(n, config=config(n)) for n in NAMES}
    register_peers(clusters)
    return clusters


def drain(consumer, expected: int, timeout: float = WAIT_S) -> list:
    """Receives until `expected` messages came, then checks nothing more does."""
    got = []
    deadline_ms = int(timeout * 1000)
    waited = 0
    while len(got) < expected and waited < deadline_ms:
        try:
            m = consumer.receive(timeout_millis=500)
        except pulsar.Timeout:
            waited += 500
            continue
        consumer.acknowledge(m)
        got.append(m)
    assert len(got) == expected, (len(got), expected, [m.data() for m in got][:10])
    return got


def test_a_full_mesh_delivers_every_message_to_every_cluster_exactly_once(mesh):
    ns = replicated_namespace(mesh)
    topic = f"persistent://{ns}/{unique('t1')}"
    clients = {n: make_client(b) for n, b in mesh.items()}
    try:
        consumers = {n: c.subscribe(topic, "fl", initial_position=pulsar.InitialPosition.Earliest)
                     for n, c in clients.items()}
        per_producer = 50
        for n, c in clients.items():
            p = c.create_producer(topic, batching_enabled=True, batching_max_messages=7)
            for i in range(per_producer):
                p.send_async(f"{n}-{i}".encode(), None, partition_key=f"k{i % 5}",
                             properties={"from": n, "i": str(i)}, event_timestamp=1000 + i)
            p.flush()
            p.close()
        for n, consumer in consumers.items():
            got = drain(consumer, per_producer * len(NAMES))
            by_source = collections.defaultdict(list)
            for m in got:
                src, i = m.data().decode().split("-")
                by_source[src].append(int(i))
                assert m.partition_key() == f"k{int(i) % 5}"
                assert m.properties()["from"] == src and m.properties()["i"] == i
                assert m.event_timestamp() == 1000 + int(i)
            # Every producer's messages, each once, in its order.
            assert {s: v for s, v in by_source.items()} == {
                s: list(range(per_producer)) for s in NAMES}, n
        # Stats show a replicator per remote cluster, caught up.
        a = mesh["a"]
        path = "/admin/v2/" + topic.replace("://", "/") + "/stats"
        wait_until(lambda: all(r["replicationBacklog"] == 0 and r["connected"]
                               for r in rest(a, "GET", path)["replication"].values()),
                   WAIT_S, "a's replicators caught up")
        stats = rest(a, "GET", path)
        assert sorted(stats["replication"]) == ["b", "c"]
        assert stats["replication"]["b"]["msgOutCounter"] == per_producer
        assert not any(s.startswith("pulsar.repl.") for s in stats["subscriptions"])

        def replication_series():
            status, text = http("GET", a.http_url + "/metrics")
            assert status == 200
            out = {}
            for family in text_string_to_metric_families(text.decode()):
                for s in family.samples:
                    if s.name.startswith("pulsar_replication_") and s.labels.get("topic") == topic:
                        out[(s.name, s.labels["remote_cluster"])] = s.value
            return out

        # The series are sampled at the topic's once-a-second tick: they
        # show the caught-up state the stats above showed, a tick later.
        caught_up = {(name, remote): value for remote in ("b", "c") for name, value in
                     (("pulsar_replication_backlog", 0), ("pulsar_replication_connected_count", 1))}
        series = {}

        def series_caught_up():
            series.clear()
            series.update(replication_series())
            return all(series.get(k) == v for k, v in caught_up.items())
        try:
            wait_until(series_caught_up, WAIT_S, "the replication series on /metrics caught up")
        except AssertionError as e:
            raise AssertionError(f"{e}: {series}") from None
    finally:
        for c in clients.values():
            c.close()


def test_per_message_clusters_and_disabled_replication_narrow_where_a_message_goes(mesh):
    ns = replicated_namespace(mesh)
    topic = f"persistent://{ns}/{unique('sel')}"
    clients = {n: make_client(b) for n, b in mesh.items()}
    try:
        consumers = {n: c.subscribe(topic, "s", initial_position=pulsar.InitialPosition.Earliest)
                     for n, c in clients.items()}
        p = clients["a"].create_producer(topic, batching_enabled=False)
        p.send(b"to-a-and-c", replication_clusters=["a", "c"])
        p.send(b"local-only", disable_replication=True)
        # Sent last, to everyone: once it arrives, what came before has too.
        p.send(b"everyone")
        expect = {
            "a": [b"to-a-and-c", b"local-only", b"everyone"],
            "b": [b"everyone"],
            "c": [b"to-a-and-c", b"everyone"],
        }
        for n, want in expect.items():
            assert [m.data() for m in drain(consumers[n], len(want))] == want, n
    finally:
        for c in clients.values():
            c.close()


def test_removing_a_cluster_stops_its_replicator_and_deletes_its_cursor(mesh):
    ns = replicated_namespace(mesh, members=["a", "b"])
    topic = f"persistent://{ns}/{unique('rm')}"
    a, b = mesh["a"], mesh["b"]
    ca, cb = make_client(a), make_client(b)
    try:
        consumer = cb.subscribe(topic, "s", initial_position=pulsar.InitialPosition.Earliest)
        producer = ca.create_producer(topic, batching_enabled=False)
        producer.send(b"one")
        assert consumer.receive(timeout_millis=int(WAIT_S * 1000)).data() == b"one"
        internal = "/admin/v2/" + topic.replace("://", "/") + "/internalStats"
        assert "pulsar.repl.b" in rest(a, "GET", internal)["cursors"]
        rest(a, "POST", f"/admin/v2/namespaces/{ns}/replication", ["a"])
        wait_until(lambda: "pulsar.repl.b" not in rest(a, "GET", internal)["cursors"],
                   WAIT_S, "the replicator's cursor deleted")
        producer.send(b"two")
        # Added back: the new cursor starts at the end, so "two" stays in a.
        rest(a, "POST", f"/admin/v2/namespaces/{ns}/replication", ["a", "b"])
        wait_until(lambda: "pulsar.repl.b" in rest(a, "GET", internal)["cursors"],
                   WAIT_S, "the replicator back")
        producer.send(b"three")
        assert consumer.receive(timeout_millis=int(WAIT_S * 1000)).data() == b"three"
    finally:
        ca.close()
        cb.close()


def topic_stats(broker, topic: str) -> dict:
    return rest(broker, "GET", "/admin/v2/" + topic.replace("://", "/") + "/stats")


def received(broker, topic: str) -> int:
    """Messages the topic took in since it loaded (0 while it does not exist)."""
    status, text = http("GET", broker.http_url + "/admin/v2/" + topic.replace("://", "/") + "/stats")
    return json.loads(text)["msgInCounter"] if status == 200 else 0


@pytest.mark.parametrize("victim", ["remote", "source"])
def test_kill_9_of_either_side_mid_stream_loses_and_doubles_nothing(mesh, victim):
    ns = replicated_namespace(mesh, members=["a", "b"])
    # Deduplication at the source, so the client's own resends after a
    # source crash do not double messages there (replication is what is tested).
    rest(mesh["a"], "POST", f"/admin/v2/namespaces/{ns}/deduplication", True)
    topic = f"persistent://{ns}/{unique('kill')}"
    a, b = mesh["a"], mesh["b"]
    killed = b if victim == "remote" else a
    total = 3000
    results = []
    # The subscription that counts in b exists first: without it (and without
    # retention) b would be free to drop what nobody subscribed to, as Pulsar.
    cb = make_client(b)
    cb.subscribe(topic, "count", initial_position=pulsar.InitialPosition.Earliest).close()
    cb.close()
    ca = make_client(a)

    def produce():
        producer = ca.create_producer(topic, producer_name=unique("p"), batching_enabled=False,
                                      send_timeout_millis=int((60 + 3 * OUTAGE_S) * 1000),
                                      block_if_queue_full=True)
        for i in range(total):
            producer.send_async(f"m-{i}".encode(), lambda res, _id: results.append(res))
            if i % 100 == 99:
                time.sleep(0.02)  # pacing: the stream lasts while the kill happens
        producer.flush()

    writer = threading.Thread(target=produce)
    writer.start()
    try:
        # Kill while messages flow and the replicator is part way.
        wait_until(lambda: received(b, topic) > 200, WAIT_S,
                   "replication under way")
        killed.kill()
        assert len(results) < total, "the stream ended before the kill: nothing was tested"
        time.sleep(OUTAGE_S)  # the outage itself: nothing to wait for
        killed.restart()
        writer.join(timeout=120 + 3 * OUTAGE_S)
        assert not writer.is_alive()
        # flush() may return before the client ran the last callbacks.
        wait_until(lambda: len(results) == total, 10, "every send's callback ran")
        assert results.count(pulsar.Result.Ok) == total, collections.Counter(results)
    finally:
        writer.join(timeout=1)
        ca.close()
    cb = make_client(b)
    try:
        consumer = cb.subscribe(topic, "count", initial_position=pulsar.InitialPosition.Earliest)
        messages = drain(consumer, total, timeout=60)
        while True:  # anything more is a duplicate
            try:
                messages.append(consumer.receive(timeout_millis=500))
            except pulsar.Timeout:
                break
        ids = collections.defaultdict(list)
        for m in messages:
            ids[m.data().decode()].append(f"{m.message_id()} r{m.redelivery_count()}")
        dups = {k: v for k, v in ids.items() if len(v) > 1}
        assert not dups, f"{len(dups)} duplicated, e.g. {list(dups.items())[:5]}"
        counts = collections.Counter(ids)
        assert sorted(counts) == sorted(f"m-{i}" for i in range(total))
    finally:
        cb.close()


def test_a_partitioned_topic_replicates_partition_by_partition(mesh):
    ns = replicated_namespace(mesh, members=["a", "b"])
    a, b = mesh["a"], mesh["b"]
    # b keeps what arrives before anyone subscribes there.
    rest(b, "POST", f"/admin/v2/namespaces/{ns}/retention",
         {"retentionTimeInMinutes": 60, "retentionSizeInMB": 100})
    local = unique("parts")
    topic = f"persistent://{ns}/{local}"
    # Only a has the partitioned topic: the replicators create it in b.
    rest(a, "PUT", f"/admin/v2/persistent/{ns}/{local}/partitions", 3)
    ca, cb = make_client(a), make_client(b)
    try:
        producer = ca.create_producer(topic, batching_enabled=False)
        sent = {}
        for i in range(30):
            mid = producer.send(f"m-{i}".encode(), partition_key=f"k{i}")
            sent[f"m-{i}"] = mid.partition()
        assert len(set(sent.values())) == 3, "every partition used"
        wait_until(lambda: http("GET", f"{b.http_url}/admin/v2/persistent/{ns}/{local}/partitions")[0] == 200
                   and json.loads(http("GET", f"{b.http_url}/admin/v2/persistent/{ns}/{local}/partitions")[1])["partitions"] == 3,
                   WAIT_S, "the partitioned topic created in b")
        consumer = cb.subscribe(topic, "s", initial_position=pulsar.InitialPosition.Earliest)
        got = {m.data().decode(): int(m.topic_name().rsplit("-partition-", 1)[1])
               for m in drain(consumer, 30)}
        assert got == sent, "each message in the partition of the same index"
    finally:
        ca.close()
        cb.close()


def test_replication_with_authentication_uses_the_configured_token_and_its_grant(make_broker, keys):
    """Three clusters with token authentication and authorization, each
    presenting a `replicator` role's token to the others, which grant it
    `produce`. Revoked in b, a's replicator to b stops visibly while c still
    gets everything; granted again, b gets what waited."""
    from test_security import SUPER_USER, secret_line, security_config

    admin_token = keys.token(SUPER_USER)
    repl_token = keys.token("replicator")

    def secured(name: str) -> str:
        table = ", ".join(f'{k} = "{repl_token}"' for k in NAMES if k != name)
        return (security_config(secret_line(keys))
                + f'[broker]\ncluster_name = "{name}"\nreplication_tokens = {{ {table} }}\n')

    clusters = {n: make_broker(n, config=secured(n), admin_token=admin_token) for n in NAMES}
    a, b, c = clusters["a"], clusters["b"], clusters["c"]
    auth = bearer(admin_token)

    def call(broker, method, path, body=None):
        data = None if body is None else json.dumps(body).encode()
        status, text = http(method, broker.http_url + path, data,
                            "application/json" if data is not None else None, headers=auth)
        assert status in (200, 204), (method, path, status, text)
        return json.loads(text) if text else None

    for name, broker in clusters.items():
        for other, peer in clusters.items():
            if other != name:
                call(broker, "PUT", f"/admin/v2/clusters/{other}",
                     {"serviceUrl": peer.http_url, "brokerServiceUrl": peer.service_url})
    tenant = unique("fl")
    ns = f"{tenant}/{unique('ns')}"
    grant = f"/admin/v2/namespaces/{ns}/permissions/replicator"
    for broker in clusters.values():
        call(broker, "PUT", f"/admin/v2/tenants/{tenant}", {"adminRoles": [], "allowedClusters": list(NAMES)})
        call(broker, "PUT", f"/admin/v2/namespaces/{ns}")
        call(broker, "POST", f"/admin/v2/namespaces/{ns}/replication", list(NAMES))
        # The other clusters' replicators may produce here.
        call(broker, "POST", grant, ["produce"])
    topic = f"persistent://{ns}/{unique('secure')}"
    stats_path = "/admin/v2/" + topic.replace("://", "/") + "/stats"
    token_auth = pulsar.AuthenticationToken(admin_token)
    clients = {n: make_client(br, authentication=token_auth) for n, br in clusters.items()}
    try:
        in_b = clients["b"].subscribe(topic, "s", initial_position=pulsar.InitialPosition.Earliest)
        in_c = clients["c"].subscribe(topic, "s", initial_position=pulsar.InitialPosition.Earliest)
        producer = clients["a"].create_producer(topic, batching_enabled=False)
        producer.send(b"granted")
        for consumer in (in_b, in_c):
            m = consumer.receive(timeout_millis=int(WAIT_S * 1000))
            assert m.data() == b"granted"
            consumer.acknowledge(m)
        # Revoked in b, and the replicator's connection gone (b unloads the
        # topic): it cannot come back, and says so in stats and logs.
        call(b, "DELETE", grant)
        call(b, "PUT", "/admin/v2/" + topic.replace("://", "/") + "/unload")
        producer.send(b"while-revoked")
        assert in_c.receive(timeout_millis=int(WAIT_S * 1000)).data() == b"while-revoked"
        wait_until(lambda: not call(a, "GET", stats_path)["replication"]["b"]["connected"],
                   WAIT_S, "the replicator to b shown disconnected")
        assert call(a, "GET", stats_path)["replication"]["b"]["replicationBacklog"] >= 1
        wait_until(lambda: "AuthorizationError" in a.log_path.read_text(), WAIT_S,
                   "the refusal in a's log")
        assert repl_token not in a.log_path.read_text(), "the token never reaches the log"
        # Granted again: the replicator comes back and sends what waited.
        call(b, "POST", grant, ["produce"])
        # ("granted" may come again first: its acknowledgement may not have
        # reached b before the unload.)
        m = in_b.receive(timeout_millis=int(WAIT_S * 1000))
        if m.data() == b"granted":
            m = in_b.receive(timeout_millis=int(WAIT_S * 1000))
        assert m.data() == b"while-revoked"
        runtime = call(a, "GET", "/admin/v2/brokers/configuration/runtime")
        assert repl_token not in json.dumps(runtime), "the token never reaches the admin API"
    finally:
        for cl in clients.values():
            cl.close()


def test_an_inactive_replicated_topic_is_deleted_only_once_its_replication_caught_up(make_broker):
    a = make_broker("a", config=config("a") + "delete_inactive_topics_frequency_secs = 1\n"
                                             "delete_inactive_topics_max_inactive_secs = 1\n")
    b = make_broker("b", config=config("b"))
    clusters = {"a": a, "b": b}
    register_peers(clusters)
    ns = replicated_namespace(clusters)
    topic = f"persistent://{ns}/{unique('inactive')}"
    path = "/admin/v2/" + topic.replace("://", "/") + "/stats"
    cb = make_client(b)
    cb.subscribe(topic, "keep", initial_position=pulsar.InitialPosition.Earliest).close()
    cb.close()
    b.kill()  # the remote is down: a's replication backlog stays
    ca = make_client(a)
    producer = ca.create_producer(topic, batching_enabled=False)
    for i in range(5):
        producer.send(f"m-{i}".encode())
    producer.close()
    ca.close()
    # Inactive for many times the limit, with no subscription: only the
    # replication backlog keeps it (no event marks "not deleted": wait for
    # several deletion checks, then look).
    time.sleep(4)
    stats = rest(a, "GET", path)
    assert stats["replication"]["b"]["replicationBacklog"] == 5
    b.restart()
    # Caught up, it goes in a (deletion is local)...
    wait_until(lambda: http("GET", a.http_url + path)[0] == 404, WAIT_S,
               "the inactive topic deleted in a once replicated")
    # ...and b has every message.
    cb = make_client(b)
    try:
        consumer = cb.subscribe(topic, "keep")
        assert [m.data() for m in drain(consumer, 5)] == [f"m-{i}".encode() for i in range(5)]
    finally:
        cb.close()


def status_of(broker, method: str, path: str, body=None) -> int:
    data = None if body is None else json.dumps(body).encode()
    return http(method, broker.http_url + path, data,
                "application/json" if data is not None else None)[0]


def test_a_topics_own_replication_clusters_replace_its_namespaces(mesh):
    ns = replicated_namespace(mesh, members=["a", "b"])
    a, b = mesh["a"], mesh["b"]
    narrowed = f"persistent://{ns}/{unique('own')}"
    other = f"persistent://{ns}/{unique('other')}"
    internal = "/admin/v2/" + narrowed.replace("://", "/") + "/internalStats"
    policy = "/admin/v2/" + narrowed.replace("://", "/") + "/replication"
    cli = Cli(a)
    ca, cb = make_client(a), make_client(b)
    try:
        in_b = cb.subscribe(narrowed, "s", initial_position=pulsar.InitialPosition.Earliest)
        other_in_b = cb.subscribe(other, "s", initial_position=pulsar.InitialPosition.Earliest)
        producer = ca.create_producer(narrowed, batching_enabled=False)
        other_producer = ca.create_producer(other, batching_enabled=False)
        producer.send(b"one")
        assert in_b.receive(timeout_millis=int(WAIT_S * 1000)).data() == b"one"

        # Pulsar's checks: clusters named, none `global`, each registered
        # and allowed to the tenant.
        assert status_of(a, "POST", policy, []) == 412
        assert status_of(a, "POST", policy, ["a", "global"]) == 412
        assert status_of(a, "POST", policy, ["a", "nowhere"]) == 403
        rest(a, "PUT", "/admin/v2/clusters/d",
             {"serviceUrl": "http://127.0.0.1:1", "brokerServiceUrl": "pulsar://127.0.0.1:1"})
        assert status_of(a, "POST", policy, ["a", "d"]) == 403, "d is not the tenant's"
        missing = f"/admin/v2/persistent/{ns}/{unique('missing')}/replication"
        assert status_of(a, "POST", missing, ["a"]) == 404
        assert status_of(a, "GET", policy) == 204, "no topic-level value yet"

        cli.ok("topics", "set-replication-clusters", narrowed, "--clusters", "a")
        assert cli.json("topics", "get-replication-clusters", narrowed) == ["a"]
        # The running topic applies it at its next policy check.
        wait_until(lambda: "pulsar.repl.b" not in rest(a, "GET", internal)["cursors"],
                   WAIT_S, "the topic's replicator to b stopped")
        producer.send(b"two")
        # The other topic still replicates; once its marker (sent after
        # "two") is in b, "two" would have been too.
        other_producer.send(b"marker")
        assert other_in_b.receive(timeout_millis=int(WAIT_S * 1000)).data() == b"marker"
        assert_no_more(in_b, wait_ms=1000, what="b's consumer of the narrowed topic")

        # Removed: the namespace's clusters apply again (a new cursor starts
        # at the end, so "two" stays in a).
        cli.ok("topicPolicies", "remove-replication-clusters", narrowed)
        assert status_of(a, "GET", policy) == 204
        wait_until(lambda: "pulsar.repl.b" in rest(a, "GET", internal)["cursors"],
                   WAIT_S, "the topic's replicator to b back")
        producer.send(b"three")
        assert in_b.receive(timeout_millis=int(WAIT_S * 1000)).data() == b"three"
    finally:
        ca.close()
        cb.close()


def test_a_replicator_dispatch_rate_paces_replication_not_local_publishing(mesh):
    ns = replicated_namespace(mesh, members=["a", "b"])
    a, b = mesh["a"], mesh["b"]
    cli = Cli(a)
    cli.ok("namespaces", "set-replicator-dispatch-rate", ns,
           "--msg-dispatch-rate", "20", "--dispatch-rate-period", "1")
    assert cli.json("namespaces", "get-replicator-dispatch-rate", ns)[
        "dispatchThrottlingRateInMsg"] == 20
    topic = f"persistent://{ns}/{unique('paced')}"
    total = 100
    ca, cb = make_client(a), make_client(b)
    try:
        in_b = cb.subscribe(topic, "s", initial_position=pulsar.InitialPosition.Earliest)
        local = ca.subscribe(topic, "local", initial_position=pulsar.InitialPosition.Earliest)
        producer = ca.create_producer(topic, batching_enabled=False)
        start = time.monotonic()
        for i in range(total):
            producer.send_async(f"m-{i}".encode(), None)
        producer.flush()
        published_s = time.monotonic() - start
        # Local consumers are not paced either.
        assert len(drain(local, total)) == total
        # 20 may go at once, then 20 a second: at this point (well under 4 s
        # in) b cannot have them all.
        replicated_so_far = received(b, topic)
        assert replicated_so_far < total, (replicated_so_far, published_s)
        drain(in_b, total)
        replicated_s = time.monotonic() - start
        assert replicated_s >= 3.5, f"100 messages at 20/s replicated in {replicated_s:.1f} s"
        assert published_s < replicated_s / 2, (published_s, replicated_s)
        print(f"published in {published_s:.2f} s, {replicated_so_far} in b then, "
              f"all replicated in {replicated_s:.2f} s")
        # A topic's own rate overrides the namespace's, on the running topic:
        # 60 more at 5/s take ~11 s (at the namespace's 20/s they would take
        # 2 s; the topic applies the change within a policy check or so).
        topic_policy = "/admin/v2/" + topic.replace("://", "/") + "/replicatorDispatchRate"
        cli.ok("topics", "set-replicator-dispatch-rate", topic, "-md", "5")
        assert rest(a, "GET", topic_policy)["dispatchThrottlingRateInMsg"] == 5
        start = time.monotonic()
        for i in range(60):
            producer.send_async(f"n-{i}".encode(), None)
        producer.flush()
        drain(in_b, 60)
        slower_s = time.monotonic() - start
        assert slower_s >= 3.0, f"60 messages at 5/s replicated in {slower_s:.1f} s"
        print(f"60 more at the topic's 5/s replicated in {slower_s:.2f} s")
        cli.ok("topics", "remove-replicator-dispatch-rate", topic)
        assert status_of(a, "GET", topic_policy) == 204
        cli.ok("namespaces", "remove-replicator-dispatch-rate", ns)
        assert status_of(a, "GET", f"/admin/v2/namespaces/{ns}/replicatorDispatchRate") == 204
    finally:
        ca.close()
        cb.close()


def test_ttl_and_the_backlog_quota_count_a_down_remotes_replication_backlog(make_broker):
    """A replicator's cursor is a durable cursor like a subscription's (as in
    Pulsar): while its remote is down, its backlog holds back retention, is
    expired by the TTL (expired messages are never sent), and counts toward
    the backlog quota (producers are held)."""
    fast = "message_expiry_check_interval_secs = 1\nbacklog_quota_check_interval_secs = 1\n"
    clusters = {n: make_broker(n, config=config(n) + fast) for n in ("a", "b")}
    register_peers(clusters)
    a, b = clusters["a"], clusters["b"]
    ns = replicated_namespace(clusters)
    topic = f"persistent://{ns}/{unique('ttl')}"
    stats_path = "/admin/v2/" + topic.replace("://", "/") + "/stats"
    cb = make_client(b)
    cb.subscribe(topic, "count", initial_position=pulsar.InitialPosition.Earliest).close()
    cb.close()
    b.kill()
    ca = make_client(a)
    try:
        producer = ca.create_producer(topic, batching_enabled=False)
        for i in range(10):
            producer.send(f"old-{i}".encode())
        wait_until(lambda: rest(a, "GET", stats_path)["replication"]["b"]["replicationBacklog"] == 10,
                   WAIT_S, "the replication backlog grows while b is down")
        # Over a 1-byte quota the backlog (the replicator's) holds producers.
        rest(a, "POST", f"/admin/v2/namespaces/{ns}/backlogQuota?backlogQuotaType=destination_storage",
             {"limitSize": 1, "policy": "producer_request_hold"})

        def refused():
            try:
                ca.create_producer(topic, send_timeout_millis=2000).close()
                return False
            except (pulsar.ProducerBlockedQuotaExceededException,
                    pulsar.ProducerBlockedQuotaExceededError, pulsar.Timeout):
                return True
        wait_until(refused, WAIT_S, "a new producer held by the replicator's backlog")
        rest(a, "DELETE", f"/admin/v2/namespaces/{ns}/backlogQuota?backlogQuotaType=destination_storage")
        # A 1 s TTL expires the replication backlog: those messages never go.
        rest(a, "POST", f"/admin/v2/namespaces/{ns}/messageTTL", 1)
        wait_until(lambda: rest(a, "GET", stats_path)["replication"]["b"]["replicationBacklog"] == 0,
                   WAIT_S, "the TTL expired the replication backlog")
        rest(a, "DELETE", f"/admin/v2/namespaces/{ns}/messageTTL")
        b.start()
        producer.send(b"new")
    finally:
        ca.close()
    cb = make_client(b)
    try:
        consumer = cb.subscribe(topic, "count", initial_position=pulsar.InitialPosition.Earliest)
        assert [m.data() for m in drain(consumer, 1)] == [b"new"]
        assert_no_more(consumer)
    finally:
        cb.close()
