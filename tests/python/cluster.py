"""A Kilonova cluster for end-to-end tests: a real etcd (the metadata store)
and N `kilonova broker` processes sharing it.

Each broker is a conftest `Broker` running the `broker` role, with its own
data dir, ports file, log and config file; the config names the etcd and a
metadata root of the cluster's own (`/kilonova-<unique>`), so the tests of
a session share one etcd without seeing each other's metadata.

What the tests observe through it:
  - who owns a topic: `owner_of(topic)`, Pulsar's HTTP lookup
    (`/lookup/v2/topic/…`) answered by a broker, mapped back to the index of
    the broker whose URL it names;
  - where a client's lookup lands: `client_lookup(topic)`, a binary LOOKUP
    following Redirects as the Pulsar clients do (it places an unowned
    bundle, as theirs do);
  - a counter of a broker's Prometheus text (`metric(i, name)`);
  - `kilonova admin` against one broker (`admin(i, …)`);
  - which brokers are registered (`listed(i)`, `/admin/v2/brokers/{cluster}`).

And what they do to it: `kill(i)` (SIGKILL), `stop(i)` (SIGTERM),
`restart(i)` (same ports and data dir), `pause(i)` / `resume(i)` (SIGSTOP /
SIGCONT, returning once every thread is stopped / running again).

Bundles: `topics_in_bundles(ns, per_bundle)` picks topic names spread over
every bundle of a namespace (CRC-32 of the full name, as the broker places
them), so placement tests do not depend on luck.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.parse
import uuid
import zlib
from pathlib import Path

import wire
from conftest import (Broker, ServerProcess, bearer, http, unique, wait_process_ready,
                      wait_until)

ETCD_START_TIMEOUT_S = 30.0
ADMIN_TIMEOUT_S = 30.0
DEFAULT_CLUSTER_NAME = "kilonova"
# The broker config's default; the death tests pass a short one.
DEFAULT_SESSION_TTL_S = 10


# ---------------------------------------------------------------- etcd


def etcd_binary() -> str | None:
    """$KILONOVA_ETCD_BIN, else `etcd` on PATH (Debian's etcd-server)."""
    return os.environ.get("KILONOVA_ETCD_BIN") or shutil.which("etcd")


def _free_ports(n: int) -> list[int]:
    """`n` distinct loopback ports free a moment ago (all held until chosen)."""
    held = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            held.append(s)
        return [s.getsockname()[1] for s in held]
    finally:
        for s in held:
            s.close()


class _EtcdExited(AssertionError):
    """etcd exited while starting (e.g. a probed port was taken meanwhile)."""


class Etcd(ServerProcess):
    """One etcd member on loopback, in its own directory. The flags are the
    ones crates/kilonova-etcd's test server uses (short raft timers: a
    leader at once, leases as short as a second)."""

    name = "etcd"

    def __init__(self, binary: str, root: Path):
        super().__init__(binary, root)
        self.client_port, self.peer_port = _free_ports(2)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    def start(self, timeout: float = ETCD_START_TIMEOUT_S) -> None:
        """Starts etcd and waits until /health says it is healthy. A port
        taken between probing and binding makes etcd exit: the first start
        then tries new ports (twice more)."""
        for attempt in range(3):
            try:
                self._start_once(timeout)
                return
            except _EtcdExited:
                if attempt == 2:
                    raise
                self.client_port, self.peer_port = _free_ports(2)

    def restart(self, down_for: float = 0.0, timeout: float = ETCD_START_TIMEOUT_S) -> None:
        """Kills etcd, keeps it down `down_for` seconds (the length of the
        fault), then starts it again on the same ports and data (its keys
        and leases survive) and waits until it is healthy."""
        self.kill()
        time.sleep(down_for)
        self._start_once(timeout, fresh=False)

    def _start_once(self, timeout: float, fresh: bool = True) -> None:
        assert not self.running, "etcd already running"
        if fresh:
            shutil.rmtree(self.data_dir, ignore_errors=True)
        client, peer = self.endpoint, f"http://127.0.0.1:{self.peer_port}"
        with open(self.log_path, "ab") as log:
            log.write(f"\n===== start at {time.strftime('%H:%M:%S')} =====\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                [
                    self.binary,
                    "--name", "kilonova-test",
                    "--data-dir", str(self.data_dir),
                    "--listen-client-urls", client,
                    "--advertise-client-urls", client,
                    "--listen-peer-urls", peer,
                    "--initial-advertise-peer-urls", peer,
                    "--initial-cluster", f"kilonova-test={peer}",
                    "--initial-cluster-state", "new",
                    "--initial-cluster-token", "kilonova-test",
                    "--heartbeat-interval", "10", "--election-timeout", "100",
                    "--log-level", "warn",
                ],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log,
            )
        def healthy():
            status, body = http("GET", f"{self.endpoint}/health", timeout=1.0)
            return status == 200 and json.loads(body).get("health") == "true", (status, body[:200])

        wait_process_ready(self.proc, healthy, timeout, f"etcd on {self.endpoint}", self.log_tail,
                           _EtcdExited, interval=0.05)



# ---------------------------------------------------------------- brokers


class ClusterBroker(Broker):
    """A `kilonova broker` process (conftest's Broker, another role)."""

    subcommand = "broker"


def cluster_config(etcd_endpoint: str, root: str, cluster_name: str, session_ttl_secs: int,
                   broker_settings: dict | None = None, extra_toml: str = "") -> str:
    """The TOML of one cluster broker (JSON scalars are valid TOML);
    `extra_toml` is appended (other tables: `[auth]`, …)."""
    broker = {"cluster_name": cluster_name, **(broker_settings or {})}
    lines = ["[broker]"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in broker.items()]
    lines += [
        "",
        "[metadata]",
        'backend = "etcd"',
        f"session_ttl_secs = {int(session_ttl_secs)}",
        "",
        "[metadata.etcd]",
        f"endpoints = [{json.dumps(etcd_endpoint)}]",
        f"root = {json.dumps(root)}",
    ]
    return "\n".join(lines) + "\n" + extra_toml


def _thread_states(pid: int) -> list[str]:
    """The state letter of each thread of `pid` (`T`: stopped)."""
    states = []
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            stat = Path(f"/proc/{pid}/task/{task}/stat").read_text()
        except OSError:
            continue  # the thread ended meanwhile
        states.append(stat.rsplit(")", 1)[1].split()[0])
    return states


def split_topic(topic: str) -> tuple[str, str, str, str]:
    """(domain, tenant, namespace, local name) of `domain://t/ns/x`."""
    domain, rest = topic.split("://", 1)
    tenant, ns, local = rest.split("/", 2)
    return domain, tenant, ns, local


class Cluster:
    """`size` brokers of one cluster on `etcd`, under `root` (a test's tmp
    dir). Brokers are numbered 0…size-1; clients in the tests are usually
    given broker 0's URL only."""

    def __init__(self, binary: Path, root: Path, etcd: Etcd, size: int = 3,
                 session_ttl_secs: int = DEFAULT_SESSION_TTL_S,
                 cluster_name: str = DEFAULT_CLUSTER_NAME, broker_settings: dict | None = None,
                 extra_toml: str = "", admin_token: str | None = None):
        """`admin_token` (with authentication on in `extra_toml`) is sent by
        every request of the harness: readiness, listings, metrics, REST and
        `kilonova admin`."""
        self.binary = binary
        self.etcd = etcd
        self.name = cluster_name
        self.session_ttl_secs = session_ttl_secs
        self.metadata_root = f"/kilonova-{uuid.uuid4().hex[:12]}"
        config = cluster_config(etcd.endpoint, self.metadata_root, cluster_name,
                                session_ttl_secs, broker_settings, extra_toml)
        self.admin_token = admin_token
        self.brokers: list[ClusterBroker] = [
            ClusterBroker(binary, root / f"broker{i}-data", root / f"broker{i}.log", config=config,
                          admin_token=admin_token)
            for i in range(size)
        ]
        self.paused: set[int] = set()

    def __len__(self) -> int:
        return len(self.brokers)

    def broker(self, i: int) -> ClusterBroker:
        return self.brokers[i]

    # Processes.

    def start(self, timeout: float = 30.0) -> None:
        """Starts every broker, then waits until each lists all of them."""
        for b in self.brokers:
            b.start()
        self.wait_members(timeout)

    def wait_members(self, timeout: float = 30.0) -> None:
        """Waits until every running broker lists exactly the running ones."""
        want = sorted(f"127.0.0.1:{b.http_port}" for b in self.brokers if b.running)
        for i, b in enumerate(self.brokers):
            if b.running and i not in self.paused:
                wait_until(lambda: sorted(self.listed(i) or []) == want, timeout,
                           f"broker {i} listing the live brokers {want} "
                           f"(last: {self.listed(i)})", interval=0.1)

    def kill(self, i: int) -> None:
        """SIGKILL (a crash: its session lives on until its ttl)."""
        self.paused.discard(i)
        self.brokers[i].kill()

    def stop(self, i: int) -> int:
        """SIGTERM and wait (it gives its bundles up as it leaves)."""
        if i in self.paused:
            self.resume(i)
        return self.brokers[i].stop()

    def restart(self, i: int) -> None:
        """Starts broker `i` again on its data dir and ports (after kill or stop)."""
        self.brokers[i].restart()

    def pause(self, i: int) -> None:
        """SIGSTOP; returns once every thread of the broker is stopped."""
        proc = self.brokers[i].proc
        assert proc is not None and proc.poll() is None, f"broker {i} is not running"
        os.kill(proc.pid, signal.SIGSTOP)
        self.paused.add(i)
        wait_until(lambda: all(s == "T" for s in _thread_states(proc.pid)), 10,
                   f"every thread of broker {i} (pid {proc.pid}) stopped", interval=0.01)

    def resume(self, i: int) -> None:
        """SIGCONT; returns once no thread of the broker is stopped."""
        proc = self.brokers[i].proc
        assert proc is not None and proc.poll() is None, f"broker {i} is not running"
        os.kill(proc.pid, signal.SIGCONT)
        self.paused.discard(i)
        wait_until(lambda: all(s != "T" for s in _thread_states(proc.pid)), 10,
                   f"every thread of broker {i} (pid {proc.pid}) running again", interval=0.01)

    def shutdown(self) -> list[AssertionError]:
        """Resumes paused brokers and stops every one (SIGKILL if SIGTERM
        does not end it); returns what went wrong."""
        failures = []
        for i in sorted(self.paused):
            try:
                self.resume(i)
            except (AssertionError, OSError) as e:
                failures.append(AssertionError(f"resuming broker {i}: {e}"))
        for b in self.brokers:
            if b.running:
                try:
                    b.stop()
                except AssertionError as e:
                    b.kill()
                    failures.append(e)
        return failures

    # Observing.

    def index_of_url(self, url: str) -> int | None:
        """The index of the broker whose Pulsar or HTTP URL `url` is."""
        for i, b in enumerate(self.brokers):
            if url in (b.service_url, b.http_url):
                return i
        return None

    def lookup(self, topic: str, via: int = 0, timeout: float = 10.0) -> tuple[int, object]:
        """Pulsar's HTTP lookup of `topic` on broker `via` (redirects
        followed): (status, JSON answer or raw body)."""
        domain, tenant, ns, local = split_topic(topic)
        path = "/".join(urllib.parse.quote(p, safe="") for p in (tenant, ns, local))
        status, body = http("GET", f"{self.brokers[via].http_url}/lookup/v2/topic/{domain}/{path}",
                            timeout=timeout, headers=bearer(self.admin_token))
        try:
            return status, json.loads(body)
        except ValueError:
            return status, body

    def owner_of(self, topic: str, via: int = 0) -> int:
        """The index of the broker serving `topic`, per broker `via`'s HTTP
        lookup (which places an unowned bundle, as a client's would)."""
        status, doc = self.lookup(topic, via)
        assert status == 200 and isinstance(doc, dict), f"HTTP lookup of {topic} on broker {via}: {status} {doc!r}"
        owner = self.index_of_url(doc.get("brokerUrl") or "")
        assert owner is not None, f"the lookup of {topic} names no broker of the cluster: {doc!r}"
        return owner

    def try_owner_of(self, topic: str, via: int = 0, timeout: float = 3.0) -> int | None:
        """owner_of, or None while the lookup fails (e.g. the owner is dying)."""
        try:
            status, doc = self.lookup(topic, via, timeout=timeout)
        except OSError:
            return None
        if status != 200 or not isinstance(doc, dict):
            return None
        return self.index_of_url(doc.get("brokerUrl") or "")

    def client_lookup(self, topic: str, via: int = 0, timeout: float = 3.0) -> int | None:
        """Looks `topic` up as a Pulsar client does: a binary LOOKUP on broker
        `via`, following Redirects (asking the named broker, authoritatively).
        Places an unowned bundle. Returns the index of the broker answering
        Connect, or None if a lookup failed or could not be made."""
        port, authoritative = self.brokers[via].pulsar_port, False
        for _ in range(4):
            try:
                with wire.RawConnection("127.0.0.1", port, timeout=timeout) as conn:
                    conn.handshake()
                    conn.send(wire.frame(wire.base_command(
                        wire.LOOKUP, wire.pb((1, topic), (2, 1), (3, authoritative)))))
                    f = conn.expect(wire.LOOKUP_RESPONSE, timeout)
            except (OSError, AssertionError, wire.Closed):
                return None
            kind = wire.first(f.body, 3)
            target = self.index_of_url(wire.first(f.body, 1, b"").decode())
            if kind == 1:  # Connect
                return target
            if kind != 0 or target is None:  # Failed, or a URL of no broker here
                return None
            port, authoritative = self.brokers[target].pulsar_port, bool(wire.first(f.body, 5, 0))
        return None

    def listed(self, i: int) -> list[str] | None:
        """The brokers broker `i` lists for the cluster (`host:httpport`)."""
        try:
            status, body = http("GET", f"{self.brokers[i].http_url}/admin/v2/brokers/{self.name}",
                                timeout=3.0, headers=bearer(self.admin_token))
            return json.loads(body) if status == 200 else None
        except (OSError, ValueError):
            return None

    def metric(self, i: int, name: str) -> float:
        """The value of counter `name` on broker `i`'s /metrics (summed over
        its label sets); fails if the broker does not expose it."""
        status, body = http("GET", f"{self.brokers[i].http_url}/metrics",
                            headers=bearer(self.admin_token))
        assert status == 200, f"GET /metrics on broker {i}: {status} {body[:300]!r}"
        total, seen = 0.0, False
        for line in body.decode().splitlines():
            if not line or line.startswith("#"):
                continue
            series, _, rest = line.partition(" ")
            if series.split("{", 1)[0] == name:
                total += float(rest.split()[0])
                seen = True
        assert seen, f"broker {i} exposes no {name}"
        return total

    def admin(self, i: int, *args) -> subprocess.CompletedProcess:
        """`kilonova admin --admin-url <broker i> ARGS…` (text output)."""
        token = ["--auth-token", self.admin_token] if self.admin_token else []
        cmd = [str(self.binary), "admin", "--admin-url", self.brokers[i].http_url, *token,
               *map(str, args)]
        env = {k: v for k, v in os.environ.items() if k != "KILONOVA_ADMIN_URL"}
        env["NO_COLOR"] = "1"
        try:
            return subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                  timeout=ADMIN_TIMEOUT_S, env=env)
        except subprocess.TimeoutExpired as e:
            raise AssertionError(f"`{' '.join(cmd)}` did not finish within {ADMIN_TIMEOUT_S}s") from e

    def admin_ok(self, i: int, *args) -> str:
        """admin(), asserting it succeeded; returns its stdout."""
        proc = self.admin(i, *args)
        assert proc.returncode == 0, (
            f"`{' '.join(proc.args)}` exited {proc.returncode}\n--- stdout ---\n{proc.stdout[-2000:]}"
            f"\n--- stderr ---\n{proc.stderr[-2000:]}")
        return proc.stdout

    def rest(self, i: int, method: str, path: str, body=None, timeout: float = 30.0) -> tuple[int, bytes]:
        data = None if body is None else json.dumps(body).encode()
        return http(method, f"{self.brokers[i].http_url}{path}", data,
                    "application/json" if data is not None else None, timeout=timeout,
                    headers=bearer(self.admin_token))

    # Bundles.

    def bundle_ranges(self, ns: str = "public/default", via: int = 0) -> list[tuple[int, int]]:
        """The namespace's bundles as (lower, upper) hash ranges."""
        status, body = self.rest(via, "GET", f"/admin/v2/namespaces/{ns}/bundles")
        assert status == 200, f"bundles of {ns}: {status} {body[:300]!r}"
        bounds = [int(b, 16) for b in json.loads(body)["boundaries"]]
        return list(zip(bounds, bounds[1:]))

    def topics_in_bundles(self, ns: str = "public/default", per_bundle: int = 1,
                          prefix: str = "t") -> list[list[str]]:
        """For each bundle of `ns`, in hash order, `per_bundle` fresh topic
        names it holds (CRC-32 of the full name, the last bundle's upper
        bound included)."""
        ranges = self.bundle_ranges(ns)
        out: list[list[str]] = [[] for _ in ranges]
        for _ in range(100_000):
            if all(len(ts) >= per_bundle for ts in out):
                return out
            topic = f"persistent://{ns}/{unique(prefix)}"
            i = bundle_index(ranges, zlib.crc32(topic.encode()))
            if len(out[i]) < per_bundle:
                out[i].append(topic)
        raise AssertionError(f"could not find {per_bundle} topic names for each bundle of {ns}")


def bundle_index(ranges: list[tuple[int, int]], h: int) -> int:
    for i, (lo, hi) in enumerate(ranges):
        if lo <= h < hi or (i == len(ranges) - 1 and h == hi):
            return i
    raise AssertionError(f"no bundle of {ranges} holds hash {h:#010x}")


def bundle_name(ranges: list[tuple[int, int]], i: int) -> str:
    """Pulsar's name of bundle `i`: `0x00000000_0x40000000`."""
    lo, hi = ranges[i]
    return f"{lo:#010x}_{hi:#010x}"
