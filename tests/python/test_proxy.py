"""`kilonova proxy` end to end: the real Python client reaches brokers only
through the proxy's one address — lookups answered by the proxy, producers
and consumers relayed to the topic's owner — with token authentication on
the proxy and authorization on the brokers, which authorize the client's
role (the proxy's role is in their `proxy_roles`). Admin REST goes through
the proxy's HTTP port with the client's token. The proxy relays to no
address that is not a broker. Then a 3-broker cluster on etcd, reached
through one proxy that was told only one broker's URL.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.parse
from pathlib import Path

import pulsar
import pytest

import wire
from conftest import (
    CLIENT_LOGGER,
    READY_TIMEOUT_S,
    bearer,
    http,
    receive_n,
    tls_context,
    topic_name,
    unique,
    wait_until,
)
from test_security import (
    AUTHENTICATION_ERROR,
    AUTHORIZATION_ERROR,
    GET_TOPICS_OF_NAMESPACE_RESPONSE,
    NO_REQUEST,
    SUPER_USER,
    Certs,
    Keys,
    craft_jwt,
    error_name,
    grant,
    round_trip,
    secret_line,
    security_config,
    toml_str,
    topics_of_namespace_cmd,
)

PROXY_ROLE = "proxy"
NOT_ALLOWED_ERROR = 22
LOOKUP_CONNECT = 1
# A refused client (a disconnect for the C++ client) surfaces as a timeout
# of its operation: keep it short.
REFUSED_OP_TIMEOUT_S = 3


# ---------------------------------------------------------------- the proxy process


class Proxy:
    """One `kilonova proxy` process on ports the system chooses."""

    def __init__(self, binary: Path, root: Path, broker_urls: list[str], web_urls: list[str],
                 config: str | None = None):
        self.binary = binary
        self.log_path = root / "proxy.log"
        self.ports_path = root / "proxy.ports.json"
        self.config_path = root / "proxy.toml"
        self.broker_urls = broker_urls
        self.web_urls = web_urls
        self.config = config
        self.proc: subprocess.Popen | None = None
        self.pulsar_port: int | None = None
        self.http_port: int | None = None
        self.pulsar_tls_port: int | None = None
        self.https_port: int | None = None

    @property
    def service_url(self) -> str:
        return f"pulsar://127.0.0.1:{self.pulsar_port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self, timeout: float = READY_TIMEOUT_S) -> None:
        args = [
            str(self.binary), "proxy",
            "--bind-address", "127.0.0.1",
            "--pulsar-port", "0",
            "--http-port", "0",
            "--pulsar-tls-port", "0",
            "--https-port", "0",
            "--ports-file", str(self.ports_path),
        ]
        for u in self.broker_urls:
            args += ["--broker-url", u]
        for u in self.web_urls:
            args += ["--broker-web-url", u]
        if self.config is not None:
            self.config_path.write_text(self.config)
            args += ["--config", str(self.config_path)]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                env={**os.environ, "NO_COLOR": "1", "RUST_LOG": "info,kilonova_proxy=debug"},
            )
        deadline = time.monotonic() + timeout
        while not self.ports_path.exists():
            if self.proc.poll() is not None:
                raise AssertionError(f"proxy exited with {self.proc.returncode}\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"proxy wrote no ports file in {timeout}s\n{self.log_tail()}")
            time.sleep(0.02)
        ports = json.loads(self.ports_path.read_text())
        self.pulsar_port, self.http_port = ports["pulsar"], ports["http"]
        self.pulsar_tls_port, self.https_port = ports["pulsar_tls"], ports["https"]

    def stop(self) -> int:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError("proxy did not exit within 20s of SIGTERM\n" + self.log_tail())
        return self.proc.returncode if self.proc else 0

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no proxy log)"
        return "\n".join(text.splitlines()[-lines:])

    def metric(self, name: str) -> float:
        status, body = http("GET", f"{self.http_url}/metrics")
        assert status == 200, f"proxy /metrics answered {status}: {body[:200]!r}"
        m = re.search(rf"^{re.escape(name)} (\S+)$", body.decode(), re.M)
        assert m, f"{name} not in the proxy's /metrics:\n{body.decode()}"
        return float(m.group(1))

    def raw(self) -> wire.RawConnection:
        return wire.RawConnection("127.0.0.1", self.pulsar_port)


@pytest.fixture
def make_proxy(kilonova_bin, tmp_path, request):
    made: list[Proxy] = []

    def make(broker_urls: list[str], web_urls: list[str], config: str | None = None) -> Proxy:
        root = tmp_path / f"proxy{len(made)}"
        root.mkdir()
        p = Proxy(kilonova_bin, root, broker_urls, web_urls, config)
        made.append(p)
        p.start()
        return p

    yield make
    rep = getattr(request.node, "rep_call", None)
    for p in made:
        if rep is not None and rep.failed:
            print(f"----- proxy log {p.log_path}\n{p.log_tail()}")
        assert p.stop() == 0, "the proxy did not exit cleanly\n" + p.log_tail()


# ---------------------------------------------------------------- a secured broker behind a proxy


@pytest.fixture(scope="module")
def keys(kilonova_bin, tmp_path_factory) -> Keys:
    return Keys(kilonova_bin, tmp_path_factory.mktemp("proxy-keys"))


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Certs:
    return Certs(tmp_path_factory.mktemp("proxy-certs"))


def proxy_config(keys: Keys, certs: Certs | None = None) -> str:
    """Token authentication with the brokers' key; the proxy's own token;
    with `certs`, the TLS ports too."""
    tls = [] if certs is None else [
        "[tls]",
        f"cert_file = {toml_str(certs.server_cert)}",
        f"key_file = {toml_str(certs.server_key)}",
    ]
    return "\n".join(tls + [
        "[auth]",
        "authentication_enabled = true",
        secret_line(keys),
        f"broker_client_auth_token = {toml_str(keys.token(PROXY_ROLE))}",
    ]) + "\n"


def broker_config(keys: Keys) -> str:
    """security_config's broker (authorization on, super-user admin) with
    the proxy's role a proxy role and a super-user, as Pulsar deployments
    configure it."""
    text = security_config(secret_line(keys))
    return text.replace(
        f"super_user_roles = [{toml_str(SUPER_USER)}]",
        f"super_user_roles = [{toml_str(SUPER_USER)}, {toml_str(PROXY_ROLE)}]\n"
        f"proxy_roles = [{toml_str(PROXY_ROLE)}]",
    )


@pytest.fixture
def secured(make_broker, make_proxy, keys):
    b = make_broker(config=broker_config(keys), admin_token=keys.token(SUPER_USER))
    p = make_proxy([b.service_url], [b.http_url], proxy_config(keys))
    return b, p


def proxy_client(proxy: Proxy, token: str, **kwargs) -> pulsar.Client:
    kwargs.setdefault("operation_timeout_seconds", 10)
    return pulsar.Client(proxy.service_url, authentication=pulsar.AuthenticationToken(token),
                         logger=CLIENT_LOGGER, **kwargs)


def connect_cmd(token: str | None, proxy_to_broker_url: str | None = None,
                original_principal: str | None = None) -> bytes:
    fields = [(1, "kilonova-raw-test"), (4, 19)]
    if token is not None:
        fields += [(3, token), (5, "token")]
    if proxy_to_broker_url is not None:
        fields.append((6, proxy_to_broker_url))
    if original_principal is not None:
        fields.append((7, original_principal))
    return wire.frame(wire.base_command(wire.CONNECT, wire.pb(*fields)))


def assert_refused(conn: wire.RawConnection, code: int, what: str) -> str:
    """ERROR(code, no request) then the connection closes; returns the message."""
    kind, f = conn.outcome(timeout=10.0)
    assert kind == "error" and f.type == wire.ERROR, f"{what}: expected ERROR, got {kind} {f!r}"
    assert wire.first(f.body, 1) == NO_REQUEST, f"{what}: request_id {wire.first(f.body, 1)}"
    got = wire.first(f.body, 2)
    assert got == code, f"{what}: error {error_name(got)}, want {error_name(code)}"
    assert conn.wait_closed(timeout=5.0) == [], f"{what}: frames after the error"
    return wire.first(f.body, 3, b"").decode()


# ---------------------------------------------------------------- tests: one broker


def test_a_granted_role_produces_and_consumes_through_the_proxy(secured, keys):
    broker, proxy = secured
    grant(broker, "app", ["produce", "consume"])
    client = proxy_client(proxy, keys.token("app"))
    try:
        round_trip(client, topic_name("via-proxy"), n=20)
    finally:
        client.close()
    assert proxy.metric("pulsar_proxy_new_connections") >= 2, "a lookup and a relay connection"
    assert proxy.metric("pulsar_proxy_binary_bytes") > 0, "relayed bytes are counted"


def test_the_broker_authorizes_the_clients_role_not_the_proxys(secured, keys):
    """The proxy's role is a super-user: were it the one authorized, a role
    with no grant could produce."""
    broker, proxy = secured
    topic = topic_name("no-grant")
    client = proxy_client(proxy, keys.token("nobody"), operation_timeout_seconds=REFUSED_OP_TIMEOUT_S)
    try:
        with pytest.raises(Exception) as e:
            client.create_producer(topic)
        assert "Authoriz" in type(e.value).__name__ + str(e.value), repr(e.value)
    finally:
        client.close()
    grant(broker, "nobody", ["produce"], topic=topic.rsplit("/", 1)[1])
    client = proxy_client(proxy, keys.token("nobody"))
    try:
        client.create_producer(topic).send(b"now allowed")
    finally:
        client.close()


def test_a_lookup_on_the_proxy_answers_connect_through_the_proxy_to_the_owner(secured, keys):
    broker, proxy = secured
    grant(broker, "app", ["consume"])
    with proxy.raw() as conn:
        conn.send(connect_cmd(keys.token("app")))
        conn.expect(wire.CONNECTED)
        conn.send(wire.frame(wire.base_command(wire.LOOKUP, wire.pb((1, topic_name("lk")), (2, 77)))))
        f = conn.expect(wire.LOOKUP_RESPONSE)
        assert wire.first(f.body, 4) == 77, "the client's request id comes back"
        assert wire.first(f.body, 3) == LOOKUP_CONNECT, f
        assert wire.first(f.body, 8) == 1, "proxy_through_service_url"
        assert wire.first(f.body, 1).decode() == broker.service_url
        # The other discovery requests are forwarded too, answered with the
        # client's request ids.
        conn.send(wire.partitioned_metadata_cmd(topic_name("lk"), 79))
        f = conn.expect(wire.PARTITIONED_METADATA_RESPONSE)
        assert wire.first(f.body, 2) == 79 and wire.first(f.body, 1, 0) == 0, f
        conn.send(wire.get_schema_cmd(topic_name("lk"), 80))
        f = conn.expect(wire.GET_SCHEMA_RESPONSE)
        assert wire.first(f.body, 1) == 80, f
        conn.send(topics_of_namespace_cmd("public/default", 81))
        f = conn.expect(GET_TOPICS_OF_NAMESPACE_RESPONSE)
        assert wire.first(f.body, 1) == 81, f
        # Commands that belong on a relayed connection are a protocol error here.
        conn.send(wire.producer_cmd(topic_name("lk"), 1, 78))
        kind, err = conn.outcome(timeout=5.0)
        assert kind == "error" and wire.first(err.body, 2) == NOT_ALLOWED_ERROR, (kind, err)
        assert conn.wait_closed(timeout=5.0) == []


def test_a_partitioned_topic_through_the_proxy(secured, keys):
    broker, proxy = secured
    local = unique("parts")
    admin = bearer(keys.token(SUPER_USER))
    status, body = http("PUT", f"{proxy.http_url}/admin/v2/persistent/public/default/{local}/partitions",
                        b"4", "application/json", headers=admin)
    assert status in (200, 204), f"create partitioned topic through the proxy: {status} {body!r}"
    status, body = http("GET", f"{proxy.http_url}/admin/v2/persistent/public/default/{local}/partitions",
                        headers=admin)
    assert status == 200 and json.loads(body)["partitions"] == 4, (status, body)
    grant(broker, "app", ["produce", "consume"])
    client = proxy_client(proxy, keys.token("app"))
    try:
        topic = f"persistent://public/default/{local}"
        assert len(client.get_topic_partitions(topic)) == 4
        consumer = client.subscribe(topic, unique("sub"), initial_position=pulsar.InitialPosition.Earliest)
        producer = client.create_producer(topic, message_routing_mode=pulsar.PartitionsRoutingMode.RoundRobinDistribution,
                                          batching_enabled=False)
        sent = {f"m{i}".encode() for i in range(16)}
        for m in sorted(sent):
            producer.send(m)
        got = receive_n(consumer, len(sent))
        assert {m.data() for m in got} == sent
        assert {m.topic_name() for m in got} == {f"{topic}-partition-{i}" for i in range(4)}
    finally:
        client.close()


def test_admin_rest_through_the_proxy_passes_the_clients_token(secured, keys):
    broker, proxy = secured
    url = f"{proxy.http_url}/admin/v2/tenants"
    status, body = http("GET", url, headers=bearer(keys.token(SUPER_USER)))
    assert status == 200 and "public" in json.loads(body), (status, body)
    status, body = http("GET", url)
    assert status == 401 and json.loads(body).get("reason"), (status, body)
    status, body = http("GET", url, headers=bearer(keys.token("app")))
    assert status == 403 and json.loads(body).get("reason"), (status, body)
    # The HTTP lookup, too.
    grant(broker, "app", ["produce"])
    status, body = http("GET", f"{proxy.http_url}/lookup/v2/topic/persistent/public/default/{unique('h')}",
                        headers=bearer(keys.token("app")))
    assert status == 200 and json.loads(body)["brokerUrl"] == broker.service_url, (status, body)
    status, _ = http("GET", f"{proxy.http_url}/not-forwarded")
    assert status == 404


def test_a_bad_token_is_refused_by_the_proxy(secured, keys):
    broker, proxy = secured
    grant(broker, "app", ["produce", "consume"])
    forged = keys.token("app")[:-4] + "AAAA"
    for token, what in ((forged, "a forged token"), (None, "no token")):
        with proxy.raw() as conn:
            conn.send(connect_cmd(token))
            assert_refused(conn, AUTHENTICATION_ERROR, what)
        # Not on a relay either: the proxy checks before connecting anywhere.
        with proxy.raw() as conn:
            conn.send(connect_cmd(token, proxy_to_broker_url=broker.service_url))
            assert_refused(conn, AUTHENTICATION_ERROR, f"{what} on a relay")
    client = proxy_client(proxy, forged, operation_timeout_seconds=REFUSED_OP_TIMEOUT_S)
    try:
        with pytest.raises(Exception):
            client.create_producer(topic_name("forged"))
    finally:
        client.close()


def test_connections_close_when_the_clients_token_expires(secured, keys):
    """The proxy checks a token at CONNECT only: its lookup and relay
    connections must not outlive it."""
    broker, proxy = secured
    grant(broker, "app", ["produce"])
    token = keys.token("app", expiry="3s")
    lookup_conn, relay_conn = proxy.raw(), proxy.raw()
    try:
        lookup_conn.send(connect_cmd(token))
        lookup_conn.expect(wire.CONNECTED)
        relay_conn.send(connect_cmd(token, proxy_to_broker_url=broker.service_url))
        relay_conn.expect(wire.CONNECTED)
        # Both stay usable until then (PINGs answered), and close after.
        for conn in (lookup_conn, relay_conn):
            conn.wait_closed(timeout=15.0)
    finally:
        lookup_conn.close()
        relay_conn.close()
    # The proxy logs why once it dropped the connection (just after the close).
    for what in ("relay", "lookup connection"):
        wait_until(lambda: f"{what} closed: the client's token expired" in proxy.log_path.read_text(),
                   5.0, f"the proxy closed the {what} for the expired token\n{proxy.log_tail()}")
    # The expired token opens nothing any more.
    with proxy.raw() as conn:
        conn.send(connect_cmd(token))
        assert_refused(conn, AUTHENTICATION_ERROR, "an expired token")


def test_a_relay_to_an_address_that_is_not_a_broker_is_refused(secured, keys):
    broker, proxy = secured
    # Something listening that is not a broker (what an attacker would reach).
    with socket.socket() as target:
        target.bind(("127.0.0.1", 0))
        target.listen(8)
        target.settimeout(0.5)
        port = target.getsockname()[1]
        for url in (f"pulsar://127.0.0.1:{port}", f"pulsar://127.0.0.1:{broker.http_port}",
                    "http://127.0.0.1:22", "pulsar://user@127.0.0.1:6650/x"):
            with proxy.raw() as conn:
                conn.send(connect_cmd(keys.token("app"), proxy_to_broker_url=url))
                message = assert_refused(conn, NOT_ALLOWED_ERROR, f"relay to {url}")
                assert "broker" in message or "URL" in message, message
        with pytest.raises(socket.timeout):
            target.accept()
    assert proxy.metric("kilonova_proxy_refused_relays") == 4
    # The broker itself is relayed to.
    with proxy.raw() as conn:
        conn.send(connect_cmd(keys.token("app"), proxy_to_broker_url=broker.service_url))
        f = conn.expect(wire.CONNECTED)
        assert not wire.first(f.body, 1, b"").startswith(b"kilonova-proxy"), "the broker's CONNECTED"


def test_the_broker_refuses_original_principal_from_other_roles_and_demands_it_from_proxies(secured, keys):
    broker, _ = secured

    def connect_direct(token: str, original: str | None) -> wire.RawConnection:
        conn = wire.RawConnection("127.0.0.1", broker.pulsar_port)
        conn.send(connect_cmd(token, original_principal=original))
        return conn

    with connect_direct(keys.token("app"), SUPER_USER) as conn:
        msg = assert_refused(conn, AUTHORIZATION_ERROR, "a client claiming to be admin")
        assert "proxy" in msg, msg
    with connect_direct(keys.token(PROXY_ROLE), None) as conn:
        assert_refused(conn, AUTHORIZATION_ERROR, "a proxy naming nobody")
    with connect_direct(keys.token(PROXY_ROLE), PROXY_ROLE) as conn:
        assert_refused(conn, AUTHORIZATION_ERROR, "a proxy naming a proxy role")
    with connect_direct(keys.token(PROXY_ROLE), "app") as conn:
        conn.expect(wire.CONNECTED)
    with connect_direct(keys.token("app"), None) as conn:
        conn.expect(wire.CONNECTED)


def test_tls_clients_reach_the_broker_through_the_proxys_tls_ports(make_broker, make_proxy, keys, certs):
    """pulsar+ssl:// and https:// on the proxy, plain between proxy and
    broker: the lookup's TLS URL names the broker to be relayed to."""
    b = make_broker(config=broker_config(keys), admin_token=keys.token(SUPER_USER))
    p = make_proxy([b.service_url], [b.http_url], proxy_config(keys, certs))
    assert p.pulsar_tls_port and p.https_port
    grant(b, "app", ["produce", "consume"])
    client = pulsar.Client(f"pulsar+ssl://127.0.0.1:{p.pulsar_tls_port}",
                           authentication=pulsar.AuthenticationToken(keys.token("app")),
                           tls_trust_certs_file_path=str(certs.ca), operation_timeout_seconds=10,
                           logger=CLIENT_LOGGER)
    try:
        round_trip(client, topic_name("tls-via-proxy"), n=5)
    finally:
        client.close()
    status, body = http("GET", f"https://127.0.0.1:{p.https_port}/admin/v2/tenants",
                        headers=bearer(keys.token(SUPER_USER)), context=tls_context(certs.ca))
    assert status == 200 and "public" in json.loads(body), (status, body)


def test_connections_beyond_max_connections_are_refused(make_broker, make_proxy):
    b = make_broker()
    p = make_proxy([b.service_url], [b.http_url], "max_connections = 2\n")
    held = [p.raw(), p.raw()]
    try:
        for c in held:
            c.send(connect_cmd(None))
            c.expect(wire.CONNECTED)
        with p.raw() as extra:
            assert extra.outcome(timeout=5.0)[0] == "closed"
        assert p.metric("pulsar_proxy_rejected_connections") == 1
        assert p.metric("pulsar_proxy_active_connections") == 2
    finally:
        for c in held:
            c.close()


# ---------------------------------------------------------------- a cluster behind one proxy


def test_topics_on_every_broker_of_a_cluster_through_one_proxy_address(cluster, make_proxy):
    """The proxy knows broker 0 only: the others' addresses come from
    lookup answers (redirects and owners), and relays to them are allowed."""
    b0 = cluster.broker(0)
    proxy = make_proxy([b0.service_url], [b0.http_url])
    topics = [ts[0] for ts in cluster.topics_in_bundles(per_bundle=1)]
    client = pulsar.Client(proxy.service_url, operation_timeout_seconds=20, logger=CLIENT_LOGGER)
    try:
        consumers = {t: client.subscribe(t, "s", initial_position=pulsar.InitialPosition.Earliest)
                     for t in topics}
        for t in topics:
            p = client.create_producer(t)
            p.send(t.encode())
            p.close()
        for t, c in consumers.items():
            assert receive_n(c, 1)[0].data() == t.encode()
    finally:
        client.close()
    owners = {cluster.owner_of(t) for t in topics}
    assert len(owners) > 1, f"every topic landed on one broker ({owners}): the test proves nothing"
    # Admin requests for a topic are redirected to its owner; the proxy follows.
    for t in topics:
        local = t.rsplit("/", 1)[1]
        status, body = http("GET", f"{proxy.http_url}/admin/v2/persistent/public/default/"
                                   f"{urllib.parse.quote(local)}/stats")
        assert status == 200, f"stats of {t} through the proxy: {status} {body[:300]!r}"
        assert "s" in json.loads(body)["subscriptions"]


# The secured cluster's key is fixed at import: the cluster fixture's
# parameters are known before any test runs.
CLUSTER_SECRET = os.urandom(32)
CLUSTER_KEY_LINE = f'token_secret_key = "data:;base64,{base64.b64encode(CLUSTER_SECRET).decode()}"'


def cluster_token(role: str) -> str:
    return craft_jwt(CLUSTER_SECRET, {"sub": role})


SECURED_CLUSTER = {
    "extra_toml": "\n".join([
        "",
        "[auth]",
        "authentication_enabled = true",
        "authorization_enabled = true",
        f"super_user_roles = [{toml_str(SUPER_USER)}, {toml_str(PROXY_ROLE)}]",
        f"proxy_roles = [{toml_str(PROXY_ROLE)}]",
        CLUSTER_KEY_LINE,
        f"broker_client_auth_token = {toml_str(cluster_token(SUPER_USER))}",
    ]) + "\n",
    "admin_token": cluster_token(SUPER_USER),
}


@pytest.mark.parametrize("cluster", [SECURED_CLUSTER], indirect=True)
def test_a_secured_cluster_authorizes_each_client_through_one_proxy(cluster, make_proxy):
    """Token authentication on the proxy, authorization on every broker: the
    proxy's links to each owner act for the client's role, so a granted role
    reaches topics on every broker and a role without a grant reaches none."""
    b0 = cluster.broker(0)
    config = "\n".join([
        "[auth]",
        "authentication_enabled = true",
        CLUSTER_KEY_LINE,
        f"broker_client_auth_token = {toml_str(cluster_token(PROXY_ROLE))}",
    ]) + "\n"
    proxy = make_proxy([b0.service_url], [b0.http_url], config)
    admin = bearer(cluster_token(SUPER_USER))
    status, body = http("POST", f"{proxy.http_url}/admin/v2/namespaces/public/default/permissions/app",
                        json.dumps(["produce", "consume"]).encode(), "application/json", headers=admin)
    assert status in (200, 204), f"grant through the proxy: {status} {body!r}"
    topics = [ts[0] for ts in cluster.topics_in_bundles(per_bundle=1)]
    client = pulsar.Client(proxy.service_url, authentication=pulsar.AuthenticationToken(cluster_token("app")),
                           operation_timeout_seconds=20, logger=CLIENT_LOGGER)
    try:
        for t in topics:
            round_trip(client, t, n=3)
    finally:
        client.close()
    owners = {cluster.owner_of(t) for t in topics}
    assert len(owners) > 1, f"every topic landed on one broker ({owners}): the test proves nothing"
    stranger = pulsar.Client(proxy.service_url, authentication=pulsar.AuthenticationToken(cluster_token("nobody")),
                             operation_timeout_seconds=REFUSED_OP_TIMEOUT_S, logger=CLIENT_LOGGER)
    try:
        for t in topics:
            with pytest.raises(Exception) as e:
                stranger.create_producer(t)
            assert "Authoriz" in type(e.value).__name__ + str(e.value), repr(e.value)
    finally:
        stranger.close()


def test_geo_replication_reaches_a_remote_cluster_through_its_proxy(make_broker, make_proxy):
    """Cluster "east" registers "west" by its proxy's address only: the
    replicator looks its topic up there and is relayed to west's broker."""
    from test_geo_replication import config as geo_config, replicated_namespace, rest
    east = make_broker("east", config=geo_config("east"))
    west = make_broker("west", config=geo_config("west"))
    west_proxy = make_proxy([west.service_url], [west.http_url])
    rest(east, "PUT", "/admin/v2/clusters/west",
         {"serviceUrl": west_proxy.http_url, "brokerServiceUrl": west_proxy.service_url})
    rest(west, "PUT", "/admin/v2/clusters/east",
         {"serviceUrl": east.http_url, "brokerServiceUrl": east.service_url})
    ns = replicated_namespace({"east": east, "west": west})
    topic = f"persistent://{ns}/{unique('geo')}"
    west_client = pulsar.Client(west.service_url, operation_timeout_seconds=10,
                                logger=CLIENT_LOGGER)
    east_client = pulsar.Client(east.service_url, operation_timeout_seconds=10,
                                logger=CLIENT_LOGGER)
    try:
        consumer = west_client.subscribe(topic, "s")
        producer = east_client.create_producer(topic)
        for i in range(5):
            producer.send(f"m{i}".encode())
        got = [m.data() for m in receive_n(consumer, 5, timeout=20)]
        assert got == [f"m{i}".encode() for i in range(5)]
    finally:
        east_client.close()
        west_client.close()
    # The messages went through the proxy: it relayed a connection.
    assert west_proxy.metric("pulsar_proxy_new_connections") >= 2
