"""A full disk under a running broker, end to end: publishes fail with
PersistenceError and fence the topic, nothing acknowledged is lost, a failed
message's resend is stored even with deduplication on, publishing resumes once
space returns, and a SIGTERM that cannot persist state exits non-zero.

Needs a small tmpfs (root); `scripts/test` sets KILONOVA_REQUIRE_TMPFS=1 when
it runs as root, so there the test cannot silently skip."""

import json
import os
import subprocess
import threading
from pathlib import Path

import pulsar
import pytest

from conftest import http, make_client, receive_n, wait_until

TMPFS_BYTES = 160 << 20


@pytest.fixture
def tmpfs(tmp_path):
    mnt = tmp_path / "small-disk"
    mnt.mkdir()
    ok = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_BYTES}", "tmpfs", str(mnt)],
                        capture_output=True).returncode == 0
    if not ok:
        assert not os.environ.get("KILONOVA_REQUIRE_TMPFS"), \
            "could not mount a tmpfs although KILONOVA_REQUIRE_TMPFS is set"
        pytest.skip("mounting a tmpfs needs root")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def fill(path: Path) -> None:
    """Writes `path` until the file system is full."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        for size in (1 << 20, 4096, 1):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError:
                pass
    finally:
        os.close(fd)


def metric(broker, name: str) -> float:
    text = http("GET", broker.http_url + "/metrics")[1].decode()
    values = [float(l.rsplit(" ", 1)[1]) for l in text.splitlines() if l.startswith(name + "{")]
    return sum(values)


# With deduplication, every receipt is sent by the topic's task; without it,
# a SEND that finds its topic with nothing in flight is answered by the
# journal's call once durable (ADR 0025), the rest by the task. Nothing
# acknowledged may be lost either way.
@pytest.mark.parametrize("dedup", [True, False], ids=["deduplicated", "answered-off-the-task"])
def test_a_full_disk_fences_the_topic_and_loses_nothing(make_broker, tmpfs, dedup):
    config = ("[storage]\nlog_file_mib = 16\nrecycle_files = 0\n[broker]\n"
              f"deduplication_enabled = {'true' if dedup else 'false'}\n")
    broker = make_broker(config=config)
    # make_broker puts the data dir under tmp_path: move this broker onto the small disk.
    broker.stop()
    data = tmpfs / "data"
    broker.data_dir = data
    broker.start()

    topic = "persistent://public/default/disk-full"
    c = make_client(broker)
    try:
        consumer = c.subscribe(topic, "keep", initial_position=pulsar.InitialPosition.Earliest)
        producer = c.create_producer(topic, producer_name="writer", batching_enabled=False,
                                     block_if_queue_full=True, send_timeout_millis=120_000)
        for i in range(50):
            producer.send(f"m-{i}".encode())

        fill(tmpfs / "filler")
        results, ids = {}, {}
        lock = threading.Lock()

        def done(i):
            def cb(res, msg_id):
                with lock:
                    results[i] = res
                    ids[i] = (msg_id.ledger_id(), msg_id.entry_id()) if res == pulsar.Result.Ok else None
            return cb

        payload = b"y" * (64 << 10)  # 600 of them overflow the preallocated journal file
        for i in range(50, 650):
            producer.send_async(f"m-{i}".encode() + payload, done(i))
        wait_until(lambda: metric(broker, "kilonova_topics_fenced_total") >= 1, 30,
                   "the topic fenced after appends failed on the full disk")
        # Health reports the full disk for as long as it is full (probe
        # appends that still fit in the active journal file's rest do not
        # clear it: the next file cannot be made).
        last = []

        def reports_disk_full():
            r = http("GET", broker.http_url + "/admin/v2/brokers/health")
            last[:] = [r]
            return r[0] == 503 and b"disk full" in r[1]
        # 30 s: on a loaded 2-core machine a health check's probe takes a while.
        try:
            wait_until(reports_disk_full, 30, "health 503 with 'disk full' while the disk is full")
        except AssertionError as e:
            raise AssertionError(f"{e}; last answer: {last}") from None
        os.remove(tmpfs / "filler")
        # The health check's own probe write sees the space come back.
        wait_until(lambda: http("GET", broker.http_url + "/admin/v2/brokers/health") == (200, b"ok"), 10,
                   "health ok once space returned")
        producer.flush()
        wait_until(lambda: len(results) == 600, 120, "every send answered once space returned")
        acked = {i for i, r in results.items() if r == pulsar.Result.Ok}
        failed = {i: r for i, r in results.items() if r != pulsar.Result.Ok}
        # The client resends what failed (PersistenceError closes its connection):
        # with the fence, no resend is dropped as a duplicate of a later message.
        assert not failed, f"{len(failed)} sends failed for good: {list(failed.items())[:5]}"

        # Stored at least once: what was stored while fenced is resent too.
        seen, got = set(), []

        def all_seen():
            try:
                while True:
                    m = consumer.receive(timeout_millis=200)
                    got.append(m)
                    seen.add(m.data().split(b"y", 1)[0].decode())
            except pulsar.Timeout:
                pass
            return len(seen) == 650

        try:
            wait_until(all_seen, 30, "every acknowledged message readable after space returned")
        except AssertionError:
            missing = [i for i in range(650) if f"m-{i}" not in seen]
            stats = http("GET", f"{broker.http_url}/admin/v2/persistent/public/default/disk-full/internalStats")[1]
            dup = sorted(k for k in seen if sum(1 for m in got if m.data().split(b"y", 1)[0].decode() == k) > 1)
            raise AssertionError(f"missing {len(missing)}: {[(i, ids.get(i)) for i in missing[:20]]}; "
                                 f"stored twice: {dup[:20]} with ids {[ids.get(int(k[2:])) for k in dup[:20]]}; "
                                 f"received {len(got)}; {stats[:2000]!r}")
        for m in got:
            consumer.acknowledge(m)
    finally:
        c.close()

    # SIGTERM while state cannot be written: the exit says so.
    c = make_client(broker)
    try:
        consumer = c.subscribe(topic, "late", initial_position=pulsar.InitialPosition.Earliest)
        got = receive_n(consumer, 10)

        def backlog():
            status, body = http("GET", f"{broker.http_url}/admin/v2/persistent/public/default/disk-full/stats")
            return json.loads(body)["subscriptions"]["late"]["msgBacklog"] if status == 200 else None

        # At least 650: what was stored while fenced was stored again.
        stored = backlog()
        assert stored >= 650, stored
        fill(tmpfs / "filler")
        for m in got:
            consumer.acknowledge(m)
        wait_until(lambda: backlog() == stored - 10, 10, "the acknowledgements reached the broker")
        code = broker.stop()
    finally:
        c.close()
    assert code != 0, "a shutdown that could not persist cursors exited 0\n" + broker.log_tail()
    assert "shutdown incomplete" in broker.log_tail(), broker.log_tail()


# A topic with a consumer asks to hear of every call (it has readers to
# serve); one whose subscription has no consumer does not, and must still
# hear of a failure.
@pytest.mark.parametrize("reading", [True, False], ids=["consumer-connected", "no-consumer"])
def test_a_failed_append_answered_off_the_task_fences_the_topic(make_broker, tmpfs, reading):
    """One SEND at a time, deduplication off: each finds its topic with
    nothing in flight, so every receipt (and the first failure on the full
    disk) comes from the journal's call, never from the topic's task. The
    failed call alone must fence the topic; publishing resumes once space
    returns and nothing acknowledged is lost."""
    broker = make_broker(config="[storage]\nlog_file_mib = 16\nrecycle_files = 0\n")
    broker.stop()
    broker.data_dir = tmpfs / "data"
    broker.start()

    topic = "persistent://public/default/disk-full-one-by-one"
    c = make_client(broker)
    try:
        consumer = c.subscribe(topic, "keep", initial_position=pulsar.InitialPosition.Earliest)
        if not reading:
            consumer.close()  # the subscription keeps the messages, with no consumer
        producer = c.create_producer(topic, batching_enabled=False, send_timeout_millis=120_000)
        fill(tmpfs / "filler")
        # 800 × 64 KiB overflow the two 16 MiB journal files preallocated
        # before the disk filled (the active one and the next): some send
        # meets the full disk.
        payload = b"y" * (64 << 10)
        sent, errors = [], []

        def publish_one_by_one():
            try:
                for i in range(800):
                    producer.send(f"m-{i}".encode() + payload)
                    sent.append(i)
            except Exception as e:  # noqa: BLE001 - reported by the assertion below
                errors.append(e)

        writer = threading.Thread(target=publish_one_by_one)
        writer.start()
        try:
            wait_until(lambda: metric(broker, "kilonova_append_failures_total") >= 1 or not writer.is_alive(),
                       60, "an append failed on the full disk", interval=0.01)
            assert metric(broker, "kilonova_append_failures_total") >= 1, \
                f"no append failed; {len(sent)} sent, errors {errors}"
        finally:
            # Space comes back at once, before the client resends (it
            # reconnects first): the resend is stored, and only the fence
            # the failed call raised may answer it with an error.
            os.remove(tmpfs / "filler")
        try:
            wait_until(lambda: metric(broker, "kilonova_topics_fenced_total") >= 1, 10,
                       "the topic fenced after the failed append")
        finally:
            writer.join(150)
        assert not writer.is_alive(), f"the sends did not finish once space returned (sent {len(sent)})"
        assert not errors and len(sent) == 800, f"sent {len(sent)}, errors {errors}"

        if not reading:
            consumer = c.subscribe(topic, "keep")
        # At least once: a resend may follow an append the disk took after all.
        seen = set()

        def all_seen():
            try:
                while True:
                    seen.add(consumer.receive(timeout_millis=200).data().split(b"y", 1)[0].decode())
            except pulsar.Timeout:
                pass
            return len(seen) == 800
        wait_until(all_seen, 60, "every acknowledged message readable")
        assert seen == {f"m-{i}" for i in range(800)}
    finally:
        c.close()


def test_a_small_disk_takes_many_times_its_size_when_retention_frees_it(make_broker, tmpfs):
    """Five times the disk's size through a topic nobody subscribes to:
    retention deletes each sealed segment, and the journal reclaims the files
    they lived in as it starts new ones — the GC pass is an hour away — so
    no publish fails for a full disk."""
    config = ("[storage]\nlog_file_mib = 16\ngc_interval_secs = 3600\n"
              f"[broker]\nmax_segment_bytes = {4 << 20}\n")
    broker = make_broker(config=config)
    broker.stop()
    broker.data_dir = tmpfs / "data"
    broker.start()

    topic = "persistent://public/default/churn"
    stats_url = broker.http_url + "/admin/v2/persistent/public/default/churn/stats"
    c = make_client(broker)
    try:
        producer = c.create_producer(topic, batching_enabled=False, send_timeout_millis=20_000)
        payload = b"z" * (64 << 10)
        chunk = 320  # 20 MiB
        answers = []
        lock = threading.Lock()

        def answered(res, _msg_id):
            with lock:
                answers.append(res)

        for round_no in range(TMPFS_BYTES * 5 // (chunk * len(payload))):
            answers.clear()
            for _ in range(chunk):
                producer.send_async(payload, answered)
            wait_until(lambda: len(answers) == chunk, 60, f"round {round_no}: every publish answered")
            failed = [r for r in answers if r != pulsar.Result.Ok]
            assert not failed, f"round {round_no}: {len(failed)} publishes failed: {failed[:3]}"

            # Retention keeps nothing without a subscription: wait for it to
            # delete the sealed segments before the next round (what is on
            # the disk then is the journal's business).
            def trimmed():
                status, body = http("GET", stats_url)
                return status == 200 and json.loads(body)["storageSize"] < (24 << 20)
            wait_until(trimmed, 30, f"round {round_no}: retention trimmed the topic")
        written = (round_no + 1) * chunk * len(payload)
        assert written >= 5 * TMPFS_BYTES
        health = http("GET", broker.http_url + "/admin/v2/brokers/health")
        assert health == (200, b"ok"), health
    finally:
        c.close()
