"""End-to-end tests of `kilonova admin`, the pulsar-admin look-alike (issue #13).

The binary is run as a user would: ``kilonova admin [GLOBAL FLAGS] GROUP VERB ...``
against a real broker, and what it did is checked through the REST API.

The CLI contract these tests assume:

* Global flags come before the group: ``--admin-url URL`` (default from the
  ``KILONOVA_ADMIN_URL`` environment variable), ``--auth-token TOKEN`` (sent as
  ``Authorization: Bearer TOKEN``), ``--output json``.
* Output: by default a list prints one item per line, an object prints as
  indented JSON, a scalar prints as itself; with ``--output json`` stdout is
  exactly one JSON document. Verbs that change something print nothing
  required (stdout is not checked).
* Failure: a non-zero exit code, the server's ``reason`` on stderr, nothing on
  stdout.
* Verbs and flags are pulsar-admin's (see each test).
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import assert_no_more, free_port, payloads, receive_n, unique

CLUSTER = "standalone"
CLI_TIMEOUT_S = 30.0
WAIT_S = 10.0


# ---------------------------------------------------------------- running the CLI


def cli_env(extra: dict | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "KILONOVA_ADMIN_URL"}
    env["NO_COLOR"] = "1"
    env.update(extra or {})
    return env


def run_admin(binary, args, admin_url: str | None = None, output_json: bool = False,
              env: dict | None = None, global_flags=()) -> subprocess.CompletedProcess:
    cmd = [str(binary), "admin"]
    if admin_url is not None:
        cmd += ["--admin-url", admin_url]
    cmd += list(global_flags)
    if output_json:
        cmd += ["--output", "json"]
    cmd += [str(a) for a in args]
    try:
        return subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=CLI_TIMEOUT_S, env=env if env is not None else cli_env())
    except subprocess.TimeoutExpired as e:
        raise AssertionError(f"`{' '.join(cmd)}` did not finish within {CLI_TIMEOUT_S}s") from e


def describe(proc: subprocess.CompletedProcess) -> str:
    return (f"`{' '.join(proc.args)}` exited {proc.returncode}\n"
            f"--- stdout ---\n{proc.stdout[-3000:]}\n--- stderr ---\n{proc.stderr[-3000:]}")


class Cli:
    """`kilonova admin --admin-url <broker>` with assertions."""

    def __init__(self, broker):
        self.broker = broker

    def run(self, *args, output_json=False) -> subprocess.CompletedProcess:
        return run_admin(self.broker.binary, args, self.broker.http_url, output_json)

    def ok(self, *args, output_json=False) -> subprocess.CompletedProcess:
        proc = self.run(*args, output_json=output_json)
        assert proc.returncode == 0, f"expected success:\n{describe(proc)}"
        return proc

    def json(self, *args):
        """Runs with --output json; stdout must be exactly one JSON document."""
        proc = self.ok(*args, output_json=True)
        try:
            return json.loads(proc.stdout)
        except ValueError as e:
            raise AssertionError(f"--output json did not print one JSON document ({e}):\n{describe(proc)}") from None

    def lines(self, *args) -> list[str]:
        """Runs with the default (human) output; a list is one item per line."""
        return [line.strip() for line in self.ok(*args).stdout.splitlines() if line.strip()]

    def fails(self, *args, output_json=False) -> subprocess.CompletedProcess:
        proc = self.run(*args, output_json=output_json)
        assert proc.returncode != 0, f"expected a failure:\n{describe(proc)}"
        assert proc.stdout.strip() == "", f"a failure prints nothing on stdout:\n{describe(proc)}"
        assert proc.stderr.strip(), f"a failure explains itself on stderr:\n{describe(proc)}"
        assert "panicked" not in proc.stderr, f"the CLI panicked:\n{describe(proc)}"
        return proc


@pytest.fixture
def cli(broker) -> Cli:
    return Cli(broker)


# ---------------------------------------------------------------- REST helpers (for verification)


def rest(broker, method: str, path: str, body=None) -> tuple[int, object]:
    data = None if body is None else json.dumps(body).encode()
    if data is None and method in ("PUT", "POST"):
        data = b""
    req = urllib.request.Request(broker.http_url + path, data=data, method=method,
                                 headers={"Content-Type": "application/json"} if body is not None else {})
    try:
        with urllib.request.urlopen(req, timeout=15) as r:
            status, raw = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    try:
        return status, (json.loads(raw) if raw.strip() else None)
    except ValueError:
        return status, raw


def rest_json(broker, path: str):
    status, doc = rest(broker, "GET", path)
    assert status == 200, f"GET {path}: expected 200, got {status} {doc!r}"
    return doc


def rest_reason(broker, method: str, path: str, body=None) -> str:
    status, doc = rest(broker, method, path, body)
    assert 400 <= status < 600 and isinstance(doc, dict) and doc.get("reason"), (
        f"{method} {path} should fail with a reason, got {status} {doc!r}"
    )
    return doc["reason"]


def topic_rest_path(topic: str) -> str:
    domain, rest_ = topic.split("://", 1)
    return f"/admin/v2/{domain}/{rest_}"


def backlog(broker, topic: str, sub: str):
    subs = rest_json(broker, f"{topic_rest_path(topic)}/stats").get("subscriptions", {})
    return subs.get(sub, {}).get("msgBacklog")


def wait_for_value(fn, expected, what: str, timeout: float = WAIT_S):
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value == expected:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(
                f"timed out after {timeout}s waiting for {what} to be {expected!r}; last value {value!r}"
            )
        time.sleep(0.05)


def new_tenant_and_namespace(cli: Cli) -> tuple[str, str]:
    tenant = unique("tenant")
    cli.ok("tenants", "create", tenant, "--allowed-clusters", CLUSTER)
    ns = f"{tenant}/{unique('ns')}"
    cli.ok("namespaces", "create", ns)
    return tenant, ns


# ================================================================ clusters, tenants, namespaces


def test_cli_clusters_create_get_update_delete(cli, broker):
    name = unique("cluster")
    cli.ok("clusters", "create", name, "--url", "http://one.example:8080",
           "--broker-url", "pulsar://one.example:6650")
    data = rest_json(broker, f"/admin/v2/clusters/{name}")
    assert data.get("serviceUrl") == "http://one.example:8080", data
    assert data.get("brokerServiceUrl") == "pulsar://one.example:6650", data
    assert name in cli.lines("clusters", "list") and CLUSTER in cli.lines("clusters", "list")

    cli.ok("clusters", "update", name, "--url", "http://two.example:8080",
           "--broker-url", "pulsar://two.example:6650")
    got = cli.json("clusters", "get", name)
    assert got.get("serviceUrl") == "http://two.example:8080", f"clusters get after update: {got!r}"
    assert got.get("brokerServiceUrl") == "pulsar://two.example:6650", f"clusters get after update: {got!r}"

    cli.ok("clusters", "delete", name)
    status, _ = rest(broker, "GET", f"/admin/v2/clusters/{name}")
    assert status == 404, f"the cluster should be gone after `clusters delete`, GET answered {status}"


def test_cli_tenants_create_get_update_delete(cli, broker):
    name = unique("tenant")
    cli.ok("tenants", "create", name, "--admin-roles", "r1,r2", "--allowed-clusters", CLUSTER)
    info = rest_json(broker, f"/admin/v2/tenants/{name}")
    assert sorted(info.get("adminRoles", [])) == ["r1", "r2"], f"adminRoles from --admin-roles r1,r2: {info!r}"
    assert info.get("allowedClusters") == [CLUSTER], f"allowedClusters: {info!r}"
    assert name in cli.lines("tenants", "list")

    cli.ok("tenants", "update", name, "--admin-roles", "r3", "--allowed-clusters", CLUSTER)
    got = cli.json("tenants", "get", name)
    assert got.get("adminRoles") == ["r3"], f"tenants get after update: {got!r}"

    cli.ok("tenants", "delete", name)
    status, _ = rest(broker, "GET", f"/admin/v2/tenants/{name}")
    assert status == 404, f"the tenant should be gone after `tenants delete`, GET answered {status}"


def test_cli_creates_tenant_namespace_and_partitioned_topic(cli, broker):
    tenant = unique("tenant")
    ns = f"{tenant}/{unique('ns')}"
    topic = f"persistent://{ns}/{unique('parted')}"
    cli.ok("tenants", "create", tenant, "--admin-roles", "ops", "--allowed-clusters", CLUSTER)
    cli.ok("namespaces", "create", ns, "--bundles", "64")
    cli.ok("topics", "create-partitioned-topic", topic, "-p", "4")

    assert tenant in rest_json(broker, "/admin/v2/tenants"), "the tenant exists (REST)"
    assert rest_json(broker, f"/admin/v2/namespaces/{tenant}") == [ns], "the namespace exists (REST)"
    policies = rest_json(broker, f"/admin/v2/namespaces/{ns}")
    assert policies.get("bundles", {}).get("numBundles") == 64, f"--bundles 64 (REST): {policies!r}"
    assert rest_json(broker, f"{topic_rest_path(topic)}/partitions") == {"partitions": 4}, "-p 4 (REST)"
    assert topic in rest_json(broker, f"/admin/v2/persistent/{ns}/partitioned"), "listed as partitioned (REST)"

    assert cli.lines("namespaces", "list", tenant) == [ns]
    assert cli.lines("topics", "list-partitioned-topics", ns) == [topic]
    assert cli.json("namespaces", "policies", ns).get("bundles", {}).get("numBundles") == 64


def test_cli_human_output_lists_one_item_per_line_and_objects_as_indented_json(cli):
    tenants = cli.lines("tenants", "list")
    assert "public" in tenants, f"`tenants list` prints one tenant per line: {tenants!r}"
    assert all(" " not in t and "[" not in t for t in tenants), f"plain names, not JSON: {tenants!r}"
    proc = cli.ok("tenants", "get", "public")
    assert len(proc.stdout.strip().splitlines()) > 1, f"an object prints as indented JSON:\n{describe(proc)}"
    assert CLUSTER in json.loads(proc.stdout).get("allowedClusters", []), describe(proc)


def test_cli_output_json_prints_one_document(cli, broker, client):
    topic = f"persistent://public/default/{unique('json')}"
    sub = unique("sub")
    consumer = client.subscribe(topic, sub)
    producer = client.create_producer(topic)
    producer.send(b"hello")
    docs = {
        "clusters list": (cli.json("clusters", "list"), list),
        "clusters get": (cli.json("clusters", "get", CLUSTER), dict),
        "tenants list": (cli.json("tenants", "list"), list),
        "tenants get": (cli.json("tenants", "get", "public"), dict),
        "namespaces list": (cli.json("namespaces", "list", "public"), list),
        "namespaces policies": (cli.json("namespaces", "policies", "public/default"), dict),
        "topics list": (cli.json("topics", "list", "public/default"), list),
        "topics list-partitioned-topics": (cli.json("topics", "list-partitioned-topics", "public/default"), list),
        "topics subscriptions": (cli.json("topics", "subscriptions", topic), list),
        "topics stats": (cli.json("topics", "stats", topic), dict),
        "topics stats-internal": (cli.json("topics", "stats-internal", topic), dict),
        "topics last-message-id": (cli.json("topics", "last-message-id", topic), dict),
        "brokers list": (cli.json("brokers", "list", CLUSTER), list),
    }
    wrong = {verb: doc for verb, (doc, kind) in docs.items() if not isinstance(doc, kind)}
    assert not wrong, f"these verbs printed the wrong kind of JSON document: {wrong}"
    assert "public/default" in docs["namespaces list"][0]
    assert topic in docs["topics list"][0]
    assert docs["topics subscriptions"][0] == [sub]
    consumer.close()
    producer.close()


def test_cli_not_found_exits_nonzero_with_the_reason(cli, broker):
    name = unique("nosuch")
    reason = rest_reason(broker, "GET", f"/admin/v2/tenants/{name}")
    for output_json in (False, True):
        proc = cli.fails("tenants", "get", name, output_json=output_json)
        assert reason in proc.stderr, f"stderr should carry the server's reason {reason!r}:\n{describe(proc)}"


def test_cli_conflict_exits_nonzero_with_the_reason(cli, broker):
    reason = rest_reason(broker, "PUT", "/admin/v2/tenants/public",
                         {"adminRoles": [], "allowedClusters": [CLUSTER]})
    proc = cli.fails("tenants", "create", "public", "--allowed-clusters", CLUSTER)
    assert reason in proc.stderr, f"stderr should carry the server's reason {reason!r}:\n{describe(proc)}"


def test_cli_namespace_delete_needs_force(cli, broker):
    _, ns = new_tenant_and_namespace(cli)
    topic = f"persistent://{ns}/{unique('t')}"
    cli.ok("topics", "create", topic)
    cli.fails("namespaces", "delete", ns)
    assert topic in rest_json(broker, f"/admin/v2/persistent/{ns}"), "a refused delete keeps the topic"
    cli.ok("namespaces", "delete", ns, "--force")
    status, _ = rest(broker, "GET", f"/admin/v2/namespaces/{ns}")
    assert status == 404, f"`namespaces delete --force` should remove the namespace, GET answered {status}"


# ---------------------------------------------------------------- namespace policies


def test_cli_publish_rate_round_trips(cli, broker):
    _, ns = new_tenant_and_namespace(cli)
    cli.ok("namespaces", "set-publish-rate", ns, "-m", "30", "-b", "4096")
    expected = {"publishThrottlingRateInMsg": 30, "publishThrottlingRateInByte": 4096}
    got = cli.json("namespaces", "get-publish-rate", ns)
    assert {k: got.get(k) for k in expected} == expected, f"get-publish-rate: {got!r}"
    via_rest = rest_json(broker, f"/admin/v2/namespaces/{ns}/publishRate")
    assert {k: via_rest.get(k) for k in expected} == expected, f"publishRate via REST: {via_rest!r}"

    cli.ok("namespaces", "set-publish-rate", ns, "-m", "10")  # -b defaults to -1, as in pulsar-admin
    got = cli.json("namespaces", "get-publish-rate", ns)
    assert got.get("publishThrottlingRateInMsg") == 10 and got.get("publishThrottlingRateInByte") == -1, got

    cli.ok("namespaces", "remove-publish-rate", ns)
    status, doc = rest(broker, "GET", f"/admin/v2/namespaces/{ns}/publishRate")
    assert status == 204 or (status == 200 and doc is None), (
        f"remove-publish-rate should leave no publish rate, GET answered {status} {doc!r}"
    )


def test_cli_retention_understands_size_and_time_units(cli, broker):
    _, ns = new_tenant_and_namespace(cli)
    cli.ok("namespaces", "set-retention", ns, "--size", "10G", "--time", "3h")
    expected = {"retentionTimeInMinutes": 180, "retentionSizeInMB": 10240}
    via_rest = rest_json(broker, f"/admin/v2/namespaces/{ns}/retention")
    assert {k: via_rest.get(k) for k in expected} == expected, (
        f"10G / 3h should become 10240 MB / 180 min, REST says {via_rest!r}"
    )
    got = cli.json("namespaces", "get-retention", ns)
    assert {k: got.get(k) for k in expected} == expected, f"get-retention: {got!r}"

    cli.ok("namespaces", "set-retention", ns, "-s", "512M", "-t", "2d")
    via_rest = rest_json(broker, f"/admin/v2/namespaces/{ns}/retention")
    assert (via_rest.get("retentionSizeInMB"), via_rest.get("retentionTimeInMinutes")) == (512, 2880), (
        f"512M / 2d should become 512 MB / 2880 min, REST says {via_rest!r}"
    )


def test_cli_message_ttl(cli, broker):
    _, ns = new_tenant_and_namespace(cli)
    cli.ok("namespaces", "set-message-ttl", ns, "--messageTTL", "3600")
    assert rest_json(broker, f"/admin/v2/namespaces/{ns}/messageTTL") == 3600, "--messageTTL 3600 (REST)"
    assert cli.json("namespaces", "get-message-ttl", ns) == 3600
    assert cli.lines("namespaces", "get-message-ttl", ns) == ["3600"], "a scalar prints as itself"

    cli.ok("namespaces", "set-message-ttl", ns, "-ttl", "120")
    assert rest_json(broker, f"/admin/v2/namespaces/{ns}/messageTTL") == 120, "-ttl 120 (REST)"

    cli.ok("namespaces", "remove-message-ttl", ns)
    status, doc = rest(broker, "GET", f"/admin/v2/namespaces/{ns}/messageTTL")
    assert status == 204 or (status == 200 and doc is None), (
        f"remove-message-ttl should leave no TTL, GET answered {status} {doc!r}"
    )
    cli.fails("namespaces", "set-message-ttl", ns, "--messageTTL=-5")


def test_cli_replication_clusters(cli, broker):
    other = unique("cluster")
    cli.ok("clusters", "create", other, "--url", "http://other.example:8080",
           "--broker-url", "pulsar://other.example:6650")
    tenant = unique("tenant")
    cli.ok("tenants", "create", tenant, "--allowed-clusters", f"{CLUSTER},{other}")
    ns = f"{tenant}/{unique('ns')}"
    cli.ok("namespaces", "create", ns)
    cli.ok("namespaces", "set-clusters", ns, "--clusters", f"{CLUSTER},{other}")
    assert sorted(rest_json(broker, f"/admin/v2/namespaces/{ns}/replication")) == sorted([CLUSTER, other])
    assert sorted(cli.lines("namespaces", "get-clusters", ns)) == sorted([CLUSTER, other])
    assert sorted(cli.json("namespaces", "get-clusters", ns)) == sorted([CLUSTER, other])


# ---------------------------------------------------------------- topics and subscriptions


def test_cli_topic_create_list_stats_delete(cli, broker, client):
    _, ns = new_tenant_and_namespace(cli)
    topic = f"persistent://{ns}/{unique('t')}"
    cli.ok("topics", "create", topic)
    assert cli.lines("topics", "list", ns) == [topic]
    assert topic in rest_json(broker, f"/admin/v2/persistent/{ns}"), "created topic listed (REST)"

    producer = client.create_producer(topic)
    for i in range(5):
        producer.send(f"s{i}".encode())
    stats = cli.json("topics", "stats", topic)
    assert stats.get("msgInCounter") == 5, f"topics stats msgInCounter: {stats!r}"
    internal = cli.json("topics", "stats-internal", topic)
    assert internal.get("entriesAddedCounter") == 5, f"topics stats-internal: {internal!r}"

    cli.fails("topics", "delete", topic)  # a producer is connected
    cli.ok("topics", "delete", topic, "-f")


def test_cli_delete_partitioned_topic(cli, broker, client):
    _, ns = new_tenant_and_namespace(cli)
    idle = f"persistent://{ns}/{unique('idle')}"
    cli.ok("topics", "create-partitioned-topic", idle, "--partitions", "2")
    cli.ok("topics", "delete-partitioned-topic", idle)
    assert idle not in rest_json(broker, f"/admin/v2/persistent/{ns}/partitioned"), "deleted (REST)"

    busy = f"persistent://{ns}/{unique('busy')}"
    cli.ok("topics", "create-partitioned-topic", busy, "-p", "2")
    client.create_producer(busy).send(b"x")
    cli.fails("topics", "delete-partitioned-topic", busy)  # a producer is connected
    cli.ok("topics", "delete-partitioned-topic", busy, "-f")


def test_cli_subscription_verbs(cli, broker, client):
    topic = f"persistent://public/default/{unique('subverbs')}"
    sub = unique("sub")
    cli.ok("topics", "create", topic)
    cli.ok("topics", "create-subscription", topic, "-s", sub)
    assert cli.lines("topics", "subscriptions", topic) == [sub]

    producer = client.create_producer(topic)
    sent = [f"v{i}".encode() for i in range(6)]
    ids = [producer.send(p) for p in sent]
    wait_for_value(lambda: backlog(broker, topic, sub), 6, "backlog of the CLI-created subscription")

    cli.ok("topics", "skip", topic, "-s", sub, "-n", "2")
    wait_for_value(lambda: backlog(broker, topic, sub), 4, "backlog after `skip -n 2`")

    peek = cli.ok("topics", "peek-messages", topic, "-s", sub, "-n", "2").stdout
    for payload, mid in zip(sent[2:4], ids[2:4]):
        assert payload.decode() in peek, f"peek-messages should show {payload!r}:\n{peek}"
        position = f"{mid.ledger_id()}:{mid.entry_id()}"
        assert position in peek, f"peek-messages should show the message id {position}:\n{peek}"
    assert sent[4].decode() not in peek, f"-n 2 shows two messages only:\n{peek}"
    peeked = cli.json("topics", "peek-messages", topic, "-s", sub, "-n", "2")
    assert isinstance(peeked, list) and len(peeked) == 2, f"--output json: one entry per message: {peeked!r}"
    assert backlog(broker, topic, sub) == 4, "peeking does not consume"

    consumer = client.subscribe(topic, sub)
    got = receive_n(consumer, 4)
    assert payloads(got) == sent[2:], "the consumer starts after the skipped messages"
    for m in got:
        consumer.acknowledge(m)
    wait_for_value(lambda: backlog(broker, topic, sub), 0, "backlog after acknowledging everything")

    cli.ok("topics", "reset-cursor", topic, "-s", sub, "-t", "10m")
    again = receive_n(consumer, 6, what="messages redelivered after `reset-cursor -t 10m`")
    assert payloads(again) == sent, "reset-cursor -t 10m rewinds to everything published in the last 10 minutes"
    assert_no_more(consumer)

    cli.fails("topics", "unsubscribe", topic, "-s", sub)  # a consumer is connected
    cli.ok("topics", "unsubscribe", topic, "-s", sub, "-f")
    consumer.close()

    other = unique("sub")
    cli.ok("topics", "create-subscription", topic, "--subscription", other)
    cli.ok("topics", "unsubscribe", topic, "--subscription", other)
    assert other not in rest_json(broker, f"{topic_rest_path(topic)}/subscriptions"), "unsubscribed (REST)"


def test_cli_last_message_id(cli, client):
    topic = f"persistent://public/default/{unique('last')}"
    producer = client.create_producer(topic)
    ids = [producer.send(f"m{i}".encode()) for i in range(3)]
    got = cli.json("topics", "last-message-id", topic)
    assert (got.get("ledgerId"), got.get("entryId")) == (ids[-1].ledger_id(), ids[-1].entry_id()), (
        f"last-message-id should be {ids[-1].ledger_id()}:{ids[-1].entry_id()}, got {got!r}"
    )


# ---------------------------------------------------------------- brokers


def test_cli_brokers_list_and_healthcheck(cli, broker):
    assert cli.lines("brokers", "list", CLUSTER) == [f"127.0.0.1:{broker.http_port}"]
    proc = cli.ok("brokers", "healthcheck")
    assert proc.stdout.strip() == "ok", f"healthcheck prints ok:\n{describe(proc)}"


# ---------------------------------------------------------------- global flags


def test_cli_admin_url_from_environment(broker):
    proc = run_admin(broker.binary, ["tenants", "list"], admin_url=None,
                     env=cli_env({"KILONOVA_ADMIN_URL": broker.http_url}))
    assert proc.returncode == 0, f"KILONOVA_ADMIN_URL should be used when --admin-url is absent:\n{describe(proc)}"
    assert "public" in proc.stdout.split(), describe(proc)


class _Recorder(BaseHTTPRequestHandler):
    """Answers every GET with ["public"] and records what it was sent."""

    seen: list = []

    def do_GET(self):  # noqa: N802 (http.server's naming)
        type(self).seen.append((self.command, self.path, dict(self.headers)))
        body = b'["public"]'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def recording_server():
    _Recorder.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_cli_sends_auth_token_as_bearer(kilonova_bin, recording_server):
    url = f"http://127.0.0.1:{recording_server.server_address[1]}"
    proc = run_admin(kilonova_bin, ["tenants", "list"], admin_url=url,
                     global_flags=["--auth-token", "s3cr3t-token"])
    assert proc.returncode == 0, describe(proc)
    assert proc.stdout.split() == ["public"], describe(proc)
    assert len(_Recorder.seen) == 1, f"one request expected, saw {_Recorder.seen!r}"
    method, path, headers = _Recorder.seen[0]
    assert (method, path) == ("GET", "/admin/v2/tenants"), f"tenants list is GET /admin/v2/tenants: {path!r}"
    auth = {k.lower(): v for k, v in headers.items()}.get("authorization")
    assert auth == "Bearer s3cr3t-token", f"--auth-token should be sent as a bearer token, got {auth!r}"


def test_cli_unreachable_admin_url_fails_cleanly(kilonova_bin):
    url = f"http://127.0.0.1:{free_port()}"
    proc = run_admin(kilonova_bin, ["tenants", "list"], admin_url=url)
    assert proc.returncode != 0, f"an unreachable admin URL must fail:\n{describe(proc)}"
    assert proc.stderr.strip() and "panicked" not in proc.stderr, describe(proc)
    assert proc.stdout.strip() == "", describe(proc)
