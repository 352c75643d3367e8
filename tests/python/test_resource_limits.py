"""Clients that try to exhaust the broker's memory, connections or file
descriptors: the broker must stay within bounds (measured as the growth of
its resident memory, VmRSS) and keep serving well-behaved clients.

Memory bounds are loose on purpose (each attack grew the broker by hundreds of
MiB or more before the limits existed; the bounds allow a tenth of that), so a
busy machine does not make them flaky.
"""

from __future__ import annotations

import json
import resource
import socket
import ssl
import struct
import subprocess
import threading
import time

import pytest

import wire
from conftest import http, make_client, topic_name, unique, wait_until

MIB = 1 << 20
# What an attack may add to the broker's resident memory.
RSS_GROWTH_LIMIT = 100 * MIB

GET_TOPICS_OF_NAMESPACE = 32
GET_TOPICS_OF_NAMESPACE_RESPONSE = 33
FLOW = 11


def rss_bytes(broker) -> int:
    with open(f"/proc/{broker.proc.pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS line for the broker")


class RssWatch:
    """The broker's memory growth since it was made; `check` fails as soon
    as it exceeds the limit."""

    def __init__(self, broker, what: str):
        self.broker = broker
        self.what = what
        self.base = rss_bytes(broker)
        self.peak = self.base

    def report(self) -> None:
        print(f"{self.what}: broker RSS {self.base / MIB:.0f} MiB, "
              f"peak growth {(self.peak - self.base) / MIB:.1f} MiB")

    def check(self) -> None:
        now = rss_bytes(self.broker)
        self.peak = max(self.peak, now)
        growth = now - self.base
        assert growth < RSS_GROWTH_LIMIT, (
            f"{self.what}: the broker grew by {growth / MIB:.0f} MiB "
            f"({self.base / MIB:.0f} -> {now / MIB:.0f} MiB)"
        )


def healthy(broker) -> bool:
    status, body = http("GET", f"{broker.http_url}/admin/v2/brokers/health", timeout=10)
    return status == 200 and body.strip() == b"ok"


def flow_cmd(consumer_id: int, permits: int) -> bytes:
    return wire.frame(wire.base_command(FLOW, wire.pb((1, consumer_id), (2, permits))))


def topics_of_namespace_cmd(namespace: str, request_id: int) -> bytes:
    return wire.frame(wire.base_command(
        GET_TOPICS_OF_NAMESPACE, wire.pb((1, request_id), (2, namespace))
    ))


def ping_cmd() -> bytes:
    return wire.frame(wire.base_command(wire.PING, b""))


class Sender(threading.Thread):
    """Writes `data` `times` times on `sock` in the background, counting what
    the kernel took; a write that blocks longer than `block_s` ends it."""

    def __init__(self, sock: socket.socket, data: bytes, times: int, block_s: float = 60.0):
        super().__init__(daemon=True)
        self.sock, self.data, self.times = sock, data, times
        self.sent = 0
        self.error: Exception | None = None
        sock.settimeout(block_s)

    def run(self):
        try:
            for _ in range(self.times):
                self.sock.sendall(self.data)
                self.sent += len(self.data)
        except OSError as e:
            self.error = e


def wait_stalled(sender: Sender, watch: RssWatch, timeout: float, still_s: float = 2.0) -> None:
    """Waits until the sender made no progress for `still_s` (the broker
    stopped reading), checking the broker's memory all along."""
    deadline = time.monotonic() + timeout
    last, since = sender.sent, time.monotonic()
    while True:
        watch.check()
        assert sender.is_alive() or sender.error is not None, (
            f"{watch.what}: the broker read all {sender.sent / MIB:.0f} MiB without pausing"
        )
        if sender.sent != last:
            last, since = sender.sent, time.monotonic()
        elif time.monotonic() - since >= still_s:
            return
        assert time.monotonic() < deadline, (
            f"{watch.what}: the broker kept reading for {timeout}s ({sender.sent / MIB:.0f} MiB)"
        )
        time.sleep(0.1)


# ---------------------------------------------------------------- outbound queues


def test_consumers_that_do_not_read_hold_a_bounded_share_of_the_backlog(make_broker):
    # A small entry cache: every consumer reads the backlog from disk into
    # its own buffers, as consumers of an old backlog do.
    broker = make_broker(config="[broker]\nentry_cache_bytes = 1048576\n")
    topic = topic_name("unread")
    messages, size = 64, MIB
    client = make_client(broker)
    producer = client.create_producer(topic, batching_enabled=False, block_if_queue_full=True)
    for i in range(messages):
        producer.send_async(bytes([i]) * size, None)
    producer.flush()
    client.close()

    def subscribe(sub: str) -> wire.RawConnection:
        conn = wire.RawConnection("127.0.0.1", broker.pulsar_port, timeout=30)
        conn.handshake()
        conn.send(wire.subscribe_cmd(topic, sub, consumer_id=1, request_id=1, initial_position=1))
        conn.expect(wire.SUCCESS)
        conn.send(flow_cmd(1, 0xFFFFFFFF))
        return conn

    def read_all(conn: wire.RawConnection) -> list[bytes]:
        got = []
        while len(got) < messages:
            f = conn.read_frame(timeout=30)
            if f.type == wire.MESSAGE:
                got.append(f.rest[-1:])
        return got

    # A consumer that reads everything first, so that the baseline includes
    # what reading the backlog from disk takes.
    with subscribe("warm-up") as conn:
        read_all(conn)
    watch = RssWatch(broker, "4 consumers granting 2^32-1 permits and reading nothing")
    conns = [subscribe(f"sub-{c}") for c in range(4)]

    def dispatched():
        status, body = http("GET", f"{broker.http_url}/admin/v2/persistent/public/default/"
                            f"{topic.rsplit('/', 1)[1]}/stats")
        assert status == 200, body
        subs = json.loads(body)["subscriptions"]
        return [subs[f"sub-{c}"]["msgOutCounter"] for c in range(4)]

    # Dispatch goes on until each consumer's connection holds its bound
    # (plus what the sockets' buffers took): then nothing changes.
    previous, stable_since = None, time.monotonic()
    deadline = time.monotonic() + 60
    while True:
        watch.check()
        now = dispatched()
        if now != previous:
            previous, stable_since = now, time.monotonic()
        elif time.monotonic() - stable_since >= 2.0:
            break
        assert time.monotonic() < deadline, f"dispatch never settled: {now}"
        time.sleep(0.2)
    watch.check()
    watch.report()
    assert max(previous) < messages // 2, (
        f"dispatched {previous} of {messages} 1 MiB messages to consumers that read nothing"
    )
    assert healthy(broker)

    # A consumer that starts reading gets everything: the topic is woken when
    # its connection's queue drains.
    assert read_all(conns[0]) == [bytes([i]) for i in range(messages)]
    for conn in conns:
        conn.close()


def test_unread_topic_lists_stop_the_broker_reading_requests(broker):
    # Long names make each answer large: 2 x 1,000 partitions of ~200 bytes,
    # so every GET_TOPICS_OF_NAMESPACE answer is ~400 KiB.
    for _ in range(2):
        local = unique("lists-" + "x" * 150)
        assert broker.create_partitioned_topic(local, 1000) in (200, 204)
    requests = 600
    conn = wire.RawConnection("127.0.0.1", broker.pulsar_port, timeout=30)
    conn.handshake()
    watch = RssWatch(broker, f"{requests} topic lists requested and not read")
    batch = b"".join(topics_of_namespace_cmd("public/default", i) for i in range(requests))
    sender = Sender(conn.sock, batch, 1)
    sender.start()
    # The requests fit in the socket buffers: the broker's reading shows as
    # its memory, for as long as it takes to answer them all.
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        watch.check()
        time.sleep(0.2)
    assert healthy(broker), "the health check failed while topic lists were queued"
    watch.check()
    watch.report()

    # Reading the answers lets the broker read (and answer) the rest.
    answered = 0
    conn.sock.settimeout(None)
    while answered < requests:
        # Less than keep_alive_secs: a stall the broker's ping would end is caught.
        f = conn.read_frame(timeout=20)
        assert f.type == GET_TOPICS_OF_NAMESPACE_RESPONSE, f
        answered += 1
    conn.close()


def test_unread_pongs_stop_the_broker_reading_pings(broker):
    conn = wire.RawConnection("127.0.0.1", broker.pulsar_port)
    conn.handshake()
    watch = RssWatch(broker, "PINGs sent without reading the PONGs")
    # Written in large writes (64 KiB), counted per write.
    chunk = ping_cmd() * ((64 << 10) // len(ping_cmd()))
    sender = Sender(conn.sock, chunk, 48 * 16)
    sender.start()
    wait_stalled(sender, watch, timeout=120, still_s=3.0)
    watch.check()
    watch.report()
    assert healthy(broker)

    # Reading the PONGs lets the broker read PINGs again.
    stalled_at = sender.sent
    deadline = time.monotonic() + 30
    while sender.sent == stalled_at:
        assert time.monotonic() < deadline, "the broker never read again"
        for _ in range(20000):
            f = conn.read_frame(timeout=30, answer_pings=False)
            assert f.type == wire.PONG, f
    conn.close()
    sender.join(5)
    # Going away while paused releases the connection cleanly.
    wait_until(lambda: metric(broker, "pulsar_active_connections") == 0, 10,
               "the connection was not released")
    assert "panicked" not in broker.log_path.read_text(errors="replace")


# ---------------------------------------------------------------- before CONNECT


def test_frames_before_connect_are_small(broker):
    watch = RssWatch(broker, "partial 5 MiB frames before CONNECT")
    body = bytes(5 * MIB - 16)
    senders = []
    for _ in range(60):
        s = socket.create_connection(("127.0.0.1", broker.pulsar_port))
        sender = Sender(s, struct.pack(">II", 5 * MIB, 8) + body, 1, block_s=30)
        sender.start()
        senders.append(sender)
    for sender in senders:
        sender.join(60)
        watch.check()
    # Each was closed on its frame header, before its body arrived.
    for sender in senders:
        sender.sock.settimeout(10)
        try:
            while sender.sock.recv(65536):
                pass
        except ConnectionResetError:
            pass
        sender.sock.close()
    watch.check()
    watch.report()
    assert healthy(broker)


def test_a_connection_that_does_not_connect_in_time_is_closed(make_broker):
    broker = make_broker(config="[broker]\nconnect_timeout_secs = 1\n")
    silent = wire.RawConnection("127.0.0.1", broker.pulsar_port)
    partial = wire.RawConnection("127.0.0.1", broker.pulsar_port)
    partial.send(wire.connect_cmd()[:-3])
    connected = wire.RawConnection("127.0.0.1", broker.pulsar_port)
    connected.handshake()
    for conn, what in ((silent, "a silent connection"), (partial, "a partial CONNECT")):
        try:
            conn.wait_closed(timeout=10)
        except TimeoutError:
            raise AssertionError(f"{what} stayed open past connect_timeout_secs") from None
    # A connection that connected in time is not affected.
    connected.send(ping_cmd())
    connected.expect(wire.PONG)
    for conn in (silent, partial, connected):
        conn.close()


# ---------------------------------------------------------------- the admin port


def read_until_closed(sock: socket.socket, timeout: float) -> bool:
    """Whether the peer closes `sock` within `timeout` (what it sends is skipped)."""
    sock.settimeout(timeout)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if not sock.recv(65536):
                return True
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False
    return False


def test_idle_admin_connections_are_closed(make_broker):
    broker = make_broker(config="[broker]\nhttp_header_read_timeout_secs = 1\n")
    port = broker.http_port
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(10)]
    partial = [socket.create_connection(("127.0.0.1", port)) for _ in range(5)]
    for s in partial:
        s.sendall(b"GET /admin/v2/brokers/health HTTP/1.1\r\nHost: kilonova\r\n")
    # One request, then an idle keep-alive connection.
    kept = socket.create_connection(("127.0.0.1", port))
    kept.sendall(b"GET /admin/v2/brokers/health HTTP/1.1\r\nHost: kilonova\r\n\r\n")
    kept.settimeout(10)
    assert kept.recv(65536).startswith(b"HTTP/1.1 200")
    for s, what in [(s, "an idle connection") for s in idle] + \
            [(s, "a partial request head") for s in partial] + [(kept, "an idle keep-alive")]:
        assert read_until_closed(s, 10), f"{what} stayed open past http_header_read_timeout_secs"
        s.close()
    assert healthy(broker)


def test_idle_admin_connections_cost_little(broker):
    watch = RssWatch(broker, "300 idle admin connections")
    idle = [socket.create_connection(("127.0.0.1", broker.http_port)) for _ in range(300)]
    # Each is accepted: a request on the last one is answered.
    idle[-1].sendall(b"GET /admin/v2/brokers/health HTTP/1.1\r\nHost: kilonova\r\n\r\n")
    idle[-1].settimeout(10)
    assert idle[-1].recv(65536).startswith(b"HTTP/1.1 200")
    watch.check()
    watch.report()
    for s in idle:
        s.close()
    assert healthy(broker)


def test_admin_connections_are_capped(make_broker):
    broker = make_broker(config="[broker]\nmax_http_connections = 16\n")
    port = broker.http_port
    watch = RssWatch(broker, "116 idle admin connections with a cap of 16")
    holders = [socket.create_connection(("127.0.0.1", port)) for _ in range(16)]
    # Served only once one of the 16 closes.
    waiting = socket.create_connection(("127.0.0.1", port))
    waiting.sendall(b"GET /admin/v2/brokers/health HTTP/1.1\r\nHost: kilonova\r\n\r\n")
    waiting.settimeout(1.0)
    try:
        answer = waiting.recv(65536)
        raise AssertionError(f"a 17th connection was served: {answer[:80]!r}")
    except socket.timeout:
        pass
    holders.pop().close()
    waiting.settimeout(10)
    assert waiting.recv(65536).startswith(b"HTTP/1.1 200"), "the waiting connection was not served"
    waiting.close()
    # More idle connections cost nothing: they wait in the listen backlog
    # (of 128: beyond it, the kernel drops their SYNs and they retry).
    more = [socket.create_connection(("127.0.0.1", port)) for _ in range(100)]
    time.sleep(1.0)  # let the broker accept what it would (observing absence)
    watch.check()
    watch.report()
    for s in holders + more:
        s.close()
    assert healthy(broker)


# ---------------------------------------------------------------- connection limits


def log_lines(broker) -> int:
    with open(broker.log_path, "rb") as f:
        return sum(1 for _ in f)


def limit_open_files(n: int):
    def apply():
        resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))
    return apply


def test_running_out_of_file_descriptors_keeps_the_broker_serving(make_broker):
    broker = make_broker(preexec_fn=limit_open_files(256))
    topic = topic_name("fds")
    client = make_client(broker)
    producer = client.create_producer(topic)
    consumer = client.subscribe(topic, unique("sub"))
    lines_before = log_lines(broker)
    conns = []
    for _ in range(400):
        try:
            conns.append(socket.create_connection(("127.0.0.1", broker.pulsar_port), timeout=5))
        except OSError:
            break
    # Every connection beyond what the broker takes is closed at once or
    # waits in the listen backlog; none makes it spin.
    time.sleep(3.0)  # the time it took to write 2 million log lines (observing absence)
    assert healthy(broker), "the health check failed with the file descriptors used up"
    producer.send(b"still-serving")
    assert consumer.receive(timeout_millis=10000).data() == b"still-serving"
    grown = log_lines(broker) - lines_before
    assert grown < 100, f"the broker wrote {grown} log lines in 3 s"
    for s in conns:
        s.close()
    client.close()


def metric(broker, name: str) -> float:
    status, body = http("GET", f"{broker.http_url}/metrics")
    assert status == 200
    total = 0.0
    for line in body.decode().splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.fixture(scope="module")
def self_signed(tmp_path_factory):
    """A self-signed certificate and key for localhost (cert, key paths)."""
    d = tmp_path_factory.mktemp("tls")
    proc = subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-keyout", "key.pem", "-out", "cert.pem", "-days", "2", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        cwd=d, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return d / "cert.pem", d / "key.pem"


def test_max_connections_counts_plain_and_tls_ports_together(make_broker, self_signed):
    cert, key = self_signed
    config = (
        "[broker]\nmax_connections = 4\n"
        f"[tls]\ncert_file = {json.dumps(str(cert))}\nkey_file = {json.dumps(str(key))}\n"
    )
    broker = make_broker(config=config)
    plain = [wire.RawConnection("127.0.0.1", broker.pulsar_port) for _ in range(2)]
    for c in plain:
        c.handshake()
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    tls = []
    for _ in range(2):
        s = context.wrap_socket(socket.create_connection(("127.0.0.1", broker.pulsar_tls_port)),
                                server_hostname="localhost")
        s.sendall(wire.connect_cmd())
        s.settimeout(10)
        assert s.recv(65536), "a TLS connection within the limit was not served"
        tls.append(s)
    assert_connection_refused(broker, "a 5th connection over plain and TLS ports")
    for c in plain:
        c.close()
    for s in tls:
        s.close()


def assert_connection_refused(broker, what: str) -> None:
    """A new plain connection is closed without being served, and counted."""
    refused = wire.RawConnection("127.0.0.1", broker.pulsar_port)
    try:
        refused.send(wire.connect_cmd())
        refused.wait_closed(timeout=10)
    except TimeoutError:
        raise AssertionError(f"{what} was served") from None
    finally:
        refused.close()
    assert metric(broker, "kilonova_connections_refused_total") >= 1


def test_max_connections_per_ip(make_broker):
    broker = make_broker(config="[broker]\nmax_connections_per_ip = 3\n")
    kept = [wire.RawConnection("127.0.0.1", broker.pulsar_port) for _ in range(3)]
    for c in kept:
        c.handshake()
    assert_connection_refused(broker, "a 4th connection from one address")
    # A slot freed is a slot to take.
    kept.pop().close()
    def reconnects():
        c = wire.RawConnection("127.0.0.1", broker.pulsar_port)
        c.send(wire.connect_cmd())
        kind, f = c.outcome(5)
        c.close()
        return kind == "frame" and f.type == wire.CONNECTED
    wait_until(reconnects, 10, "a connection after one closed was refused")
    for c in kept:
        c.close()
