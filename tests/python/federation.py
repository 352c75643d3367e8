"""A Kafka federation on loopback for the tests: physical clusters (single
`kilonova standalone` brokers with their Kafka listeners), a federation
controller (`kilonova federation controller`, embedded store) and proxies
(`kilonova federation proxy`), each a real process started here."""

import json
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

from conftest import Broker, http, wait_until


def _wait_file(path: Path, proc: subprocess.Popen, timeout: float, log: Path) -> dict:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"{proc.args[:3]} exited with {proc.returncode}\n" + tail(log))
        if time.monotonic() > deadline:
            raise AssertionError(f"no ports file {path} within {timeout}s\n" + tail(log))
        time.sleep(0.02)
    return json.loads(path.read_text())


def tail(log: Path, lines: int = 60) -> str:
    try:
        text = log.read_text(errors="replace").splitlines()[-lines:]
    except OSError as e:
        return f"(no log {log}: {e})"
    return f"--- last lines of {log} ---\n" + "\n".join(text)


class Process:
    """A federation process: started with a ports file, killed or stopped."""

    def __init__(self, binary: Path, args: list[str], log: Path):
        self.binary = binary
        self.args = args
        self.log = log
        self.ports_path = log.with_suffix(".ports.json")
        self.proc: subprocess.Popen | None = None
        self.ports: dict = {}

    def start(self, timeout: float = 20.0) -> None:
        self.ports_path.unlink(missing_ok=True)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [str(self.binary), "federation", *self.args, "--ports-file", str(self.ports_path)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                env={**os.environ, "NO_COLOR": "1"},
            )
        self.ports = _wait_file(self.ports_path, self.proc, timeout, self.log)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.running:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.running:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


class Federation:
    """Physical clusters, one controller, proxies."""

    def __init__(self, binary: Path, root: Path):
        self.binary = binary
        self.root = root
        self.clusters: dict[str, Broker] = {}
        self.controller: Process | None = None
        self.proxies: list[Process] = []

    # Physical clusters.

    def start_cluster(self, name: str) -> Broker:
        b = Broker(self.binary, self.root / f"{name}-data", self.root / f"{name}.log")
        b.start()
        assert b.kafka_port, "standalone serves no Kafka listener (KILONOVA_KAFKA_PORT?)"
        self.clusters[name] = b
        return b

    # The controller.

    def start_controller(self) -> None:
        if self.controller is None:
            self.controller = Process(self.binary, [
                "controller", "--listen", "127.0.0.1:0",
                "--data-dir", str(self.root / "controller-data"),
                "--scan-interval-ms", "300",
            ], self.root / "controller.log")
        else:
            # Again on the same port, so the proxies find it.
            self.controller.args = [
                "controller", "--listen", f"127.0.0.1:{self.controller.ports['http']}",
                "--data-dir", str(self.root / "controller-data"),
                "--scan-interval-ms", "300",
            ]
        self.controller.start()
        # Serving is not leading: a change asked of an instance that knows no
        # leader yet is refused (503), so wait until it names one.
        wait_until(self.leader, 30, "the controller naming a leader in its status")

    @property
    def controller_url(self) -> str:
        return f"http://127.0.0.1:{self.controller.ports['http']}"

    def api(self, method: str, path: str, body=None):
        data = None if body is None else json.dumps(body).encode()
        status, out = http(method, self.controller_url + path, data,
                           content_type="application/json" if data else None)
        return status, (json.loads(out) if out else None)

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        p = subprocess.run([str(self.binary), "federation", *args,
                            "--controller", self.controller_url],
                           capture_output=True, text=True, timeout=60)
        if check:
            assert p.returncode == 0, f"federation {args}: {p.stderr}"
        return p

    def leader(self) -> str | None:
        """The leader the controller's status names (None while it knows none)."""
        status, body = self.api("GET", "/federation/v1/status")
        return body.get("leader") if status == 200 and body else None

    def status(self) -> dict:
        status, body = self.api("GET", "/federation/v1/status")
        assert status == 200, body
        return body

    # Proxies.

    def start_proxy(self, node_id: int, group: str = "default",
                    controllers: list[str] | None = None, extra: tuple = ()) -> Process:
        p = Process(self.binary, [
            "proxy", "--node-id", str(node_id), "--group", group,
            "--producer-listen", "127.0.0.1:0", "--consumer-listen", "127.0.0.1:0",
            "--http-listen", "127.0.0.1:0",
            "--controller", ",".join(controllers or [self.controller_url]),
            "--group-initial-rebalance-delay-ms", "0", *extra,
        ], self.root / f"proxy-{node_id}.log")
        p.start()
        self.proxies.append(p)
        return p

    def restart_proxy(self, p: Process) -> None:
        """Again on the same ports (clients hold them)."""
        for flag, key in (("--producer-listen", "producer"), ("--consumer-listen", "consumer"),
                          ("--http-listen", "http")):
            i = p.args.index(flag)
            p.args[i + 1] = f"127.0.0.1:{p.ports[key]}"
        p.start()

    def producers_bootstrap(self) -> str:
        return ",".join(f"127.0.0.1:{p.ports['producer']}" for p in self.proxies if p.running)

    def consumers_bootstrap(self) -> str:
        return ",".join(f"127.0.0.1:{p.ports['consumer']}" for p in self.proxies if p.running)

    def proxy_version(self, p: Process) -> int:
        with urllib.request.urlopen(f"http://127.0.0.1:{p.ports['http']}/status", timeout=5) as r:
            return json.loads(r.read())["map_version"]

    def proxy_metrics(self, p: Process) -> dict[str, float]:
        """The proxy's unlabelled metrics, by name."""
        with urllib.request.urlopen(f"http://127.0.0.1:{p.ports['http']}/metrics",
                                    timeout=5) as r:
            text = r.read().decode()
        return {name: float(value) for name, value in
                (line.split() for line in text.splitlines()
                 if line and not line.startswith("#") and "{" not in line)}

    def logs(self) -> str:
        parts = [tail(self.controller.log)] if self.controller else []
        parts += [tail(p.log) for p in self.proxies]
        parts += [b.log_tail(30) for b in self.clusters.values()]
        return "\n".join(parts)

    def shutdown(self) -> None:
        for p in self.proxies:
            p.stop()
        if self.controller:
            self.controller.stop()
        for b in self.clusters.values():
            if b.running:
                try:
                    b.stop()
                except AssertionError:
                    b.kill()
