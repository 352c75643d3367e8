"""Publishing under load while the broker is killed with SIGKILL, then checking
that every acknowledged message is still there. Shared by the kill -9 test
(test_durability.py, a few rounds in CI) and the crash soak
(scripts/crash-soak, 100 rounds by hand).

A round: on fresh topics, a durable subscription is created first (it keeps
every message: with no retention a topic without a subscription keeps
nothing); producers (some batching, some not) publish with send_async at full
speed, at most MAX_IN_FLIGHT unanswered; the broker is killed at a random
moment; it restarts on the same data dir and ports; the subscription must then
deliver every message whose send callback reported Ok (acknowledged), each
once, and each producer's in publish order. Messages stored but never
acknowledged (in flight at the kill) may be there too.
"""

from __future__ import annotations

import functools
import os
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import pulsar

from conftest import Broker, topic_name

MAX_IN_FLIGHT = 500
# The subscription each round's topics get before any publish.
KEEP = "keep"
# How long a verification waits for the acknowledged messages to come back.
VERIFY_TIMEOUT_S = 60.0


@dataclass
class Stream:
    """One producer's messages on one topic."""

    topic: str
    producer: int
    batching: bool
    tag: str
    sent: int = 0
    acked: set[int] = field(default_factory=set)

    def payload(self, seq: int) -> bytes:
        return f"{self.tag}:{self.producer}:{seq:08d}".encode()


@dataclass
class Check:
    """What a verification found on one round's topics."""

    acknowledged: int = 0
    lost: int = 0
    stored: int = 0
    problems: list[str] = field(default_factory=list)


def streams_for_round(rnd: int, topics: int, producers_per_topic: int) -> list[Stream]:
    """Fresh topics for round `rnd`, every other one batching."""
    streams = []
    for t in range(topics):
        topic = topic_name(f"kill{rnd}-t{t}")
        for p in range(producers_per_topic):
            streams.append(Stream(topic, p, batching=t % 2 == 1, tag=f"r{rnd}"))
    return streams


def subscribe_all(new_client: Callable[[], pulsar.Client], streams: list[Stream]) -> None:
    """Creates the durable subscription on every topic of `streams`."""
    client = new_client()
    try:
        for topic in sorted({s.topic for s in streams}):
            client.subscribe(topic, KEEP, initial_position=pulsar.InitialPosition.Earliest).close()
    finally:
        client.close()


def publish_until_killed(new_client: Callable[[], pulsar.Client], broker: Broker,
                         streams: list[Stream], delay_s: float) -> None:
    """Publishes round-robin on every stream until the broker is SIGKILLed
    `delay_s` after publishing starts; fills each stream's `sent` and
    `acked` (sequence numbers whose callback reported Ok)."""
    lock = threading.Lock()
    in_flight = threading.Semaphore(MAX_IN_FLIGHT)
    killed = threading.Event()

    def on_sent(res, _msg_id, stream: Stream, seq: int):
        if res == pulsar.Result.Ok:
            with lock:
                stream.acked.add(seq)
        in_flight.release()

    def kill():
        broker.kill()
        killed.set()

    client = new_client()
    try:
        # block_if_queue_full: past max_pending_messages a send_async fails
        # at once otherwise (the semaphore keeps it from blocking here).
        producers = [
            client.create_producer(
                s.topic,
                batching_enabled=s.batching,
                batching_max_publish_delay_ms=1,
                max_pending_messages=MAX_IN_FLIGHT * 2,
                block_if_queue_full=True,
                send_timeout_millis=30_000,
            )
            for s in streams
        ]
        timer = threading.Timer(delay_s, kill)
        timer.start()
        i = 0
        while not killed.is_set():
            if not in_flight.acquire(timeout=0.02):
                continue
            s, p = streams[i % len(streams)], producers[i % len(streams)]
            p.send_async(s.payload(s.sent), functools.partial(on_sent, stream=s, seq=s.sent))
            s.sent += 1
            i += 1
        timer.join()
    finally:
        # With the broker gone the client fails what is still pending (those
        # callbacks report errors and are not counted as acknowledged). Its
        # close may itself report the lost connection: that is expected here.
        try:
            client.close()
        except pulsar.NotConnected:
            pass


def verify(new_client: Callable[[], pulsar.Client], streams: list[Stream], ctx: str) -> Check:
    """Reads every topic of `streams` through its durable subscription
    (acknowledging nothing, so a later check can read it all again)."""
    check = Check(acknowledged=sum(len(s.acked) for s in streams))
    client = new_client()
    try:
        for topic in sorted({s.topic for s in streams}):
            of_topic = {s.producer: s for s in streams if s.topic == topic}
            _verify_topic(client, topic, of_topic, ctx, check)
    finally:
        client.close()
    return check


def _verify_topic(client: pulsar.Client, topic: str, streams: dict[int, Stream],
                  ctx: str, check: Check) -> None:
    consumer = client.subscribe(topic, KEEP)
    try:
        missing = {(p, seq) for p, s in streams.items() for seq in s.acked}
        seen: dict[int, list[int]] = {p: [] for p in streams}
        ids = set()
        received = 0
        deadline = time.monotonic() + VERIFY_TIMEOUT_S
        quiet_ms = 250
        while True:
            if missing:
                timeout_ms = int((deadline - time.monotonic()) * 1000)
                if timeout_ms <= 0:
                    break
            else:
                # Whatever else was stored (in flight at the kill): read it
                # too, to check uniqueness and order.
                timeout_ms = quiet_ms
            try:
                m = consumer.receive(timeout_millis=timeout_ms)
            except pulsar.Timeout:
                if missing:
                    continue
                break
            received += 1
            ids.add((m.message_id().ledger_id(), m.message_id().entry_id(), m.message_id().batch_index()))
            data = m.data().decode(errors="replace")
            tag, producer, seq = (data.split(":") + ["", "", ""])[:3]
            stream = streams.get(int(producer)) if producer.isdigit() else None
            if stream is None or tag != stream.tag or not seq.isdigit() or int(seq) >= stream.sent:
                check.problems.append(f"{topic}: a message that was never sent: {data!r} {ctx}")
                continue
            seen[stream.producer].append(int(seq))
            missing.discard((stream.producer, int(seq)))
        check.stored += received
        check.lost += len(missing)
        if missing:
            first = sorted(missing)[:10]
            check.problems.append(
                f"{topic}: {len(missing)} acknowledged messages never came back {ctx}; "
                f"first (producer, seq): {first}"
            )
        if len(ids) != received:
            check.problems.append(f"{topic}: message ids repeat {ctx}")
        for p, seqs in seen.items():
            if len(set(seqs)) != len(seqs):
                check.problems.append(f"{topic}: producer {p}: a message was stored twice {ctx}")
            if seqs != sorted(seqs):
                check.problems.append(
                    f"{topic}: producer {p}: stored order differs from publish order {ctx}"
                )
    finally:
        consumer.close()


def disk_usage_mib(path) -> float:
    """Space allocated on disk below `path` (preallocated journal files count whole)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.stat(os.path.join(root, f)).st_blocks * 512
            except OSError:
                pass
    return total / (1 << 20)


@dataclass
class Soak:
    rounds: int = 0
    sent: int = 0
    acknowledged: int = 0
    # Acknowledged messages missing right after their round's restart…
    lost: int = 0
    # …and missing from the recheck of every round after the last one.
    lost_on_recheck: int = 0
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.lost == 0 and self.lost_on_recheck == 0 and not self.problems


def soak(broker: Broker, new_client: Callable[[], pulsar.Client], rounds: int, seed: int,
         topics: int = 4, producers_per_topic: int = 1,
         kill_after_s: tuple[float, float] = (0.05, 1.0),
         log: Callable[[str], None] = print, recheck: bool = True) -> Soak:
    """`rounds` kill -9 rounds on `broker` (started); then, if `recheck`,
    every round's topics once more (earlier rounds survived the later
    crashes and recoveries too)."""
    rng = random.Random(seed)
    started = time.monotonic()
    result = Soak()
    done: list[list[Stream]] = []
    for rnd in range(rounds):
        streams = streams_for_round(rnd, topics, producers_per_topic)
        subscribe_all(new_client, streams)
        delay = rng.uniform(*kill_after_s)
        publish_until_killed(new_client, broker, streams, delay)
        t0 = time.monotonic()
        broker.restart()
        restart_s = time.monotonic() - t0
        check = verify(new_client, streams, f"(round {rnd}, seed {seed})")
        done.append(streams)
        result.rounds += 1
        result.sent += sum(s.sent for s in streams)
        result.acknowledged += check.acknowledged
        result.lost += check.lost
        result.problems += check.problems
        log(f"round {rnd + 1:3d}/{rounds}: killed after {delay * 1000:4.0f} ms; "
            f"sent {sum(s.sent for s in streams):6d}, acknowledged {check.acknowledged:6d}, "
            f"stored {check.stored:6d}, lost {check.lost}; restart {restart_s:.1f} s; "
            f"total acknowledged {result.acknowledged}, lost {result.lost}; "
            f"data dir {disk_usage_mib(broker.data_dir):.0f} MiB")
        for p in check.problems:
            log(f"  PROBLEM: {p}")
    if recheck and done:
        t0 = time.monotonic()
        for rnd, streams in enumerate(done):
            check = verify(new_client, streams, f"(recheck of round {rnd}, seed {seed})")
            result.lost_on_recheck += check.lost
            result.problems += check.problems
            for p in check.problems:
                log(f"  PROBLEM: {p}")
        log(f"recheck of all {len(done)} rounds after the last restart: "
            f"{time.monotonic() - t0:.1f} s, lost {result.lost_on_recheck}")
    result.seconds = time.monotonic() - started
    return result
