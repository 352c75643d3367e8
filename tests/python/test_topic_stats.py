"""Topic stats with real clients: the per-subscription, per-consumer and
per-publisher fields dashboards read, with Pulsar's JSON names and types
(`GET …/{topic}/stats`)."""

from __future__ import annotations

import re

import pulsar

from conftest import receive_n, topic_name, wait_until
from test_admin_cli import rest_json, topic_rest_path

WAIT_S = 10.0
ISO_MS = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
ADDRESS = re.compile(r"^127\.0\.0\.1:\d+$")


def stats(broker, topic: str) -> dict:
    return rest_json(broker, f"{topic_rest_path(topic)}/stats")


def sub_stats(broker, topic: str, sub: str) -> dict:
    return stats(broker, topic)["subscriptions"][sub]


def is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def test_unacked_messages_of_a_consumer_and_its_subscription(broker, client):
    topic = topic_name("unacked")
    consumer = client.subscribe(topic, "s", consumer_type=pulsar.ConsumerType.Shared,
                                consumer_name="c1")
    producer = client.create_producer(topic, batching_enabled=False)
    for i in range(5):
        producer.send(f"m{i}".encode())
    got = receive_n(consumer, 5)

    wait_until(lambda: sub_stats(broker, topic, "s")["unackedMessages"] == 5, WAIT_S,
               "unackedMessages to count the 5 messages delivered")
    s = sub_stats(broker, topic, "s")
    [c] = s["consumers"]
    assert is_int(c["unackedMessages"]) and c["unackedMessages"] == 5, c
    assert s["blockedSubscriptionOnUnackedMsgs"] is False and c["blockedConsumerOnUnackedMsgs"] is False
    assert s["lastAckedTimestamp"] == 0, "nothing acknowledged yet"

    for m in got[:2]:
        consumer.acknowledge(m)
    wait_until(lambda: sub_stats(broker, topic, "s")["unackedMessages"] == 3, WAIT_S,
               "unackedMessages to drop to 3 after two acknowledgements")
    s = sub_stats(broker, topic, "s")
    assert s["consumers"][0]["unackedMessages"] == 3, s
    assert is_int(s["lastAckedTimestamp"]) and s["lastAckedTimestamp"] > 1_600_000_000_000, s

    consumer.close()
    producer.close()


def test_consumer_and_publisher_identity_fields(broker, client):
    topic = topic_name("who")
    consumer = client.subscribe(topic, "s", consumer_name="c1")
    producer = client.create_producer(topic, producer_name="p1")
    st = stats(broker, topic)
    [c] = st["subscriptions"]["s"]["consumers"]
    [p] = st["publishers"]
    for who in (c, p):
        assert ADDRESS.match(who["address"]), who
        assert ISO_MS.match(who["connectedSince"]), who
        assert who["clientVersion"], f"the client announces a version: {who!r}"
    assert p["producerName"] == "p1" and isinstance(p["msgRateIn"], float), p
    assert isinstance(p["msgThroughputIn"], float) and isinstance(p["averageMsgSize"], float), p
    consumer.close()
    producer.close()
    # connectedSince is when the producer registered, as Pulsar's, not when
    # its connection was made: one created later on the same client's
    # connection shows a later time (ISO times of one format sort as text).
    wait_until(lambda: datetime_now_iso() > p["connectedSince"], WAIT_S, "the clock to move past it")
    later = client.create_producer(topic, producer_name="p2")
    [p2] = stats(broker, topic)["publishers"]
    assert p2["connectedSince"] > p["connectedSince"], (p, p2)
    later.close()


def datetime_now_iso() -> str:
    """Now, as the broker writes connectedSince (UTC, milliseconds)."""
    import datetime
    now = datetime.datetime.now(datetime.timezone.utc)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


def test_rates_are_measured_per_subscription_consumer_and_publisher(broker, client):
    topic = topic_name("rates")
    consumer = client.subscribe(topic, "s", consumer_type=pulsar.ConsumerType.Shared,
                                negative_ack_redelivery_delay_ms=100)
    producer = client.create_producer(topic, batching_enabled=False)
    for i in range(50):
        producer.send(f"m{i}".encode())
    msgs = receive_n(consumer, 50)
    for m in msgs[:10]:
        consumer.negative_acknowledge(m)

    seen = {}

    def measured():
        st = stats(broker, topic)
        s = st["subscriptions"]["s"]
        c = s["consumers"][0]
        p = st["publishers"][0]
        for key, value in (("sub out", s["msgRateOut"]), ("sub bytes", s["msgThroughputOut"]),
                           ("consumer out", c["msgRateOut"]), ("publisher in", p["msgRateIn"]),
                           ("sub redeliver", s["msgRateRedeliver"]),
                           ("consumer redeliver", c["msgRateRedeliver"])):
            assert isinstance(value, float), (key, value)
            if value > 0:
                seen[key] = value
        return len(seen) == 6

    wait_until(measured, WAIT_S, "every rate to be measured above 0 in some window")
    consumer.close()
    producer.close()


def test_key_shared_mode_and_hash_ranges(broker, client):
    topic = topic_name("ks")
    a = client.subscribe(topic, "s", consumer_type=pulsar.ConsumerType.KeyShared, consumer_name="a")
    b = client.subscribe(topic, "s", consumer_type=pulsar.ConsumerType.KeyShared, consumer_name="b")
    s = sub_stats(broker, topic, "s")
    assert s["type"] == "Key_Shared" and s["keySharedMode"] == "AUTO_SPLIT", s
    total = 0
    for c in s["consumers"]:
        assert c["keyHashRanges"], c
        for r in c["keyHashRanges"]:
            lo, hi = (int(x) for x in re.fullmatch(r"\[(\d+), (\d+)\]", r).groups())
            total += hi - lo + 1
    assert total == 65536, "the two consumers' ranges cover every slot once"
    shared = topic_name("notks")
    d = client.subscribe(shared, "s", consumer_type=pulsar.ConsumerType.Shared)
    assert "keySharedMode" not in sub_stats(broker, shared, "s")
    for c in (a, b, d):
        c.close()


def new_namespace(cli) -> str:
    from conftest import unique
    tenant = unique("tenant")
    cli.ok("tenants", "create", tenant, "--allowed-clusters", "standalone")
    ns = f"{tenant}/{unique('ns')}"
    cli.ok("namespaces", "create", ns)
    return ns


def test_max_unacked_messages_per_consumer_blocks_the_consumer(broker, client):
    from conftest import assert_no_more
    from test_admin_cli import Cli
    cli = Cli(broker)
    ns = new_namespace(cli)
    cli.ok("namespaces", "set-max-unacked-messages-per-consumer", ns, "-c", "3")
    assert cli.json("namespaces", "get-max-unacked-messages-per-consumer", ns) == 3
    topic = f"persistent://{ns}/t"
    consumer = client.subscribe(topic, "s", consumer_type=pulsar.ConsumerType.Shared,
                                receiver_queue_size=20)
    producer = client.create_producer(topic, batching_enabled=False)
    for i in range(8):
        producer.send(f"m{i}".encode())
    first = receive_n(consumer, 3)
    assert_no_more(consumer, what="a consumer with 3 messages unacknowledged")
    c = sub_stats(broker, topic, "s")["consumers"][0]
    assert c["unackedMessages"] == 3 and c["blockedConsumerOnUnackedMsgs"] is True, c

    consumer.acknowledge(first[0])
    receive_n(consumer, 1, what="the message an acknowledgement made room for")
    assert_no_more(consumer, what="a consumer back at its limit")

    cli.ok("namespaces", "remove-max-unacked-messages-per-consumer", ns)
    receive_n(consumer, 4, timeout=WAIT_S, what="the rest once the limit is removed")
    consumer.close()
    producer.close()


def test_max_unacked_messages_per_subscription_blocks_the_subscription(broker, client):
    from conftest import assert_no_more, collect_from
    from test_admin_cli import Cli
    cli = Cli(broker)
    ns = new_namespace(cli)
    cli.ok("namespaces", "set-max-unacked-messages-per-subscription", ns, "-m", "4")
    assert cli.json("namespaces", "get-max-unacked-messages-per-subscription", ns) == 4
    topic = f"persistent://{ns}/t"
    a = client.subscribe(topic, "s", consumer_type=pulsar.ConsumerType.Shared, receiver_queue_size=20)
    b = client.subscribe(topic, "s", consumer_type=pulsar.ConsumerType.Shared, receiver_queue_size=20)
    producer = client.create_producer(topic, batching_enabled=False)
    for i in range(10):
        producer.send(f"m{i}".encode())

    def delivered():
        return sub_stats(broker, topic, "s")["unackedMessages"]

    wait_until(lambda: delivered() == 4, WAIT_S, f"4 messages delivered (last {delivered()})")
    s = sub_stats(broker, topic, "s")
    assert s["blockedSubscriptionOnUnackedMsgs"] is True, s
    collect_from([a, b], 4)
    for c in (a, b):
        assert_no_more(c, what="a consumer of a subscription at its limit")
    assert delivered() == 4, "nothing more is dispatched while blocked"
    for c in (a, b):
        c.close()
    producer.close()


def test_topic_max_unacked_messages_per_consumer_overrides_the_namespaces(broker, client):
    from conftest import assert_no_more
    from test_admin_cli import Cli
    cli = Cli(broker)
    ns = new_namespace(cli)
    cli.ok("namespaces", "set-max-unacked-messages-per-consumer", ns, "-c", "5")
    topic = f"persistent://{ns}/t"
    cli.ok("topics", "create", topic)
    cli.ok("topics", "set-max-unacked-messages-per-consumer", topic, "-m", "2")
    assert cli.json("topics", "get-max-unacked-messages-per-consumer", topic) == 2
    assert cli.json("topicPolicies", "get-max-unacked-messages-on-consumer", topic) == 2
    consumer = client.subscribe(topic, "s", consumer_type=pulsar.ConsumerType.Shared,
                                receiver_queue_size=20)
    producer = client.create_producer(topic, batching_enabled=False)
    for i in range(8):
        producer.send(f"m{i}".encode())
    receive_n(consumer, 2, what="the 2 messages the topic's limit allows")
    assert_no_more(consumer, what="a consumer at the topic's limit of 2 (the namespace says 5)")
    c = sub_stats(broker, topic, "s")["consumers"][0]
    assert c["unackedMessages"] == 2 and c["blockedConsumerOnUnackedMsgs"] is True, c

    cli.ok("topics", "remove-max-unacked-messages-per-consumer", topic)
    assert cli.ok("topics", "get-max-unacked-messages-per-consumer", topic).stdout.strip() == ""
    receive_n(consumer, 3, timeout=WAIT_S, what="3 more once the namespace's limit of 5 applies")
    assert_no_more(consumer, what="a consumer at the namespace's limit of 5")
    consumer.close()
    producer.close()


def test_topic_max_unacked_messages_per_subscription_blocks_the_subscription(broker, client):
    from conftest import assert_no_more, collect_from
    from test_admin_cli import Cli
    cli = Cli(broker)
    topic = f"persistent://{new_namespace(cli)}/t"
    cli.ok("topics", "create", topic)
    cli.ok("topicPolicies", "set-max-unacked-messages-per-subscription", topic, "--maxNum", "3")
    a = client.subscribe(topic, "s", consumer_type=pulsar.ConsumerType.Shared, receiver_queue_size=20)
    b = client.subscribe(topic, "s", consumer_type=pulsar.ConsumerType.Shared, receiver_queue_size=20)
    producer = client.create_producer(topic, batching_enabled=False)
    for i in range(10):
        producer.send(f"m{i}".encode())

    def delivered():
        return sub_stats(broker, topic, "s")["unackedMessages"]

    wait_until(lambda: delivered() == 3, WAIT_S, f"3 messages delivered (last {delivered()})")
    assert sub_stats(broker, topic, "s")["blockedSubscriptionOnUnackedMsgs"] is True
    collect_from([a, b], 3)
    for c in (a, b):
        assert_no_more(c, what="a consumer of a subscription at the topic's limit")
    cli.ok("topicPolicies", "remove-max-unacked-messages-per-subscription", topic)
    collect_from([a, b], 7)
    for c in (a, b):
        c.close()
    producer.close()
