"""Tiered storage (issue #25), end to end with the real Python client,
against a real SeaweedFS (S3) and the filesystem driver: sealed segments
offloaded to the object store, their local copies dropped, and everything
read back unchanged — by a consumer, a reader, a seek by message id and by publish time — across a kill -9 of the
broker; the object store going down slows only the readers that need it
and fails offloads until it is back;
deleting the topic deletes its objects.

`KILONOVA_OFFLOAD_MIB` (default 4) sets how much is published; the issue's
100 MiB version is `KILONOVA_OFFLOAD_MIB=100` (docs/testing.md)."""

from __future__ import annotations

import json
import os

import pulsar

from conftest import http, make_client, unique, wait_until

MIB = int(os.environ.get("KILONOVA_OFFLOAD_MIB", "4"))
PAYLOAD = 4096
COUNT = MIB * (1 << 20) // PAYLOAD
WAIT_S = 60.0
BUCKET = "kilonova-offload"


def broker_config(store) -> str:
    return (
        "[broker]\n"
        "max_segment_entries = 100\n"
        "offload_deletion_lag_ms = 0\n"
        "cursor_persist_interval_ms = 100\n"
        "[offload]\n"
        "read_ahead_entries = 20\n"
        "[offload.store]\n" + store.offload_config(BUCKET)
    )


def admin(broker, method: str, path: str, body=None):
    data = None if body is None else json.dumps(body).encode()
    status, text = http(method, broker.http_url + path, data,
                        "application/json" if data is not None else None)
    assert status in (200, 204), (method, path, status, text)
    return json.loads(text) if text else None


def payload(i: int) -> bytes:
    head = f"m-{i:08d}-".encode()
    return head + bytes([i % 251]) * (PAYLOAD - len(head))


def ledgers(broker, topic: str) -> list:
    return admin(broker, "GET", f"/admin/v2/{topic.replace('://', '/')}/internalStats")["ledgers"]


def offload_everything_sealed(broker, topic: str) -> None:
    path = f"/admin/v2/{topic.replace('://', '/')}/offload"
    last = ledgers(broker, topic)[-1]["ledgerId"]
    admin(broker, "PUT", path, {"ledgerId": last, "entryId": 0})
    wait_until(lambda: admin(broker, "GET", path)["status"] == "SUCCESS", WAIT_S,
               "the offload finished")
    # Deletion lag 0: the local copies go at the next housekeeping tick.
    wait_until(lambda: all(l["offloaded"] and not l["local"] for l in ledgers(broker, topic)[:-1]),
               WAIT_S, "every sealed segment offloaded and its local copy dropped")


def read_all(consumer_or_reader, n: int, reader: bool = False) -> list:
    got = []
    for _ in range(n):
        m = (consumer_or_reader.read_next(timeout_millis=int(WAIT_S * 1000)) if reader
             else consumer_or_reader.receive(timeout_millis=int(WAIT_S * 1000)))
        if not reader:
            consumer_or_reader.acknowledge(m)
        got.append(m)
    return got


def test_offloaded_segments_read_back_unchanged_after_their_local_copies_go(make_broker, object_store):
    store = object_store
    broker = make_broker(config=broker_config(store))
    # Kept after it is consumed: read again by a reader and after a restart.
    admin(broker, "POST", "/admin/v2/namespaces/public/default/retention",
          {"retentionTimeInMinutes": -1, "retentionSizeInMB": -1})
    topic = f"persistent://public/default/{unique('tiered')}"
    client = make_client(broker)
    try:
        # The subscription holds the data (without one, retention may drop it).
        consumer = client.subscribe(topic, "all", initial_position=pulsar.InitialPosition.Earliest)
        producer = client.create_producer(topic, batching_enabled=False)
        ids, times = [], []
        for i in range(COUNT):
            ids.append(producer.send(payload(i)))
        assert len(ledgers(broker, topic)) > 3
        offload_everything_sealed(broker, topic)
        stats = admin(broker, "GET", f"/admin/v2/{topic.replace('://', '/')}/stats")
        assert stats["offloadedStorageSize"] > (COUNT // 2) * PAYLOAD
        objects = store.list_keys(BUCKET, "kilonova/")
        assert len(objects) >= len(ledgers(broker, topic)) - 1, objects

        # Peek, examine and get-by-id read offloaded entries too.
        base = f"{broker.http_url}/admin/v2/{topic.replace('://', '/')}"
        first = ledgers(broker, topic)[0]["ledgerId"]
        for path, want in ((f"/subscription/all/position/3", payload(2)),
                           ("/examinemessage?initialPosition=earliest&messagePosition=1", payload(0)),
                           (f"/ledger/{first}/entry/5", payload(5))):
            status, body = http("GET", base + path)
            assert (status, body) == (200, want), (path, status, body[:80])

        got = read_all(consumer, COUNT)
        assert [m.data() for m in got] == [payload(i) for i in range(COUNT)], "byte for byte, in order"
        times = [m.publish_timestamp() for m in got]

        reader = client.create_reader(topic, pulsar.MessageId.earliest)
        assert [m.data() for m in read_all(reader, COUNT, reader=True)] == [payload(i) for i in range(COUNT)]
        reader.close()

        # A reader started at a message id in the middle reads the next one.
        middle = COUNT // 2
        reader = client.create_reader(topic, ids[middle])
        assert reader.read_next(timeout_millis=int(WAIT_S * 1000)).data() == payload(middle + 1)
        reader.close()

        # A seek by publish time lands on the first message published then.
        consumer.seek(times[middle // 2])
        first = consumer.receive(timeout_millis=int(WAIT_S * 1000))
        assert first.publish_timestamp() == times[middle // 2]
        assert first.data() == payload(times.index(times[middle // 2]))
    finally:
        client.close()

    # kill -9: the offload records survive; reads go to the object store again.
    offloaded = [l["ledgerId"] for l in ledgers(broker, topic) if l["offloaded"]]
    broker.kill()
    broker.start()
    client = make_client(broker)
    try:
        after = {l["ledgerId"]: l for l in ledgers(broker, topic)}
        assert all(after[i]["offloaded"] and not after[i]["local"] for i in offloaded), after
        consumer = client.subscribe(topic, "after-restart", initial_position=pulsar.InitialPosition.Earliest)
        assert [m.data() for m in read_all(consumer, COUNT)] == [payload(i) for i in range(COUNT)]
    finally:
        client.close()

    # Deleting the topic deletes its objects.
    admin(broker, "DELETE", f"/admin/v2/{topic.replace('://', '/')}?force=true")
    wait_until(lambda: not store.list_keys(BUCKET, "kilonova/"), WAIT_S,
               "the deleted topic's objects are deleted")


def test_an_object_store_outage_holds_only_readers_of_offloaded_data(make_broker, seaweed):
    broker = make_broker(config=broker_config(seaweed))
    topic = f"persistent://public/default/{unique('outage')}"
    client = make_client(broker)
    try:
        old = client.subscribe(topic, "old", initial_position=pulsar.InitialPosition.Earliest)
        old.close()
        producer = client.create_producer(topic, batching_enabled=False)
        n = 400
        for i in range(n):
            producer.send(payload(i))
        offload_everything_sealed(broker, topic)
        seaweed.kill()
        # Local data is served: a new message is published and read at once.
        tail = client.subscribe(topic, "tail", initial_position=pulsar.InitialPosition.Latest)
        producer.send(b"while-the-store-is-down")
        assert tail.receive(timeout_millis=10_000).data() == b"while-the-store-is-down"
        # A reader of offloaded data waits (no error, no corrupt data)...
        old = client.subscribe(topic, "old", initial_position=pulsar.InitialPosition.Earliest)
        try:
            m = old.receive(timeout_millis=2000)
            raise AssertionError(f"read {m.data()[:20]!r} while the object store was down")
        except pulsar.Timeout:
            pass
        # An offload while the store is down fails, clearly, and is retried.
        more = [payload(n + i) for i in range(250)]
        for m in more:
            producer.send(m)
        path = f"/admin/v2/{topic.replace('://', '/')}/offload"
        offloaded_before = sum(1 for l in ledgers(broker, topic) if l["offloaded"])
        admin(broker, "PUT", path, {"ledgerId": ledgers(broker, topic)[-1]["ledgerId"], "entryId": 0})
        wait_until(lambda: admin(broker, "GET", path)["status"] == "ERROR", WAIT_S,
                   "the offload failed while the store was down")
        assert admin(broker, "GET", path)["lastError"], "the error is told"
        # ...and once the store is back, the offload completes and the
        # reader gets everything.
        seaweed.restart()
        wait_until(lambda: admin(broker, "GET", path)["status"] == "SUCCESS", WAIT_S,
                   "the offload completed after the store came back")
        assert sum(1 for l in ledgers(broker, topic) if l["offloaded"]) >= offloaded_before + 2
        got = read_all(old, n + 1 + len(more))
        assert [m.data() for m in got] == ([payload(i) for i in range(n)]
                                           + [b"while-the-store-is-down"] + more)
        status, _ = http("GET", broker.http_url + "/admin/v2/brokers/health")
        assert status == 200
    finally:
        client.close()


def metric(broker, name: str) -> float:
    text = http("GET", broker.http_url + "/metrics")[1].decode()
    return sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines() if l.startswith(name + "{"))


def test_the_namespace_threshold_offloads_by_itself_and_a_kill_9_mid_offload_loses_nothing(make_broker, object_store):
    store = object_store
    broker = make_broker(config=broker_config(store).replace("offload_deletion_lag_ms = 0\n", ""))
    ns = "public/default"
    admin(broker, "POST", f"/admin/v2/namespaces/{ns}/retention",
          {"retentionTimeInMinutes": -1, "retentionSizeInMB": -1})
    topic = f"persistent://{ns}/{unique('auto')}"
    n = 1500
    client = make_client(broker)
    try:
        client.subscribe(topic, "keep", initial_position=pulsar.InitialPosition.Earliest).close()
        producer = client.create_producer(topic, batching_enabled=False, block_if_queue_full=True)
        results = []
        for i in range(n):
            producer.send_async(payload(i), lambda r, _id: results.append(r))
        producer.flush()
        # flush() may return before the client ran the last callbacks.
        wait_until(lambda: len(results) == n, 10, "every send's callback ran")
        assert results.count(pulsar.Result.Ok) == n
    finally:
        client.close()
    # Offload everything sealed, keep local copies 0 ms: set by policy, as
    # an operator would (pulsar-admin sends PUT).
    admin(broker, "PUT", f"/admin/v2/namespaces/{ns}/offloadDeletionLagMs", 0)
    admin(broker, "PUT", f"/admin/v2/namespaces/{ns}/offloadThreshold", 0)
    # Killed while copying: nothing was recorded for the segment being copied.
    wait_until(lambda: metric(broker, "kilonova_offload_segments_total") >= 2, WAIT_S,
               "offloading under way")
    broker.kill()
    broker.start()
    wait_until(lambda: all(l["offloaded"] and not l["local"] for l in ledgers(broker, topic)[:-2]),
               WAIT_S, "the policy offloaded every sealed segment after the restart")
    # Every offloaded segment's object is there; a copy the kill left
    # unrecorded may be too (nothing deletes it yet: docs/tiered-storage.md).
    def objects_of_every_offloaded_segment():
        offloaded = [l["ledgerId"] for l in ledgers(broker, topic) if l["offloaded"]]
        keys = store.list_keys(BUCKET, "kilonova/logs/")
        segments = [int(k.split("/segments/")[1].split("/")[0]) for k in keys]
        return all(s in segments for s in offloaded) and len(keys) <= len(offloaded) + 1
    wait_until(objects_of_every_offloaded_segment, WAIT_S, "an object for every offloaded segment")
    client = make_client(broker)
    try:
        consumer = client.subscribe(topic, "keep")
        assert [m.data() for m in read_all(consumer, n)] == [payload(i) for i in range(n)]
    finally:
        client.close()
    assert metric(broker, "brk_ledgeroffloader_read_offload_bytes") > 0
    assert metric(broker, "pulsar_storage_offloaded_size") > 0



def test_an_inactive_topic_leaves_no_offloaded_data_behind(make_broker, object_store):
    store = object_store
    config = broker_config(store).replace("[broker]\n", (
        "[broker]\ndelete_inactive_topics_enabled = true\n"
        "delete_inactive_topics_frequency_secs = 1\ndelete_inactive_topics_max_inactive_secs = 2\n"))
    broker = make_broker(config=config)
    admin(broker, "POST", "/admin/v2/namespaces/public/default/retention",
          {"retentionTimeInMinutes": -1, "retentionSizeInMB": -1})
    topic = f"persistent://public/default/{unique('inactive')}"
    client = make_client(broker)
    try:
        # The producer keeps the topic active while its segments are offloaded.
        producer = client.create_producer(topic, batching_enabled=False)
        for i in range(350):
            producer.send(payload(i))
        offload_everything_sealed(broker, topic)
        wait_until(lambda: any(k.endswith("/manifest.json") for k in store.list_keys(BUCKET, "kilonova/")),
                   WAIT_S, "the manifest is exported")
        assert any("/segments/" in k for k in store.list_keys(BUCKET, "kilonova/"))
        # Retention kept the data (and the topic: retained data is not
        # inactive, as in Pulsar); without it, nothing holds either.
        admin(broker, "POST", "/admin/v2/namespaces/public/default/retention",
              {"retentionTimeInMinutes": 0, "retentionSizeInMB": 0})
    finally:
        client.close()
    # No producer, no subscription: deleted, with its objects and manifest.
    stats = f"{broker.http_url}/admin/v2/{topic.replace('://', '/')}/stats"
    wait_until(lambda: http("GET", stats)[0] == 404, WAIT_S, "the inactive topic is deleted")
    wait_until(lambda: not store.list_keys(BUCKET, "kilonova/"), WAIT_S,
               "the inactive topic's offloaded data and manifest are deleted")


def test_a_message_age_quota_sees_a_backlog_in_the_object_store(make_broker, seaweed):
    broker = make_broker(config=broker_config(seaweed).replace(
        "[broker]\n", "[broker]\nbacklog_quota_check_interval_secs = 1\n"))
    topic = f"persistent://public/default/{unique('age')}"
    client = make_client(broker)
    try:
        client.subscribe(topic, "s", initial_position=pulsar.InitialPosition.Earliest).close()
        producer = client.create_producer(topic, batching_enabled=False)
        for i in range(300):
            producer.send(payload(i))
    finally:
        client.close()
    offload_everything_sealed(broker, topic)
    stats = f"/admin/v2/{topic.replace('://', '/')}/stats"
    assert admin(broker, "GET", stats)["subscriptions"]["s"]["msgBacklog"] == 300
    # Its oldest messages are only in the object store: the quota reads them there.
    admin(broker, "POST", "/admin/v2/namespaces/public/default/backlogQuota?backlogQuotaType=message_age",
          {"limitSize": -1, "limitTime": 2, "policy": "consumer_backlog_eviction"})
    wait_until(lambda: admin(broker, "GET", stats)["subscriptions"]["s"]["msgBacklog"] == 0, WAIT_S,
               "messages older than the 2 s message_age quota evicted, offloaded ones too")
