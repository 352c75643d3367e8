"""Tiered storage's disaster recovery (issue #25), end to end with the real
Python client, against SeaweedFS's S3 and the filesystem driver: a topic's
offloaded history survives the loss of the broker's whole data directory
(storage and metadata) and `topics restore` brings it back from the object
store alone — byte for byte, in order, with its policies and schema; a
partitioned topic comes back with its partitions; what was never offloaded
(the local tail) does not."""

from __future__ import annotations

import json
import shutil
import subprocess

import pulsar
from pulsar.schema import StringSchema

from conftest import http, make_client, unique, wait_until
from test_tiered_storage import (BUCKET, WAIT_S, admin, broker_config, ledgers,
                                 offload_everything_sealed, payload, read_all)

COUNT = 450  # 100 entries a segment: 4 sealed, offloaded; the tail is not


def call(broker, method: str, path: str, body=None) -> tuple[int, str]:
    data = None if body is None else json.dumps(body).encode()
    status, text = http(method, broker.http_url + path, data,
                        "application/json" if data is not None else None)
    return status, text.decode() if isinstance(text, bytes) else text


def manifest(store, topic: str) -> dict | None:
    key = "kilonova/topics/" + topic.replace("://", "/") + "/manifest.json"
    body = store.find_object(BUCKET, key)
    return None if body is None else json.loads(body)


def offloaded_entries(broker, topic: str) -> int:
    return sum(l["entries"] for l in ledgers(broker, topic) if l["offloaded"])


def exported(store, broker, topic: str) -> int:
    """Waits until the topic's manifest lists every offloaded segment; the
    entries it holds."""
    want = offloaded_entries(broker, topic)
    wait_until(lambda: (m := manifest(store, topic)) is not None
               and sum(s["entries"] for s in m["segments"]) == want,
               WAIT_S, f"{topic}'s manifest lists its {want} offloaded entries")
    return want


def test_a_topic_comes_back_from_the_object_store_after_its_data_directory_is_lost(
        make_broker, object_store, kilonova_bin):
    broker = make_broker(config=broker_config(object_store))
    tenant, ns = unique("dr"), "ns"
    admin(broker, "PUT", f"/admin/v2/tenants/{tenant}", {"allowedClusters": ["standalone"]})
    admin(broker, "PUT", f"/admin/v2/namespaces/{tenant}/{ns}")
    retention = {"retentionTimeInMinutes": -1, "retentionSizeInMB": -1}
    admin(broker, "POST", f"/admin/v2/namespaces/{tenant}/{ns}/retention", retention)
    topic = f"persistent://{tenant}/{ns}/orders"
    topic_path = f"/admin/v2/persistent/{tenant}/{ns}/orders"
    topic_retention = {"retentionTimeInMinutes": 600, "retentionSizeInMB": 512}
    parted = f"persistent://{tenant}/{ns}/events"
    lost = f"persistent://{tenant}/{ns}/lost"  # partitioned; one object goes missing
    client = make_client(broker)
    try:
        producer = client.create_producer(topic, batching_enabled=False)
        admin(broker, "POST", f"{topic_path}/retention", topic_retention)
        for i in range(COUNT):
            producer.send(payload(i))
        admin(broker, "PUT", f"/admin/v2/persistent/{tenant}/{ns}/events/partitions", 2)
        events = client.create_producer(parted, schema=StringSchema(), batching_enabled=False,
                                        message_routing_mode=pulsar.PartitionsRoutingMode.RoundRobinDistribution)
        for i in range(2 * COUNT):
            events.send(f"event-{i}")
        admin(broker, "PUT", f"/admin/v2/persistent/{tenant}/{ns}/lost/partitions", 2)
        lost_producer = client.create_producer(lost, batching_enabled=False,
                                               message_routing_mode=pulsar.PartitionsRoutingMode.RoundRobinDistribution)
        for i in range(2 * COUNT):
            lost_producer.send(payload(i))
    finally:
        client.close()
    offload_everything_sealed(broker, topic)
    for p in range(2):
        offload_everything_sealed(broker, f"{parted}-partition-{p}")
        offload_everything_sealed(broker, f"{lost}-partition-{p}")
    kept = exported(object_store, broker, topic)
    assert 0 < kept < COUNT, "the sealed segments are offloaded, the tail is not"
    kept_events = sum(exported(object_store, broker, f"{parted}-partition-{p}") for p in range(2))
    for p in range(2):
        exported(object_store, broker, f"{lost}-partition-{p}")
    lost_object = manifest(object_store, f"{lost}-partition-1")["segments"][1]["object"]

    # The disaster: killed, and its data directory (storage and metadata) gone.
    broker.kill()
    shutil.rmtree(broker.data_dir)
    broker.start()
    assert call(broker, "GET", f"/admin/v2/namespaces/{tenant}")[0] == 404, "the metadata is gone"

    # The namespace first (with its retention: a restored topic has no subscription).
    status, text = call(broker, "POST", f"{topic_path}/restore")
    assert status == 404 and "does not exist" in text.lower(), (status, text)
    admin(broker, "PUT", f"/admin/v2/tenants/{tenant}", {"allowedClusters": ["standalone"]})
    admin(broker, "PUT", f"/admin/v2/namespaces/{tenant}/{ns}")
    admin(broker, "POST", f"/admin/v2/namespaces/{tenant}/{ns}/retention", retention)
    status, text = call(broker, "POST", f"/admin/v2/persistent/{tenant}/{ns}/never-was/restore")
    assert status == 404 and "no manifest" in text, (status, text)
    # An object a manifest lists is gone: refused, and nothing is created
    # (not even the partition whose objects are all there).
    object_store.delete_object(BUCKET, lost_object)
    status, text = call(broker, "POST", f"/admin/v2/persistent/{tenant}/{ns}/lost/restore")
    assert status == 412 and "not whole" in text, (status, text)
    assert not admin(broker, "GET", f"/admin/v2/persistent/{tenant}/{ns}/partitioned"), "nothing created"
    assert not admin(broker, "GET", f"/admin/v2/persistent/{tenant}/{ns}"), "nothing created"

    # The command a user runs.
    out = subprocess.run([str(kilonova_bin), "admin", "--admin-url", broker.http_url,
                          "topics", "restore", topic],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert f"Restored {topic}: 4 segments, {kept} entries" in out.stdout, out.stdout
    status, text = call(broker, "POST", f"{topic_path}/restore")
    assert status == 409, "a topic that exists is not restored over"
    assert admin(broker, "GET", f"{topic_path}/retention") == topic_retention, "its policies came back"

    client = make_client(broker)
    try:
        consumer = client.subscribe(topic, "after", initial_position=pulsar.InitialPosition.Earliest)
        got = read_all(consumer, kept)
        assert [m.data() for m in got] == [payload(i) for i in range(kept)], "byte for byte, in order"
        # A reader at a message id in the middle reads the one after it;
        # a seek by publish time lands on the first message published then.
        middle = kept // 2
        reader = client.create_reader(topic, got[middle].message_id())
        assert reader.read_next(timeout_millis=int(WAIT_S * 1000)).data() == payload(middle + 1)
        reader.close()
        times = [m.publish_timestamp() for m in got]
        consumer.seek(times[middle])
        assert consumer.receive(timeout_millis=int(WAIT_S * 1000)).data() == payload(times.index(times[middle]))
        # The topic carries on after its restored history.
        producer = client.create_producer(topic, batching_enabled=False)
        producer.send(b"after-the-restore")
        tail = client.subscribe(topic, "tail", initial_position=pulsar.InitialPosition.Earliest)
        assert [m.data() for m in read_all(tail, kept + 1)][-1] == b"after-the-restore"
        stats = admin(broker, "GET", f"{topic_path}/stats")
        assert stats["offloadedStorageSize"] > 0

        # The partitioned topic, its partitions and its schema.
        status, text = call(broker, "POST", f"/admin/v2/persistent/{tenant}/{ns}/events/restore")
        assert status == 200, text
        report = json.loads(text)
        assert report["partitions"] == 2 and len(report["restored"]) == 2, report
        assert admin(broker, "GET", f"/admin/v2/persistent/{tenant}/{ns}/events/partitions")["partitions"] == 2
        schema = admin(broker, "GET", f"/admin/v2/schemas/{tenant}/{ns}/events/schema")
        assert schema["type"] == "STRING", schema
        events = client.subscribe(parted, "after", schema=StringSchema(),
                                  initial_position=pulsar.InitialPosition.Earliest)
        values = sorted(m.value() for m in read_all(events, kept_events))
        sent = sorted(f"event-{i}" for i in range(2 * COUNT))
        assert set(values) <= set(sent) and len(set(values)) == kept_events
    finally:
        client.close()

    # Deleting a restored topic deletes its manifest and objects.
    admin(broker, "DELETE", f"{topic_path}?force=true")
    wait_until(lambda: manifest(object_store, topic) is None, WAIT_S, "the manifest is deleted")
