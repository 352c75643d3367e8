"""End-to-end tests of the admin verbs added for Pulsar parity (issue #23):
`brokers version|leader-broker|get-runtime-config`, `topics partitioned-stats`,
`topics clear-backlog` (alias `skip-all`), `topics
expire-messages-all-subscriptions` (alias `expire-all`), `topics examine-message`, `topics
get-message-by-id`, `namespaces topics|unload|clear-backlog`.

Each runs `kilonova admin` against a real broker and checks what it did
through the REST API or a real Pulsar client.
"""

from __future__ import annotations

import urllib.parse
import zlib

import pytest

from conftest import http, receive_n, topic_name, unique, wait_until
from test_admin_cli import Cli, rest, rest_json, topic_rest_path

WAIT_S = 10.0


@pytest.fixture
def cli(broker) -> Cli:
    return Cli(broker)


def backlog_of(broker, topic: str, sub: str):
    subs = rest_json(broker, f"{topic_rest_path(topic)}/stats").get("subscriptions", {})
    return subs.get(sub, {}).get("msgBacklog")


def wait_backlog(broker, topic: str, sub: str, expected: int):
    wait_until(lambda: backlog_of(broker, topic, sub) == expected, WAIT_S,
               f"the backlog of {sub} on {topic} to be {expected} "
               f"(last {backlog_of(broker, topic, sub)!r})")


def produce(client, topic: str, n: int, prefix: str = "m") -> list:
    producer = client.create_producer(topic, batching_enabled=False)
    ids = [producer.send(f"{prefix}{i}".encode()) for i in range(n)]
    producer.close()
    return ids


# ---------------------------------------------------------------- brokers


def test_brokers_version_leader_broker_and_runtime_config(cli, broker):
    version = cli.lines("brokers", "version")
    assert len(version) == 1 and version[0][0].isdigit(), f"brokers version printed {version!r}"
    status, body = http("GET", broker.http_url + "/admin/v2/brokers/version")
    assert status == 200 and body.decode().strip() == version[0], (status, body)

    leader = cli.json("brokers", "leader-broker")
    registered = rest_json(broker, "/admin/v2/brokers/standalone")
    assert leader.get("brokerId") in registered, f"leader {leader!r} is not one of {registered!r}"
    assert leader.get("serviceUrl") == f"http://{leader['brokerId']}", leader

    config = cli.json("brokers", "get-runtime-config")
    assert config.get("cluster_name") == "standalone", config
    assert all(isinstance(v, str) for v in config.values()), "every value is a string, as Pulsar's map"
    assert config.get("max_message_bytes", "").isdigit(), config


# ---------------------------------------------------------------- topics


def test_bundle_range_is_the_bundle_holding_the_crc32_of_the_topic_name(cli, broker):
    ns = f"public/{unique('bundles')}"
    status, body = http("PUT", f"{broker.http_url}/admin/v2/namespaces/{ns}",
                        b'{"bundles":{"numBundles":16}}', "application/json")
    assert status in (200, 204), (status, body)
    bundles = rest_json(broker, f"/admin/v2/namespaces/{ns}/bundles")
    bounds = [int(b, 16) for b in bundles["boundaries"]]
    assert bundles["numBundles"] == 16 and len(bounds) == 17
    assert bounds[0] == 0 and bounds[-1] == 0xFFFFFFFF
    seen = set()
    for i in range(40):
        topic = f"persistent://{ns}/t-{i}"
        (line,) = cli.lines("topics", "bundle-range", topic)
        lower, upper = (int(x, 16) for x in line.split("_"))
        assert (lower, upper) in zip(bounds, bounds[1:]), line
        # Pulsar places a topic by the CRC-32 of its full name: zlib's is the same function.
        h = zlib.crc32(topic.encode())
        assert lower <= h < upper or (h == upper == 0xFFFFFFFF), (topic, hex(h), line)
        seen.add(line)
    assert len(seen) > 4, "forty topics spread over the bundles"


def test_partitioned_stats_sums_counters_as_integers(cli, broker, client):
    local = unique("pstats")
    topic = f"persistent://public/default/{local}"
    cli.ok("topics", "create-partitioned-topic", topic, "-p", "2")
    consumer = client.subscribe(topic, "s")
    produce(client, topic, 4)
    receive_n(consumer, 4)

    def summed():
        return rest_json(broker, f"{topic_rest_path(topic)}/partitioned-stats?perPartition=false")

    wait_until(lambda: summed().get("msgInCounter") == 4, WAIT_S, "msgInCounter to reach 4")
    doc = summed()
    for key in ("msgInCounter", "bytesInCounter", "msgOutCounter", "bytesOutCounter",
                "storageSize", "backlogSize"):
        assert isinstance(doc.get(key), int) and not isinstance(doc.get(key), bool), (
            f"{key} must be an integer, got {doc.get(key)!r}")
    assert doc["bytesInCounter"] > 0, doc
    assert isinstance(doc.get("msgRateIn"), float), doc
    cli_doc = cli.json("topics", "partitioned-stats", topic)
    assert cli_doc.get("msgInCounter") == 4 and cli_doc.get("partitions") == {}, (
        "without --per-partition, no partition's stats")
    per = cli.json("topics", "partitioned-stats", topic, "--per-partition")
    assert set(per.get("partitions", {})) == {f"{topic}-partition-0", f"{topic}-partition-1"}, per
    consumer.close()


def test_clear_backlog_of_one_subscription_then_of_all(cli, broker, client):
    topic = topic_name("clear")
    cli.ok("topics", "create", topic)
    for sub in ("a", "b", "c"):
        cli.ok("topics", "create-subscription", topic, "-s", sub, "-m", "earliest")
    produce(client, topic, 5)
    for sub in ("a", "b", "c"):
        wait_backlog(broker, topic, sub, 5)

    cli.ok("topics", "clear-backlog", topic, "-s", "a")
    wait_backlog(broker, topic, "a", 0)
    assert backlog_of(broker, topic, "b") == 5, "clearing a leaves b alone"

    cli.ok("topics", "skip-all", topic, "-s", "b")
    wait_backlog(broker, topic, "b", 0)
    assert backlog_of(broker, topic, "c") == 5

    produce(client, topic, 2, prefix="n")
    cli.ok("topics", "clear-backlog", topic)
    for sub in ("a", "b", "c"):
        wait_backlog(broker, topic, sub, 0)

    cli.fails("topics", "clear-backlog", topic, "-s", "nope")


def test_clear_backlog_keeps_consumers_and_delivers_what_comes_next(cli, broker, client):
    topic = topic_name("clearlive")
    consumer = client.subscribe(topic, "s", receiver_queue_size=1)
    produce(client, topic, 5, prefix="old")
    cli.ok("topics", "clear-backlog", topic, "-s", "s")
    wait_backlog(broker, topic, "s", 0)
    produce(client, topic, 1, prefix="new")
    # What the consumer had prefetched before the clear may still arrive; the
    # new message arrives after it, and nothing else.
    got = []
    wait_until(lambda: got.append(consumer.receive(timeout_millis=200).data()) or b"new0" in got,
               WAIT_S, "the message published after clear-backlog")
    consumer.close()


def test_expire_messages_all_subscriptions(cli, broker, client):
    topic = topic_name("expireall")
    cli.ok("topics", "create", topic)
    for sub in ("a", "b"):
        cli.ok("topics", "create-subscription", topic, "-s", sub, "-m", "earliest")
    produce(client, topic, 3)
    cli.ok("topics", "expire-messages-all-subscriptions", topic, "-t", "1h")
    assert backlog_of(broker, topic, "a") == 3, "nothing is an hour old"

    def expire_now():
        cli.ok("topics", "expire-all", topic, "-t", "0")  # the alias
        return backlog_of(broker, topic, "a") == 0 and backlog_of(broker, topic, "b") == 0

    wait_until(expire_now, WAIT_S, "every subscription's messages to expire")


def test_examine_message_and_get_message_by_id(cli, broker, client):
    topic = topic_name("examine")
    ids = produce(client, topic, 4)

    def payload_of(*args):
        return cli.json("topics", *args).get("payload")

    assert payload_of("examine-message", topic, "-i", "earliest", "-m", "1") == "m0"
    assert payload_of("examine-message", topic, "-i", "earliest", "-m", "3") == "m2"
    assert payload_of("examine-message", topic) == "m3", "the default is the latest, position 1"
    assert payload_of("examine-message", topic, "--initialPosition", "latest",
                      "--messagePosition", "2") == "m2"
    human = cli.ok("topics", "examine-message", topic, "-i", "earliest").stdout
    assert f"Message ID: {ids[0].ledger_id()}:{ids[0].entry_id()}" in human and "m0" in human, human
    cli.fails("topics", "examine-message", topic, "-i", "earliest", "-m", "5")
    cli.fails("topics", "examine-message", topic, "-i", "middle")

    mid = ids[2]
    got = cli.json("topics", "get-message-by-id", topic, "-l", mid.ledger_id(), "-e", mid.entry_id())
    assert got.get("payload") == "m2" and got.get("messageId") == f"{mid.ledger_id()}:{mid.entry_id()}", got
    cli.fails("topics", "get-message-by-id", topic, "-l", mid.ledger_id(), "-e", 999)
    status, _ = rest(broker, "GET", f"{topic_rest_path(topic)}/ledger/x/entry/1")
    assert status == 400


# ---------------------------------------------------------------- namespaces


def test_namespace_topics_clear_backlog_and_unload(cli, broker, client):
    tenant = unique("tenant")
    cli.ok("tenants", "create", tenant, "--allowed-clusters", "standalone")
    ns = f"{tenant}/{unique('ns')}"
    cli.ok("namespaces", "create", ns)
    topics = [f"persistent://{ns}/t{i}" for i in range(2)]
    for t in topics:
        cli.ok("topics", "create", t)
        for sub in ("s", "keep"):
            cli.ok("topics", "create-subscription", t, "-s", sub, "-m", "earliest")
        produce(client, t, 3)
    np_topic = f"non-persistent://{ns}/np"
    cli.ok("topics", "create", np_topic)

    assert sorted(cli.lines("namespaces", "topics", ns)) == topics
    assert cli.lines("namespaces", "topics", ns, "-m", "NON_PERSISTENT") == [np_topic]
    assert sorted(cli.lines("namespaces", "topics", ns, "-m", "ALL")) == sorted(topics + [np_topic])

    cli.ok("namespaces", "clear-backlog", ns, "-s", "s")
    for t in topics:
        wait_backlog(broker, t, "s", 0)
        assert backlog_of(broker, t, "keep") == 3, "only subscription s was cleared"
    cli.ok("namespaces", "clear-backlog", ns)
    for t in topics:
        wait_backlog(broker, t, "keep", 0)

    # The stats calls loaded both topics; unloading the namespace unloads them.
    def loaded(t: str) -> bool:
        status, body = http("GET", broker.http_url + "/metrics")
        assert status == 200
        return f'topic="{t}"' in body.decode()

    assert all(loaded(t) for t in topics)
    cli.ok("namespaces", "unload", ns)
    wait_until(lambda: not any(loaded(t) for t in topics), WAIT_S, "the namespace's topics to unload")
    cli.fails("namespaces", "unload", f"{tenant}/missing")
    cli.fails("namespaces", "topics", f"{tenant}/missing")


# ---------------------------------------------------------------- topic-level policies


@pytest.mark.parametrize("group", ["topics", "topicPolicies"])
def test_topic_unacked_limits_and_compaction_threshold_round_trip(cli, broker, group):
    topic = topic_name("topic-policies")
    cli.ok("topics", "create", topic)
    path = topic_rest_path(topic)
    for verb, segment, flag, value, expected in [
        ("max-unacked-messages-per-consumer", "maxUnackedMessagesOnConsumer", "-m", "7", 7),
        ("max-unacked-messages-per-subscription", "maxUnackedMessagesOnSubscription", "--maxNum", "9", 9),
        ("compaction-threshold", "compactionThreshold", "-t", "10M", 10 << 20),
    ]:
        assert cli.ok(group, f"get-{verb}", topic).stdout.strip() == "", "nothing set yet"
        cli.ok(group, f"set-{verb}", topic, flag, value)
        assert cli.json(group, f"get-{verb}", topic) == expected
        assert rest_json(broker, f"{path}/{segment}") == expected, "Pulsar's route serves it"
        cli.ok(group, f"remove-{verb}", topic)
        assert cli.ok(group, f"get-{verb}", topic).stdout.strip() == ""
    cli.fails(group, "set-max-unacked-messages-per-consumer", topic, "-m", "-1")


# ---------------------------------------------------------------- offload policies


def test_namespace_offload_threshold_and_deletion_lag_verbs_as_pulsar_admin(cli, broker):
    tenant = unique("offload")
    cli.ok("tenants", "create", tenant, "--allowed-clusters", "standalone")
    ns = f"{tenant}/ns"
    cli.ok("namespaces", "create", ns)
    base = f"/admin/v2/namespaces/{ns}"

    assert cli.lines("namespaces", "get-offload-threshold", ns) == [
        "offloadThresholdInBytes: -1", "offloadThresholdInSeconds: -1"], "unset, as Pulsar prints it"
    cli.ok("namespaces", "set-offload-threshold", ns, "--size", "10M", "--time", "1h")
    assert cli.lines("namespaces", "get-offload-threshold", ns) == [
        "offloadThresholdInBytes: 10485760", "offloadThresholdInSeconds: 3600"]
    assert cli.json("namespaces", "get-offload-threshold", ns) == {
        "offloadThresholdInBytes": 10 << 20, "offloadThresholdInSeconds": 3600}
    policies = rest_json(broker, base)
    assert (policies.get("offload_threshold"), policies.get("offload_threshold_in_seconds")) == (
        10 << 20, 3600), f"Pulsar's field names: {policies!r}"

    cli.ok("namespaces", "set-offload-threshold", ns, "-s", "0")
    assert rest_json(broker, f"{base}/offloadThreshold") == 0, "0: offload every sealed segment"
    assert rest_json(broker, f"{base}/offloadThresholdInSeconds") == -1, (
        "--time left out sends -1, as pulsar-admin does")
    cli.ok("namespaces", "set-offload-threshold", ns, "-s", "-1")
    assert "offload_threshold" not in rest_json(broker, base), "-1 unsets it"
    cli.fails("namespaces", "set-offload-threshold", ns)
    cli.fails("namespaces", "set-offload-threshold", ns, "-s", "10Q")

    assert cli.lines("namespaces", "get-offload-deletion-lag", ns) == [
        "Unset for namespace. Defaulting to broker setting."]
    cli.ok("namespaces", "set-offload-deletion-lag", ns, "--lag", "2h")
    assert rest_json(broker, f"{base}/offloadDeletionLagMs") == 7_200_000, "sent in milliseconds"
    assert cli.lines("namespaces", "get-offload-deletion-lag", ns) == ["120 minute(s)"]
    assert cli.json("namespaces", "get-offload-deletion-lag", ns) == 7_200_000
    cli.ok("namespaces", "clear-offload-deletion-lag", ns)
    assert "offload_deletion_lag_ms" not in rest_json(broker, base)
    cli.fails("namespaces", "set-offload-deletion-lag", ns, "-l", "-5")
    cli.fails("namespaces", "get-offload-threshold", f"{tenant}/missing")


@pytest.mark.parametrize("group", ["topics", "topicPolicies"])
def test_topic_offload_policies_verbs_round_trip(cli, broker, group):
    topic = topic_name("offload-policies")
    cli.ok("topics", "create", topic)
    path = f"{topic_rest_path(topic)}/offloadPolicies"
    assert cli.ok(group, "get-offload-policies", topic).stdout.strip() == "", "nothing set yet"

    cli.ok(group, "set-offload-policies", topic, "-d", "aws-s3", "-r", "us-east-1", "-b", "cold",
           "-e", "http://127.0.0.1:8333", "-t", "1G", "-ts", "1d", "-dl", "0")
    expected = {
        "managedLedgerOffloadDriver": "aws-s3",
        "s3ManagedLedgerOffloadRegion": "us-east-1",
        "s3ManagedLedgerOffloadBucket": "cold",
        "s3ManagedLedgerOffloadServiceEndpoint": "http://127.0.0.1:8333",
        "managedLedgerOffloadThresholdInBytes": 1 << 30,
        "managedLedgerOffloadThresholdInSeconds": 86_400,
        "managedLedgerOffloadDeletionLagInMillis": 0,
    }
    assert cli.json(group, "get-offload-policies", topic) == expected
    assert rest_json(broker, path) == expected, "Pulsar's route serves it"

    failed = cli.fails(group, "set-offload-policies", topic, "-d", "S3", "-b", "cold")
    assert "s3ManagedLedgerOffloadRegion" in failed.stderr, failed.stderr
    failed = cli.fails(group, "set-offload-policies", topic, "-d", "tape")
    assert "The driver is not supported" in failed.stderr, failed.stderr
    assert rest_json(broker, path) == expected, "a refused change is not stored"

    cli.ok(group, "remove-offload-policies", topic)
    assert cli.ok(group, "get-offload-policies", topic).stdout.strip() == ""


def test_namespace_offload_policies_verbs_round_trip(cli, broker):
    tenant = unique("offload")
    cli.ok("tenants", "create", tenant, "--allowed-clusters", "standalone")
    ns = f"{tenant}/ns"
    cli.ok("namespaces", "create", ns)
    assert cli.ok("namespaces", "get-offload-policies", ns).stdout.strip() == "", "nothing set yet"

    cli.ok("namespaces", "set-offload-policies", ns, "-d", "aws-s3", "-r", "us-east-1", "-b", "cold",
           "-oat", "10M", "-oats", "1d", "-oae", "1h")
    expected = {
        "managedLedgerOffloadDriver": "aws-s3",
        "s3ManagedLedgerOffloadRegion": "us-east-1",
        "s3ManagedLedgerOffloadBucket": "cold",
        "managedLedgerOffloadThresholdInBytes": 10 << 20,
        "managedLedgerOffloadThresholdInSeconds": 86_400,
        "managedLedgerOffloadDeletionLagInMillis": 3_600_000,
    }
    assert cli.json("namespaces", "get-offload-policies", ns) == expected
    assert rest_json(broker, f"/admin/v2/namespaces/{ns}/offloadPolicies") == expected
    assert cli.lines("namespaces", "get-offload-threshold", ns) == [
        "offloadThresholdInBytes: 10485760", "offloadThresholdInSeconds: 86400"]
    assert cli.lines("namespaces", "get-offload-deletion-lag", ns) == ["60 minute(s)"]

    failed = cli.fails("namespaces", "set-offload-policies", ns, "-d", "google-cloud-storage")
    assert "The bucket must be specified" in failed.stderr, failed.stderr
    cli.ok("namespaces", "remove-offload-policies", ns)
    assert cli.ok("namespaces", "get-offload-policies", ns).stdout.strip() == ""
    assert cli.lines("namespaces", "get-offload-threshold", ns) == [
        "offloadThresholdInBytes: -1", "offloadThresholdInSeconds: -1"]
