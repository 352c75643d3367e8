"""Replicated subscriptions (issue #24): a subscription created with
`replicate_subscription_state_enabled` in one cluster keeps its position in
step in the others, so a consumer that fails over resumes where the snapshot
its first consumer passed says, without reading again what was consumed.

Three standalones a, b, c in a full mesh (the two-round snapshot), driven
by the real Python client; the admin verbs through `kilonova admin`.
"""

from __future__ import annotations

import pulsar

from conftest import http, make_client, unique, wait_until
from test_admin_cli import Cli
from test_geo_replication import WAIT_S, config, mesh, register_peers, replicated_namespace, rest  # noqa: F401

BATCH = 40


def stats(broker, topic: str) -> dict:
    return rest(broker, "GET", "/admin/v2/" + topic.replace("://", "/") + "/stats")


def metrics(broker, *names: str) -> list[float]:
    """The named counters, summed over their labels, from one scrape."""
    status, text = http("GET", broker.http_url + "/metrics")
    assert status == 200
    lines = text.decode().splitlines()
    return [sum(float(l.rsplit(" ", 1)[1]) for l in lines if l.startswith(name + "{"))
            for name in names]


def metric(broker, name: str) -> float:
    return metrics(broker, name)[0]


def receive_all(consumer, n: int) -> list[str]:
    got = []
    while len(got) < n:
        try:
            m = consumer.receive(timeout_millis=int(WAIT_S * 1000))
        except pulsar.Timeout:
            raise AssertionError(f"received {len(got)} of {n}: {got}") from None
        consumer.acknowledge(m)
        got.append(m.data().decode())
    return got


def wait_for_a_snapshot_started_now(broker) -> None:
    """Waits until a snapshot that started after this call completed (one
    snapshot is pending at a time; one may be under way already)."""
    prefix = "kilonova_replicated_subscription_snapshots_"
    # One scrape: a snapshot completing between two reads would be miscounted.
    started, completed, timed_out = metrics(
        broker, *(f"{prefix}{k}_total" for k in ("started", "completed", "timed_out")))
    target = completed + (2 if started > completed + timed_out else 1)
    wait_until(lambda: metric(broker, f"{prefix}completed_total") >= target, WAIT_S,
               "a snapshot taken now completed")


def position_of(broker, topic: str, payload: str) -> tuple[int, int]:
    """Where the message `payload` is stored in this cluster's copy."""
    c = make_client(broker)
    try:
        reader = c.create_reader(topic, pulsar.MessageId.earliest)
        while True:
            m = reader.read_next(timeout_millis=int(WAIT_S * 1000))
            if m.data().decode() == payload:
                return (m.message_id().ledger_id(), m.message_id().entry_id())
    finally:
        c.close()


def mark_delete(broker, topic: str, sub: str) -> tuple[int, int]:
    cursors = rest(broker, "GET", "/admin/v2/" + topic.replace("://", "/") + "/internalStats")["cursors"]
    if sub not in cursors:
        return (-1, -1)
    ledger, entry = cursors[sub]["markDeletePosition"].split(":")
    return (int(ledger), int(entry))


def assert_nothing_more(consumer) -> None:
    try:
        m = consumer.receive(timeout_millis=1000)
    except pulsar.Timeout:
        return
    raise AssertionError(f"unexpected message {m.data()!r}")


def test_a_consumer_failing_over_resumes_where_the_replicated_subscription_was(mesh):
    a, b, c = mesh["a"], mesh["b"], mesh["c"]
    ns = replicated_namespace(mesh)
    topic = f"persistent://{ns}/{unique('fl')}"
    ca = make_client(a)
    try:
        consumer = ca.subscribe(topic, "trainer", replicate_subscription_state_enabled=True,
                                initial_position=pulsar.InitialPosition.Earliest)
        local_only = ca.subscribe(topic, "local-only",
                                  initial_position=pulsar.InitialPosition.Earliest)
        producer = ca.create_producer(topic, batching_enabled=False)
        for i in range(BATCH):
            producer.send(f"first-{i}".encode())
        # A snapshot of the three clusters' positions taken after the first
        # batch (both rounds answered by b and c) before the second goes out.
        wait_for_a_snapshot_started_now(a)
        for i in range(BATCH):
            producer.send(f"second-{i}".encode())
        # The first consumer takes the first batch only.
        assert receive_all(consumer, BATCH) == [f"first-{i}" for i in range(BATCH)]
        receive_all(local_only, 2 * BATCH)
        assert stats(a, topic)["subscriptions"]["trainer"]["isReplicated"] is True
        assert stats(a, topic)["subscriptions"]["local-only"]["isReplicated"] is False

        # b and c learn the subscription's position from a's update: past
        # their copy of the first batch's last message.
        for remote in (b, c):
            last_first = position_of(remote, topic, f"first-{BATCH - 1}")
            wait_until(lambda: mark_delete(remote, topic, "trainer") >= last_first, WAIT_S,
                       "the replicated subscription's position reached the other cluster")
            sub = stats(remote, topic)["subscriptions"]["trainer"]
            assert sub["isReplicated"] is True
            assert "local-only" not in stats(remote, topic)["subscriptions"]

        # The consumer in a goes away; one failing over to b resumes at the
        # second batch: nothing the first consumer acknowledged comes again.
        consumer.close()
        updates_before = {n: metric(mesh[n], "kilonova_replicated_subscription_updates_total")
                          for n in ("a", "c")}
        cb = make_client(b)
        try:
            failover = cb.subscribe(topic, "trainer", replicate_subscription_state_enabled=True)
            assert receive_all(failover, BATCH) == [f"second-{i}" for i in range(BATCH)]
            assert_nothing_more(failover)
            # What b's consumer acknowledged moves the subscription in a and c
            # too (b's own snapshots): a consumer there gets nothing again.
            for n in ("a", "c"):
                wait_until(lambda: metric(mesh[n], "kilonova_replicated_subscription_updates_total")
                           > updates_before[n], WAIT_S, f"b's update reached {n}")
                cn = make_client(mesh[n])
                try:
                    again = cn.subscribe(topic, "trainer", replicate_subscription_state_enabled=True)
                    assert_nothing_more(again)
                    again.close()
                finally:
                    cn.close()
            failover.close()
        finally:
            cb.close()

        # Markers are never delivered, and a reader is not fooled by those at
        # the end of the topic into waiting for a message that never comes.
        reader = ca.create_reader(topic, pulsar.MessageId.earliest)
        read = []
        while reader.has_message_available():
            read.append(reader.read_next(timeout_millis=int(WAIT_S * 1000)).data().decode())
        assert read == [f"first-{i}" for i in range(BATCH)] + [f"second-{i}" for i in range(BATCH)]
        assert metric(b, "kilonova_replicated_subscription_updates_total") >= 1
    finally:
        ca.close()


def test_replicated_subscription_status_is_set_read_and_kept_across_a_restart(make_broker, tmp_path):
    clusters = {n: make_broker(n, config=config(n)) for n in ("a", "b")}
    register_peers(clusters)
    a = clusters["a"]
    ns = replicated_namespace(clusters)
    topic = f"persistent://{ns}/{unique('status')}"
    cli = Cli(a)
    rest(a, "PUT", "/admin/v2/" + topic.replace("://", "/"))
    rest(a, "PUT", "/admin/v2/" + topic.replace("://", "/") + "/subscription/s")
    assert cli.json("topics", "get-replicated-subscription-status", topic, "-s", "s") == {topic: False}
    cli.ok("topics", "set-replicated-subscription-status", topic, "-s", "s", "--enable")
    assert cli.json("topics", "get-replicated-subscription-status", topic, "-s", "s") == {topic: True}
    assert stats(a, topic)["subscriptions"]["s"]["isReplicated"] is True

    a.kill()
    a.start()
    assert cli.json("topics", "get-replicated-subscription-status", topic, "-s", "s") == {topic: True}
    cli.ok("topics", "set-replicated-subscription-status", topic, "-s", "s", "--disable")
    assert cli.json("topics", "get-replicated-subscription-status", topic, "-s", "s") == {topic: False}

    # An unknown subscription: 404; a replicator's cursor is not a subscription.
    path = "/admin/v2/" + topic.replace("://", "/") + "/subscription/{}/replicatedSubscriptionStatus"
    assert http("POST", a.http_url + path.format("nope"), b"true", "application/json")[0] == 404
    assert http("GET", a.http_url + path.format("pulsar.repl.b"))[0] == 404
    assert http("POST", a.http_url + path.format("s"), b"maybe", "application/json")[0] == 400


def test_a_partitioned_topic_answers_each_partitions_status(make_broker):
    clusters = {n: make_broker(n, config=config(n)) for n in ("a", "b")}
    register_peers(clusters)
    a = clusters["a"]
    ns = replicated_namespace(clusters)
    topic = f"persistent://{ns}/{unique('parts')}"
    rest(a, "PUT", "/admin/v2/" + topic.replace("://", "/") + "/partitions", 2)
    c = make_client(a)
    try:
        c.subscribe(topic, "s", replicate_subscription_state_enabled=True).close()
    finally:
        c.close()
    status = rest(a, "GET", "/admin/v2/" + topic.replace("://", "/") + "/subscription/s/replicatedSubscriptionStatus")
    assert status == {f"{topic}-partition-0": True, f"{topic}-partition-1": True}
