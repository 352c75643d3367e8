"""Security end to end: token authentication on the binary protocol and the
admin API, authorization (super-users, tenant admins, namespace and topic
grants), token refresh with AUTH_CHALLENGE, TLS ports, and that neither tokens
nor keys reach the broker's log.

Keys and tokens are made with `kilonova tokens`; the tokens no tool would make
(expired, signed with the wrong key or algorithm) are crafted here (HS256 is
a few lines of hmac). Certificates come from the `openssl` CLI at test time.
Raw-frame checks use wire.py's codec with the auth fields added here.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import ssl
import subprocess
import time
import urllib.error
from pathlib import Path

import pulsar
import pytest

import wire
from conftest import (
    CLIENT_LOGGER,
    bearer,
    http,
    make_client,
    receive_n,
    tls_context,
    topic_name,
    unique,
    wait_until,
)

NO_REQUEST = (1 << 64) - 1
AUTHENTICATION_ERROR = 3
AUTHORIZATION_ERROR = 4
GET_TOPICS_OF_NAMESPACE = 32
GET_TOPICS_OF_NAMESPACE_RESPONSE = 33
AUTH_CHALLENGE = 36
AUTH_RESPONSE = 37
LOOKUP_FAILED = 2
PARTITIONED_METADATA_FAILED = 1

SUPER_USER = "admin"
# A refused token, seen by the C++ client as a disconnect, surfaces as a
# timeout of the operation: keep it short.
REFUSED_OP_TIMEOUT_S = 2


# ---------------------------------------------------------------- keys, tokens, certificates


def run_cli(binary: Path, *args: str) -> str:
    proc = subprocess.run(
        [str(binary), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=30
    )
    assert proc.returncode == 0, f"kilonova {' '.join(args[:2])} failed: {proc.stderr}"
    return proc.stdout.strip()


class Keys:
    """A secret key (HS256) and RS256 and ES256 key pairs, made by `kilonova tokens`."""

    def __init__(self, binary: Path, directory: Path):
        self.binary = binary
        self.secret = directory / "secret.key"
        run_cli(binary, "tokens", "create-secret-key", "--output", str(self.secret))
        self.pairs: dict[str, tuple[Path, Path]] = {}
        for alg in ("RS256", "ES256"):
            private, public = directory / f"{alg}.private.key", directory / f"{alg}.public.key"
            run_cli(
                binary, "tokens", "create-key-pair", "--algorithm", alg,
                "--output-private-key", str(private), "--output-public-key", str(public),
            )
            self.pairs[alg] = (private, public)

    @property
    def secret_bytes(self) -> bytes:
        return self.secret.read_bytes()

    def token(self, role: str, expiry: str | None = None, alg: str | None = None) -> str:
        """A token for `role`: HS256 with the secret key, or signed with the
        `alg` (RS256/ES256) private key."""
        key = ["--secret-key", f"file:{self.secret}"] if alg is None else [
            "--private-key", f"file:{self.pairs[alg][0]}"
        ]
        extra = ["--expiry-time", expiry] if expiry else []
        return run_cli(self.binary, "tokens", "create", *key, "--subject", role, *extra)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def craft_jwt(secret: bytes, claims: dict, alg: str = "HS256") -> str:
    """An HMAC-SHA256-signed JWT whose header names `alg` (the signature is
    always HMAC-SHA256 with `secret`)."""
    header = b64url(json.dumps({"alg": alg, "typ": "JWT"}, separators=(",", ":")).encode())
    payload = b64url(json.dumps(claims, separators=(",", ":")).encode())
    signing_input = f"{header}.{payload}".encode()
    return f"{header}.{payload}.{b64url(hmac.new(secret, signing_input, hashlib.sha256).digest())}"


def openssl(*args: str, cwd: Path) -> None:
    proc = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"openssl {args[0]} failed: {proc.stderr}"


class Certs:
    """A CA, a server certificate it signed for 127.0.0.1/localhost, and an
    unrelated CA no server certificate chains to."""

    def __init__(self, d: Path):
        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
        for name in ("ca", "other-ca"):
            openssl(
                "req", "-x509", *ec, "-keyout", f"{name}.key", "-out", f"{name}.crt",
                "-days", "2", "-subj", f"/CN=kilonova test {name}",
                "-addext", "basicConstraints=critical,CA:TRUE",
                "-addext", "keyUsage=critical,keyCertSign,cRLSign",
                cwd=d,
            )
        openssl("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost", cwd=d)
        (d / "server.ext").write_text(
            "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
            "basicConstraints=critical,CA:FALSE\n"
            "keyUsage=critical,digitalSignature\n"
            "extendedKeyUsage=serverAuth\n"
        )
        openssl(
            "x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "server.crt", "-days", "2", "-extfile", "server.ext",
            cwd=d,
        )
        # Client certificates: one from the CA, one from the other CA.
        (d / "client.ext").write_text(
            "basicConstraints=critical,CA:FALSE\n"
            "keyUsage=critical,digitalSignature\n"
            "extendedKeyUsage=clientAuth\n"
        )
        for name, ca in (("client", "ca"), ("stranger", "other-ca")):
            openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=d)
            openssl(
                "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
                "-CAcreateserial", "-out", f"{name}.crt", "-days", "2", "-extfile", "client.ext",
                cwd=d,
            )
        self.client_cert, self.client_key = d / "client.crt", d / "client.key"
        self.stranger_cert, self.stranger_key = d / "stranger.crt", d / "stranger.key"
        self.ca = d / "ca.crt"
        self.other_ca = d / "other-ca.crt"
        self.server_cert = d / "server.crt"
        self.server_key = d / "server.key"


@pytest.fixture(scope="module")
def keys(kilonova_bin, tmp_path_factory) -> Keys:
    return Keys(kilonova_bin, tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Certs:
    return Certs(tmp_path_factory.mktemp("certs"))


def toml_str(s: str | Path) -> str:
    return json.dumps(str(s))  # a JSON string is a TOML basic string


def security_config(
    key_line: str,
    *,
    authorization: bool = True,
    refresh_secs: int | None = None,
    metrics_auth: bool = False,
    certs: Certs | None = None,
    plain_ports: bool = True,
    require_client_cert: bool = False,
) -> str:
    """TOML for a broker with token authentication (`key_line` is the
    token_secret_key or token_public_key line)."""
    lines = [f"plain_ports_enabled = {str(plain_ports).lower()}"]
    lines += ["[storage]", "log_file_mib = 16"]
    lines += [
        "[auth]",
        "authentication_enabled = true",
        f"authorization_enabled = {str(authorization).lower()}",
        f"super_user_roles = [{toml_str(SUPER_USER)}]",
        key_line,
        'token_auth_claim = "sub"',
        f"authenticate_metrics_endpoint = {str(metrics_auth).lower()}",
    ]
    if refresh_secs is not None:
        lines.append(f"auth_refresh_check_secs = {refresh_secs}")
    if certs is not None:
        lines += [
            "[tls]",
            f"cert_file = {toml_str(certs.server_cert)}",
            f"key_file = {toml_str(certs.server_key)}",
        ]
        if require_client_cert:
            lines += [f"trust_certs_file = {toml_str(certs.ca)}", "require_trusted_client_cert = true"]
    return "\n".join(lines) + "\n"


def secret_line(keys: Keys) -> str:
    return f"token_secret_key = {toml_str('file:' + str(keys.secret))}"


def public_line(keys: Keys, alg: str) -> str:
    return f"token_public_key = {toml_str('file:' + str(keys.pairs[alg][1]))}"


@pytest.fixture
def secure_broker(make_broker, keys):
    """HS256 token authentication and authorization; super-user `admin`."""
    return make_broker(config=security_config(secret_line(keys)), admin_token=keys.token(SUPER_USER))


# ---------------------------------------------------------------- raw frames with credentials


def connect_with(token: str | bytes | None, method: str | None = "token") -> bytes:
    """CONNECT carrying `token` (None: no credentials at all)."""
    if token is None:
        fields = [(1, "kilonova-raw-test"), (4, 19)]
    else:
        fields = [(1, "kilonova-raw-test"), (3, token), (4, 19), (5, method)]
    return wire.frame(wire.base_command(wire.CONNECT, wire.pb(*fields)))


def auth_response(token: str) -> bytes:
    body = wire.pb((1, "kilonova-raw-test"), (2, wire.pb((1, "token"), (2, token))), (3, 19))
    return wire.frame(wire.base_command(AUTH_RESPONSE, body))


def topics_of_namespace_cmd(namespace: str, request_id: int) -> bytes:
    return wire.frame(wire.base_command(GET_TOPICS_OF_NAMESPACE, wire.pb((1, request_id), (2, namespace), (3, 0))))


def lookup_cmd(topic: str, request_id: int) -> bytes:
    return wire.frame(wire.base_command(wire.LOOKUP, wire.pb((1, topic), (2, request_id))))


def raw(broker) -> wire.RawConnection:
    return wire.RawConnection("127.0.0.1", broker.pulsar_port)


def raw_connected(broker, token: str) -> wire.RawConnection:
    conn = raw(broker)
    conn.send(connect_with(token))
    conn.expect(wire.CONNECTED)
    return conn


def error_name(code) -> str:
    return wire.SERVER_ERRORS.get(code, str(code))


def assert_refused_and_closed(conn: wire.RawConnection, what: str) -> str:
    """The broker answered ERROR(AuthenticationError, no request) and closed;
    returns the error message."""
    kind, f = conn.outcome(timeout=5.0)
    assert kind == "error" and f.type == wire.ERROR, f"{what}: expected ERROR, got {kind} {f!r}"
    assert wire.first(f.body, 1) == NO_REQUEST, f"{what}: request_id {wire.first(f.body, 1)}"
    code = wire.first(f.body, 2)
    assert code == AUTHENTICATION_ERROR, f"{what}: error {error_name(code)}, want AuthenticationError"
    rest = conn.wait_closed(timeout=5.0)
    assert rest == [], f"{what}: frames after the error: {rest}"
    return wire.first(f.body, 3, b"").decode()


# ---------------------------------------------------------------- metrics and admin helpers


def metric(broker, name: str, token: str | None = None) -> float:
    status, body = http("GET", f"{broker.http_url}/metrics", headers=bearer(token))
    assert status == 200, f"/metrics answered {status}: {body[:200]!r}"
    m = re.search(rf"^{re.escape(name)}(?:\{{[^}}]*\}})? (\S+)$", body.decode(), re.M)
    assert m, f"{name} not in /metrics"
    return float(m.group(1))


def admin(broker, method: str, path: str, token: str | None, body=None, base: str | None = None,
          context=None) -> tuple[int, object]:
    data = json.dumps(body).encode() if body is not None else None
    status, raw_body = http(
        method, f"{base or broker.http_url}{path}", data,
        "application/json" if data is not None else None, headers=bearer(token), context=context,
    )
    try:
        return status, json.loads(raw_body) if raw_body.strip() else None
    except ValueError:
        return status, raw_body


def assert_status(result, want: int, what: str):
    status, body = result
    assert status == want, f"{what}: answered {status} {body!r}, want {want}"
    if want in (401, 403):
        assert isinstance(body, dict) and body.get("reason"), f"{what}: {want} without a reason: {body!r}"
    return body


def grant(broker, role: str, actions: list[str], topic: str | None = None, ns: str = "public/default"):
    path = f"/admin/v2/namespaces/{ns}/permissions/{role}"
    if topic is not None:
        path = f"/admin/v2/persistent/{ns}/{topic}/permissions/{role}"
    status, body = admin(broker, "POST", path, broker.admin_token, actions)
    assert status in (200, 204), f"grant {actions} to {role} on {topic or ns}: {status} {body!r}"


def revoke(broker, role: str, topic: str | None = None, ns: str = "public/default"):
    path = f"/admin/v2/namespaces/{ns}/permissions/{role}"
    if topic is not None:
        path = f"/admin/v2/persistent/{ns}/{topic}/permissions/{role}"
    status, body = admin(broker, "DELETE", path, broker.admin_token)
    assert status in (200, 204), f"revoke {role} on {topic or ns}: {status} {body!r}"


def token_client(broker, token, **kwargs) -> pulsar.Client:
    return make_client(broker, authentication=pulsar.AuthenticationToken(token), **kwargs)


def round_trip(client: pulsar.Client, topic: str, n: int = 5) -> None:
    """Publishes `n` messages and receives them on a fresh subscription."""
    consumer = client.subscribe(topic, unique("sub"), initial_position=pulsar.InitialPosition.Earliest)
    producer = client.create_producer(topic)
    sent = [f"msg-{i}".encode() for i in range(n)]
    for p in sent:
        producer.send(p)
    got = receive_n(consumer, n, what=f"messages on {topic}")
    assert [m.data() for m in got] == sent
    for m in got:
        consumer.acknowledge(m)
    producer.close()
    consumer.close()


# ---------------------------------------------------------------- authentication


def test_hs256_token_client_produces_and_consumes(secure_broker, keys):
    client = token_client(secure_broker, keys.token(SUPER_USER))
    try:
        round_trip(client, topic_name("hs256"))
    finally:
        client.close()


@pytest.mark.parametrize("alg", ["RS256", "ES256"])
def test_key_pair_token_client_produces_and_consumes(make_broker, keys, alg):
    b = make_broker(config=security_config(public_line(keys, alg)), admin_token=keys.token(SUPER_USER, alg=alg))
    client = token_client(b, keys.token(SUPER_USER, alg=alg))
    try:
        round_trip(client, topic_name(alg.lower()))
    finally:
        client.close()


# ---------------------------------------------------------------- key rotation


def new_secret(binary: Path, directory: Path, name: str) -> Path:
    path = directory / name
    run_cli(binary, "tokens", "create-secret-key", "--output", str(path))
    return path


def secret_token(binary: Path, secret: Path, role: str, kid: str | None = None) -> str:
    extra = ["--key-id", kid] if kid else []
    return run_cli(binary, "tokens", "create", "--secret-key", f"file:{secret}", "--subject", role, *extra)


def assert_round_trips(broker, tokens: list[tuple[str, str]]) -> None:
    """A real client with each (what, token) produces and consumes."""
    for what, token in tokens:
        client = token_client(broker, token)
        try:
            round_trip(client, topic_name("keys"))
        except Exception as e:
            raise AssertionError(f"the {what} token was refused: {e!r}") from e
        finally:
            client.close()


def test_tokens_of_the_old_and_the_new_key_both_work_during_a_rotation(make_broker, keys, kilonova_bin, tmp_path):
    """Two secret keys at once (token_secret_key and token_secret_keys): real
    clients with a token of either key produce and consume; a third key's
    token is refused."""
    old = new_secret(kilonova_bin, tmp_path, "old.key")
    stranger = new_secret(kilonova_bin, tmp_path, "stranger.key")
    key_lines = (
        f"{secret_line(keys)}\n"
        f"token_secret_keys = [{toml_str('file:' + str(old))}]"
    )
    b = make_broker(config=security_config(key_lines), admin_token=keys.token(SUPER_USER))
    assert_round_trips(b, [
        ("new key", keys.token(SUPER_USER)),
        ("old key", secret_token(kilonova_bin, old, SUPER_USER)),
    ])
    with raw(b) as conn:
        conn.send(connect_with(secret_token(kilonova_bin, stranger, SUPER_USER)))
        assert_refused_and_closed(conn, "a third key's token")


def test_jwks_keys_are_picked_by_kid(make_broker, keys, kilonova_bin, tmp_path):
    """A JWK Set file with two secret keys named by kid, beside an RS256
    public key: tokens naming either kid verify with real clients, as do
    RS256 tokens; a token naming the wrong kid is refused."""
    k2024 = new_secret(kilonova_bin, tmp_path, "2024.key")
    k2025 = new_secret(kilonova_bin, tmp_path, "2025.key")
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [
        {"kty": "oct", "kid": kid, "alg": "HS256", "k": b64url(path.read_bytes())}
        for kid, path in (("2024", k2024), ("2025", k2025))
    ]}))
    key_lines = f"{public_line(keys, 'RS256')}\ntoken_jwks_file = {toml_str(jwks)}"
    b = make_broker(config=security_config(key_lines), admin_token=keys.token(SUPER_USER, alg="RS256"))
    assert_round_trips(b, [
        ("kid 2024", secret_token(kilonova_bin, k2024, SUPER_USER, kid="2024")),
        ("kid 2025", secret_token(kilonova_bin, k2025, SUPER_USER, kid="2025")),
        ("RS256", keys.token(SUPER_USER, alg="RS256")),
    ])
    with raw(b) as conn:
        conn.send(connect_with(secret_token(kilonova_bin, k2025, SUPER_USER, kid="2024")))
        assert_refused_and_closed(conn, "the 2025 key's token naming kid 2024")


def bad_token(kind: str, keys: Keys) -> str | None:
    now = int(time.time())
    if kind == "missing":
        return None
    if kind == "malformed":
        return "this-is.not-a.jwt"
    if kind == "unsigned_alg_none":
        return b64url(b'{"alg":"none"}') + "." + b64url(b'{"sub":"admin"}') + "."
    if kind == "bad_signature":
        return craft_jwt(b"not-the-broker-secret-key-000000", {"sub": SUPER_USER})
    if kind == "expired":
        return craft_jwt(keys.secret_bytes, {"sub": SUPER_USER, "exp": now - 60})
    if kind == "no_role_claim":
        return craft_jwt(keys.secret_bytes, {"name": SUPER_USER})
    if kind == "not_yet_valid":
        return craft_jwt(keys.secret_bytes, {"sub": SUPER_USER, "nbf": now + 3600})
    raise AssertionError(kind)


BAD_KINDS = [
    "missing", "malformed", "unsigned_alg_none", "bad_signature", "expired", "no_role_claim",
    "not_yet_valid",
]


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_bad_token_is_refused_with_authentication_error_while_a_good_client_keeps_working(
    secure_broker, keys, kind
):
    topic = topic_name("good")
    client = token_client(secure_broker, keys.token(SUPER_USER))
    try:
        consumer = client.subscribe(topic, "s")
        producer = client.create_producer(topic)
        producer.send(b"before")
        with raw(secure_broker) as conn:
            conn.send(connect_with(bad_token(kind, keys)))
            assert_refused_and_closed(conn, kind)
        producer.send(b"after")
        got = receive_n(consumer, 2, what="the good client's messages")
        assert [m.data() for m in got] == [b"before", b"after"]
    finally:
        client.close()


def test_unknown_auth_method_is_refused(secure_broker, keys):
    with raw(secure_broker) as conn:
        conn.send(connect_with(keys.token(SUPER_USER), method="basic"))
        message = assert_refused_and_closed(conn, "method basic")
    assert "basic" in message


def test_hs256_token_against_an_rs256_public_key_is_refused(make_broker, keys):
    """The algorithm-confusion attack: an HS256 token whose HMAC key is the
    broker's public key must not verify."""
    public_bytes = keys.pairs["RS256"][1].read_bytes()
    b = make_broker(config=security_config(public_line(keys, "RS256")), admin_token=keys.token(SUPER_USER, alg="RS256"))
    forged = craft_jwt(public_bytes, {"sub": SUPER_USER})
    with raw(b) as conn:
        conn.send(connect_with(forged))
        message = assert_refused_and_closed(conn, "HS256 against RS256 key")
    assert "algorithm" in message.lower(), message
    # An HS256 token from the CLI (a real secret) is refused too; RS256 is accepted.
    with raw(b) as conn:
        conn.send(connect_with(keys.token(SUPER_USER)))
        assert_refused_and_closed(conn, "HS256 CLI token against RS256 key")
    with raw(b) as conn:
        conn.send(connect_with(keys.token(SUPER_USER, alg="RS256")))
        conn.expect(wire.CONNECTED)


@pytest.mark.parametrize("kind", ["missing", "bad_signature", "expired"])
def test_python_client_with_a_refused_token_cannot_produce_or_consume(secure_broker, keys, kind):
    token = bad_token(kind, keys)
    kwargs = {} if token is None else {"authentication": pulsar.AuthenticationToken(token)}
    client = make_client(secure_broker, operation_timeout_seconds=REFUSED_OP_TIMEOUT_S, **kwargs)
    try:
        with pytest.raises(pulsar.PulsarException):
            client.create_producer(topic_name("refused"))
        with pytest.raises(pulsar.PulsarException):
            client.subscribe(topic_name("refused"), "s")
    finally:
        client.close()


def test_metrics_count_authentication_successes_and_failures(secure_broker, keys):
    ok0 = metric(secure_broker, "pulsar_authentication_success_total")
    bad0 = metric(secure_broker, "pulsar_authentication_failures_total")
    good = keys.token("alice")
    for _ in range(2):
        raw_connected(secure_broker, good).close()
    for kind in ("malformed", "bad_signature", "expired"):
        with raw(secure_broker) as conn:
            conn.send(connect_with(bad_token(kind, keys)))
            assert_refused_and_closed(conn, kind)
    assert metric(secure_broker, "pulsar_authentication_success_total") >= ok0 + 2
    assert metric(secure_broker, "pulsar_authentication_failures_total") == bad0 + 3


# ---------------------------------------------------------------- authorization (binary protocol)


def expect_authorization_error(conn: wire.RawConnection, request_id: int, what: str) -> None:
    f = conn.expect(wire.ERROR)
    assert wire.first(f.body, 1) == request_id, f"{what}: {f!r}"
    code = wire.first(f.body, 2)
    assert code == AUTHORIZATION_ERROR, f"{what}: error {error_name(code)}, want AuthorizationError"


def test_role_without_grant_is_refused_producer_subscribe_lookup_and_metadata(secure_broker, keys):
    topic = topic_name("nogrant")
    with raw_connected(secure_broker, keys.token("alice")) as conn:
        conn.send(wire.producer_cmd(topic, 1, 1))
        expect_authorization_error(conn, 1, "PRODUCER")
        conn.send(wire.subscribe_cmd(topic, "s", 1, 2))
        expect_authorization_error(conn, 2, "SUBSCRIBE")
        conn.send(lookup_cmd(topic, 3))
        f = conn.expect(wire.LOOKUP_RESPONSE)
        assert wire.first(f.body, 4) == 3 and wire.first(f.body, 3) == LOOKUP_FAILED, f
        assert wire.first(f.body, 6) == AUTHORIZATION_ERROR, f"LOOKUP: {error_name(wire.first(f.body, 6))}"
        conn.send(wire.partitioned_metadata_cmd(topic, 4))
        f = conn.expect(wire.PARTITIONED_METADATA_RESPONSE)
        assert wire.first(f.body, 2) == 4 and wire.first(f.body, 3) == PARTITIONED_METADATA_FAILED, f
        assert wire.first(f.body, 4) == AUTHORIZATION_ERROR, f"METADATA: {error_name(wire.first(f.body, 4))}"
        conn.send(topics_of_namespace_cmd("public/default", 5))
        expect_authorization_error(conn, 5, "GET_TOPICS_OF_NAMESPACE")
        # The connection stays usable: authorization errors do not close it.
        conn.send(wire.frame(wire.base_command(wire.PING, b"")))
        conn.expect(wire.PONG)
    client = token_client(secure_broker, keys.token("alice"), operation_timeout_seconds=5)
    try:
        with pytest.raises(pulsar.PulsarException):
            client.create_producer(topic)
        with pytest.raises(pulsar.PulsarException):
            client.subscribe(topic, "s")
    finally:
        client.close()


def test_namespace_grant_of_produce_allows_producing_and_lookup_but_not_subscribing(secure_broker, keys):
    topic = topic_name("nsgrant")
    grant(secure_broker, "alice", ["produce"])
    status, perms = admin(secure_broker, "GET", "/admin/v2/namespaces/public/default/permissions", secure_broker.admin_token)
    assert status == 200 and perms.get("alice") == ["produce"], (status, perms)
    with raw_connected(secure_broker, keys.token("alice")) as conn:
        conn.send(lookup_cmd(topic, 1))
        f = conn.expect(wire.LOOKUP_RESPONSE)
        assert wire.first(f.body, 3) != LOOKUP_FAILED, f
        conn.send(wire.producer_cmd(topic, 1, 2))
        conn.expect(wire.PRODUCER_SUCCESS)
        conn.send(wire.subscribe_cmd(topic, "s", 1, 3))
        expect_authorization_error(conn, 3, "SUBSCRIBE with only produce")
        conn.send(topics_of_namespace_cmd("public/default", 4))
        conn.expect(GET_TOPICS_OF_NAMESPACE_RESPONSE)
    client = token_client(secure_broker, keys.token("alice"))
    try:
        client.create_producer(topic).send(b"granted")
        with pytest.raises(pulsar.PulsarException):
            client.subscribe(topic, "s")
        # Granting consume too takes effect for the next consumer, no restart.
        grant(secure_broker, "alice", ["produce", "consume"])
        consumer = client.subscribe(topic, "s2", initial_position=pulsar.InitialPosition.Earliest)
        assert [m.data() for m in receive_n(consumer, 1)] == [b"granted"]
    finally:
        client.close()


def test_topic_grant_covers_only_that_topic(secure_broker, keys):
    local = unique("tgrant")
    topic = f"persistent://public/default/{local}"
    other = topic_name("tother")
    grant(secure_broker, "bob", ["produce", "consume"], topic=local)
    status, perms = admin(secure_broker, "GET", f"/admin/v2/persistent/public/default/{local}/permissions", secure_broker.admin_token)
    assert status == 200 and sorted(perms.get("bob", [])) == ["consume", "produce"], (status, perms)
    client = token_client(secure_broker, keys.token("bob"), operation_timeout_seconds=5)
    try:
        round_trip(client, topic, n=2)
        with pytest.raises(pulsar.PulsarException):
            client.create_producer(other)
        with pytest.raises(pulsar.PulsarException):
            client.subscribe(other, "s")
    finally:
        client.close()
    bob = keys.token("bob")
    assert_status(admin(secure_broker, "GET", f"/admin/v2/persistent/public/default/{local}/stats", bob), 200, "bob's topic stats")
    other_local = other.rsplit("/", 1)[1]
    assert_status(admin(secure_broker, "GET", f"/admin/v2/persistent/public/default/{other_local}/stats", bob), 403, "another topic's stats")
    with raw_connected(secure_broker, bob) as conn:
        conn.send(topics_of_namespace_cmd("public/default", 1))
        expect_authorization_error(conn, 1, "GET_TOPICS_OF_NAMESPACE with a topic grant only")


def test_topic_grant_on_a_partitioned_topic_covers_its_partitions(secure_broker, keys):
    local = unique("pgrant")
    topic = f"persistent://public/default/{local}"
    status, body = admin(secure_broker, "PUT", f"/admin/v2/persistent/public/default/{local}/partitions", secure_broker.admin_token, 3)
    assert status in (200, 204), (status, body)
    grant(secure_broker, "erin", ["produce", "consume"], topic=local)
    client = token_client(secure_broker, keys.token("erin"))
    try:
        consumer = client.subscribe(topic, "s")
        producer = client.create_producer(topic, message_routing_mode=pulsar.PartitionsRoutingMode.RoundRobinDistribution, batching_enabled=False)
        sent = {f"p{i}".encode() for i in range(9)}
        for p in sorted(sent):
            producer.send(p)
        got = receive_n(consumer, len(sent), what="messages on the partitions")
        assert {m.data() for m in got} == sent
        assert len({m.topic_name() for m in got}) == 3, {m.topic_name() for m in got}
    finally:
        client.close()


def test_revoked_namespace_grant_refuses_the_next_producer(secure_broker, keys):
    topic = topic_name("nsrevoke")
    grant(secure_broker, "carol", ["produce"])
    client = token_client(secure_broker, keys.token("carol"), operation_timeout_seconds=5)
    try:
        client.create_producer(topic).close()
        revoke(secure_broker, "carol")
        status, perms = admin(secure_broker, "GET", "/admin/v2/namespaces/public/default/permissions", secure_broker.admin_token)
        assert status == 200 and "carol" not in perms, perms
        with pytest.raises(pulsar.PulsarException):
            client.create_producer(topic)
    finally:
        client.close()
    with raw_connected(secure_broker, keys.token("carol")) as conn:
        conn.send(wire.producer_cmd(topic, 1, 1))
        expect_authorization_error(conn, 1, "PRODUCER after revoke")


def test_revoked_topic_grant_refuses_the_next_producer(secure_broker, keys):
    local = unique("trevoke")
    topic = f"persistent://public/default/{local}"
    grant(secure_broker, "dave", ["produce"], topic=local)
    with raw_connected(secure_broker, keys.token("dave")) as conn:
        conn.send(wire.producer_cmd(topic, 1, 1))
        conn.expect(wire.PRODUCER_SUCCESS)
        revoke(secure_broker, "dave", topic=local)
        conn.send(wire.producer_cmd(topic, 2, 2))
        expect_authorization_error(conn, 2, "PRODUCER after topic revoke")


def create_tenant(broker, tenant: str, admins: list[str]) -> None:
    status, body = admin(broker, "PUT", f"/admin/v2/tenants/{tenant}", broker.admin_token,
                         {"adminRoles": admins, "allowedClusters": ["standalone"]})
    assert status in (200, 204), f"create tenant {tenant}: {status} {body!r}"


def test_tenant_admin_produces_and_consumes_in_its_tenant_without_grants(secure_broker, keys):
    tenant = unique("acme")
    create_tenant(secure_broker, tenant, ["ops"])
    status, body = admin(secure_broker, "PUT", f"/admin/v2/namespaces/{tenant}/ns", secure_broker.admin_token)
    assert status in (200, 204), (status, body)
    client = token_client(secure_broker, keys.token("ops"), operation_timeout_seconds=5)
    try:
        round_trip(client, f"persistent://{tenant}/ns/{unique('t')}", n=2)
        with pytest.raises(pulsar.PulsarException):
            client.create_producer(topic_name("not-ops-tenant"))
    finally:
        client.close()


# ---------------------------------------------------------------- admin HTTP


ROUTES_401 = [
    ("GET", "/admin/v2/clusters"),
    ("GET", "/admin/v2/clusters/standalone"),
    ("GET", "/admin/v2/tenants"),
    ("GET", "/admin/v2/namespaces/public"),
    ("GET", "/admin/v2/namespaces/public/default"),
    ("GET", "/admin/v2/persistent/public/default"),
    ("GET", "/admin/v2/namespaces/public/default/permissions"),
    ("GET", "/admin/v2/brokers/health"),
]


def test_admin_routes_answer_401_without_a_token_or_with_a_bad_one(secure_broker, keys):
    bad = {
        "no token": None,
        "bad signature": bad_token("bad_signature", keys),
        "expired": bad_token("expired", keys),
        "malformed": "garbage",
    }
    for method, path in ROUTES_401:
        for what, token in bad.items():
            assert_status(admin(secure_broker, method, path, token), 401, f"{method} {path} with {what}")
    status, body = http("GET", f"{secure_broker.http_url}/admin/v2/clusters", headers={"Authorization": "Basic YTpi"})
    assert status == 401, (status, body)


def test_admin_routes_answer_403_to_a_role_without_access_and_200_to_the_super_user(secure_broker, keys):
    alice, root = keys.token("alice"), secure_broker.admin_token
    local = unique("admintopic")
    status, body = admin(secure_broker, "PUT", f"/admin/v2/persistent/public/default/{local}", root)
    assert status in (200, 204), (status, body)
    cases = [
        # (method, path, body, alice's status, super-user's status)
        ("GET", "/admin/v2/clusters", None, 200, 200),
        ("GET", "/admin/v2/clusters/standalone", None, 403, 200),
        ("GET", "/admin/v2/tenants", None, 403, 200),
        ("GET", "/admin/v2/tenants/public", None, 403, 200),
        ("GET", "/admin/v2/namespaces/public", None, 403, 200),
        ("GET", "/admin/v2/namespaces/public/default", None, 403, 200),
        ("GET", "/admin/v2/persistent/public/default", None, 403, 200),
        ("GET", f"/admin/v2/persistent/public/default/{local}/stats", None, 403, 200),
        ("GET", "/admin/v2/namespaces/public/default/permissions", None, 403, 200),
        ("GET", f"/admin/v2/persistent/public/default/{local}/permissions", None, 403, 200),
        ("GET", "/admin/v2/brokers/health", None, 403, 200),
    ]
    for method, path, body, alice_want, root_want in cases:
        assert_status(admin(secure_broker, method, path, alice, body), alice_want, f"alice {method} {path}")
        assert_status(admin(secure_broker, method, path, root, body), root_want, f"admin {method} {path}")
    # Writes alice may not do.
    assert_status(admin(secure_broker, "PUT", "/admin/v2/tenants/evil", alice, {"adminRoles": ["alice"], "allowedClusters": ["standalone"]}), 403, "alice creates a tenant")
    assert_status(admin(secure_broker, "POST", "/admin/v2/namespaces/public/default/permissions/alice", alice, ["produce"]), 403, "alice grants herself")
    assert_status(admin(secure_broker, "DELETE", f"/admin/v2/persistent/public/default/{local}", alice), 403, "alice deletes a topic")
    # A grant opens the topic routes that need produce/consume, not the tenant-admin ones.
    grant(secure_broker, "alice", ["consume"])
    assert_status(admin(secure_broker, "GET", "/admin/v2/persistent/public/default", alice), 200, "alice lists topics after grant")
    assert_status(admin(secure_broker, "GET", f"/admin/v2/persistent/public/default/{local}/stats", alice), 200, "alice stats after grant")
    assert_status(admin(secure_broker, "GET", f"/admin/v2/persistent/public/default/{local}/subscriptions", alice), 200, "alice subscriptions after grant")
    assert_status(admin(secure_broker, "GET", "/admin/v2/namespaces/public/default/permissions", alice), 403, "alice reads permissions after grant")
    assert_status(admin(secure_broker, "DELETE", f"/admin/v2/persistent/public/default/{local}", alice), 403, "alice deletes after grant")


def test_tenant_admin_manages_its_own_tenants_namespaces_but_not_another_tenants(secure_broker, keys):
    mine, theirs = unique("mine"), unique("theirs")
    create_tenant(secure_broker, mine, ["ops"])
    create_tenant(secure_broker, theirs, ["someone-else"])
    ops = keys.token("ops")
    assert_status(admin(secure_broker, "GET", f"/admin/v2/tenants/{mine}", ops), 200, "ops reads its tenant")
    status, body = admin(secure_broker, "PUT", f"/admin/v2/namespaces/{mine}/ns1", ops)
    assert status in (200, 204), f"ops creates {mine}/ns1: {status} {body!r}"
    listed = assert_status(admin(secure_broker, "GET", f"/admin/v2/namespaces/{mine}", ops), 200, "ops lists")
    assert f"{mine}/ns1" in listed, listed
    status, body = admin(secure_broker, "POST", f"/admin/v2/namespaces/{mine}/ns1/permissions/app", ops, ["produce"])
    assert status in (200, 204), f"ops grants in its tenant: {status} {body!r}"
    perms = assert_status(admin(secure_broker, "GET", f"/admin/v2/namespaces/{mine}/ns1/permissions", ops), 200, "ops reads grants")
    assert perms == {"app": ["produce"]}, perms
    # The grant works for the binary protocol too.
    with raw_connected(secure_broker, keys.token("app")) as conn:
        conn.send(wire.producer_cmd(f"persistent://{mine}/ns1/t", 1, 1))
        conn.expect(wire.PRODUCER_SUCCESS)
    # Another tenant: nothing.
    assert_status(admin(secure_broker, "GET", f"/admin/v2/tenants/{theirs}", ops), 403, "ops reads another tenant")
    assert_status(admin(secure_broker, "PUT", f"/admin/v2/namespaces/{theirs}/ns1", ops), 403, "ops creates in another tenant")
    assert_status(admin(secure_broker, "GET", f"/admin/v2/namespaces/{theirs}", ops), 403, "ops lists another tenant")
    assert_status(admin(secure_broker, "POST", f"/admin/v2/namespaces/{theirs}/x/permissions/ops", ops, ["produce"]), 403, "ops grants in another tenant")
    # Nor the tenant records themselves, which are the super-user's.
    assert_status(admin(secure_broker, "DELETE", f"/admin/v2/tenants/{mine}", ops), 403, "ops deletes its tenant")
    status, body = admin(secure_broker, "DELETE", f"/admin/v2/namespaces/{mine}/ns1?force=true", ops)
    assert status in (200, 204), f"ops deletes its namespace: {status} {body!r}"


def test_metrics_endpoint_is_open_by_default(secure_broker):
    status, body = http("GET", f"{secure_broker.http_url}/metrics")
    assert status == 200, status
    text = body.decode()
    assert "pulsar_authentication_success_total" in text
    assert "pulsar_authentication_failures_total" in text


def test_metrics_endpoint_needs_a_token_when_configured(make_broker, keys):
    b = make_broker(config=security_config(secret_line(keys), metrics_auth=True), admin_token=keys.token(SUPER_USER))
    assert_status(admin(b, "GET", "/metrics", None), 401, "/metrics without token")
    assert_status(admin(b, "GET", "/metrics", bad_token("bad_signature", keys)), 401, "/metrics bad token")
    status, body = http("GET", f"{b.http_url}/metrics", headers=bearer(keys.token("alice")))
    assert status == 200 and b"pulsar_authentication_success_total" in body, status


# ---------------------------------------------------------------- token refresh


def test_expiring_tokens_are_refreshed_and_a_long_lived_producer_keeps_publishing(
    make_broker, keys, monkeypatch
):
    # Debug logs show each connection and each refresh (the broker inherits the environment).
    monkeypatch.setenv("RUST_LOG", "info,kilonova_broker=debug")
    b = make_broker(
        config=security_config(secret_line(keys), authorization=False, refresh_secs=1),
        admin_token=keys.token(SUPER_USER),
    )
    supplied = []

    def supplier() -> str:
        t = keys.token("app", expiry="3s")
        supplied.append(t)
        return t

    topic = topic_name("refresh")
    client = token_client(b, supplier)
    try:
        consumer = client.subscribe(topic, "s")
        producer = client.create_producer(topic, send_timeout_millis=5000, batching_enabled=False)
        started = time.monotonic()
        n = 0
        while time.monotonic() - started < 10.0:
            producer.send(f"m{n}".encode())
            msg = consumer.receive(timeout_millis=5000)
            assert msg.data() == f"m{n}".encode(), (msg.data(), n)
            consumer.acknowledge(msg)
            n += 1
        assert n > 10, n
    finally:
        client.close()
    log = b.log_path.read_text(errors="replace")
    refreshed = log.count("credentials refreshed")
    assert refreshed >= 2, f"{refreshed} refreshes in 10 s of 3 s tokens (supplier called {len(supplied)} times)"
    assert "not refreshed" not in log
    opened = log.count("connection opened")
    assert opened == 1, f"the client reconnected: {opened} connections opened"
    assert metric(b, "pulsar_authentication_failures_total") == 0


def test_connection_that_ignores_auth_challenge_is_closed(make_broker, keys):
    b = make_broker(
        config=security_config(secret_line(keys), authorization=False, refresh_secs=1),
        admin_token=keys.token(SUPER_USER),
    )
    conn = raw_connected(b, keys.token("app", expiry="2s"))
    try:
        deadline = time.monotonic() + 8.0
        while True:
            f = conn.read_frame(timeout=max(0.1, deadline - time.monotonic()))
            if f.type == AUTH_CHALLENGE:
                break
        challenge = wire.unpb(wire.first(f.body, 2, b""))
        assert wire.first(challenge, 1) == b"token", challenge
        frames = conn.wait_closed(timeout=5.0)
    finally:
        conn.close()
    errors = [f for f in frames if f.type == wire.ERROR]
    assert errors and wire.first(errors[0].body, 2) == AUTHENTICATION_ERROR, frames
    wait_until(lambda: "not refreshed" in b.log_path.read_text(errors="replace"), 5.0,
               "the broker logged no close of the unrefreshed connection")


def test_auth_response_with_a_fresh_token_keeps_the_raw_connection_open(make_broker, keys):
    b = make_broker(
        config=security_config(secret_line(keys), authorization=False, refresh_secs=1),
        admin_token=keys.token(SUPER_USER),
    )
    with raw_connected(b, keys.token("app", expiry="2s")) as conn:
        conn.expect(AUTH_CHALLENGE, timeout=8.0)
        conn.send(auth_response(keys.token("app")))  # never expires
        # Absence check: no error and no close for a few refresh checks.
        kind, f = conn.outcome(timeout=2.5)
        assert kind == "silent", (kind, f)
        conn.send(wire.producer_cmd(topic_name("refreshed"), 1, 1))
        conn.expect(wire.PRODUCER_SUCCESS)


@pytest.mark.parametrize("answer", ["another_role", "expired", "bad_signature"])
def test_auth_response_with_an_unacceptable_token_closes_the_connection(make_broker, keys, answer):
    b = make_broker(
        config=security_config(secret_line(keys), authorization=False, refresh_secs=1),
        admin_token=keys.token(SUPER_USER),
    )
    token = {
        "another_role": lambda: keys.token(SUPER_USER),
        "expired": lambda: craft_jwt(keys.secret_bytes, {"sub": "app", "exp": int(time.time()) - 60}),
        "bad_signature": lambda: craft_jwt(b"not-the-broker-secret-key-000000", {"sub": "app"}),
    }[answer]()
    with raw_connected(b, keys.token("app", expiry="2s")) as conn:
        conn.expect(AUTH_CHALLENGE, timeout=8.0)
        conn.send(auth_response(token))
        assert_refused_and_closed(conn, f"AUTH_RESPONSE with {answer}")


# ---------------------------------------------------------------- TLS


def tls_broker(make_broker, keys, certs, plain_ports: bool = True):
    return make_broker(
        config=security_config(secret_line(keys), certs=certs, plain_ports=plain_ports),
        admin_token=keys.token(SUPER_USER),
        ca_file=certs.ca,
        plain_ports=plain_ports,
    )


def tls_client(broker, ca: Path, token: str, host: str = "127.0.0.1", **kwargs) -> pulsar.Client:
    kwargs.setdefault("operation_timeout_seconds", 10)
    return pulsar.Client(
        f"pulsar+ssl://{host}:{broker.pulsar_tls_port}",
        authentication=pulsar.AuthenticationToken(token),
        tls_trust_certs_file_path=str(ca),
        tls_validate_hostname=True,
        logger=CLIENT_LOGGER,
        **kwargs,
    )


def test_pulsar_ssl_client_with_token_produces_and_consumes(make_broker, keys, certs):
    b = tls_broker(make_broker, keys, certs)
    for host in ("127.0.0.1", "localhost"):
        client = tls_client(b, certs.ca, keys.token(SUPER_USER), host=host)
        try:
            round_trip(client, topic_name("tls"), n=3)
        finally:
            client.close()


def test_https_admin_health_answers_with_a_token(make_broker, keys, certs):
    b = tls_broker(make_broker, keys, certs)
    ctx = tls_context(certs.ca)
    status, body = http("GET", f"{b.https_url}/admin/v2/brokers/health", headers=bearer(keys.token(SUPER_USER)), context=ctx)
    assert (status, body.strip()) == (200, b"ok"), (status, body)
    status, _ = http("GET", f"{b.https_url}/admin/v2/brokers/health", context=ctx)
    assert status == 401
    status, _ = http("GET", f"{b.https_url}/admin/v2/brokers/health", headers=bearer(keys.token("alice")), context=ctx)
    assert status == 403


def test_client_that_does_not_trust_the_ca_fails_to_connect(make_broker, keys, certs):
    b = tls_broker(make_broker, keys, certs)
    client = tls_client(b, certs.other_ca, keys.token(SUPER_USER), operation_timeout_seconds=REFUSED_OP_TIMEOUT_S)
    try:
        with pytest.raises(pulsar.PulsarException):
            client.create_producer(topic_name("untrusted"))
    finally:
        client.close()
    with pytest.raises(urllib.error.URLError) as e:
        http("GET", f"{b.https_url}/admin/v2/brokers/health", headers=bearer(keys.token(SUPER_USER)),
             context=tls_context(certs.other_ca), timeout=5.0)
    assert isinstance(e.value.reason, ssl.SSLCertVerificationError), e.value
    # A plain-text Pulsar client on the TLS port gets nowhere either.
    with wire.RawConnection("127.0.0.1", b.pulsar_tls_port) as conn:
        conn.send(connect_with(keys.token(SUPER_USER)))
        kind, f = conn.outcome(timeout=5.0)
        assert kind in ("closed", "silent") or (kind == "frame" and f.type != wire.CONNECTED), (kind, f)


def test_required_client_certificate_admits_only_clients_with_one_from_the_trusted_ca(make_broker, keys, certs):
    b = make_broker(
        config=security_config(secret_line(keys), certs=certs, require_client_cert=True),
        admin_token=keys.token(SUPER_USER),
    )
    token = keys.token(SUPER_USER)
    client = tls_client(b, certs.ca, token, tls_certificate_file_path=str(certs.client_cert),
                        tls_private_key_file_path=str(certs.client_key))
    try:
        round_trip(client, topic_name("mtls"), n=2)
    finally:
        client.close()
    for what, extra in {
        "no client certificate": {},
        "a certificate from another CA": {"tls_certificate_file_path": str(certs.stranger_cert),
                                           "tls_private_key_file_path": str(certs.stranger_key)},
    }.items():
        client = tls_client(b, certs.ca, token, operation_timeout_seconds=REFUSED_OP_TIMEOUT_S, **extra)
        try:
            with pytest.raises(pulsar.PulsarException):
                client.create_producer(topic_name("mtls-refused"))
        finally:
            client.close()
    ctx = tls_context(certs.ca)
    ctx.load_cert_chain(certs.client_cert, certs.client_key)
    status, body = http("GET", f"{b.https_url}/admin/v2/brokers/health", headers=bearer(token), context=ctx)
    assert (status, body.strip()) == (200, b"ok"), (status, body)
    with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
        http("GET", f"{b.https_url}/admin/v2/brokers/health", headers=bearer(token), context=tls_context(certs.ca), timeout=5.0)


def test_plain_ports_disabled_leave_only_the_tls_ports_listening(make_broker, keys, certs):
    b = tls_broker(make_broker, keys, certs, plain_ports=False)
    # The ports file names every listener the broker opened: no plain one.
    assert (b.pulsar_port, b.http_port) == (None, None), "a plain port is listening"
    assert b.pulsar_tls_port and b.https_port
    client = tls_client(b, certs.ca, keys.token(SUPER_USER))
    try:
        round_trip(client, topic_name("tlsonly"), n=2)
    finally:
        client.close()
    status, _ = http("GET", f"{b.https_url}/admin/v2/clusters", headers=bearer(keys.token(SUPER_USER)), context=tls_context(certs.ca))
    assert status == 200


def test_plain_ports_disabled_without_tls_refuses_to_start(kilonova_bin, tmp_path, keys):
    cfg = tmp_path / "k.toml"
    cfg.write_text(security_config(secret_line(keys), plain_ports=False))
    proc = subprocess.run(
        [str(kilonova_bin), "standalone", "--config", str(cfg), "--data-dir", str(tmp_path / "d"),
         "--pulsar-port", "0", "--http-port", "0"],
        capture_output=True, text=True, timeout=30,
    )
    assert proc.returncode != 0
    assert "plain_ports_enabled" in proc.stderr, proc.stderr[-2000:]


# ---------------------------------------------------------------- secrets stay out of the log


SECRET_LOG_LEVELS = (
    "info,kilonova=trace,kilonova_broker=trace,kilonova_admin=trace,"
    "kilonova_auth=trace,kilonova_metadata=trace"
)


def test_broker_log_never_contains_tokens_or_the_secret_key(make_broker, keys, monkeypatch):
    monkeypatch.setenv("RUST_LOG", SECRET_LOG_LEVELS)
    secret = keys.secret_bytes
    secret_b64 = base64.b64encode(secret).decode()
    good_admin, good_user = keys.token(SUPER_USER), keys.token("alice")
    expiring = keys.token("alice", expiry="2s")
    refreshed = keys.token("alice")
    bad_sig, expired = bad_token("bad_signature", keys), bad_token("expired", keys)
    b = make_broker(
        # The key inline, so a configuration dump would show it.
        config=security_config(f"token_secret_key = {toml_str('data:;base64,' + secret_b64)}", refresh_secs=1),
        admin_token=good_admin,
    )
    client = token_client(b, good_admin)
    try:
        round_trip(client, topic_name("logcheck"), n=2)
    finally:
        client.close()
    for token in (bad_sig, expired):
        with raw(b) as conn:
            conn.send(connect_with(token))
            assert_refused_and_closed(conn, "bad token for the log check")
    with raw_connected(b, expiring) as conn:
        conn.expect(AUTH_CHALLENGE, timeout=8.0)
        conn.send(auth_response(refreshed))
        conn.send(wire.producer_cmd(topic_name("logcheck"), 1, 1))
        expect_authorization_error(conn, 1, "alice without grant")
    for token in (good_admin, good_user, bad_sig, expired):
        http("GET", f"{b.http_url}/admin/v2/tenants", headers=bearer(token))
    # A bare token without the Bearer scheme, and one in a Basic header.
    http("GET", f"{b.http_url}/admin/v2/tenants", headers={"Authorization": good_user})
    http("GET", f"{b.http_url}/admin/v2/tenants", headers={"Authorization": f"Basic {good_user}"})
    b.stop()
    log = b.log_path.read_text(errors="replace")
    secrets = {
        "super-user token": good_admin,
        "user token": good_user,
        "expiring token": expiring,
        "refreshed token": refreshed,
        "bad-signature token": bad_sig,
        "expired token": expired,
        "secret key base64": secret_b64,
        "secret key base64url": base64.urlsafe_b64encode(secret).decode().rstrip("="),
        "secret key hex": secret.hex(),
    }
    for what, value in secrets.items():
        assert value not in log, f"the broker log contains the {what}"
        if value.count(".") == 2:
            assert value.rsplit(".", 1)[1] not in log, f"the broker log contains the {what}'s signature"


def test_401_for_a_bare_token_authorization_header_does_not_echo_the_token(secure_broker, keys):
    """A client that sends the bare token as the Authorization header (no
    `Bearer `) gets a 401 whose body does not contain the token."""
    token = keys.token(SUPER_USER)
    status, body = http("GET", f"{secure_broker.http_url}/admin/v2/clusters", headers={"Authorization": token})
    assert status == 401, (status, body)
    assert token.encode() not in body, f"the 401 echoes the token: {body!r}"
