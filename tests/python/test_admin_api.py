"""End-to-end tests of the admin REST API on Pulsar's v2 paths (issue #13).

Every route family: clusters, tenants, namespaces and their policies, topics
(persistent and non-persistent, partitioned or not), subscriptions, brokers,
the OpenAPI document, and one namespace with 2,000 topics across a restart.
Statistics are checked against traffic made with the real Pulsar client.

What these tests take as the spec (Pulsar's where Pulsar has one):

* Bodies are JSON with Pulsar's field names (ClusterData, TenantInfo,
  Policies, RetentionPolicies, BacklogQuota, PublishRate, DispatchRate,
  InactiveTopicPolicies, AutoTopicCreationOverride, TopicStats,
  PersistentTopicInternalStats, MessageId).
* Success without a body is 204, except cluster create/update, which Pulsar
  answers 200 (``Response.ok()``); both are accepted there.
* A policy that was never set (or was removed) reads back as nothing: 204 with
  an empty body, or 200 with the body ``null`` (what JAX-RS does for a null
  Integer/object in Pulsar).
* Every error is a 4xx/5xx with a JSON body ``{"reason": "<non-empty>"}``.
* Deliberate differences from Apache Pulsar (our spec, see issue #13):
  deleting a tenant that still has namespaces, or a namespace that still has
  topics, is 412 (Pulsar: 409); a negative message TTL or max producers /
  consumers is 400 (Pulsar: 412). Both codes are constants below.
* The OpenAPI 3 document is served at ``GET /admin/v2/openapi.json``
  (OPENAPI_PATH below).
* ``GET /admin/v2/brokers/standalone`` lists this broker as
  ``"<advertised host>:<http port>"`` (Pulsar lists web-service addresses),
  and the ``standalone`` cluster's data points at this broker
  (``serviceUrl`` = the HTTP URL, ``brokerServiceUrl`` = the pulsar:// URL).
"""

from __future__ import annotations

import email.message
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pulsar
import pytest

from conftest import assert_no_more, payloads, receive_n, unique

CLUSTER = "standalone"
OPENAPI_PATH = "/admin/v2/openapi.json"
# Our spec; Apache Pulsar answers 409 CONFLICT ("Cannot delete non empty
# namespace", "The tenant still has active namespaces").
NOT_EMPTY_STATUS = 412
# Our spec; Apache Pulsar answers 412 ("Invalid value for message TTL",
# "maxProducersPerTopic must be 0 or more").
INVALID_VALUE_STATUS = 400
# Pulsar answers 200 to cluster create/update, 204 to the rest.
CLUSTER_WRITE_OK = (200, 204)
WAIT_S = 10.0


# ---------------------------------------------------------------- HTTP helpers

_NO_BODY = object()


@dataclass
class Resp:
    status: int
    headers: email.message.Message
    body: bytes

    def json(self):
        try:
            return json.loads(self.body)
        except ValueError as e:
            raise AssertionError(f"response body is not JSON ({e}): {self!r}") from None

    def __repr__(self) -> str:
        return f"<HTTP {self.status} {self.body[:400]!r}>"


class Admin:
    """A tiny admin client: JSON in, (status, headers, body) out."""

    def __init__(self, base_url: str):
        self.base = base_url.rstrip("/")

    def request(self, method: str, path: str, body=_NO_BODY, raw: bytes | None = None,
                timeout: float = 15.0) -> Resp:
        data = None
        headers = {}
        if raw is not None:
            data = raw
            headers["Content-Type"] = "application/json"
        elif body is not _NO_BODY:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        elif method in ("PUT", "POST"):
            data = b""
        req = urllib.request.Request(self.base + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return Resp(r.status, r.headers, r.read())
        except urllib.error.HTTPError as e:
            return Resp(e.code, e.headers, e.read())

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def put(self, path, body=_NO_BODY, **kw):
        return self.request("PUT", path, body, **kw)

    def post(self, path, body=_NO_BODY, **kw):
        return self.request("POST", path, body, **kw)

    def delete(self, path, **kw):
        return self.request("DELETE", path, **kw)

    def ok(self, method: str, path: str, body=_NO_BODY, expect=(204,), **kw) -> Resp:
        r = self.request(method, path, body, **kw)
        assert r.status in expect, (
            f"{method} {path}: expected HTTP {' or '.join(map(str, expect))}, got {r!r}"
        )
        return r

    def get_json(self, path: str):
        r = self.get(path)
        assert r.status == 200, f"GET {path}: expected HTTP 200 with JSON, got {r!r}"
        return r.json()


def assert_reason(resp: Resp, what: str) -> str:
    try:
        doc = json.loads(resp.body)
    except ValueError:
        raise AssertionError(f"{what}: the error body is not JSON: {resp!r}") from None
    assert isinstance(doc, dict) and isinstance(doc.get("reason"), str) and doc["reason"].strip(), (
        f"{what}: the error body has no non-empty 'reason': {resp!r}"
    )
    return doc["reason"]


def expect_error(resp: Resp, status, what: str) -> str:
    statuses = (status,) if isinstance(status, int) else tuple(status)
    assert resp.status in statuses, (
        f"{what}: expected HTTP {' or '.join(map(str, statuses))}, got {resp!r}"
    )
    return assert_reason(resp, what)


def is_unset(resp: Resp) -> bool:
    """A policy that is not set: 204 and no body, or 200 and `null`."""
    if resp.status == 204:
        return resp.body.strip() == b""
    if resp.status == 200:
        try:
            return json.loads(resp.body) is None
        except ValueError:
            return False
    return False


def matches(expected, actual) -> bool:
    """`actual` has every field of `expected` with the same value (recursively);
    extra fields in `actual` are allowed (Pulsar adds defaults)."""
    if isinstance(expected, dict):
        return isinstance(actual, dict) and all(
            k in actual and matches(v, actual[k]) for k, v in expected.items()
        )
    if isinstance(expected, bool):
        return actual is expected
    if isinstance(expected, list):
        return isinstance(actual, list) and len(actual) == len(expected) and all(
            matches(e, a) for e, a in zip(expected, actual)
        )
    return type(actual) is not bool and actual == expected


def wait_for_value(fn, expected, what: str, timeout: float = WAIT_S):
    """Polls `fn()` until it equals `expected`; fails naming the last value."""
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


def wait_for_clock(target_epoch_s: float, what: str) -> None:
    """Waits until the wall clock reaches `target_epoch_s` (for tests about
    message ages: publish times come from the same clock)."""
    deadline = time.monotonic() + max(0.0, target_epoch_s - time.time()) + 5.0
    while time.time() < target_epoch_s:
        assert time.monotonic() < deadline, f"the clock did not reach {what}"
        time.sleep(0.01)


# ---------------------------------------------------------------- names and paths


def ns_path(ns: str) -> str:
    return f"/admin/v2/namespaces/{ns}"


def topic_path(topic: str) -> str:
    """persistent://t/ns/x -> /admin/v2/persistent/t/ns/x (the local name quoted)."""
    domain, rest = topic.split("://", 1)
    tenant, ns, local = rest.split("/", 2)
    return f"/admin/v2/{domain}/{tenant}/{ns}/{urllib.parse.quote(local, safe='')}"


def list_path(domain: str, ns: str) -> str:
    return f"/admin/v2/{domain}/{ns}"


def sub_path(topic: str, sub: str) -> str:
    return f"{topic_path(topic)}/subscription/{urllib.parse.quote(sub, safe='')}"


def msg_position(message_id) -> str:
    """`ledgerId:entryId`, as Pulsar prints positions."""
    return f"{message_id.ledger_id()}:{message_id.entry_id()}"


@pytest.fixture
def admin(broker) -> Admin:
    return Admin(broker.http_url)


def create_tenant(admin: Admin, clusters=(CLUSTER,), roles=()) -> str:
    name = unique("tenant")
    admin.ok("PUT", f"/admin/v2/tenants/{name}",
             {"adminRoles": list(roles), "allowedClusters": list(clusters)})
    return name


def create_namespace(admin: Admin, tenant: str = "public", body=_NO_BODY) -> str:
    ns = f"{tenant}/{unique('ns')}"
    admin.ok("PUT", ns_path(ns), body)
    return ns


def create_cluster(admin: Admin) -> str:
    name = unique("cluster")
    admin.ok("PUT", f"/admin/v2/clusters/{name}",
             {"serviceUrl": f"http://{name}.example:8080",
              "brokerServiceUrl": f"pulsar://{name}.example:6650"},
             expect=CLUSTER_WRITE_OK)
    return name


def topic_stats(admin: Admin, topic: str) -> dict:
    return admin.get_json(f"{topic_path(topic)}/stats")


def backlog_of(admin: Admin, topic: str, sub: str):
    subs = topic_stats(admin, topic).get("subscriptions", {})
    return subs.get(sub, {}).get("msgBacklog", f"<no subscription {sub!r} in stats: {sorted(subs)}>")


def wait_backlog(admin: Admin, topic: str, sub: str, expected: int) -> None:
    wait_for_value(lambda: backlog_of(admin, topic, sub), expected,
                   f"msgBacklog of subscription {sub!r} on {topic}")


def publish(producer, items) -> list:
    """Sends each payload synchronously; returns their message ids."""
    return [producer.send(p) for p in items]


def receive_and_ack_all(consumer, n: int) -> list:
    got = receive_n(consumer, n)
    for m in got:
        consumer.acknowledge(m)
    return got


# ================================================================ clusters


def test_clusters_list_includes_standalone(admin):
    clusters = admin.get_json("/admin/v2/clusters")
    assert isinstance(clusters, list) and CLUSTER in clusters, (
        f"GET /admin/v2/clusters should be a list including {CLUSTER!r}, got {clusters!r}"
    )


def test_standalone_cluster_data_points_at_this_broker(admin, broker):
    data = admin.get_json(f"/admin/v2/clusters/{CLUSTER}")
    assert data.get("serviceUrl") == broker.http_url, (
        f"the standalone cluster's serviceUrl should be {broker.http_url!r}, got {data!r}"
    )
    assert data.get("brokerServiceUrl") == broker.service_url, (
        f"the standalone cluster's brokerServiceUrl should be {broker.service_url!r}, got {data!r}"
    )


def test_cluster_create_get_update_delete(admin):
    name = unique("cluster")
    path = f"/admin/v2/clusters/{name}"
    first = {"serviceUrl": "http://one.example:8080", "brokerServiceUrl": "pulsar://one.example:6650"}
    admin.ok("PUT", path, first, expect=CLUSTER_WRITE_OK)
    assert matches(first, admin.get_json(path)), f"GET {path} should return {first}"
    assert name in admin.get_json("/admin/v2/clusters"), f"{name} should be listed after creation"

    expect_error(admin.put(path, first), 409, "creating an existing cluster")

    second = {"serviceUrl": "http://two.example:8080", "brokerServiceUrl": "pulsar://two.example:6650"}
    admin.ok("POST", path, second, expect=CLUSTER_WRITE_OK)
    got = admin.get_json(path)
    assert matches(second, got), f"after POST, GET {path} should return {second}, got {got}"

    admin.ok("DELETE", path)
    expect_error(admin.get(path), 404, "getting a deleted cluster")
    expect_error(admin.delete(path), 404, "deleting a deleted cluster")
    assert name not in admin.get_json("/admin/v2/clusters"), f"{name} should not be listed after deletion"


def test_cluster_unknown_is_404(admin):
    path = f"/admin/v2/clusters/{unique('nosuch')}"
    expect_error(admin.get(path), 404, "getting an unknown cluster")
    expect_error(admin.post(path, {"serviceUrl": "http://x.example:8080"}), 404,
                 "updating an unknown cluster")


def test_cluster_create_with_bad_json_is_400(admin):
    path = f"/admin/v2/clusters/{unique('cluster')}"
    expect_error(admin.put(path, raw=b'{"serviceUrl": '), 400, "creating a cluster with malformed JSON")
    expect_error(admin.get(path), 404, "the cluster of a rejected create")


# ================================================================ tenants


def test_tenants_list_includes_public(admin):
    tenants = admin.get_json("/admin/v2/tenants")
    assert isinstance(tenants, list) and "public" in tenants, (
        f"GET /admin/v2/tenants should be a list including 'public', got {tenants!r}"
    )
    info = admin.get_json("/admin/v2/tenants/public")
    assert CLUSTER in info.get("allowedClusters", []), (
        f"tenant public should allow cluster {CLUSTER!r}, got {info!r}"
    )


def test_tenant_create_get_update_delete(admin):
    name = unique("tenant")
    path = f"/admin/v2/tenants/{name}"
    admin.ok("PUT", path, {"adminRoles": ["r1", "r2"], "allowedClusters": [CLUSTER]})
    info = admin.get_json(path)
    assert sorted(info.get("adminRoles", [])) == ["r1", "r2"], f"adminRoles after create: {info!r}"
    assert info.get("allowedClusters") == [CLUSTER], f"allowedClusters after create: {info!r}"
    assert name in admin.get_json("/admin/v2/tenants"), f"{name} should be listed after creation"

    expect_error(admin.put(path, {"adminRoles": [], "allowedClusters": [CLUSTER]}), 409,
                 "creating an existing tenant")

    admin.ok("POST", path, {"adminRoles": ["r3"], "allowedClusters": [CLUSTER]})
    info = admin.get_json(path)
    assert info.get("adminRoles") == ["r3"], f"adminRoles after update should be ['r3']: {info!r}"

    admin.ok("DELETE", path)
    expect_error(admin.get(path), 404, "getting a deleted tenant")
    expect_error(admin.delete(path), 404, "deleting a deleted tenant")
    assert name not in admin.get_json("/admin/v2/tenants"), f"{name} should not be listed after deletion"


def test_tenant_create_with_unknown_cluster_is_412(admin):
    name = unique("tenant")
    path = f"/admin/v2/tenants/{name}"
    expect_error(admin.put(path, {"adminRoles": [], "allowedClusters": [unique("nosuch")]}), 412,
                 "creating a tenant whose allowedClusters names an unknown cluster")
    expect_error(admin.get(path), 404, "the tenant of a rejected create")


def test_tenant_update_unknown_is_404(admin):
    expect_error(admin.post(f"/admin/v2/tenants/{unique('nosuch')}",
                            {"adminRoles": [], "allowedClusters": [CLUSTER]}),
                 404, "updating an unknown tenant")


def test_tenant_delete_with_namespaces_is_412(admin):
    tenant = create_tenant(admin)
    ns = create_namespace(admin, tenant)
    expect_error(admin.delete(f"/admin/v2/tenants/{tenant}"), NOT_EMPTY_STATUS,
                 "deleting a tenant that still has a namespace")
    assert admin.get(f"/admin/v2/tenants/{tenant}").status == 200, "the tenant must survive"
    admin.ok("DELETE", ns_path(ns))
    admin.ok("DELETE", f"/admin/v2/tenants/{tenant}")


def test_tenant_create_with_bad_json_is_400(admin):
    path = f"/admin/v2/tenants/{unique('tenant')}"
    expect_error(admin.put(path, raw=b"{adminRoles: nope"), 400, "creating a tenant with malformed JSON")
    expect_error(admin.get(path), 404, "the tenant of a rejected create")


# ================================================================ namespaces


def test_namespaces_list_of_public_includes_default(admin):
    namespaces = admin.get_json("/admin/v2/namespaces/public")
    assert isinstance(namespaces, list) and "public/default" in namespaces, (
        f"GET /admin/v2/namespaces/public should list 'public/default', got {namespaces!r}"
    )


def test_namespaces_list_of_unknown_tenant_is_404(admin):
    expect_error(admin.get(f"/admin/v2/namespaces/{unique('nosuch')}"), 404,
                 "listing the namespaces of an unknown tenant")


def test_namespace_create_defaults_to_4_bundles(admin):
    tenant = create_tenant(admin)
    ns = create_namespace(admin, tenant)
    assert admin.get_json(f"/admin/v2/namespaces/{tenant}") == [ns], (
        f"tenant {tenant} should list exactly [{ns!r}]"
    )
    policies = admin.get_json(ns_path(ns))
    bundles = policies.get("bundles", {})
    assert bundles.get("numBundles") == 4, f"a new namespace has 4 bundles by default: {policies!r}"
    if "boundaries" in bundles:
        assert len(bundles["boundaries"]) == 5, f"4 bundles have 5 boundaries: {bundles!r}"
    expect_error(admin.put(ns_path(ns)), 409, "creating an existing namespace")


def test_namespace_create_with_64_bundles(admin):
    ns = create_namespace(admin, "public", {"bundles": {"numBundles": 64}})
    policies = admin.get_json(ns_path(ns))
    assert policies.get("bundles", {}).get("numBundles") == 64, (
        f"a namespace created with numBundles 64 should report 64: {policies!r}"
    )


def test_namespace_create_under_unknown_tenant_is_404(admin):
    ns = f"{unique('nosuch')}/ns"
    expect_error(admin.put(ns_path(ns)), 404, "creating a namespace under an unknown tenant")


def test_namespace_unknown_is_404(admin):
    ns = f"public/{unique('nosuch')}"
    expect_error(admin.get(ns_path(ns)), 404, "getting an unknown namespace")
    expect_error(admin.delete(ns_path(ns)), 404, "deleting an unknown namespace")
    expect_error(admin.get(list_path("persistent", ns)), 404, "listing topics of an unknown namespace")


def test_namespace_delete_empty(admin):
    ns = create_namespace(admin)
    admin.ok("DELETE", ns_path(ns))
    expect_error(admin.get(ns_path(ns)), 404, "getting a deleted namespace")
    assert ns not in admin.get_json("/admin/v2/namespaces/public"), f"{ns} should no longer be listed"


def test_namespace_delete_with_topics_needs_force(admin):
    ns = create_namespace(admin)
    topic = f"persistent://{ns}/{unique('t')}"
    admin.ok("PUT", topic_path(topic))
    expect_error(admin.delete(ns_path(ns)), NOT_EMPTY_STATUS, "deleting a namespace that has a topic")
    assert topic in admin.get_json(list_path("persistent", ns)), "the topic must survive a refused delete"

    admin.ok("DELETE", ns_path(ns) + "?force=true")
    expect_error(admin.get(ns_path(ns)), 404, "getting a force-deleted namespace")
    expect_error(admin.get(list_path("persistent", ns)), 404, "listing topics of a force-deleted namespace")
    assert ns not in admin.get_json("/admin/v2/namespaces/public"), f"{ns} should no longer be listed"


# ---------------------------------------------------------------- namespace policies


@dataclass
class Policy:
    name: str
    body: object
    set_path: str = ""
    get_path: str = ""
    del_path: str = ""
    expected: object = None  # what GET returns (a subset of it), default: body
    unset: object = field(default=is_unset)
    set_method: str = "POST"  # Pulsar sets a few policies with PUT

    def __post_init__(self):
        self.set_path = self.set_path or self.name
        self.get_path = self.get_path or self.name
        self.del_path = self.del_path or self.name
        if self.expected is None:
            self.expected = self.body


def backlog_quota_unset(resp: Resp) -> bool:
    if is_unset(resp):
        return True
    return resp.status == 200 and "destination_storage" not in (json.loads(resp.body) or {})


def offload_threshold_unset(resp: Resp) -> bool:
    """Pulsar answers an offload threshold nobody set as -1."""
    return resp.status == 200 and json.loads(resp.body) == -1


BACKLOG_QUOTA = {"limitSize": 1 << 30, "limitTime": 3600, "policy": "producer_request_hold"}

POLICIES = [
    Policy("retention", {"retentionTimeInMinutes": 180, "retentionSizeInMB": 10240}),
    Policy("messageTTL", 3600),
    Policy("backlogQuota", BACKLOG_QUOTA,
           set_path="backlogQuota?backlogQuotaType=destination_storage",
           get_path="backlogQuotaMap",
           del_path="backlogQuota?backlogQuotaType=destination_storage",
           expected={"destination_storage": BACKLOG_QUOTA},
           unset=backlog_quota_unset),
    Policy("publishRate", {"publishThrottlingRateInMsg": 30, "publishThrottlingRateInByte": -1}),
    Policy("dispatchRate", {"dispatchThrottlingRateInMsg": 100,
                            "dispatchThrottlingRateInByte": 1048576,
                            "ratePeriodInSecond": 1}),
    Policy("inactiveTopicPolicies", {"inactiveTopicDeleteMode": "delete_when_no_subscriptions",
                                     "maxInactiveDurationSeconds": 60,
                                     "deleteWhileInactive": True}),
    Policy("maxProducersPerTopic", 5),
    Policy("maxConsumersPerTopic", 7),
    Policy("deduplication", True),
    Policy("autoTopicCreation", {"allowAutoTopicCreation": True, "topicType": "partitioned",
                                 "defaultNumPartitions": 2}),
    Policy("offloadThreshold", 10 << 20, set_method="PUT", unset=offload_threshold_unset),
    Policy("offloadThresholdInSeconds", 3600, set_method="PUT", unset=offload_threshold_unset),
    Policy("offloadDeletionLagMs", 60_000, set_method="PUT"),
    Policy("compactionThreshold", 1 << 30, set_method="PUT"),
]


@pytest.mark.parametrize("policy", POLICIES, ids=[p.name for p in POLICIES])
def test_namespace_policy_set_get_remove(admin, policy):
    ns = create_namespace(admin)
    base = ns_path(ns)
    before = admin.get(f"{base}/{policy.get_path}")
    assert policy.unset(before), f"{policy.name} of a new namespace should be unset, got {before!r}"

    admin.ok(policy.set_method, f"{base}/{policy.set_path}", policy.body)
    got = admin.get_json(f"{base}/{policy.get_path}")
    assert matches(policy.expected, got), (
        f"GET {policy.get_path} after setting {policy.body!r} should match {policy.expected!r}, got {got!r}"
    )

    admin.ok("DELETE", f"{base}/{policy.del_path}")
    after = admin.get(f"{base}/{policy.get_path}")
    assert policy.unset(after), f"{policy.name} should be unset after DELETE, got {after!r}"


def test_namespace_policy_on_unknown_namespace_is_404(admin):
    base = ns_path(f"public/{unique('nosuch')}")
    expect_error(admin.post(f"{base}/messageTTL", 60), 404, "setting a policy of an unknown namespace")
    expect_error(admin.get(f"{base}/retention"), 404, "getting a policy of an unknown namespace")


INVALID_POLICIES = [
    pytest.param("messageTTL", -1, None, INVALID_VALUE_STATUS, id="negative-ttl"),
    pytest.param("maxProducersPerTopic", -1, None, INVALID_VALUE_STATUS, id="negative-max-producers"),
    pytest.param("maxConsumersPerTopic", -1, None, INVALID_VALUE_STATUS, id="negative-max-consumers"),
    pytest.param("backlogQuota?backlogQuotaType=destination_storage",
                 {"limitSize": 1024, "limitTime": 60, "policy": "drop_everything"}, None, 400,
                 id="unknown-backlog-policy"),
    pytest.param("inactiveTopicPolicies",
                 {"inactiveTopicDeleteMode": "sometimes", "maxInactiveDurationSeconds": 60,
                  "deleteWhileInactive": True}, None, 400, id="unknown-inactive-delete-mode"),
    pytest.param("autoTopicCreation", {"allowAutoTopicCreation": True, "topicType": "sometimes"},
                 None, 400, id="unknown-topic-type"),
    pytest.param("autoTopicCreation", {"allowAutoTopicCreation": True, "topicType": "partitioned"},
                 None, 400, id="partitioned-without-partition-count"),
    pytest.param("retention", None, b"{not json", 400, id="retention-bad-json"),
    pytest.param("retention", {"retentionTimeInMinutes": "three hours", "retentionSizeInMB": 10},
                 None, 400, id="retention-wrong-type"),
    pytest.param("publishRate", None, b"[1, 2", 400, id="publish-rate-bad-json"),
    pytest.param("deduplication", None, b"maybe", 400, id="deduplication-not-bool"),
    pytest.param("messageTTL", None, b'"an hour"', 400, id="ttl-not-int"),
    pytest.param("offloadDeletionLagMs", -1, None, INVALID_VALUE_STATUS, id="negative-offload-lag"),
    pytest.param("offloadThreshold", None, b'"10M"', 400, id="offload-threshold-not-int"),
]

GET_PATH_OF = {p.set_path: p for p in POLICIES}


@pytest.mark.parametrize("set_path,body,raw,status", INVALID_POLICIES)
def test_namespace_policy_rejects_invalid_value(admin, set_path, body, raw, status):
    ns = create_namespace(admin)
    base = ns_path(ns)
    policy = GET_PATH_OF[set_path]
    send = admin.put if policy.set_method == "PUT" else admin.post
    if raw is not None:
        resp = send(f"{base}/{set_path}", raw=raw)
    else:
        resp = send(f"{base}/{set_path}", body)
    expect_error(resp, status, f"{policy.set_method} {set_path} with {raw if raw is not None else body!r}")
    after = admin.get(f"{base}/{policy.get_path}")
    assert policy.unset(after), f"a rejected {policy.name} must not be stored, GET returned {after!r}"


def test_namespace_offload_threshold_minus_one_unsets_it_as_in_pulsar(admin):
    ns = create_namespace(admin)
    base = ns_path(ns)
    for segment in ("offloadThreshold", "offloadThresholdInSeconds"):
        admin.ok("PUT", f"{base}/{segment}", 0)
        assert admin.get_json(f"{base}/{segment}") == 0, f"{segment} 0: offload every sealed segment"
        admin.ok("PUT", f"{base}/{segment}", -2)
        assert admin.get_json(f"{base}/{segment}") == -2, f"{segment}: other negatives are kept (never)"
        admin.ok("PUT", f"{base}/{segment}", -1)
        assert admin.get_json(f"{base}/{segment}") == -1
        policies = admin.get_json(base)
        field = {"offloadThreshold": "offload_threshold",
                 "offloadThresholdInSeconds": "offload_threshold_in_seconds"}[segment]
        assert field not in policies, f"-1 unsets {field} (the broker's default applies): {policies!r}"
        resp = admin.post(f"{base}/{segment}", 5)
        assert resp.status == 405, f"Pulsar sets {segment} with PUT only, POST got {resp!r}"
    admin.ok("PUT", f"{base}/offloadDeletionLagMs", 0)
    assert admin.get_json(base).get("offload_deletion_lag_ms") == 0, "Pulsar's field name"


# What `pulsar-admin topics set-offload-policies -d aws-s3 -b bkt -r eu -oat 10M -oae 1h`
# sends: every field of Pulsar's OffloadPoliciesImpl, nulls and credentials included.
PULSAR_ADMIN_OFFLOAD_POLICIES = {
    "offloadersDirectory": "./offloaders",
    "managedLedgerOffloadDriver": "aws-s3",
    "managedLedgerOffloadMaxThreads": 2,
    "managedLedgerOffloadPrefetchRounds": 1,
    "managedLedgerOffloadThresholdInBytes": 10 << 20,
    "managedLedgerOffloadThresholdInSeconds": None,
    "managedLedgerOffloadDeletionLagInMillis": 3_600_000,
    "managedLedgerOffloadedReadPriority": "TIERED_STORAGE_FIRST",
    "s3ManagedLedgerOffloadRegion": "eu",
    "s3ManagedLedgerOffloadBucket": "bkt",
    "s3ManagedLedgerOffloadServiceEndpoint": None,
    "s3ManagedLedgerOffloadMaxBlockSizeInBytes": 67108864,
    "s3ManagedLedgerOffloadReadBufferSizeInBytes": 1048576,
    "s3ManagedLedgerOffloadCredentialId": "AKIAEXAMPLE",
    "s3ManagedLedgerOffloadCredentialSecret": "very-secret",
    "managedLedgerOffloadBucket": None,
    "managedLedgerOffloadRegion": None,
    "managedLedgerOffloadServiceEndpoint": None,
}


def test_topic_offload_policies_round_trip_what_pulsar_admin_sends(admin):
    ns = create_namespace(admin)
    topic = f"persistent://{ns}/{unique('offload')}"
    admin.ok("PUT", topic_path(topic))
    path = f"{topic_path(topic)}/offloadPolicies"
    assert is_unset(admin.get(path)), "no topic-level offload policies yet"

    admin.ok("POST", path, PULSAR_ADMIN_OFFLOAD_POLICIES)
    got = admin.get_json(path)
    assert matches({"managedLedgerOffloadDriver": "aws-s3",
                    "managedLedgerOffloadThresholdInBytes": 10 << 20,
                    "managedLedgerOffloadDeletionLagInMillis": 3_600_000,
                    "s3ManagedLedgerOffloadRegion": "eu",
                    "s3ManagedLedgerOffloadBucket": "bkt"}, got), got
    assert "very-secret" not in json.dumps(got), f"credentials are never answered back: {got!r}"

    reason = expect_error(admin.post(path, {"managedLedgerOffloadDriver": "tape"}), 412,
                          "an unknown offload driver")
    assert reason.startswith("The driver is not supported"), reason
    expect_error(admin.post(path, {"managedLedgerOffloadDeletionLagInMillis": -1}),
                 INVALID_VALUE_STATUS, "a negative deletion lag")
    assert admin.get_json(path) == got, "a refused change is not stored"

    admin.ok("DELETE", path)
    assert is_unset(admin.get(path)), "removed"


def test_namespace_offload_policies_as_pulsar_admin_sends_them(admin):
    ns = create_namespace(admin)
    base = ns_path(ns)
    path = f"{base}/offloadPolicies"
    assert is_unset(admin.get(path)), "no offload policies yet"
    admin.ok("PUT", f"{base}/offloadDeletionLagMs", 1000)

    admin.ok("POST", path, PULSAR_ADMIN_OFFLOAD_POLICIES)
    got = admin.get_json(path)
    assert matches({"managedLedgerOffloadDriver": "aws-s3", "s3ManagedLedgerOffloadBucket": "bkt",
                    "managedLedgerOffloadThresholdInBytes": 10 << 20}, got), got
    assert "very-secret" not in json.dumps(admin.get_json(base)), "credentials are never kept"
    assert admin.get_json(f"{base}/offloadThreshold") == 10 << 20, "the offload policies' threshold is in force"
    assert admin.get_json(f"{base}/offloadDeletionLagMs") == 3_600_000

    admin.ok("PUT", f"{base}/offloadThreshold", 0)
    assert admin.get_json(f"{base}/offloadThreshold") == 0, "the last value set is in force"
    assert "managedLedgerOffloadThresholdInBytes" not in admin.get_json(path)

    reason = expect_error(admin.post(path, {"s3ManagedLedgerOffloadBucket": "bkt"}), 412, "no driver")
    assert reason.startswith("The driver is not supported"), reason
    reason = expect_error(admin.post(path, {"managedLedgerOffloadDriver": "aws-s3"}), 412, "no bucket")
    assert reason == "The bucket must be specified for namespace offload.", reason
    admin.ok("POST", path, {"managedLedgerOffloadDriver": "filesystem"})

    admin.ok("DELETE", f"{base}/removeOffloadPolicies")
    assert is_unset(admin.get(path)), "removed at Pulsar's route"
    assert admin.get_json(f"{base}/offloadDeletionLagMs") == 1000, "the namespace's own lag is back"


def test_namespace_replication_clusters(admin):
    other = create_cluster(admin)
    tenant = create_tenant(admin, clusters=(CLUSTER, other))
    ns = create_namespace(admin, tenant)
    path = f"{ns_path(ns)}/replication"

    admin.ok("POST", path, [CLUSTER])
    assert admin.get_json(path) == [CLUSTER], f"GET replication should be [{CLUSTER!r}]"

    admin.ok("POST", path, [CLUSTER, other])
    got = admin.get_json(path)
    assert sorted(got) == sorted([CLUSTER, other]), f"GET replication should be both clusters, got {got!r}"

    resp = admin.post(path, [CLUSTER, unique("nosuch")])
    assert 400 <= resp.status < 500, f"replication to an unknown cluster should be a 4xx, got {resp!r}"
    assert_reason(resp, "replication to an unknown cluster")
    got = admin.get_json(path)
    assert sorted(got) == sorted([CLUSTER, other]), f"a refused replication change must not apply: {got!r}"


def test_namespace_policies_document_uses_pulsar_field_names(admin):
    ns = create_namespace(admin, "public", {"bundles": {"numBundles": 8}})
    base = ns_path(ns)
    admin.ok("POST", f"{base}/messageTTL", 600)
    admin.ok("POST", f"{base}/retention", {"retentionTimeInMinutes": 60, "retentionSizeInMB": 100})
    admin.ok("POST", f"{base}/replication", [CLUSTER])
    policies = admin.get_json(base)
    assert policies.get("bundles", {}).get("numBundles") == 8, f"bundles.numBundles: {policies!r}"
    assert policies.get("message_ttl_in_seconds") == 600, f"message_ttl_in_seconds: {policies!r}"
    assert matches({"retentionTimeInMinutes": 60, "retentionSizeInMB": 100},
                   policies.get("retention_policies")), f"retention_policies: {policies!r}"
    assert policies.get("replication_clusters") == [CLUSTER], f"replication_clusters: {policies!r}"


def test_metadata_and_policies_persist_across_restart(admin, broker):
    cluster = create_cluster(admin)
    tenant = create_tenant(admin, clusters=(CLUSTER, cluster), roles=("ops",))
    ns = create_namespace(admin, tenant, {"bundles": {"numBundles": 16}})
    base = ns_path(ns)
    for p in POLICIES:
        admin.ok(p.set_method, f"{base}/{p.set_path}", p.body)
    admin.ok("POST", f"{base}/replication", [CLUSTER, cluster])
    parted = f"persistent://{ns}/{unique('parted')}"
    admin.ok("PUT", f"{topic_path(parted)}/partitions", 3)
    plain = f"persistent://{ns}/{unique('plain')}"
    admin.ok("PUT", topic_path(plain))
    admin.ok("PUT", sub_path(plain, "kept-sub"))

    def snapshot():
        return {
            "cluster": admin.get_json(f"/admin/v2/clusters/{cluster}"),
            "tenant": admin.get_json(f"/admin/v2/tenants/{tenant}"),
            "namespaces": admin.get_json(f"/admin/v2/namespaces/{tenant}"),
            "bundles": admin.get_json(base).get("bundles", {}).get("numBundles"),
            "replication": sorted(admin.get_json(f"{base}/replication")),
            "policies": {p.name: admin.get_json(f"{base}/{p.get_path}") for p in POLICIES},
            "partitions": admin.get_json(f"{topic_path(parted)}/partitions"),
            "partitioned": admin.get_json(f"{list_path('persistent', ns)}/partitioned"),
            "plain topic listed": plain in admin.get_json(list_path("persistent", ns)),
            "subscriptions": admin.get_json(f"{topic_path(plain)}/subscriptions"),
        }

    before = snapshot()
    for p in POLICIES:
        assert matches(p.expected, before["policies"][p.name]), (
            f"{p.name} before restart should match {p.expected!r}: {before['policies'][p.name]!r}"
        )
    assert before["bundles"] == 16 and before["partitions"] == {"partitions": 3}
    assert before["plain topic listed"] and before["subscriptions"] == ["kept-sub"], before

    broker.stop()
    broker.restart()
    after = snapshot()
    for key in before:
        assert after[key] == before[key], (
            f"{key} changed across a restart:\n before {before[key]!r}\n after  {after[key]!r}"
        )


# ================================================================ topics

DOMAINS = ["persistent", "non-persistent"]


@pytest.mark.parametrize("domain", DOMAINS)
def test_topic_create_list_delete(admin, domain):
    ns = create_namespace(admin)
    topic = f"{domain}://{ns}/{unique('t')}"
    admin.ok("PUT", topic_path(topic))
    assert topic in admin.get_json(list_path(domain, ns)), f"{topic} should be listed after creation"
    expect_error(admin.put(topic_path(topic)), 409, "creating an existing topic")

    admin.ok("DELETE", topic_path(topic))
    assert topic not in admin.get_json(list_path(domain, ns)), f"{topic} should not be listed after deletion"
    expect_error(admin.delete(topic_path(topic)), 404, "deleting a deleted topic")


@pytest.mark.parametrize("domain", DOMAINS)
def test_partitioned_topic_create_grow_list_delete(admin, domain):
    ns = create_namespace(admin)
    topic = f"{domain}://{ns}/{unique('parted')}"
    path = f"{topic_path(topic)}/partitions"
    partitioned_list = f"{list_path(domain, ns)}/partitioned"

    admin.ok("PUT", path, 3)
    assert admin.get_json(path) == {"partitions": 3}, f"GET {path} after creating 3 partitions"
    assert topic in admin.get_json(partitioned_list), f"{topic} should be in {partitioned_list}"
    assert topic not in admin.get_json(list_path(domain, ns)), (
        f"the partitioned topic's own name is not a non-partitioned topic of {ns}"
    )
    expect_error(admin.put(path, 3), 409, "creating an existing partitioned topic")
    expect_error(admin.put(topic_path(topic)), 409,
                 "creating a non-partitioned topic over a partitioned one")

    admin.ok("POST", path, 5)
    assert admin.get_json(path) == {"partitions": 5}, f"GET {path} after growing to 5"
    resp = admin.post(path, 2)
    assert 400 <= resp.status < 500, f"shrinking a partitioned topic should be a 4xx, got {resp!r}"
    assert_reason(resp, "shrinking a partitioned topic")
    assert admin.get_json(path) == {"partitions": 5}, "a refused shrink must not change the partitions"

    admin.ok("DELETE", path)
    assert topic not in admin.get_json(partitioned_list), f"{topic} should be gone from {partitioned_list}"


@pytest.mark.parametrize("body", [0, -3, "four"], ids=["zero", "negative", "not-a-number"])
def test_partitioned_topic_rejects_bad_partition_count(admin, body):
    topic = f"persistent://public/default/{unique('parted')}"
    resp = admin.put(f"{topic_path(topic)}/partitions", body)
    assert 400 <= resp.status < 500, f"{body!r} partitions should be a 4xx, got {resp!r}"
    assert_reason(resp, f"creating a partitioned topic with {body!r} partitions")
    assert topic not in admin.get_json("/admin/v2/persistent/public/default/partitioned")


def test_delete_topic_with_producer_needs_force(admin, client):
    topic = f"persistent://public/default/{unique('busy')}"
    admin.ok("PUT", topic_path(topic))
    producer = client.create_producer(topic)
    producer.send(b"x")
    expect_error(admin.delete(topic_path(topic)), 412, "deleting a topic with a connected producer")
    assert topic in admin.get_json(list_path("persistent", "public/default")), (
        "a refused delete must leave the topic in place"
    )
    # With force the broker closes the producer and deletes the topic. (Whether
    # the client then re-creates it by reconnecting is auto-creation's business,
    # as in Pulsar, so absence is checked in test_topic_create_list_delete.)
    admin.ok("DELETE", topic_path(topic) + "?force=true")


def test_delete_partitioned_topic_with_consumer_needs_force(admin, client):
    topic = f"persistent://public/default/{unique('busy-parted')}"
    admin.ok("PUT", f"{topic_path(topic)}/partitions", 2)
    consumer = client.subscribe(topic, unique("sub"))
    expect_error(admin.delete(f"{topic_path(topic)}/partitions"), 412,
                 "deleting a partitioned topic with a connected consumer")
    assert admin.get_json(f"{topic_path(topic)}/partitions") == {"partitions": 2}
    admin.ok("DELETE", f"{topic_path(topic)}/partitions?force=true")
    consumer.close()


def test_topic_stats_after_publishing_and_consuming(admin, client):
    topic = f"persistent://public/default/{unique('stats')}"
    sub = unique("sub")
    producer_name = unique("prod")
    consumer_name = unique("cons")
    consumer = client.subscribe(topic, sub, consumer_type=pulsar.ConsumerType.Shared,
                                consumer_name=consumer_name)
    producer = client.create_producer(topic, producer_name=producer_name)
    sent = [f"stats-{i}".encode() * 3 for i in range(10)]
    publish(producer, sent)
    got = receive_n(consumer, len(sent))
    assert sorted(payloads(got)) == sorted(sent)
    for m in got[:4]:
        consumer.acknowledge(m)

    wait_backlog(admin, topic, sub, len(sent) - 4)
    wait_for_value(lambda: topic_stats(admin, topic).get("msgOutCounter"), len(sent),
                   "msgOutCounter (messages dispatched)")
    stats = topic_stats(admin, topic)
    assert stats.get("msgInCounter") == len(sent), f"msgInCounter should be {len(sent)}: {stats!r}"
    assert stats.get("bytesInCounter", 0) >= sum(map(len, sent)), (
        f"bytesInCounter should be at least the {sum(map(len, sent))} payload bytes: {stats!r}"
    )
    assert stats.get("storageSize", 0) > 0, f"storageSize should be > 0: {stats!r}"
    publishers = stats.get("publishers")
    assert isinstance(publishers, list) and len(publishers) == 1, f"one publisher: {stats!r}"
    assert publishers[0].get("producerName") == producer_name, f"the publisher's name: {publishers!r}"
    subs = stats.get("subscriptions")
    assert isinstance(subs, dict) and list(subs) == [sub], f"subscriptions should be {{{sub!r}: ...}}"
    assert subs[sub].get("type") == "Shared", f"subscription type: {subs[sub]!r}"
    consumers = subs[sub].get("consumers")
    assert isinstance(consumers, list) and len(consumers) == 1, f"one consumer: {subs[sub]!r}"
    assert consumers[0].get("consumerName") == consumer_name, f"the consumer's name: {consumers!r}"


def test_non_persistent_topic_stats(admin, client):
    topic = f"non-persistent://public/default/{unique('np-stats')}"
    sub = unique("sub")
    consumer = client.subscribe(topic, sub)
    producer = client.create_producer(topic)
    sent = [f"np-{i}".encode() for i in range(6)]
    publish(producer, sent)
    assert payloads(receive_n(consumer, len(sent))) == sent
    assert topic in admin.get_json(list_path("non-persistent", "public/default")), (
        "an active non-persistent topic should be listed"
    )
    wait_for_value(lambda: topic_stats(admin, topic).get("msgInCounter"), len(sent),
                   "msgInCounter of the non-persistent topic")
    stats = topic_stats(admin, topic)
    assert len(stats.get("publishers", [])) == 1, f"one publisher: {stats!r}"
    assert sub in stats.get("subscriptions", {}), f"subscription {sub!r} in stats: {stats!r}"
    assert len(stats["subscriptions"][sub].get("consumers", [])) == 1, f"one consumer: {stats!r}"


def test_topic_internal_stats(admin, client):
    topic = f"persistent://public/default/{unique('internal')}"
    sub = unique("acking")
    idle_sub = unique("idle")  # never acknowledges, so no entry can be trimmed
    admin.ok("PUT", topic_path(topic))
    admin.ok("PUT", sub_path(topic, idle_sub))
    consumer = client.subscribe(topic, sub)
    producer = client.create_producer(topic)
    ids = publish(producer, [f"e{i}".encode() for i in range(6)])
    receive_and_ack_all(consumer, 6)

    def mark_delete():
        cursors = admin.get_json(f"{topic_path(topic)}/internalStats").get("cursors", {})
        return cursors.get(sub, {}).get("markDeletePosition")

    wait_for_value(mark_delete, msg_position(ids[-1]),
                   f"markDeletePosition of {sub!r} after acknowledging everything")
    internal = admin.get_json(f"{topic_path(topic)}/internalStats")
    assert internal.get("entriesAddedCounter") == 6, f"entriesAddedCounter should be 6: {internal!r}"
    assert internal.get("numberOfEntries") == 6, f"numberOfEntries should be 6: {internal!r}"
    ledgers = internal.get("ledgers")
    assert isinstance(ledgers, list) and ledgers, f"ledgers should be a non-empty list: {internal!r}"
    assert ids[-1].ledger_id() in [l.get("ledgerId") for l in ledgers], (
        f"the last message's ledger {ids[-1].ledger_id()} should be listed in {ledgers!r}"
    )
    cursors = internal.get("cursors")
    assert isinstance(cursors, dict) and set(cursors) == {sub, idle_sub}, (
        f"cursors should be keyed by subscription ({sub}, {idle_sub}): {cursors!r}"
    )
    assert isinstance(cursors[idle_sub].get("markDeletePosition"), str), cursors[idle_sub]


def test_unload_topic_and_client_keeps_working(admin, client):
    topic = f"persistent://public/default/{unique('unload')}"
    sub = unique("sub")
    consumer = client.subscribe(topic, sub)
    producer = client.create_producer(topic)
    publish(producer, [b"before-1", b"before-2"])
    assert payloads(receive_and_ack_all(consumer, 2)) == [b"before-1", b"before-2"]
    # The client groups acknowledgements (up to 100 ms): wait until the broker
    # has them, or an unload in between redelivers (at-least-once, as Pulsar).
    wait_backlog(admin, topic, sub, 0)

    admin.ok("PUT", f"{topic_path(topic)}/unload")

    publish(producer, [b"after-1", b"after-2", b"after-3"])
    assert payloads(receive_and_ack_all(consumer, 3)) == [b"after-1", b"after-2", b"after-3"], (
        "producer and consumer should reconnect after an unload and keep working"
    )
    assert_no_more(consumer, what="consumer after unload")
    wait_for_value(lambda: topic_stats(admin, topic).get("msgInCounter", 0) >= 3, True,
                   "stats of the reloaded topic counting the new messages")


def test_subscription_create_list_and_backlog(admin, client):
    topic = f"persistent://public/default/{unique('subs')}"
    sub = unique("sub")
    producer = client.create_producer(topic)
    publish(producer, [b"old-1", b"old-2"])

    admin.ok("PUT", sub_path(topic, sub))
    assert admin.get_json(f"{topic_path(topic)}/subscriptions") == [sub], "the created subscription is listed"
    expect_error(admin.put(sub_path(topic, sub)), 409, "creating an existing subscription")

    publish(producer, [b"new-1", b"new-2", b"new-3"])
    wait_backlog(admin, topic, sub, 3)  # created at the latest position: the old two are not counted

    consumer = client.subscribe(topic, sub)
    assert payloads(receive_n(consumer, 3)) == [b"new-1", b"new-2", b"new-3"]
    assert_no_more(consumer)


def test_delete_subscription_with_consumer_needs_force(admin, client):
    topic = f"persistent://public/default/{unique('unsub')}"
    sub = unique("sub")
    consumer = client.subscribe(topic, sub)
    expect_error(admin.delete(sub_path(topic, sub)), 412,
                 "deleting a subscription with a connected consumer")
    assert sub in admin.get_json(f"{topic_path(topic)}/subscriptions"), "a refused delete keeps the subscription"
    admin.ok("DELETE", sub_path(topic, sub) + "?force=true")
    consumer.close()


def test_delete_subscription_without_consumer(admin, client):
    topic = f"persistent://public/default/{unique('unsub')}"
    sub = unique("sub")
    consumer = client.subscribe(topic, sub)
    consumer.close()
    admin.ok("DELETE", sub_path(topic, sub))
    assert sub not in admin.get_json(f"{topic_path(topic)}/subscriptions"), "the deleted subscription is gone"
    expect_error(admin.delete(sub_path(topic, sub)), 404, "deleting a deleted subscription")


def test_skip_messages(admin, client):
    topic = f"persistent://public/default/{unique('skip')}"
    sub = unique("sub")
    admin.ok("PUT", topic_path(topic))
    admin.ok("PUT", sub_path(topic, sub))
    producer = client.create_producer(topic)
    sent = [f"m{i}".encode() for i in range(10)]
    publish(producer, sent)
    wait_backlog(admin, topic, sub, 10)

    admin.ok("POST", f"{sub_path(topic, sub)}/skip/3")
    wait_backlog(admin, topic, sub, 7)

    consumer = client.subscribe(topic, sub)
    assert payloads(receive_n(consumer, 7)) == sent[3:], "skip removes messages from the front of the backlog"
    assert_no_more(consumer)


def test_peek_message_by_position(admin, client):
    topic = f"persistent://public/default/{unique('peek')}"
    sub = unique("sub")
    admin.ok("PUT", topic_path(topic))
    admin.ok("PUT", sub_path(topic, sub))
    producer = client.create_producer(topic)
    sent = [f"peek-{i}".encode() for i in range(5)]
    ids = publish(producer, sent)

    for n in (1, 3, 5):
        r = admin.get(f"{sub_path(topic, sub)}/position/{n}")
        assert r.status == 200, f"peeking position {n}: {r!r}"
        assert r.body == sent[n - 1], f"position {n} (1-based) should be {sent[n - 1]!r}, got {r.body!r}"
        assert r.headers.get("X-Pulsar-Message-ID") == msg_position(ids[n - 1]), (
            f"X-Pulsar-Message-ID of position {n} should be {msg_position(ids[n - 1])}, "
            f"got {r.headers.get('X-Pulsar-Message-ID')!r}"
        )
    expect_error(admin.get(f"{sub_path(topic, sub)}/position/6"), 404, "peeking past the end of the backlog")
    assert backlog_of(admin, topic, sub) == 5, "peeking does not consume"

    # Positions count from the first unacknowledged message.
    admin.ok("POST", f"{sub_path(topic, sub)}/skip/2")
    wait_backlog(admin, topic, sub, 3)
    r = admin.get(f"{sub_path(topic, sub)}/position/1")
    assert r.status == 200 and r.body == sent[2], f"after skipping 2, position 1 is {sent[2]!r}: {r!r}"


def test_reset_cursor_to_message_id(admin, client):
    topic = f"persistent://public/default/{unique('reset-id')}"
    sub = unique("sub")
    consumer = client.subscribe(topic, sub)
    producer = client.create_producer(topic)
    sent = [f"r{i}".encode() for i in range(10)]
    ids = publish(producer, sent)
    receive_and_ack_all(consumer, 10)
    wait_backlog(admin, topic, sub, 0)  # every acknowledgement has reached the broker

    target = ids[3]
    admin.ok("POST", f"{sub_path(topic, sub)}/resetcursor",
             {"ledgerId": target.ledger_id(), "entryId": target.entry_id()})
    again = receive_n(consumer, 7, what="messages redelivered after the reset")
    assert payloads(again) == sent[3:], "a reset to a message id redelivers from that message on"
    assert_no_more(consumer)


def test_reset_cursor_to_timestamp(admin, client):
    topic = f"persistent://public/default/{unique('reset-ts')}"
    sub = unique("sub")
    consumer = client.subscribe(topic, sub)
    producer = client.create_producer(topic)
    early = [f"early-{i}".encode() for i in range(3)]
    late = [f"late-{i}".encode() for i in range(3)]
    publish(producer, early)
    early_done = time.time()
    wait_for_clock(early_done + 0.05, "50 ms after the early messages")
    publish(producer, late)
    receive_and_ack_all(consumer, 6)
    wait_backlog(admin, topic, sub, 0)

    # Every early message was published at or before early_done, every late one
    # at least 50 ms after: the reset point lies strictly between them.
    reset_ms = int(early_done * 1000) + 20
    admin.ok("POST", f"{sub_path(topic, sub)}/resetcursor/{reset_ms}")
    again = receive_n(consumer, 3, what="messages published after the reset time")
    assert payloads(again) == late, "a reset to a time redelivers the messages published after it"
    assert_no_more(consumer)


def test_expire_messages(admin, client):
    topic = f"persistent://public/default/{unique('expire')}"
    sub = unique("sub")
    admin.ok("PUT", topic_path(topic))
    admin.ok("PUT", sub_path(topic, sub))
    producer = client.create_producer(topic)
    publish(producer, [b"old-1", b"old-2", b"old-3"])
    old_done = time.time()
    wait_for_clock(old_done + 3.0, "3 s after the old messages")
    fresh = [b"fresh-1", b"fresh-2"]
    publish(producer, fresh)
    wait_backlog(admin, topic, sub, 5)

    # Older than 2 s: the three old ones (>= 3 s old), not the fresh ones.
    admin.ok("POST", f"{sub_path(topic, sub)}/expireMessages/2")
    wait_backlog(admin, topic, sub, 2)
    consumer = client.subscribe(topic, sub)
    assert payloads(receive_n(consumer, 2)) == fresh, "only the messages younger than 2 s remain"
    assert_no_more(consumer)


def test_last_message_id(admin, client):
    topic = f"persistent://public/default/{unique('last')}"
    producer = client.create_producer(topic)
    ids = publish(producer, [f"l{i}".encode() for i in range(4)])
    last = admin.get_json(f"{topic_path(topic)}/lastMessageId")
    assert (last.get("ledgerId"), last.get("entryId")) == (ids[-1].ledger_id(), ids[-1].entry_id()), (
        f"lastMessageId should be the last sent message {msg_position(ids[-1])}, got {last!r}"
    )
    more = publish(producer, [b"one-more"])
    last = admin.get_json(f"{topic_path(topic)}/lastMessageId")
    assert (last.get("ledgerId"), last.get("entryId")) == (more[0].ledger_id(), more[0].entry_id()), (
        f"lastMessageId should follow new messages ({msg_position(more[0])}), got {last!r}"
    )


UNKNOWN_TOPIC_REQUESTS = [
    ("GET", "/stats"),
    ("GET", "/internalStats"),
    ("GET", "/subscriptions"),
    ("GET", "/lastMessageId"),
    ("PUT", "/unload"),
    ("DELETE", ""),
]


@pytest.mark.parametrize("method,suffix", UNKNOWN_TOPIC_REQUESTS,
                         ids=[f"{m}{s or '-topic'}" for m, s in UNKNOWN_TOPIC_REQUESTS])
def test_unknown_topic_is_404(admin, method, suffix):
    topic = f"persistent://public/default/{unique('nosuch')}"
    expect_error(admin.request(method, topic_path(topic) + suffix), 404, f"{method} {suffix} of an unknown topic")


UNKNOWN_SUBSCRIPTION_REQUESTS = [
    ("POST", "/skip/1"),
    ("GET", "/position/1"),
    ("POST", "/resetcursor/0"),
    ("POST", "/expireMessages/1"),
    ("DELETE", ""),
]


@pytest.mark.parametrize("method,suffix", UNKNOWN_SUBSCRIPTION_REQUESTS,
                         ids=[f"{m}{s or '-subscription'}" for m, s in UNKNOWN_SUBSCRIPTION_REQUESTS])
def test_unknown_subscription_is_404(admin, method, suffix):
    topic = f"persistent://public/default/{unique('t')}"
    admin.ok("PUT", topic_path(topic))
    expect_error(admin.request(method, sub_path(topic, unique("nosuch")) + suffix), 404,
                 f"{method} {suffix} of an unknown subscription")


INVALID_TOPIC_REQUESTS = [("PUT", "", _NO_BODY), ("GET", "/stats", _NO_BODY), ("PUT", "/partitions", 3)]


@pytest.mark.parametrize("method,suffix,body", INVALID_TOPIC_REQUESTS,
                         ids=["create", "stats", "create-partitioned"])
def test_invalid_topic_name_is_rejected(admin, method, suffix, body):
    # Pulsar answers 412 ("Topic name is not valid"); 400 is as good.
    path = "/admin/v2/persistent/public/default/bad%24name" + suffix
    expect_error(admin.request(method, path, body), (400, 412),
                 f"{method} on the invalid topic name 'bad$name'{suffix}")


# ================================================================ brokers


def test_brokers_list_standalone(admin, broker):
    brokers = admin.get_json(f"/admin/v2/brokers/{CLUSTER}")
    assert brokers == [f"127.0.0.1:{broker.http_port}"], (
        f"the standalone cluster has this one broker, as host:web-port; got {brokers!r}"
    )


def test_broker_health(admin):
    r = admin.get("/admin/v2/brokers/health")
    assert r.status == 200 and r.body.strip() == b"ok", f"health should answer 200 'ok', got {r!r}"


# ================================================================ errors and OpenAPI


ASSORTED_ERRORS = [
    pytest.param("GET", "/admin/v2/no-such-resource", None, 404, id="unknown-route"),
    pytest.param("GET", "/admin/v2/tenants/nosuch-tenant-x", None, 404, id="unknown-tenant"),
    pytest.param("PATCH", "/admin/v2/tenants/public", b"{}", 405, id="method-not-allowed"),
    pytest.param("PUT", "/admin/v2/tenants/public", b"{}", 409, id="existing-tenant"),
    pytest.param("POST", "/admin/v2/namespaces/public/default/messageTTL", b"[", 400, id="bad-json"),
]


@pytest.mark.parametrize("method,path,raw,status", ASSORTED_ERRORS)
def test_every_error_has_a_reason(admin, method, path, raw, status):
    resp = admin.request(method, path, raw=raw)
    expect_error(resp, status, f"{method} {path}")


# Route families the OpenAPI document must describe, as normalised paths (see
# normalise_openapi_path) and their methods.
OPENAPI_ROUTES = {
    "/clusters": {"get"},
    "/clusters/{}": {"get", "put", "post", "delete"},
    "/tenants": {"get"},
    "/tenants/{}": {"get", "put", "post", "delete"},
    "/namespaces/{}": {"get"},
    "/namespaces/{}/{}": {"get", "put", "delete"},
    "/namespaces/{}/{}/replication": {"get", "post"},
    "/namespaces/{}/{}/backlogQuota": {"post", "delete"},
    "/namespaces/{}/{}/backlogQuotaMap": {"get"},
    **{f"/namespaces/{{}}/{{}}/{p}": {"get", "post", "delete"} for p in (
        "retention", "messageTTL", "publishRate", "dispatchRate", "inactiveTopicPolicies",
        "maxProducersPerTopic", "maxConsumersPerTopic", "deduplication", "autoTopicCreation")},
    "/{}/{}/{}": {"get"},
    "/{}/{}/{}/partitioned": {"get"},
    "/{}/{}/{}/{}": {"put", "delete"},
    "/{}/{}/{}/{}/partitions": {"get", "put", "post", "delete"},
    "/{}/{}/{}/{}/stats": {"get"},
    "/{}/{}/{}/{}/internalStats": {"get"},
    "/{}/{}/{}/{}/unload": {"put"},
    "/{}/{}/{}/{}/subscriptions": {"get"},
    "/{}/{}/{}/{}/lastMessageId": {"get"},
    "/{}/{}/{}/{}/subscription/{}": {"put", "delete"},
    "/{}/{}/{}/{}/subscription/{}/skip/{}": {"post"},
    "/{}/{}/{}/{}/subscription/{}/resetcursor": {"post"},
    "/{}/{}/{}/{}/subscription/{}/resetcursor/{}": {"post"},
    "/{}/{}/{}/{}/subscription/{}/expireMessages/{}": {"post"},
    "/{}/{}/{}/{}/subscription/{}/position/{}": {"get"},
    "/brokers/{}": {"get"},
    "/brokers/health": {"get"},
}


def normalise_openapi_path(path: str) -> str:
    """Drops the /admin/v2 prefix, turns every {param} into {} and a literal
    persistent / non-persistent domain into {} as well."""
    if path.startswith("/admin/v2"):
        path = path[len("/admin/v2"):]
    parts = path.strip("/").split("/")
    out = []
    for i, p in enumerate(parts):
        if p.startswith("{") and p.endswith("}"):
            out.append("{}")
        elif i == 0 and p in ("persistent", "non-persistent"):
            out.append("{}")
        else:
            out.append(p)
    return "/" + "/".join(out)


def test_openapi_document_describes_every_route_family(admin):
    doc = admin.get_json(OPENAPI_PATH)
    assert str(doc.get("openapi", "")).startswith("3."), f"an OpenAPI 3 document, got openapi={doc.get('openapi')!r}"
    assert isinstance(doc.get("info"), dict) and doc["info"].get("title"), "info.title is required by OpenAPI"
    methods: dict[str, set] = {}
    for raw_path, item in doc.get("paths", {}).items():
        methods.setdefault(normalise_openapi_path(raw_path), set()).update(
            m for m in item if m in ("get", "put", "post", "delete", "patch", "head", "options"))
    missing = {p: sorted(want - methods.get(p, set()))
               for p, want in OPENAPI_ROUTES.items() if not want <= methods.get(p, set())}
    assert not missing, f"OpenAPI paths lack these routes/methods: {missing}"


# ================================================================ scale


def test_namespace_with_2000_topics_lists_all_across_restart(admin, broker):
    count = 2000
    ns = create_namespace(admin)
    topics = [f"persistent://{ns}/t-{i:05d}" for i in range(count)]

    def create(topic):
        return admin.put(topic_path(topic)).status

    with ThreadPoolExecutor(max_workers=4) as pool:
        statuses = list(pool.map(create, topics))
    failed = [(t, s) for t, s in zip(topics, statuses) if s != 204]
    assert not failed, f"{len(failed)} of {count} topic creations failed, e.g. {failed[:5]}"

    listed = admin.get_json(list_path("persistent", ns))
    assert len(listed) == count and set(listed) == set(topics), (
        f"the namespace should list exactly the {count} created topics, got {len(listed)}"
    )
    broker.stop()
    broker.restart()
    listed = admin.get_json(list_path("persistent", ns))
    assert len(listed) == count and set(listed) == set(topics), (
        f"after a restart the namespace should still list the {count} topics, got {len(listed)}"
    )
