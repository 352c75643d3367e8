"""Namespace and topic policies, and the broker settings behind them, as a
Pulsar client sees them: publish and dispatch rates, producer/consumer/topic
limits, message TTL, retention, backlog quotas, inactive topic deletion,
deduplication and delayed delivery.

Each policy is set and removed over the admin REST API while the broker runs,
and its effect is observed with the real Python client (pulsar-client). Rates
are checked loosely (within ±30 %) over a few seconds; accuracy is measured by
scripts/bench-throttle. Fixed waits only observe absence ("still there after
4 s") or measure a rate over a window; everything else waits on an event.
"""

from __future__ import annotations

import functools
import json
import os
import threading
import time
from datetime import timedelta

import pulsar
import pytest

import wire

from conftest import (
    assert_no_more,
    http,
    make_client,
    msg_key,
    payloads,
    read_n,
    receive_n,
    topic_name,
    unique,
    wait_until,
)

RATE_TOLERANCE = 0.30
# Long enough to outlast a deletion or expiry that is due (policy period 2 s,
# check every 1 s), used only where the test asserts that something stays.
ABSENCE_WINDOW_S = 4.0


# ---------------------------------------------------------------- config and admin helpers


def toml(broker: dict | None = None, storage: dict | None = None) -> str:
    """A config file with `[broker]` and `[storage]` sections (JSON scalars are
    valid TOML for the ints, bools and strings used here)."""
    lines = []
    for section, values in (("broker", broker), ("storage", storage)):
        if values:
            lines.append(f"[{section}]")
            lines += [f"{k} = {json.dumps(v)}" for k, v in values.items()]
    return "\n".join(lines) + "\n"


def api(broker, method: str, path: str, body=None, expect=(200, 204)) -> tuple[int, bytes]:
    data = None if body is None else json.dumps(body).encode()
    status, out = http(method, broker.http_url + path, data,
                       "application/json" if data is not None else None)
    if expect is not None:
        assert status in expect, f"{method} {path} {body!r}: HTTP {status} {out[:300]!r}"
    return status, out


def create_namespace(broker) -> str:
    ns = f"public/{unique('ns')}"
    api(broker, "PUT", f"/admin/v2/namespaces/{ns}", {})
    return ns


def ns_topic(ns: str, prefix: str) -> str:
    return f"persistent://{ns}/{unique(prefix)}"


def topic_path(topic: str) -> str:
    assert topic.startswith("persistent://"), topic
    return "/admin/v2/persistent/" + topic[len("persistent://"):]


def namespace_of(topic: str) -> str:
    return "/".join(topic[len("persistent://"):].split("/")[:2])


def create_topic(broker, topic: str) -> None:
    api(broker, "PUT", topic_path(topic))


def set_ns_policy(broker, ns: str, policy: str, value) -> None:
    api(broker, "POST", f"/admin/v2/namespaces/{ns}/{policy}", value)


def remove_ns_policy(broker, ns: str, policy: str) -> None:
    api(broker, "DELETE", f"/admin/v2/namespaces/{ns}/{policy}")


def set_topic_policy(broker, topic: str, policy: str, value) -> None:
    api(broker, "POST", f"{topic_path(topic)}/{policy}", value)


def remove_topic_policy(broker, topic: str, policy: str) -> None:
    api(broker, "DELETE", f"{topic_path(topic)}/{policy}")


def set_policy(broker, level: str, topic: str, policy: str, value) -> None:
    if level == "namespace":
        set_ns_policy(broker, namespace_of(topic), policy, value)
    else:
        set_topic_policy(broker, topic, policy, value)


def remove_policy(broker, level: str, topic: str, policy: str) -> None:
    if level == "namespace":
        remove_ns_policy(broker, namespace_of(topic), policy)
    else:
        remove_topic_policy(broker, topic, policy)


def stats(broker, topic: str) -> dict | None:
    """The topic's stats, or None when the broker answers 404."""
    status, body = api(broker, "GET", f"{topic_path(topic)}/stats", expect=None)
    if status == 404:
        return None
    assert status == 200, f"stats of {topic}: HTTP {status} {body[:300]!r}"
    return json.loads(body)


def backlog(broker, topic: str, sub: str) -> int:
    s = stats(broker, topic)
    assert s is not None, f"{topic} has no stats"
    assert sub in s.get("subscriptions", {}), f"no subscription {sub!r} in {s!r}"
    return s["subscriptions"][sub]["msgBacklog"]


def topic_list(broker, ns: str = "public/default") -> list[str]:
    _, body = api(broker, "GET", f"/admin/v2/persistent/{ns}", expect=(200,))
    return json.loads(body)


def partitioned_list(broker, ns: str = "public/default") -> list[str]:
    _, body = api(broker, "GET", f"/admin/v2/persistent/{ns}/partitioned", expect=(200,))
    return json.loads(body)


def storage_size(broker, topic: str) -> int:
    s = stats(broker, topic)
    assert s is not None, f"{topic} has no stats"
    return s["storageSize"]


def drain(consumer, idle_ms: int = 1000) -> list:
    """Receives until nothing arrives for `idle_ms`."""
    out = []
    while True:
        try:
            out.append(consumer.receive(timeout_millis=idle_ms))
        except pulsar.Timeout:
            return out


def topic_gone(broker, topic: str) -> bool:
    return topic not in topic_list(broker, namespace_of(topic)) and stats(broker, topic) is None


def dir_size(path) -> int:
    """Sum of the sizes of the files under `path` (files may vanish meanwhile)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(root, f))
            except OSError:
                pass
    return total


@pytest.fixture
def pumps(clients):
    """Makes Pumps that are stopped at teardown, before their clients close."""
    made = []

    def make(producer, **kwargs):
        p = Pump(producer, **kwargs).start()
        made.append(p)
        return p

    yield make
    for p in made:
        p.halt()


@pytest.fixture
def clients():
    """Makes clients that are closed at teardown (before the brokers stop:
    request this fixture after make_broker)."""
    made = []

    def make(broker, **kwargs):
        c = make_client(broker, **kwargs)
        made.append(c)
        return c

    yield make
    for c in made:
        try:
            c.close()
        except pulsar.PulsarException:
            pass


def refused(create, error) -> bool:
    """True if `create()` raises `error`; a created object is closed (False).
    Any other exception propagates: the error type is part of the check."""
    try:
        obj = create()
    except error:
        return True
    obj.close()
    return False


def accepted(create, error):
    """`create()`'s result, or None if it raised `error`."""
    try:
        return create()
    except error:
        return None


def wait_refused(create, error, what: str, timeout: float = 10.0) -> None:
    wait_until(lambda: refused(create, error), timeout, what, interval=0.2)


def wait_accepted(create, error, what: str, timeout: float = 10.0):
    return wait_until(lambda: accepted(create, error), timeout, what, interval=0.2)


# ---------------------------------------------------------------- rate helpers


class Pump:
    """One producer sending as fast as it may (send_async, at most `in_flight`
    unanswered) on a thread, recording each receipt's time and result.
    Payloads start with the 8-digit index of the message."""

    def __init__(self, producer, size: int = 100, in_flight: int = 100):
        self.producer = producer
        self.size = size
        self.receipts: list[tuple[float, int, object]] = []
        self.sent = 0
        self._lock = threading.Lock()
        self._slots = threading.Semaphore(in_flight)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> "Pump":
        self._thread.start()
        return self

    def _run(self):
        i = 0
        while not self._stop.is_set():
            if not self._slots.acquire(timeout=0.05):
                continue
            payload = f"{i:08d}".encode().ljust(self.size, b".")
            self.producer.send_async(payload, functools.partial(self._done, i))
            i += 1
            self.sent = i

    def _done(self, i, res, _msg_id):
        with self._lock:
            self.receipts.append((time.monotonic(), i, res))
        self._slots.release()

    def errors(self) -> list:
        with self._lock:
            return [(i, res) for _, i, res in self.receipts if res != pulsar.Result.Ok]

    def rate(self, t0: float, t1: float) -> float:
        with self._lock:
            n = sum(1 for t, _, res in self.receipts if t0 <= t < t1 and res == pulsar.Result.Ok)
        return n / (t1 - t0)

    def settle(self, predicate, what: str, timeout: float = 10.0) -> None:
        """Waits until the receipt rate over the last second satisfies
        `predicate` (a changed policy applies within a moment, not at once)."""
        since = time.monotonic()

        def ok():
            now = time.monotonic()
            return now - since >= 1.0 and predicate(self.rate(now - 1.0, now))

        wait_until(ok, timeout, what, interval=0.1)

    def measure(self, skip: float, window: float) -> float:
        """Receipts per second over `window` seconds, starting `skip` s from now."""
        t0 = time.monotonic() + skip
        time.sleep(skip + window)  # a rate over a fixed window
        assert self._thread.is_alive(), "the producer thread died"
        assert not self.errors(), f"send errors: {self.errors()[:10]}"
        return self.rate(t0, t0 + window)

    def halt(self) -> None:
        """Stops sending (teardown: no checks)."""
        self._stop.set()
        self._thread.join(5)

    def stop(self, timeout: float = 30.0) -> int:
        """Stops sending and waits for every receipt; returns the number sent."""
        self._stop.set()
        self._thread.join(5)
        assert not self._thread.is_alive(), "the producer thread did not stop"
        wait_until(lambda: len(self.receipts) >= self.sent, timeout,
                   f"receipts for all {self.sent} messages sent (got {len(self.receipts)})")
        assert not self.errors(), f"send errors: {self.errors()[:10]}"
        return self.sent


class Drain:
    """Receives from `consumer` on a thread, recording each arrival's time and
    index (payloads start with an 8-digit index)."""

    def __init__(self, consumer):
        self.consumer = consumer
        self.arrivals: list[tuple[float, int]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> "Drain":
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            try:
                m = self.consumer.receive(timeout_millis=100)
            except pulsar.Timeout:
                continue
            except pulsar.PulsarException:
                return  # closed at teardown
            with self._lock:
                self.arrivals.append((time.monotonic(), int(m.data()[:8])))

    @property
    def count(self) -> int:
        with self._lock:
            return len(self.arrivals)

    def indices(self) -> list[int]:
        with self._lock:
            return [i for _, i in self.arrivals]

    def rate(self, t0: float, t1: float) -> float:
        with self._lock:
            return sum(1 for t, _ in self.arrivals if t0 <= t < t1) / (t1 - t0)

    def settle(self, predicate, what: str, timeout: float = 10.0) -> None:
        """Waits until the arrival rate over the last second satisfies `predicate`."""
        since = time.monotonic()

        def ok():
            now = time.monotonic()
            return now - since >= 1.0 and predicate(self.rate(now - 1.0, now))

        wait_until(ok, timeout, what, interval=0.1)

    def halt(self) -> None:
        self._stop.set()
        self._thread.join(5)


@pytest.fixture
def drains(clients):
    """Makes Drains that are stopped at teardown, before their clients close."""
    made = []

    def make(consumer):
        d = Drain(consumer).start()
        made.append(d)
        return d

    yield make
    for d in made:
        d.halt()


def measure_window(window: float) -> tuple[float, float]:
    """Waits `window` seconds (a rate over a fixed window); returns its bounds."""
    t0 = time.monotonic()
    time.sleep(window)
    return t0, t0 + window


def send_result(producer, payload: bytes, timeout: float = 10.0):
    """The result of one send_async, or None if no answer came within `timeout`."""
    box = []
    answered = threading.Event()

    def cb(res, _msg_id):
        box.append(res)
        answered.set()

    producer.send_async(payload, cb)
    answered.wait(timeout)
    return box[0] if box else None


def assert_rate(measured: float, limit: float, what: str) -> None:
    lo, hi = limit * (1 - RATE_TOLERANCE), limit * (1 + RATE_TOLERANCE)
    assert lo <= measured <= hi, (
        f"{what}: {measured:.1f}/s, expected {limit}/s ±{RATE_TOLERANCE:.0%} ({lo:.1f}..{hi:.1f})"
    )


def indices(messages) -> list[int]:
    return [int(m.data()[:8]) for m in messages]


def produce(producer, n: int, size: int = 100, start: int = 0) -> list:
    """Sends n messages (index-prefixed payloads) asynchronously, then waits for
    every receipt; returns the message ids, failing on any send error."""
    results = [None] * n
    done = threading.Event()
    left = [n]
    lock = threading.Lock()

    def cb(i, res, msg_id):
        results[i] = (res, msg_id)
        with lock:
            left[0] -= 1
            if left[0] == 0:
                done.set()

    for i in range(n):
        payload = f"{start + i:08d}".encode().ljust(size, b".")
        producer.send_async(payload, functools.partial(cb, i))
    producer.flush()
    assert done.wait(60), f"receipts for {n} messages: {left[0]} missing"
    bad = [(i, r[0]) for i, r in enumerate(results) if r[0] != pulsar.Result.Ok]
    assert not bad, f"send errors: {bad[:10]}"
    return [r[1] for r in results]


# ================================================================ publish rate


def test_namespace_publish_rate_throttles_a_fast_producer_until_removed(make_broker, clients, pumps):
    broker = make_broker()
    ns = create_namespace(broker)
    topic = ns_topic(ns, "pubrate")
    set_ns_policy(broker, ns, "publishRate",
                  {"publishThrottlingRateInMsg": 50, "publishThrottlingRateInByte": -1})
    c = clients(broker)
    consumer = c.subscribe(topic, "all")
    producer = c.create_producer(topic, batching_enabled=False, max_pending_messages=200,
                                 block_if_queue_full=True)
    pump = pumps(producer)
    pump.settle(lambda r: 0 < r <= 100, "the producer throttled near 50 msg/s")
    assert_rate(pump.measure(skip=0.5, window=4.0), 50, "publish rate under a 50 msg/s limit")

    remove_ns_policy(broker, ns, "publishRate")
    pump.settle(lambda r: r > 200, "the producer running far above 50 msg/s once the limit is removed")
    free = pump.measure(skip=0.0, window=2.0)
    assert free > 4 * 50, f"after removing the limit the producer should run far above 50/s, got {free:.1f}/s"
    sent = pump.stop()

    got = receive_n(consumer, sent, timeout=60, what="throttled messages")
    assert sorted(indices(got)) == list(range(sent)), "every message sent is received exactly once"
    assert_no_more(consumer)


def test_topic_publish_rate_overrides_the_namespace_rate(make_broker, clients, pumps):
    broker = make_broker()
    ns = create_namespace(broker)
    topic = ns_topic(ns, "pubrate-topic")
    create_topic(broker, topic)
    set_ns_policy(broker, ns, "publishRate",
                  {"publishThrottlingRateInMsg": 25, "publishThrottlingRateInByte": -1})
    set_topic_policy(broker, topic, "publishRate",
                     {"publishThrottlingRateInMsg": 100, "publishThrottlingRateInByte": -1})
    c = clients(broker)
    producer = c.create_producer(topic, batching_enabled=False, max_pending_messages=200,
                                 block_if_queue_full=True)
    pump = pumps(producer)
    pump.settle(lambda r: 0 < r <= 200, "the producer throttled near 100 msg/s")
    assert_rate(pump.measure(skip=0.5, window=4.0), 100,
                "publish rate with topic limit 100 over namespace limit 25")

    remove_topic_policy(broker, topic, "publishRate")
    pump.settle(lambda r: 0 < r <= 50, "the producer throttled near 25 msg/s once the topic limit is removed")
    assert_rate(pump.measure(skip=0.5, window=4.0), 25,
                "publish rate after removing the topic limit (namespace limit 25 applies)")

    remove_ns_policy(broker, ns, "publishRate")
    pump.settle(lambda r: r > 400, "the producer running far above 100 msg/s with no limit left")
    free = pump.measure(skip=0.0, window=2.0)
    assert free > 4 * 100, f"with no limit left the producer should run far above 100/s, got {free:.1f}/s"
    pump.stop()


def test_publish_byte_rate_limits_bytes_per_second(make_broker, clients, pumps):
    broker = make_broker()
    ns = create_namespace(broker)
    topic = ns_topic(ns, "byterate")
    size = 5 * 1024
    set_ns_policy(broker, ns, "publishRate",
                  {"publishThrottlingRateInMsg": -1, "publishThrottlingRateInByte": 50 * 1024})
    c = clients(broker)
    producer = c.create_producer(topic, batching_enabled=False, max_pending_messages=200,
                                 block_if_queue_full=True)
    pump = pumps(producer, size=size, in_flight=50)
    pump.settle(lambda r: 0 < r <= 20, "the producer throttled near 10 msg/s of 5 KiB")
    msgs = pump.measure(skip=0.5, window=4.0)
    assert_rate(msgs, 10, "5 KiB messages under a 50 KiB/s byte limit (msg/s)")

    remove_ns_policy(broker, ns, "publishRate")
    pump.settle(lambda r: r > 40, "the producer running far above 10 msg/s once the byte limit is removed")
    free = pump.measure(skip=0.0, window=2.0)
    assert free > 4 * 10, f"after removing the byte limit the producer should run far above 10 msg/s, got {free:.1f}/s"
    pump.stop()


# ================================================================ dispatch rate


DISPATCH_20 = {"dispatchThrottlingRateInMsg": 20, "dispatchThrottlingRateInByte": -1,
               "ratePeriodInSecond": 1}


def test_topic_dispatch_rate_limits_a_consumer_until_removed(make_broker, clients, pumps, drains):
    broker = make_broker()
    topic = topic_name("dispatch")
    create_topic(broker, topic)
    c = clients(broker)
    # A small receiver queue: what the client has buffered drains at once.
    drain = drains(c.subscribe(topic, "s", receiver_queue_size=10))
    pump = pumps(c.create_producer(topic, batching_enabled=False, max_pending_messages=100,
                                   block_if_queue_full=True), in_flight=20)
    wait_until(lambda: drain.count > 100, 10, "the consumer receiving before any limit")

    set_topic_policy(broker, topic, "dispatchRate", DISPATCH_20)
    drain.settle(lambda r: 0 < r <= 40, "the consumer slowed to about 20 msg/s by the topic dispatch limit")
    sent = pump.stop()  # what is left is a backlog
    t0, t1 = measure_window(4.0)
    assert_rate(drain.rate(t0, t1), 20, "dispatch rate under a 20 msg/s topic limit")
    left = sent - drain.count
    assert left >= 200, f"only {left} messages left in the backlog to show the limit's removal"

    remove_topic_policy(broker, topic, "dispatchRate")
    timeout = min(30.0, left / 20 / 4)
    wait_until(lambda: drain.count >= sent, timeout,
               f"the backlog of {left} delivered within {timeout:.0f} s once the limit is removed "
               f"(at 20/s it would take {left / 20:.0f} s)")
    assert sorted(drain.indices()) == list(range(sent)), "every message is delivered exactly once"


def test_subscription_dispatch_rate_limits_each_subscription(make_broker, clients, pumps, drains):
    broker = make_broker()
    topic = topic_name("subdispatch")
    create_topic(broker, topic)
    c = clients(broker)
    subs = {sub: drains(c.subscribe(topic, sub, receiver_queue_size=10)) for sub in ("a", "b")}
    pump = pumps(c.create_producer(topic, batching_enabled=False, max_pending_messages=100,
                                   block_if_queue_full=True), in_flight=20)
    wait_until(lambda: all(d.count > 100 for d in subs.values()), 10, "both consumers receiving")

    set_topic_policy(broker, topic, "subscriptionDispatchRate", DISPATCH_20)
    for sub, d in subs.items():
        d.settle(lambda r: 0 < r <= 40, f"subscription {sub!r} slowed to about 20 msg/s")
    sent = pump.stop()
    t0, t1 = measure_window(4.0)
    # Each subscription gets the whole rate: the limit is not shared.
    for sub, d in subs.items():
        assert_rate(d.rate(t0, t1), 20, f"subscription {sub!r} under a 20 msg/s per-subscription limit")
    left = min(sent - d.count for d in subs.values())
    assert left >= 200, f"only {left} messages left in a backlog to show the limit's removal"

    remove_topic_policy(broker, topic, "subscriptionDispatchRate")
    timeout = min(30.0, left / 20 / 4)
    for sub, d in subs.items():
        wait_until(lambda: d.count >= sent, timeout,
                   f"the backlog of {sub!r} delivered within {timeout:.0f} s once the limit is removed")
        assert sorted(d.indices()) == list(range(sent)), f"every message delivered once to {sub!r}"


# ================================================================ limits


LEVELS = ["namespace", "topic"]


@pytest.mark.parametrize("level", LEVELS)
def test_max_producers_per_topic_refuses_the_extra_producer_until_removed(make_broker, clients, level):
    broker = make_broker()
    ns = create_namespace(broker)
    topic = ns_topic(ns, "maxprod")
    create_topic(broker, topic)
    if level == "topic":
        set_ns_policy(broker, ns, "maxProducersPerTopic", 5)  # the topic's 1 overrides it
    set_policy(broker, level, topic, "maxProducersPerTopic", 1)
    c = clients(broker)
    first = c.create_producer(topic)
    wait_refused(lambda: c.create_producer(topic), pulsar.ProducerBusy,
                 f"a second producer refused with ProducerBusy under {level} maxProducersPerTopic=1")
    first.send(b"first-still-works")

    remove_policy(broker, level, topic, "maxProducersPerTopic")
    second = wait_accepted(lambda: c.create_producer(topic), pulsar.ProducerBusy,
                           "a second producer accepted after removing the limit")
    second.send(b"second-works")


@pytest.mark.parametrize("level", LEVELS)
def test_max_consumers_per_topic_refuses_the_extra_consumer_until_removed(make_broker, clients, level):
    broker = make_broker()
    ns = create_namespace(broker)
    topic = ns_topic(ns, "maxcons")
    create_topic(broker, topic)
    if level == "topic":
        set_ns_policy(broker, ns, "maxConsumersPerTopic", 5)
    set_policy(broker, level, topic, "maxConsumersPerTopic", 1)
    c = clients(broker)
    c.subscribe(topic, "a")
    wait_refused(lambda: c.subscribe(topic, unique("b")), pulsar.ConsumerBusy,
                 f"a consumer on a second subscription refused with ConsumerBusy under {level} "
                 "maxConsumersPerTopic=1")

    remove_policy(broker, level, topic, "maxConsumersPerTopic")
    wait_accepted(lambda: c.subscribe(topic, "b"), pulsar.ConsumerBusy,
                  "a second consumer accepted after removing the limit")


@pytest.mark.parametrize("level", LEVELS)
def test_max_consumers_per_subscription_refuses_the_extra_consumer_until_removed(make_broker, clients, level):
    broker = make_broker()
    ns = create_namespace(broker)
    topic = ns_topic(ns, "maxsubcons")
    create_topic(broker, topic)
    if level == "topic":
        set_ns_policy(broker, ns, "maxConsumersPerSubscription", 5)
    set_policy(broker, level, topic, "maxConsumersPerSubscription", 1)
    c = clients(broker)
    shared = functools.partial(c.subscribe, topic, "s", consumer_type=pulsar.ConsumerType.Shared)
    shared()
    wait_refused(shared, pulsar.ConsumerBusy,
                 f"a second consumer on a shared subscription refused with ConsumerBusy under {level} "
                 "maxConsumersPerSubscription=1")
    # The limit is per subscription: another subscription takes a consumer.
    c.subscribe(topic, "other", consumer_type=pulsar.ConsumerType.Shared)

    remove_policy(broker, level, topic, "maxConsumersPerSubscription")
    wait_accepted(shared, pulsar.ConsumerBusy,
                  "a second consumer on the shared subscription accepted after removing the limit")


# A message over the topic's maxMessageSize is answered SendError(NotAllowedError),
# as Pulsar answers it. The C++ client under pulsar-client 3.13 fails a message
# only on SendError(ChecksumError): on any other send error it closes the
# connection and re-sends the message after reconnecting, forever (with Pulsar
# too), so the refusal itself is checked on raw frames, and the Python client
# checks what it can observe: messages under the limit, and the limit removed.
NOT_ALLOWED_ERROR = 22


def test_topic_max_message_size_refuses_bigger_messages_until_removed(make_broker, clients):
    broker = make_broker()
    topic = topic_name("maxsize")
    create_topic(broker, topic)
    c = clients(broker)
    consumer = c.subscribe(topic, "s")
    set_topic_policy(broker, topic, "maxMessageSize", 1024)
    with wire.RawConnection("127.0.0.1", broker.pulsar_port) as conn:
        conn.handshake()
        conn.send(wire.producer_cmd(topic, producer_id=1, request_id=1))
        ok = conn.expect(wire.PRODUCER_SUCCESS)
        name = wire.first(ok.body, 2, b"raw").decode()
        seq = [0]

        def send(payload: bytes) -> wire.Frame:
            seq[0] += 1
            conn.send(wire.send_cmd(1, seq[0], name, payload))
            while True:
                f = conn.read_frame()
                if f.type in (wire.SEND_RECEIPT, wire.SEND_ERROR):
                    assert wire.first(f.body, 2) == seq[0], f
                    return f

        def big_refused() -> bool:
            f = send(b"b" * 2048)
            if f.type == wire.SEND_RECEIPT:
                return False  # accepted before the policy reached the topic
            code = wire.first(f.body, 3)
            assert code == NOT_ALLOWED_ERROR, f"a 2 KiB send failed with {wire.SERVER_ERRORS.get(code)}"
            return True

        wait_until(big_refused, 15, "a 2 KiB send refused under maxMessageSize=1024")
        stored_early = seq[0] - 1
        f = send(b"c" * 512)
        assert f.type == wire.SEND_RECEIPT, "the producer and its connection keep working"
    producer = c.create_producer(topic, batching_enabled=False)
    producer.send(b"a" * 512)
    remove_topic_policy(broker, topic, "maxMessageSize")
    wait_until(lambda: send_result(producer, b"d" * 2048) == pulsar.Result.Ok, 15,
               "a 2 KiB send accepted once maxMessageSize is removed")
    got = payloads(drain(consumer))
    expected = [b"b" * 2048] * stored_early + [b"c" * 512, b"a" * 512, b"d" * 2048]
    assert got == expected, [(g[:1], len(g)) for g in got]


def test_max_topics_per_namespace_refuses_a_third_topic_until_removed(make_broker, clients):
    broker = make_broker()
    ns = create_namespace(broker)
    set_ns_policy(broker, ns, "maxTopicsPerNamespace", 2)
    first, second, third, fourth = (ns_topic(ns, f"t{i}") for i in range(4))
    create_topic(broker, first)
    create_topic(broker, second)
    status, body = api(broker, "PUT", topic_path(third), expect=None)
    assert status == 412, f"creating a third topic under maxTopicsPerNamespace=2: HTTP {status} {body[:200]!r}"
    c = clients(broker, operation_timeout_seconds=5)
    with pytest.raises(pulsar.NotAllowedError):
        c.create_producer(fourth)
    assert sorted(topic_list(broker, ns)) == sorted([first, second])

    remove_ns_policy(broker, ns, "maxTopicsPerNamespace")
    create_topic(broker, third)
    c.create_producer(fourth).send(b"fourth")
    assert sorted(topic_list(broker, ns)) == sorted([first, second, third, fourth])


# ================================================================ message TTL


@pytest.mark.parametrize("level", LEVELS)
def test_message_ttl_expires_unconsumed_messages_until_removed(make_broker, clients, level):
    broker = make_broker(config=toml(broker={"message_expiry_check_interval_secs": 1}))
    ns = create_namespace(broker)
    topic = ns_topic(ns, "ttl")
    c = clients(broker)
    c.subscribe(topic, "s").close()
    producer = c.create_producer(topic, batching_enabled=False)
    produce(producer, 10)
    wait_until(lambda: backlog(broker, topic, "s") == 10, 10, "a backlog of 10 before the TTL is set")

    set_policy(broker, level, topic, "messageTTL", 2)
    wait_until(lambda: backlog(broker, topic, "s") == 0, 15,
               f"the backlog expiring under a {level} messageTTL of 2 s")
    consumer = c.subscribe(topic, "s")
    assert_no_more(consumer, wait_ms=1000, what="a consumer of a subscription whose messages expired")
    consumer.close()

    remove_policy(broker, level, topic, "messageTTL")
    produce(producer, 5, start=10)
    time.sleep(ABSENCE_WINDOW_S)  # observing that nothing expires
    assert backlog(broker, topic, "s") == 5, "with the TTL removed messages stay in the backlog"
    consumer = c.subscribe(topic, "s")
    assert indices(receive_n(consumer, 5)) == list(range(10, 15))


# ================================================================ retention


RETENTION_SEGMENT = 10
RETENTION_PAYLOAD = 1000
# One segment's worth of entries, with room for per-entry metadata.
ONE_SEGMENT_BYTES = RETENTION_SEGMENT * (RETENTION_PAYLOAD + 256)


def retention_broker(make_broker):
    return make_broker(config=toml(broker={"max_segment_entries": RETENTION_SEGMENT}))


def test_zero_retention_trims_sealed_segments_without_subscriptions(make_broker, clients):
    broker = retention_broker(make_broker)
    ns = create_namespace(broker)
    set_ns_policy(broker, ns, "retention", {"retentionTimeInMinutes": 0, "retentionSizeInMB": 0})
    topic = ns_topic(ns, "noretention")
    c = clients(broker)
    producer = c.create_producer(topic, batching_enabled=False)
    produce(producer, 100, size=RETENTION_PAYLOAD)

    wait_until(lambda: storage_size(broker, topic) <= ONE_SEGMENT_BYTES, 15,
               f"storageSize of 100 x 1000 B with no subscription and retention 0 shrinking to at most "
               f"one segment ({ONE_SEGMENT_BYTES} B)")
    reader = c.create_reader(topic, pulsar.MessageId.earliest)
    kept = []
    while True:
        try:
            kept.append(reader.read_next(timeout_millis=1000))
        except pulsar.Timeout:
            break
    reader.close()
    assert len(kept) <= RETENTION_SEGMENT, f"a reader from earliest read {len(kept)} trimmed messages"
    if kept:
        assert indices(kept) == list(range(100 - len(kept), 100)), "what is kept is the newest"


def test_infinite_retention_keeps_everything_until_removed(make_broker, clients):
    broker = retention_broker(make_broker)
    ns = create_namespace(broker)
    set_ns_policy(broker, ns, "retention", {"retentionTimeInMinutes": -1, "retentionSizeInMB": -1})
    topic = ns_topic(ns, "retained")
    c = clients(broker)
    producer = c.create_producer(topic, batching_enabled=False)
    produce(producer, 100, size=RETENTION_PAYLOAD)

    time.sleep(ABSENCE_WINDOW_S)  # observing that nothing is trimmed
    size = storage_size(broker, topic)
    assert size >= 100 * RETENTION_PAYLOAD, f"storageSize {size} with infinite retention"
    reader = c.create_reader(topic, pulsar.MessageId.earliest)
    assert indices(read_n(reader, 100)) == list(range(100))
    reader.close()

    remove_ns_policy(broker, ns, "retention")  # the broker default: no retention
    produce(producer, RETENTION_SEGMENT, size=RETENTION_PAYLOAD, start=100)  # rolls a segment
    wait_until(lambda: storage_size(broker, topic) <= ONE_SEGMENT_BYTES, 15,
               "storageSize shrinking to at most one segment once the retention is removed")


# ================================================================ backlog quota


QUOTA_PATH = "backlogQuota?backlogQuotaType=destination_storage"
QUOTA_LIMIT = 10_000
QUOTA_CONFIG = toml(broker={"backlog_quota_check_interval_secs": 1, "max_segment_entries": 5})


def quota(policy: str, limit_size: int = QUOTA_LIMIT, limit_time: int = -1) -> dict:
    return {"limitSize": limit_size, "limitTime": limit_time, "policy": policy}


def send_results(producer, n: int, size: int = 1000, start: int = 0) -> list:
    """Sends n messages asynchronously; returns each one's result (errors allowed)."""
    results = [None] * n
    left = threading.Semaphore(0)
    for i in range(n):
        payload = f"{start + i:08d}".encode().ljust(size, b".")
        producer.send_async(payload, lambda res, _id, i=i: (results.__setitem__(i, res), left.release()))
    for _ in range(n):
        assert left.acquire(timeout=60), "a send callback never came"
    return results


def test_backlog_quota_producer_exception_blocks_producers_until_consumed_or_removed(make_broker, clients):
    broker = make_broker(config=QUOTA_CONFIG)
    ns = create_namespace(broker)
    topic = ns_topic(ns, "quota-exc")
    set_ns_policy(broker, ns, QUOTA_PATH, quota("producer_exception"))
    c = clients(broker)
    c.subscribe(topic, "s").close()
    first = c.create_producer(topic, batching_enabled=False, send_timeout_millis=5000)
    results = send_results(first, 30)
    stored = results.count(pulsar.Result.Ok)
    assert stored * 1000 > QUOTA_LIMIT, f"only {stored} of 30 sends succeeded: {results}"

    new_producer = functools.partial(c.create_producer, topic, batching_enabled=False)
    wait_refused(new_producer, pulsar.ProducerBlockedQuotaExceededException,
                 "a new producer refused with ProducerBlockedQuotaExceededException over the quota")
    with pytest.raises((pulsar.ProducerBlockedQuotaExceededException, pulsar.Timeout)):
        first.send(b"over-quota")

    # Removing the quota lets producers in again.
    remove_ns_policy(broker, ns, QUOTA_PATH)
    wait_accepted(new_producer, pulsar.ProducerBlockedQuotaExceededException,
                  "a producer accepted after removing the quota").close()

    # Set again, still over it: refused; once the backlog is consumed: accepted.
    set_ns_policy(broker, ns, QUOTA_PATH, quota("producer_exception"))
    wait_refused(new_producer, pulsar.ProducerBlockedQuotaExceededException,
                 "a new producer refused again once the quota is set again")
    consumer = c.subscribe(topic, "s")
    got = drain(consumer)
    assert len(got) >= stored, f"{len(got)} messages in the backlog, {stored} sends succeeded"
    consumer.acknowledge_cumulative(got[-1])
    wait_until(lambda: backlog(broker, topic, "s") == 0, 10, "the backlog consumed")
    wait_accepted(new_producer, pulsar.ProducerBlockedQuotaExceededException,
                  "a producer accepted after the backlog was consumed").send(b"under-quota")


def test_backlog_quota_consumer_backlog_eviction_keeps_the_backlog_bounded(make_broker, clients):
    broker = make_broker(config=QUOTA_CONFIG)
    ns = create_namespace(broker)
    topic = ns_topic(ns, "quota-evict")
    set_ns_policy(broker, ns, QUOTA_PATH, quota("consumer_backlog_eviction"))
    c = clients(broker)
    c.subscribe(topic, "s").close()
    producer = c.create_producer(topic, batching_enabled=False)
    bound = 3 * QUOTA_LIMIT // 1000  # messages of 1000 B: three times the quota, for segment granularity
    total = 0
    for _ in range(3):
        produce(producer, 100, size=1000, start=total)  # fails on any send error
        total += 100
        wait_until(lambda: 0 < backlog(broker, topic, "s") <= bound, 15,
                   f"the backlog evicted down to at most {bound} messages (and not emptied) after {total} sent")

    consumer = c.subscribe(topic, "s")
    left = backlog(broker, topic, "s")
    got_msgs = receive_n(consumer, left)
    got = indices(got_msgs)
    assert got == list(range(total - left, total)), "the oldest messages are the ones skipped"
    assert_no_more(consumer)
    consumer.acknowledge_cumulative(got_msgs[-1])
    wait_until(lambda: backlog(broker, topic, "s") == 0, 10, "the rest of the backlog acknowledged")
    consumer.close()

    remove_ns_policy(broker, ns, QUOTA_PATH)
    produce(producer, 100, size=1000, start=total)
    time.sleep(ABSENCE_WINDOW_S)  # observing that nothing is evicted
    assert backlog(broker, topic, "s") == 100, "with the quota removed the backlog is kept whole"


def test_message_age_quota_eviction_skips_old_messages(make_broker, clients):
    broker = make_broker(config=QUOTA_CONFIG)
    ns = create_namespace(broker)
    topic = ns_topic(ns, "quota-age")
    path = "backlogQuota?backlogQuotaType=message_age"
    set_ns_policy(broker, ns, path, quota("consumer_backlog_eviction", limit_size=-1, limit_time=2))
    c = clients(broker)
    c.subscribe(topic, "s").close()
    producer = c.create_producer(topic, batching_enabled=False)
    produce(producer, 20)
    wait_until(lambda: backlog(broker, topic, "s") == 0, 15,
               "messages older than the 2 s message_age quota evicted")

    remove_ns_policy(broker, ns, path)
    produce(producer, 20, start=20)
    time.sleep(ABSENCE_WINDOW_S)  # observing that nothing is evicted
    assert backlog(broker, topic, "s") == 20, "with the quota removed old messages stay"


def test_backlog_quota_producer_request_hold_holds_new_producers_until_consumed(make_broker, clients):
    broker = make_broker(config=QUOTA_CONFIG)
    ns = create_namespace(broker)
    topic = ns_topic(ns, "quota-hold")
    set_ns_policy(broker, ns, QUOTA_PATH, quota("producer_request_hold"))
    c = clients(broker)
    c.subscribe(topic, "s").close()
    first = c.create_producer(topic, batching_enabled=False, send_timeout_millis=60_000)
    results = send_results(first, 30)
    stored = results.count(pulsar.Result.Ok)
    assert stored * 1000 > QUOTA_LIMIT, f"only {stored} of 30 sends succeeded: {results}"

    # The broker answers ProducerBlockedQuotaExceededError; depending on the
    # client version it is raised or retried until the operation timeout.
    held = make_client(broker, operation_timeout_seconds=3)
    try:
        new_producer = functools.partial(held.create_producer, topic, batching_enabled=False)
        wait_refused(new_producer, (pulsar.ProducerBlockedQuotaExceededError, pulsar.Timeout),
                     "a new producer held back over a producer_request_hold quota", timeout=15)
        # The existing producer's send is held, neither stored nor failed...
        held_send = []
        first.send_async(b"held", lambda res, _id: held_send.append(res))
        time.sleep(2.0)  # observing that no answer comes
        assert held_send == [], f"a send over a producer_request_hold quota was answered: {held_send}"
        consumer = c.subscribe(topic, "s")
        got = drain(consumer)
        assert len(got) >= stored, f"{len(got)} messages in the backlog, {stored} sends succeeded"
        consumer.acknowledge_cumulative(got[-1])
        p = wait_accepted(new_producer, (pulsar.ProducerBlockedQuotaExceededError, pulsar.Timeout),
                          "a producer accepted after the backlog was consumed", timeout=20)
        p.send(b"after-hold")
        p.close()
        # ... and goes through once the backlog is consumed.
        wait_until(lambda: held_send, 30, "the held send answered after the backlog was consumed")
        assert held_send == [pulsar.Result.Ok], f"the held send: {held_send}"
    finally:
        held.close()

    remove_ns_policy(broker, ns, QUOTA_PATH)
    c.create_producer(topic).send(b"no-quota")


# ================================================================ inactive topics


JOURNAL_FILE_MIB = 9


def inactive_config(**broker_overrides) -> str:
    settings = {
        "delete_inactive_topics_enabled": True,
        "delete_inactive_topics_frequency_secs": 1,
        "delete_inactive_topics_max_inactive_secs": 2,
    }
    settings.update(broker_overrides)
    # 9 MiB: the smallest journal file the store accepts (it must hold one
    # maximal 8 MiB entry).
    return toml(broker=settings,
                storage={"log_file_mib": JOURNAL_FILE_MIB, "recycle_files": 0, "gc_interval_secs": 1})


def test_inactive_topic_is_deleted_and_its_storage_reclaimed(make_broker, clients):
    broker = make_broker(config=inactive_config())
    topic = topic_name("inactive")
    c = clients(broker)
    producer = c.create_producer(topic, batching_enabled=False)
    produce(producer, 1, size=100)
    base = dir_size(broker.data_dir)
    # Several journal files' worth, so that most of it sits in files that
    # die with the topic (the active file stays).
    n = 7 * JOURNAL_FILE_MIB
    written = n << 20
    produce(producer, n, size=1 << 20)
    full = dir_size(broker.data_dir)
    assert full - base >= written * 0.9, f"the data dir grew by {full - base} B for {written} B written"
    producer.close()

    wait_until(lambda: topic_gone(broker, topic), 20,
               "an inactive topic (no producer, no subscription) deleted: gone from the list, stats 404")
    wait_until(lambda: full - dir_size(broker.data_dir) >= written * 0.75, 20,
               f"the data dir ({full} B after writing {written} B) shrinking by at least 75 % of it "
               "once the topic is deleted")


@pytest.mark.parametrize("mode", ["delete_when_no_subscriptions", "delete_when_subscriptions_caught_up"])
def test_inactive_topic_with_a_backlog_is_kept(make_broker, clients, mode):
    broker = make_broker(config=inactive_config(delete_inactive_topics_mode=mode))
    topic = topic_name("inactive-backlog")
    c = clients(broker)
    c.subscribe(topic, "s").close()
    producer = c.create_producer(topic, batching_enabled=False)
    produce(producer, 5)
    producer.close()
    time.sleep(ABSENCE_WINDOW_S)  # observing that the topic stays
    assert topic in topic_list(broker), f"a topic whose subscription has a backlog is kept under {mode}"
    assert backlog(broker, topic, "s") == 5

    consumer = c.subscribe(topic, "s")
    consumer.acknowledge_cumulative(receive_n(consumer, 5)[-1])
    wait_until(lambda: backlog(broker, topic, "s") == 0, 10, "the backlog acknowledged")
    consumer.close()
    if mode == "delete_when_subscriptions_caught_up":
        wait_until(lambda: topic_gone(broker, topic), 20,
                   "a topic whose subscriptions caught up deleted under delete_when_subscriptions_caught_up")
    else:
        time.sleep(ABSENCE_WINDOW_S)  # observing that the topic stays
        assert topic in topic_list(broker), "a topic with a subscription is kept under delete_when_no_subscriptions"


def test_topic_with_a_connected_producer_is_not_deleted(make_broker, clients):
    broker = make_broker(config=inactive_config())
    topic = topic_name("inactive-producer")
    c = clients(broker)
    producer = c.create_producer(topic)
    producer.send(b"one")
    time.sleep(ABSENCE_WINDOW_S)  # observing that the topic stays
    assert topic in topic_list(broker), "a topic with a connected producer must not be deleted"
    producer.close()
    wait_until(lambda: topic_gone(broker, topic), 20, "the topic deleted once its producer closed")


def inactive_deletions(broker) -> float:
    """kilonova_inactive_topics_deleted_total (a partitioned topic counts once)."""
    text = http("GET", broker.http_url + "/metrics")[1].decode()
    for line in text.splitlines():
        if line.startswith("kilonova_inactive_topics_deleted_total"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_inactive_partitioned_topic_loses_its_data_but_stays_partitioned(make_broker, clients):
    # As Pulsar by default (brokerDeleteInactivePartitionedTopicMetadataEnabled=false):
    # a partitioned topic created as the README shows must not turn into a
    # non-partitioned one after a minute of inactivity.
    broker = make_broker(config=inactive_config())
    ns = create_namespace(broker)
    set_ns_policy(broker, ns, "inactiveTopicPolicies",
                  {"inactiveTopicDeleteMode": "delete_when_no_subscriptions",
                   "maxInactiveDurationSeconds": 1, "deleteWhileInactive": True})
    local = unique("kept-parted")
    topic = f"persistent://{ns}/{local}"
    api(broker, "PUT", f"{topic_path(topic)}/partitions", 4)
    c = clients(broker)
    producer = c.create_producer(topic, batching_enabled=False,
                                 message_routing_mode=pulsar.PartitionsRoutingMode.RoundRobinDistribution)
    for i in range(8):
        producer.send(f"old-{i}".encode())
    producer.close()

    wait_until(lambda: inactive_deletions(broker) >= 1, 20,
               "the inactive partitioned topic's partitions deleted (kilonova_inactive_topics_deleted_total)")
    assert topic in partitioned_list(broker, ns), "the partitioned topic is still listed"
    _, body = api(broker, "GET", f"{topic_path(topic)}/partitions", expect=(200,))
    assert json.loads(body).get("partitions") == 4, body

    # The next producer gets the partitioned topic again, its partitions empty.
    consumer = c.subscribe(topic, "s", initial_position=pulsar.InitialPosition.Earliest)
    producer = c.create_producer(topic, batching_enabled=False,
                                 message_routing_mode=pulsar.PartitionsRoutingMode.RoundRobinDistribution)
    new = [f"new-{i}".encode() for i in range(8)]
    for p in new:
        producer.send(p)
    got = receive_n(consumer, len(new), what="the messages sent after the deletion")
    assert sorted(payloads(got)) == sorted(new), "the old messages are gone with the partitions' data"
    partitions = {m.topic_name() for m in got}
    assert len(partitions) == 4 and all("-partition-" in t for t in partitions), partitions
    assert_no_more(consumer, what="a consumer of the emptied partitioned topic")


def test_inactive_partitioned_topic_is_deleted_whole_with_metadata_deletion_on(make_broker, clients):
    broker = make_broker(config=inactive_config(delete_inactive_partitioned_topic_metadata=True))
    local = unique("inactive-parted")
    topic = f"persistent://public/default/{local}"
    assert broker.create_partitioned_topic(local, 3) in (200, 204)
    c = clients(broker)
    producer = c.create_producer(topic)
    for i in range(6):
        producer.send(f"m{i}".encode())
    assert topic in partitioned_list(broker)
    producer.close()

    def gone():
        listed = topic_list(broker)
        return topic not in partitioned_list(broker) and not any(t.startswith(topic) for t in listed)

    wait_until(gone, 20, "the inactive partitioned topic and its 3 partitions deleted")
    status, meta = broker.get_partitions(local)
    assert status == 404 or (isinstance(meta, dict) and meta.get("partitions", 0) == 0), (
        f"no partition metadata left: HTTP {status} {meta!r}"
    )


def test_namespace_inactive_topic_policy_keeps_topics_until_removed(make_broker, clients):
    broker = make_broker(config=inactive_config())
    ns = create_namespace(broker)
    set_ns_policy(broker, ns, "inactiveTopicPolicies",
                  {"inactiveTopicDeleteMode": "delete_when_no_subscriptions",
                   "maxInactiveDurationSeconds": 2, "deleteWhileInactive": False})
    topic = ns_topic(ns, "kept")
    c = clients(broker)
    producer = c.create_producer(topic)
    producer.send(b"one")
    producer.close()
    time.sleep(ABSENCE_WINDOW_S)  # observing that the topic stays
    assert topic in topic_list(broker, ns), "deleteWhileInactive=false keeps the inactive topic"

    remove_ns_policy(broker, ns, "inactiveTopicPolicies")
    wait_until(lambda: topic_gone(broker, topic), 20,
               "the inactive topic deleted by the broker setting once the namespace policy is removed")


def test_disabled_inactive_topic_deletion_keeps_topics_unless_a_policy_enables_it(make_broker, clients):
    broker = make_broker(config=inactive_config(delete_inactive_topics_enabled=False))
    ns = create_namespace(broker)
    c = clients(broker)
    kept = topic_name("kept")
    policed = ns_topic(ns, "policed")
    set_ns_policy(broker, ns, "inactiveTopicPolicies",
                  {"inactiveTopicDeleteMode": "delete_when_no_subscriptions",
                   "maxInactiveDurationSeconds": 2, "deleteWhileInactive": True})
    for t in (kept, policed):
        p = c.create_producer(t)
        p.send(b"one")
        p.close()
    wait_until(lambda: topic_gone(broker, policed), 20,
               "a namespace policy with deleteWhileInactive=true deletes despite the broker setting")
    assert kept in topic_list(broker), "with delete_inactive_topics_enabled=false a topic is kept"

    remove_ns_policy(broker, ns, "inactiveTopicPolicies")
    again = ns_topic(ns, "after-removal")
    p = c.create_producer(again)
    p.send(b"one")
    p.close()
    time.sleep(ABSENCE_WINDOW_S)  # observing that the topics stay
    assert kept in topic_list(broker), "with delete_inactive_topics_enabled=false a topic is kept"
    assert again in topic_list(broker, ns), "with the namespace policy removed the broker setting keeps it"


# ================================================================ deduplication


def wait_dedup(client, topic: str, active: bool) -> None:
    """Waits until deduplication on `topic` is `active` (a changed policy
    applies within a moment): a probe producer sends each sequence id twice,
    a probe subscription counts what is stored."""
    probe_sub = client.subscribe(topic, unique("probe"))
    probe = client.create_producer(topic, producer_name=unique("probe"), batching_enabled=False)
    seq = [1000]

    def check():
        s = seq[0]
        seq[0] += 1
        probe.send(b"probe", sequence_id=s)
        probe.send(b"probe", sequence_id=s)
        stored = len(drain(probe_sub, idle_ms=300))
        return stored == (1 if active else 2)

    wait_until(check, 10, f"deduplication {'in effect' if active else 'off'} on {topic}", interval=0.1)
    probe.close()
    probe_sub.unsubscribe()


def send_seq(producer, first: int, last: int) -> dict[int, object]:
    """Sends sequence ids first..last (payload names the id); returns their ids."""
    return {s: producer.send(f"seq-{s:03d}".encode(), sequence_id=s) for s in range(first, last + 1)}


@pytest.mark.parametrize("level", LEVELS)
def test_deduplication_drops_resent_sequence_ids_until_removed(make_broker, clients, level):
    broker = make_broker()
    ns = create_namespace(broker)
    topic = ns_topic(ns, "dedup")
    create_topic(broker, topic)
    set_policy(broker, level, topic, "deduplication", True)
    c = clients(broker)
    wait_dedup(c, topic, active=True)
    consumer = c.subscribe(topic, "s")
    name = unique("writer")
    p1 = c.create_producer(topic, producer_name=name, batching_enabled=False)
    original = send_seq(p1, 0, 9)
    p1.close()

    p2 = c.create_producer(topic, producer_name=name, batching_enabled=False)
    assert p2.last_sequence_id() == 9, "a producer of the same name resumes after the last stored id"
    again = send_seq(p2, 5, 9)
    for s in range(5, 10):
        assert msg_key(again[s]) == msg_key(original[s]), (
            f"a duplicate of sequence id {s} is answered with the original's message id"
        )
    send_seq(p2, 10, 11)
    got = payloads(receive_n(consumer, 12))
    assert got == [f"seq-{s:03d}".encode() for s in range(12)], got
    assert_no_more(consumer, wait_ms=1000)

    remove_policy(broker, level, topic, "deduplication")  # the broker default: off

    def duplicate_stored():
        p2.send(b"seq-011-again", sequence_id=11)
        try:
            return consumer.receive(timeout_millis=300).data() == b"seq-011-again"
        except pulsar.Timeout:
            return False

    wait_until(duplicate_stored, 10, "a duplicate sequence id stored once deduplication is removed")


@pytest.mark.parametrize("setting", [False, True], ids=["broker-dedup-off", "broker-dedup-on"])
def test_broker_deduplication_setting(make_broker, clients, setting):
    broker = make_broker(config=toml(broker={"deduplication_enabled": setting}))
    topic = topic_name("dedup-setting")
    c = clients(broker)
    consumer = c.subscribe(topic, "s")
    p = c.create_producer(topic, producer_name=unique("writer"), batching_enabled=False)
    send_seq(p, 0, 4)
    send_seq(p, 0, 4)
    expected = 5 if setting else 10
    got = payloads(receive_n(consumer, expected))
    assert got[:5] == [f"seq-{s:03d}".encode() for s in range(5)]
    assert_no_more(consumer, wait_ms=1000,
                   what=f"with deduplication_enabled={setting}, after {expected} messages")


def test_deduplication_keeps_every_chunk_of_a_chunked_message(make_broker, clients):
    # Every chunk carries the message's sequence id: only the last one may
    # count the message as stored, or the chunks after the first would be
    # dropped as duplicates.
    broker = make_broker(config=toml(broker={"max_message_bytes": 64 * 1024}))
    ns = create_namespace(broker)
    set_ns_policy(broker, ns, "deduplication", True)
    topic = ns_topic(ns, "dedup-chunks")
    c = clients(broker)
    consumer = c.subscribe(topic, "s")
    producer = c.create_producer(topic, producer_name=unique("chunker"), batching_enabled=False,
                                 chunking_enabled=True)
    big = bytes(range(256)) * (200 * 1024 // 256)  # 200 KiB: at least 4 chunks of 64 KiB
    producer.send(big, sequence_id=0)
    producer.send(b"after", sequence_id=1)
    got = payloads(receive_n(consumer, 2, timeout=10, what="the chunked message and the next"))
    assert got == [big, b"after"], [len(g) for g in got]
    # Sent again, the whole chunked message is a duplicate.
    producer.send(big, sequence_id=0)
    producer.send(b"marker", sequence_id=2)
    assert payloads(receive_n(consumer, 1, timeout=10)) == [b"marker"]


def test_deduplication_survives_a_crash(make_broker):
    broker = make_broker()
    ns = create_namespace(broker)
    set_ns_policy(broker, ns, "deduplication", True)
    topic = ns_topic(ns, "dedup-crash")
    name = unique("writer")
    c = make_client(broker)
    try:
        # A subscription keeps the messages (the namespace has no retention).
        c.subscribe(topic, "keep").close()
        p = c.create_producer(topic, producer_name=name, batching_enabled=False)
        send_seq(p, 0, 49)  # every send returned: every one is stored
    finally:
        broker.kill()
        try:
            c.close()
        except pulsar.PulsarException:
            pass  # the broker is gone
    broker.start()

    c = make_client(broker)
    try:
        p = c.create_producer(topic, producer_name=name, batching_enabled=False)
        assert p.last_sequence_id() == 49, "the last sequence id survives kill -9"
        send_seq(p, 40, 59)
        reader = c.create_reader(topic, pulsar.MessageId.earliest)
        got = payloads(read_n(reader, 60))
        assert got == [f"seq-{s:03d}".encode() for s in range(60)], got
        with pytest.raises(pulsar.Timeout):
            extra = reader.read_next(timeout_millis=1000)
            pytest.fail(f"a 61st message: {extra.data()!r}")
    finally:
        c.close()


# ================================================================ delayed delivery


def shared(client, topic, sub="s"):
    return client.subscribe(topic, sub, consumer_type=pulsar.ConsumerType.Shared)


def test_delayed_message_on_shared_subscription_arrives_after_its_delay(make_broker, clients):
    broker = make_broker()
    topic = topic_name("delayed")
    c = clients(broker)
    consumer = shared(c, topic)
    producer = c.create_producer(topic)
    t_sent = time.monotonic()
    producer.send(b"delayed", deliver_after=timedelta(seconds=2))
    for i in range(3):
        producer.send(f"now-{i}".encode())
    first = payloads(receive_n(consumer, 3, timeout=1.0, what="immediate messages"))
    assert first == [b"now-0", b"now-1", b"now-2"], "immediate messages sent after the delayed one arrive first"
    left_ms = int((t_sent + 1.0 - time.monotonic()) * 1000)
    if left_ms > 0:
        assert_no_more(consumer, wait_ms=left_ms, what="a shared consumer within 1 s of a 2 s delay")
    msg = consumer.receive(timeout_millis=int((t_sent + 6.0 - time.monotonic()) * 1000))
    arrived = time.monotonic() - t_sent
    assert msg.data() == b"delayed"
    assert 1.0 <= arrived <= 6.0, f"the delayed message arrived after {arrived:.2f} s (delay 2 s)"


def test_messages_held_until_the_end_of_time_never_stop_later_messages(make_broker, clients):
    # Messages due at 2^62 ms used to fill the subscription's held set and
    # stop it from reading: later, deliverable messages never went out.
    held_max = 50
    broker = make_broker(config=toml(broker={"max_delayed_messages_per_subscription": held_max}))
    topic = topic_name("delayed-forever")
    c = clients(broker)
    consumer = shared(c, topic)
    producer = c.create_producer(topic, batching_enabled=False, block_if_queue_full=True)
    far = 2**62
    for i in range(3 * held_max):
        producer.send_async(f"far-{i}".encode(), None, deliver_at=far)
    producer.send(b"now")
    got = payloads(receive_n(consumer, 2 * held_max + 1, timeout=15.0,
                             what="the undelayed message and the far ones over the cap"))
    assert b"now" in got
    assert all(p == b"now" or p.startswith(b"far-") for p in got), got
    assert_no_more(consumer, wait_ms=300, what="a shared consumer after the held set filled")
    stats = json.loads(api(broker, "GET", f"/admin/v2/persistent/public/default/{topic.split('/')[-1]}/stats")[1])
    (sub,) = stats["subscriptions"].values()
    assert sub["msgDelayed"] == held_max, sub
    text = http("GET", broker.http_url + "/metrics")[1].decode()
    early = [l for l in text.splitlines() if l.startswith("kilonova_delayed_messages_sent_early_total{") and topic in l]
    assert early and float(early[0].rsplit(" ", 1)[1]) == 2 * held_max, early


def test_delayed_message_on_exclusive_subscription_arrives_at_once(make_broker, clients):
    broker = make_broker()
    topic = topic_name("delayed-excl")
    c = clients(broker)
    consumer = c.subscribe(topic, "s", consumer_type=pulsar.ConsumerType.Exclusive)
    c.create_producer(topic).send(b"delayed", deliver_after=timedelta(seconds=5))
    assert payloads(receive_n(consumer, 1, timeout=1.0, what="a delayed message on an exclusive subscription")) == [b"delayed"]


def test_delayed_message_survives_a_restart(make_broker, clients):
    broker = make_broker()
    topic = topic_name("delayed-restart")
    c = make_client(broker)
    try:
        shared(c, topic).close()
        t_sent = time.monotonic()
        c.create_producer(topic).send(b"delayed", deliver_after=timedelta(seconds=6))
    finally:
        c.close()
    assert broker.stop() == 0
    broker.start()

    c = clients(broker)
    consumer = shared(c, topic)
    msg = consumer.receive(timeout_millis=int((t_sent + 15.0 - time.monotonic()) * 1000))
    arrived = time.monotonic() - t_sent
    assert msg.data() == b"delayed"
    assert arrived >= 5.0, f"the delayed message arrived {arrived:.2f} s after sending (delay 6 s)"


def test_delayed_delivery_disabled_by_the_broker_setting_delivers_at_once(make_broker, clients):
    broker = make_broker(config=toml(broker={"delayed_delivery_enabled": False}))
    topic = topic_name("delayed-off")
    c = clients(broker)
    consumer = shared(c, topic)
    c.create_producer(topic).send(b"delayed", deliver_after=timedelta(seconds=3))
    assert payloads(receive_n(consumer, 1, timeout=1.0, what="a delayed message with delayed delivery off")) == [b"delayed"]


def test_namespace_delayed_delivery_policy_disables_and_restores_delays(make_broker, clients):
    broker = make_broker()
    ns = create_namespace(broker)
    topic = ns_topic(ns, "delayed-policy")
    set_ns_policy(broker, ns, "delayedDelivery", {"active": False, "tickTime": 1000})
    c = clients(broker)
    consumer = shared(c, topic)
    producer = c.create_producer(topic)
    producer.send(b"not-delayed", deliver_after=timedelta(seconds=3))
    assert payloads(receive_n(consumer, 1, timeout=1.0, what="a delayed message with the policy inactive")) == [b"not-delayed"]

    remove_ns_policy(broker, ns, "delayedDelivery")  # the broker default: delays on
    t_sent = [0.0]

    def held():
        # Until the removal applies (within a moment) a delayed message comes at once.
        t_sent[0] = time.monotonic()
        producer.send(b"delayed", deliver_after=timedelta(seconds=2))
        try:
            consumer.receive(timeout_millis=1000)
        except pulsar.Timeout:
            return True
        return False

    wait_until(held, 15, "a 2 s delayed message not delivered within 1 s once the policy is removed")
    msg = consumer.receive(timeout_millis=int((t_sent[0] + 6.0 - time.monotonic()) * 1000))
    assert msg.data() == b"delayed"
