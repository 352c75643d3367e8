"""Advertised listeners in a cluster: two `kilonova broker`s on one etcd
(cluster.py), each reachable two ways, as brokers in containers are:

  - `internal`: its own port, `pulsar://127.0.0.1:P` (the listener clients
    naming none are told);
  - `external`: port forwards in front of it (port_forward.py, as a
    container's published ports), `pulsar://127.0.0.1:F` and
    `pulsar+ssl://127.0.0.1:FT` relaying to its plain and TLS ports.

Broker 0 has a third listener, `edge`, that broker 1 lacks.

What is checked, as Pulsar behaves: a lookup on one broker for a topic
another broker owns (or is chosen to own) names that broker's URLs of the
listener the client named, on the binary protocol (Connect or an
authoritative Redirect, brokerServiceUrl and brokerServiceUrlTls) and over
HTTP (`?listenerName=` or `X-Pulsar-ListenerName`; a 307 carries the
listener on); a real client given one broker's external URL and
`listener_name="external"` produces and consumes on topics of both brokers
through their external URLs only; a listener the owner (or chosen broker)
lacks fails the lookup with ServiceNotReady "the broker do not have NAME
listener".
"""

from __future__ import annotations

import json
import urllib.parse
from dataclasses import dataclass

import pulsar
import pytest

import wire
from cluster import split_topic
from conftest import CLIENT_LOGGER, http, receive_n
from port_forward import PortForward
from test_cluster import LOOKUP_REDIRECT, http_lookup_once, receive_payloads_until, retain_everything
from test_lookup import (LOOKUP_CONNECT, LOOKUP_FAILED, REFUSED_OP_TIMEOUT_S, SERVICE_NOT_READY,
                         raw_lookup)
from test_security import Certs, toml_str

pytestmark = pytest.mark.parametrize("cluster", [{"size": 2}], indirect=True)


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Certs:
    return Certs(tmp_path_factory.mktemp("certs"))


@dataclass
class Listening:
    """The cluster and each broker's port forwards (plain, TLS)."""

    cluster: object
    forwards: list[tuple[PortForward, PortForward]]

    def internal(self, i: int) -> str:
        return self.cluster.broker(i).service_url

    def external(self, i: int) -> str:
        return f"pulsar://127.0.0.1:{self.forwards[i][0].port}"

    def external_tls(self, i: int) -> str:
        return f"pulsar+ssl://127.0.0.1:{self.forwards[i][1].port}"

    def edge(self, i: int) -> str:
        assert i == 0, "only broker 0 has the edge listener"
        return f"pulsar://localhost:{self.cluster.broker(0).pulsar_port}"

    def index_of_external(self, url: str) -> int | None:
        for i in range(len(self.forwards)):
            if url == self.external(i):
                return i
        return None


def listeners_toml(i: int, pulsar_port: int, forwards: tuple[PortForward, PortForward]) -> str:
    """Top-level keys (they precede the cluster config's `[broker]` table)."""
    plain, tls = forwards
    lines = [
        'internal_listener_name = "internal"',
        "[advertised_listeners]",
        f'internal = ["pulsar://127.0.0.1:{pulsar_port}"]',
        f'external = ["pulsar://127.0.0.1:{plain.port}", "pulsar+ssl://127.0.0.1:{tls.port}"]',
    ]
    if i == 0:
        lines.append(f'edge = ["pulsar://localhost:{pulsar_port}"]')
    return "\n".join(lines) + "\n"


@pytest.fixture
def listening(cluster, certs):
    """The cluster restarted with TLS and the listeners above (listener URLs
    name the brokers' real ports, chosen at the first start; the forwards'
    targets are set once the TLS ports are known)."""
    forwards = [(PortForward(), PortForward()) for _ in cluster.brokers]
    tls = f"[tls]\ncert_file = {toml_str(certs.server_cert)}\nkey_file = {toml_str(certs.server_key)}\n"
    try:
        for i in range(len(cluster)):
            cluster.stop(i)
        for i, b in enumerate(cluster.brokers):
            b.config = listeners_toml(i, b.pulsar_port, forwards[i]) + b.config + tls
            cluster.restart(i)
            assert b.pulsar_tls_port, f"broker {i} serves no TLS port"
            forwards[i][0].target_port = b.pulsar_port
            forwards[i][1].target_port = b.pulsar_tls_port
        cluster.wait_members()
        yield Listening(cluster, forwards)
    finally:
        for plain, tls_forward in forwards:
            plain.close()
            tls_forward.close()


def answer(f: wire.Frame) -> tuple[int, str | None, str | None]:
    """(type, brokerServiceUrl, brokerServiceUrlTls) of a LOOKUP_RESPONSE."""
    def text(n: int) -> str | None:
        v = wire.first(f.body, n)
        return None if v is None else v.decode()
    return wire.first(f.body, 3), text(1), text(2)


def place_all(l: Listening, prefix: str) -> dict[str, int]:
    """A topic in each bundle of public/default, placed by binary lookups on
    broker 0 naming `external` (following redirects): topic → owner."""
    c = l.cluster
    owners = {}
    for n, [topic] in enumerate(c.topics_in_bundles(per_bundle=1, prefix=prefix)):
        kind, url, _ = answer(raw_lookup(c.broker(0).pulsar_port, topic, "external", request_id=n + 1))
        target = l.index_of_external(url or "")
        assert target is not None, f"the lookup of {topic} names no external URL: {url}"
        if kind == LOOKUP_REDIRECT:
            kind, url, _ = answer(raw_lookup(c.broker(target).pulsar_port, topic, "external",
                                             authoritative=True))
        assert kind == LOOKUP_CONNECT and url == l.external(target), (kind, url)
        owners[topic] = target
    assert sorted(owners.values()) == [0, 0, 1, 1], f"4 bundles over 2 brokers: {owners}"
    return owners


# ---------------------------------------------------------------- binary lookups


def test_a_binary_lookup_redirects_to_the_chosen_brokers_urls_of_the_listener_named(listening):
    """An unowned bundle broker 0 places on broker 1: an authoritative
    Redirect to broker 1's external URLs (plain and TLS); broker 1, asked
    there, takes it and answers Connect with the same URLs."""
    l, c = listening, listening.cluster
    redirects = 0
    for n, [topic] in enumerate(c.topics_in_bundles(per_bundle=1, prefix="bin")):
        f = raw_lookup(c.broker(0).pulsar_port, topic, "external", request_id=n + 1)
        kind, url, tls_url = answer(f)
        target = l.index_of_external(url or "")
        assert target is not None, f"the lookup of {topic} names no broker's external URL: {f}"
        assert tls_url == l.external_tls(target), f
        if target == 0:
            assert kind == LOOKUP_CONNECT, f"broker 0 chose itself but answered {f}"
            continue
        assert kind == LOOKUP_REDIRECT and wire.first(f.body, 5) == 1, (
            f"broker 0 chose broker {target}: an authoritative Redirect expected, got {f}")
        redirects += 1
        g = raw_lookup(c.broker(target).pulsar_port, topic, "external", authoritative=True)
        assert answer(g) == (LOOKUP_CONNECT, l.external(target), l.external_tls(target)), g
    assert redirects == 2, f"4 bundles over 2 brokers: 2 redirected, not {redirects}"


def test_a_binary_lookup_of_a_topic_another_broker_owns_answers_its_urls_of_the_listener_named(listening):
    l, c = listening, listening.cluster
    owners = place_all(l, "owned")
    for topic, owner in owners.items():
        for via in (0, 1):
            port = c.broker(via).pulsar_port
            for listener, want in [
                ("external", (l.external(owner), l.external_tls(owner))),
                ("internal", (l.internal(owner), None)),
                (None, (l.internal(owner), None)),
                ("", (l.internal(owner), None)),
            ]:
                f = raw_lookup(port, topic, listener)
                assert answer(f) == (LOOKUP_CONNECT, *want), (
                    f"broker {via}, {topic} owned by broker {owner}, listener {listener!r}: {f}")


# ---------------------------------------------------------------- HTTP lookups


def test_an_http_lookup_answers_the_owners_urls_of_the_listener_named(listening):
    l, c = listening, listening.cluster
    owners = place_all(l, "httpowned")
    for topic, owner in owners.items():
        want = {
            "brokerUrl": l.external(owner),
            "brokerUrlTls": l.external_tls(owner),
            "httpUrl": c.broker(owner).http_url,
            "nativeUrl": l.external(owner),
        }
        for via in (0, 1):
            for how in [{"query": {"listenerName": "external"}},
                        {"headers": {"X-Pulsar-ListenerName": "external"}}]:
                status, _, doc = http_lookup_once(c, via, topic, **how)
                assert status == 200 and isinstance(doc, dict), (via, how, status, doc)
                assert {k: doc.get(k) for k in want} == want, (via, how, doc)
            status, _, doc = http_lookup_once(c, via, topic)
            assert status == 200 and doc["brokerUrl"] == l.internal(owner), (via, doc)
            assert doc["brokerUrlTls"] is None, doc


def test_an_http_lookup_redirect_carries_the_listener_named_in_a_header(listening):
    """As Pulsar's: the 307 to the chosen broker's lookup is authoritative and
    names the listener in its query (`listenerName=`), also when the client
    named it in the X-Pulsar-ListenerName header; the chosen broker, asked
    there without the header, answers that listener's URLs."""
    l, c = listening, listening.cluster
    redirected = 0
    for [topic] in c.topics_in_bundles(per_bundle=1, prefix="httpredirect"):
        status, location, doc = http_lookup_once(c, 0, topic,
                                                 headers={"X-Pulsar-ListenerName": "external"})
        if status == 200:
            assert doc["brokerUrl"] == l.external(0), f"broker 0 answered 200 naming another broker: {doc}"
            continue
        assert status == 307 and location, (status, location, doc)
        parts = urllib.parse.urlsplit(location)
        target = c.index_of_url(f"{parts.scheme}://{parts.netloc}")
        assert target == 1, f"redirected to {location}"
        query = urllib.parse.parse_qs(parts.query)
        assert query.get("authoritative") == ["true"], location
        assert query.get("listenerName") == ["external"], location
        redirected += 1
        status, body = http("GET", location)
        assert status == 200, (location, status, body[:300])
        doc = json.loads(body)
        assert (doc["brokerUrl"], doc["brokerUrlTls"]) == (l.external(1), l.external_tls(1)), doc
    assert redirected == 2, f"4 bundles over 2 brokers: 2 redirected, not {redirected}"


# ---------------------------------------------------------------- a real client


def client_addresses(c, i: int, topic: str) -> tuple[set[str], set[str]]:
    """The client addresses of `topic`'s publishers and of its consumers, as
    broker `i` reports them in the topic's stats."""
    _, tenant, ns, local = split_topic(topic)
    status, body = c.rest(i, "GET", f"/admin/v2/persistent/{tenant}/{ns}/{local}/stats")
    assert status == 200, f"stats of {topic} on broker {i}: {status} {body[:300]!r}"
    stats = json.loads(body)
    publishers = {p["address"] for p in stats.get("publishers", [])}
    consumers = {k["address"] for sub in stats.get("subscriptions", {}).values()
                 for k in sub.get("consumers", [])}
    return publishers, consumers


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_a_client_naming_a_listener_reaches_every_owner_through_its_urls(listening, certs, tls):
    """A client given broker 0's external URL only, with listener_name
    "external", produces and consumes on a topic in every bundle — two
    placed beforehand (the lookups answer Connect to the owner), two placed
    by its own lookups (Redirects) — and each producer and consumer is
    served by the topic's owner through that owner's external forward."""
    l, c = listening, listening.cluster
    topics = [t for [t] in c.topics_in_bundles(per_bundle=1, prefix="client")]
    for t in topics[:2]:
        c.owner_of(t)
    which = 1 if tls else 0
    extra = {"tls_trust_certs_file_path": str(certs.ca)} if tls else {}
    service_url = l.external_tls(0) if tls else l.external(0)
    client = pulsar.Client(service_url, listener_name="external", operation_timeout_seconds=30,
                           logger=CLIENT_LOGGER, **extra)
    try:
        for t in topics:
            consumer = client.subscribe(t, "s", initial_position=pulsar.InitialPosition.Earliest)
            producer = client.create_producer(t, batching_enabled=False)
            sent = [f"{t}|{j}".encode() for j in range(5)]
            for p in sent:
                producer.send(p)
            got = receive_n(consumer, 5, what=f"messages on {t}")
            assert [m.data() for m in got] == sent
            for m in got:
                consumer.acknowledge(m)
            owner = c.owner_of(t)
            forwarded = l.forwards[owner][which].upstream_addresses()
            publishers, consumers = client_addresses(c, owner, t)
            assert publishers and consumers and publishers | consumers <= forwarded, (
                f"{t} (owned by broker {owner}): its producer comes from {publishers} and its "
                f"consumer from {consumers}, not all through broker {owner}'s external forward "
                f"({sorted(forwarded)})")
        owners = {c.owner_of(t) for t in topics}
        assert owners == {0, 1}, f"the topics' owners: {owners}"
    finally:
        client.close()


def test_clients_naming_a_listener_follow_an_unload_through_the_next_owners_urls(listening):
    """A namespace unload hands every bundle to the other broker; the
    client's producers and consumers reconnect there through its external
    forward: a close command names the next owner's URLs of the listener
    the client's connection looked up with, or none when the broker cannot
    tell which it uses (the client then looks the topic up, naming its
    listener), never URLs the client did not ask for."""
    l, c = listening, listening.cluster
    retain_everything(c)
    topics = [t for [t] in c.topics_in_bundles(per_bundle=1, prefix="unload")]
    for t in topics[:2]:
        c.owner_of(t)  # placed beforehand: the client's lookups answer Connect
    client = pulsar.Client(l.external(0), listener_name="external", operation_timeout_seconds=30,
                           logger=CLIENT_LOGGER)
    try:
        consumers = {t: client.subscribe(t, "s", initial_position=pulsar.InitialPosition.Earliest)
                     for t in topics}
        producers = {t: client.create_producer(t, batching_enabled=False) for t in topics}
        for t in topics:
            producers[t].send(b"before")
            receive_payloads_until(consumers[t], {b"before"}, timeout=20)
        owners = {t: c.owner_of(t) for t in topics}
        c.admin_ok(0, "namespaces", "unload", "public/default")
        for t in topics:
            producers[t].send(b"after")
            receive_payloads_until(consumers[t], {b"after"}, timeout=30)
        for t in topics:
            owner = c.owner_of(t)
            assert owner != owners[t], f"{t} stayed on broker {owner} across the unload"
            forwarded = l.forwards[owner][0].upstream_addresses()
            publishers, subscribers = client_addresses(c, owner, t)
            assert publishers and subscribers and publishers | subscribers <= forwarded, (
                f"{t} (moved from broker {owners[t]} to {owner}): its producer comes from "
                f"{publishers} and its consumer from {subscribers}, not all through broker "
                f"{owner}'s external forward ({sorted(forwarded)})")
    finally:
        client.close()


# ---------------------------------------------------------------- unknown listeners


def test_a_listener_the_owner_lacks_fails_the_lookup_as_pulsar_fails_it(listening):
    """`nope` (no broker has it) and `edge` (broker 0 has it, broker 1 does
    not): a lookup naming a listener the owner — or the broker chosen for an
    unowned bundle — lacks fails with ServiceNotReady "the broker do not
    have NAME listener", on both protocols, and a client naming it gets no
    producer; the same lookups naming a listener the owner has succeed."""
    l, c = listening, listening.cluster
    topics = [t for [t] in c.topics_in_bundles(per_bundle=1, prefix="unknown")]

    def refused(via: int, topic: str, listener: str) -> None:
        f = raw_lookup(c.broker(via).pulsar_port, topic, listener)
        assert wire.first(f.body, 3) == LOOKUP_FAILED, f"{listener} on broker {via}: {f}"
        assert wire.first(f.body, 6) == SERVICE_NOT_READY, f
        assert wire.first(f.body, 7, b"").decode() == f"the broker do not have {listener} listener", f
        status, _, doc = http_lookup_once(c, via, topic, {"listenerName": listener})
        assert status == 404 and doc["reason"] == f"the broker do not have {listener} listener", (status, doc)

    # Unowned bundles, whichever broker 0 would place them on.
    for t in topics:
        refused(0, t, "nope")
    owners = place_all(l, "unknown-placed")
    topics = list(owners)
    on_1 = [t for t in topics if owners[t] == 1]
    on_0 = [t for t in topics if owners[t] == 0]
    for t in topics:
        for via in (0, 1):
            refused(via, t, "nope")
    # edge: broker 0 answers its own topics and refuses broker 1's.
    for t in on_0:
        f = raw_lookup(c.broker(0).pulsar_port, t, "edge")
        assert answer(f) == (LOOKUP_CONNECT, l.edge(0), None), f
    for t in on_1:
        refused(0, t, "edge")
        refused(1, t, "edge")
    client = pulsar.Client(l.external(0), listener_name="edge", operation_timeout_seconds=REFUSED_OP_TIMEOUT_S,
                           logger=CLIENT_LOGGER)
    try:
        with pytest.raises(pulsar.PulsarException):
            client.create_producer(on_1[0])
    finally:
        client.close()
    # A listener the owner has still works for the same topic.
    client = pulsar.Client(l.external(0), listener_name="external", operation_timeout_seconds=30,
                           logger=CLIENT_LOGGER)
    try:
        client.create_producer(on_1[0]).send(b"after")
    finally:
        client.close()
