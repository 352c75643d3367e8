"""Subscription expiration and the subscribe rate, end to end (issue #23).

* ``subscriptionExpirationTime`` (minutes) deletes a durable subscription with
  no consumer once it has been idle that long; one with a consumer stays.
  Pulsar's unit is the minute, so the expiration test takes a little over one
  minute; the broker checks every second here
  (``subscription_expiry_check_interval_secs = 1``; the default is 300).
* ``subscribeRate`` limits how often one consumer (client IP, consumer name,
  consumer id) may SUBSCRIBE; the throttled SUBSCRIBE gets Pulsar's
  ``NotAllowedError`` "Subscribe limited by subscribe rate limit per
  consumer.". A real client's new consumer has a new id, so the same consumer
  subscribing again is driven on the raw protocol (wire.py).
* The admin CLI verbs for both, with pulsar-admin's flags.
"""

from __future__ import annotations

import time

import pulsar
import pytest

import wire
from conftest import http, make_client, receive_n, unique, wait_until
from test_admin_cli import Cli, rest, rest_json, topic_rest_path

WAIT_S = 10.0
CHECK_EVERY_SECOND = "[broker]\nsubscription_expiry_check_interval_secs = 1\n"
NOT_ALLOWED = 22
THROTTLED = "Subscribe limited by subscribe rate limit per consumer."


def new_namespace(broker) -> str:
    ns = f"public/{unique('ns')}"
    status, body = rest(broker, "PUT", f"/admin/v2/namespaces/{ns}")
    assert status == 204, body
    return ns


def subscriptions(broker, topic: str) -> list[str]:
    return sorted(rest_json(broker, f"{topic_rest_path(topic)}/subscriptions"))


def counter(broker, name: str) -> float:
    """A broker-wide counter from /metrics (0 if absent)."""
    text = http("GET", broker.http_url + "/metrics")[1].decode()
    for line in text.splitlines():
        if line.startswith((name + " ", name + "{")):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


# ---------------------------------------------------------------- subscription expiration


def test_an_idle_subscription_expires_and_one_with_a_consumer_stays(make_broker):
    broker = make_broker(config=CHECK_EVERY_SECOND)
    expiring, plain = new_namespace(broker), new_namespace(broker)
    path = f"/admin/v2/namespaces/{expiring}/subscriptionExpirationTime"
    assert rest(broker, "POST", path, 1)[0] == 204
    assert rest_json(broker, path) == 1
    assert rest_json(broker, f"/admin/v2/namespaces/{expiring}")[
        "subscription_expiration_time_minutes"] == 1

    topic = f"persistent://{expiring}/{unique('t')}"
    kept_topic = f"persistent://{plain}/{unique('t')}"
    client = make_client(broker)
    try:
        client.subscribe(topic, "idle").close()
        client.subscribe(kept_topic, "idle").close()
        idle_since = time.monotonic()
        busy = client.subscribe(topic, "busy")
        assert subscriptions(broker, topic) == ["busy", "idle"]

        wait_until(lambda: subscriptions(broker, topic) == ["busy"], 100.0,
                   f"the idle subscription to expire (subscriptions: {subscriptions(broker, topic)})",
                   interval=0.5)
        idle_for = time.monotonic() - idle_since
        assert idle_for > 59.0, f"deleted after {idle_for:.1f}s, before its minute"
        assert subscriptions(broker, kept_topic) == ["idle"], \
            "a namespace without the policy keeps its idle subscriptions (broker default 0)"
        assert counter(broker, "kilonova_subscriptions_expired_total") == 1

        # The subscription with a consumer still works.
        producer = client.create_producer(topic)
        producer.send(b"after")
        assert [m.data() for m in receive_n(busy, 1)] == [b"after"]
    finally:
        client.close()

    assert rest(broker, "DELETE", path)[0] == 204
    assert rest(broker, "GET", path)[0] == 204, "unset: nothing to show"


def test_subscription_expiration_time_is_checked(broker):
    ns = new_namespace(broker)
    path = f"/admin/v2/namespaces/{ns}/subscriptionExpirationTime"
    status, doc = rest(broker, "POST", path, -1)
    assert 400 <= status < 500 and "subscription expiration time" in doc["reason"], (status, doc)
    assert rest(broker, "POST", path, 0)[0] == 204, "0 turns expiration off"
    assert rest(broker, "POST", "/admin/v2/namespaces/public/missing/subscriptionExpirationTime",
                5)[0] == 404


# ---------------------------------------------------------------- subscribe rate


def raw_subscribe(conn: wire.RawConnection, topic: str, consumer_id: int, name: str,
                  request_id: int) -> tuple[str, object]:
    """One SUBSCRIBE of consumer `consumer_id` named `name` to subscription
    `s`: ("ok", None) or ("error", (code, message))."""
    conn.send(wire.subscribe_cmd(topic, "s", consumer_id, request_id, sub_type=1,
                                 consumer_name=name))
    while True:
        f = conn.read_frame(WAIT_S)
        if f.type == wire.SUCCESS and wire.first(f.body, 1) == request_id:
            return "ok", None
        if f.type == wire.ERROR and wire.first(f.body, 1) == request_id:
            return "error", (wire.first(f.body, 2), wire.first(f.body, 3, b"").decode())


def raw_close(conn: wire.RawConnection, consumer_id: int, request_id: int) -> None:
    conn.send(wire.close_consumer_cmd(consumer_id, request_id))
    while True:
        f = conn.read_frame(WAIT_S)
        if f.type == wire.SUCCESS and wire.first(f.body, 1) == request_id:
            return


def test_a_consumer_subscribing_again_faster_than_the_subscribe_rate_gets_not_allowed(broker, client):
    ns = new_namespace(broker)
    path = f"/admin/v2/namespaces/{ns}/subscribeRate"
    rate = {"subscribeThrottlingRatePerConsumer": 2, "ratePeriodInSecond": 3600}
    assert rest(broker, "POST", path, rate)[0] == 204
    assert rest_json(broker, path) == rate
    assert rest_json(broker, f"/admin/v2/namespaces/{ns}")["clusterSubscribeRate"] == {"standalone": rate}
    topic = f"persistent://{ns}/{unique('t')}"

    with wire.RawConnection("127.0.0.1", broker.pulsar_port) as conn:
        conn.handshake()
        rid = iter(range(1, 1000))
        for _ in range(2):
            assert raw_subscribe(conn, topic, 1, "looping", next(rid)) == ("ok", None)
            raw_close(conn, 1, next(rid))
        assert raw_subscribe(conn, topic, 1, "looping", next(rid)) == ("error", (NOT_ALLOWED, THROTTLED))
        assert counter(broker, "kilonova_subscribe_throttled_total") == 1
        # The allowance is per consumer: another id or another name is another consumer.
        assert raw_subscribe(conn, topic, 2, "looping", next(rid)) == ("ok", None)
        assert raw_subscribe(conn, topic, 3, "other", next(rid)) == ("ok", None)

        # A real client's consumers each have their own id: three of the
        # same name are three consumers, none throttled.
        for _ in range(3):
            client.subscribe(topic, "s", consumer_type=pulsar.ConsumerType.Shared,
                             consumer_name="real-client").close()

        # Removing the policy lifts the limit (at the topic's next policy check).
        assert rest(broker, "DELETE", path)[0] == 204
        assert rest(broker, "GET", path)[0] == 204

        def admitted():
            outcome = raw_subscribe(conn, topic, 1, "looping", next(rid))
            if outcome[0] == "ok":
                return True
            assert outcome == ("error", (NOT_ALLOWED, THROTTLED)), outcome
            time.sleep(0.2)  # the policy refresh is a 1 s tick; nothing to await on the wire
            return False

        wait_until(admitted, WAIT_S, "consumer 1 to subscribe again once the rate was removed")


def test_a_topic_subscribe_rate_overrides_the_namespace_and_non_persistent_topics_are_not_limited(broker):
    ns = new_namespace(broker)
    one_per_hour = {"subscribeThrottlingRatePerConsumer": 1, "ratePeriodInSecond": 3600}
    assert rest(broker, "POST", f"/admin/v2/namespaces/{ns}/subscribeRate", one_per_hour)[0] == 204
    unlimited_topic = f"persistent://{ns}/{unique('t')}"
    limited_topic = f"persistent://{ns}/{unique('t')}"
    volatile_topic = f"non-persistent://{ns}/{unique('t')}"
    assert rest(broker, "PUT", topic_rest_path(unlimited_topic))[0] == 204
    unlimited = {"subscribeThrottlingRatePerConsumer": -1, "ratePeriodInSecond": 30}
    assert rest(broker, "POST", f"{topic_rest_path(unlimited_topic)}/subscribeRate", unlimited)[0] == 204
    assert rest_json(broker, f"{topic_rest_path(unlimited_topic)}/subscribeRate") == unlimited

    with wire.RawConnection("127.0.0.1", broker.pulsar_port) as conn:
        conn.handshake()
        rid = iter(range(1, 1000))
        for topic, limited in ((unlimited_topic, False), (volatile_topic, False), (limited_topic, True)):
            assert raw_subscribe(conn, topic, 7, "c", next(rid)) == ("ok", None)
            raw_close(conn, 7, next(rid))
            expected = ("error", (NOT_ALLOWED, THROTTLED)) if limited else ("ok", None)
            assert raw_subscribe(conn, topic, 7, "c", next(rid)) == expected, topic
            if not limited:
                raw_close(conn, 7, next(rid))


def test_a_bad_subscribe_rate_is_refused(broker):
    ns = new_namespace(broker)
    status, doc = rest(broker, "POST", f"/admin/v2/namespaces/{ns}/subscribeRate",
                       {"subscribeThrottlingRatePerConsumer": 1, "ratePeriodInSecond": 0})
    assert 400 <= status < 500 and "subscribe rate" in doc["reason"], (status, doc)


# ---------------------------------------------------------------- the CLI


@pytest.fixture
def cli(broker) -> Cli:
    return Cli(broker)


def test_cli_subscription_expiration_and_subscribe_rate_verbs(cli, broker):
    ns = new_namespace(broker)
    cli.ok("namespaces", "set-subscription-expiration-time", ns, "-t", "30")
    assert rest_json(broker, f"/admin/v2/namespaces/{ns}/subscriptionExpirationTime") == 30
    assert cli.lines("namespaces", "get-subscription-expiration-time", ns) == ["30"]
    cli.ok("namespaces", "remove-subscription-expiration-time", ns)
    assert cli.lines("namespaces", "get-subscription-expiration-time", ns) == []
    cli.fails("namespaces", "set-subscription-expiration-time", ns, "-t", "-5")
    cli.fails("namespaces", "set-subscription-expiration-time", "public/missing", "-t", "5")

    cli.ok("namespaces", "set-subscribe-rate", ns, "-sr", "4", "-st", "10")
    expected = {"subscribeThrottlingRatePerConsumer": 4, "ratePeriodInSecond": 10}
    assert rest_json(broker, f"/admin/v2/namespaces/{ns}/subscribeRate") == expected
    assert cli.json("namespaces", "get-subscribe-rate", ns) == expected
    cli.ok("namespaces", "set-subscribe-rate", ns, "--subscribe-rate", "6")
    assert cli.json("namespaces", "get-subscribe-rate", ns) == {
        "subscribeThrottlingRatePerConsumer": 6, "ratePeriodInSecond": 30}
    cli.ok("namespaces", "remove-subscribe-rate", ns)
    assert cli.lines("namespaces", "get-subscribe-rate", ns) == []
