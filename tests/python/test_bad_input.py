"""Hostile bytes on raw sockets. Each bad connection must be answered with an
error or closed, and all the while a well-behaved client on another connection
keeps publishing and consuming."""

import random
import struct
import threading

import pulsar
import pytest

import wire
from conftest import make_client, payloads, read_n, topic_name, unique


class HealthyTraffic:
    """A real client doing send -> receive -> ack round trips in a background
    thread for the whole test."""

    def __init__(self, broker):
        self.client = make_client(broker)
        topic = topic_name("healthy")
        self.consumer = self.client.subscribe(topic, unique("sub"))
        self.producer = self.client.create_producer(topic)
        self.round_trips = 0
        self.errors = []
        self.cond = threading.Condition()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="healthy-traffic", daemon=True)
        self.thread.start()

    def _run(self):
        i = 0
        while not self.stopping.is_set():
            payload = f"healthy-{i}".encode()
            try:
                self.producer.send(payload)
                m = self.consumer.receive(timeout_millis=5000)
                if m.data() != payload:
                    raise AssertionError(f"expected {payload!r}, received {m.data()!r}")
                self.consumer.acknowledge(m)
            except Exception as e:  # recorded, reported by check()
                self.errors.append(f"round trip {i}: {e!r}")
            with self.cond:
                self.round_trips += 1
                self.cond.notify_all()
            i += 1
            self.stopping.wait(0.01)  # pacing, not synchronisation

    def check(self, after: str, more: int = 3, timeout: float = 20.0):
        """Waits for `more` further round trips and asserts none ever failed."""
        with self.cond:
            target = self.round_trips + more
            progressed = self.cond.wait_for(
                lambda: self.round_trips >= target or self.errors, timeout
            )
        assert not self.errors, f"the good client failed after {after}: {self.errors[:5]}"
        assert progressed, f"the good client made no progress within {timeout}s after {after}"

    def close(self):
        self.stopping.set()
        self.thread.join(15)
        self.client.close()


@pytest.fixture
def healthy(broker):
    h = HealthyTraffic(broker)
    h.check("startup")
    yield h
    h.close()


def raw(broker):
    return wire.RawConnection("127.0.0.1", broker.pulsar_port)


def assert_closed(conn, what, timeout=5.0):
    """The broker must close the connection; it may send ERROR frames first."""
    try:
        frames = conn.wait_closed(timeout)
    except TimeoutError:
        raise AssertionError(f"broker kept the connection open after {what}") from None
    assert all(f.type == wire.ERROR for f in frames), f"after {what} the broker sent {frames}"


def assert_refused(conn, what, timeout=5.0):
    """The broker must answer with an error or close the connection."""
    kind, f = conn.outcome(timeout)
    assert kind in ("closed", "error"), f"after {what} the broker's reaction was {kind}: {f!r}"
    return kind, f


def test_crc32c_helper():
    # Known answer for CRC-32C (Castagnoli), so a checksum test failing is the
    # broker's doing and not this file's.
    assert wire.crc32c(b"123456789") == 0xE3069283
    assert wire.crc32c(b"") == 0


def test_random_bytes(broker, healthy):
    rng = random.Random(20240611)
    garbage = bytes(rng.getrandbits(8) for _ in range(4096))
    with raw(broker) as conn:
        conn.send(garbage)
        (size,) = struct.unpack(">I", garbage[:4])
        if size <= wire.DEFAULT_MAX_FRAME_BYTES and size + 4 > len(garbage):
            conn.send(bytes(size + 4 - len(garbage)))  # complete the claimed frame
        assert_closed(conn, "4 KiB of random bytes")
    healthy.check("random bytes")

    # A plausible size in front of a random body.
    body = bytes(rng.getrandbits(8) for _ in range(1000))
    with raw(broker) as conn:
        conn.send(struct.pack(">I", len(body)) + body)
        assert_closed(conn, "a frame with a random body")
    healthy.check("a random frame body")

    # The same after a successful handshake.
    with raw(broker) as conn:
        conn.handshake()
        conn.send(struct.pack(">I", len(body)) + body)
        assert_closed(conn, "a random frame body after CONNECT")
    healthy.check("a random frame body after CONNECT")


@pytest.mark.parametrize("size", [64 << 20, wire.DEFAULT_MAX_FRAME_BYTES + 1, 0xFFFFFFFF])
def test_oversize_frame(broker, healthy, size):
    with raw(broker) as conn:
        conn.handshake()
        # Only the header and a little of the body: the broker must refuse on
        # the size alone, without waiting for (or allocating) the rest.
        conn.send(struct.pack(">II", size, 8) + bytes(1024))
        assert_closed(conn, f"a frame header claiming {size} bytes")
    healthy.check(f"an oversize frame of {size} bytes")


def test_command_before_connect(broker, healthy):
    topic = topic_name("before-connect")
    with raw(broker) as conn:
        conn.send(wire.producer_cmd(topic, producer_id=1, request_id=1))
        assert_refused(conn, "PRODUCER before CONNECT")
    with raw(broker) as conn:
        conn.send(wire.send_cmd(1, 0, "nobody", b"sneaky"))
        assert_refused(conn, "SEND before CONNECT")
    healthy.check("commands before CONNECT")

    # Nothing was stored on the topic.
    reader = healthy.client.create_reader(topic, pulsar.MessageId.earliest)
    assert not reader.has_message_available()


def test_unknown_command_type(broker, healthy):
    with raw(broker) as conn:
        conn.handshake()
        conn.send(wire.frame(wire.base_command(99, b"")))
        assert_refused(conn, "BaseCommand type 99")
    healthy.check("an unknown command type")

    with raw(broker) as conn:
        conn.handshake()
        # A known type whose body is missing.
        conn.send(wire.frame(wire.pb((1, wire.PRODUCER))))
        assert_refused(conn, "PRODUCER without its body")
    healthy.check("a command without its body")


def test_send_with_wrong_checksum(broker, healthy):
    topic = topic_name("checksum")
    with raw(broker) as conn:
        conn.handshake()
        conn.send(wire.producer_cmd(topic, producer_id=1, request_id=1))
        ok = conn.expect(wire.PRODUCER_SUCCESS)
        assert wire.first(ok.body, 1) == 1, ok
        name = wire.first(ok.body, 2, b"raw-producer").decode()

        # Control: a correct SEND is accepted, so what follows tests the checksum
        # and not this file's framing.
        conn.send(wire.send_cmd(1, 0, name, b"good-0"))
        receipt = conn.expect(wire.SEND_RECEIPT)
        assert (wire.first(receipt.body, 1), wire.first(receipt.body, 2)) == (1, 0), receipt

        good = wire.send_cmd(1, 1, name, b"corrupt-1")
        crc_at = struct.unpack_from(">I", good, 4)[0] + 8 + 2  # after the command and magic
        (crc,) = struct.unpack_from(">I", good, crc_at)
        bad = good[:crc_at] + struct.pack(">I", crc ^ 0xFFFFFFFF) + good[crc_at + 4:]
        conn.send(bad)
        kind, f = assert_refused(conn, "a SEND with a wrong checksum")
        if kind == "error":
            assert f.type == wire.SEND_ERROR, f
            assert wire.first(f.body, 1) == 1 and wire.first(f.body, 2) == 1, f
            assert wire.first(f.body, 3) == wire.CHECKSUM_ERROR, (
                f"error {wire.SERVER_ERRORS.get(wire.first(f.body, 3))}, expected ChecksumError"
            )
    healthy.check("a SEND with a wrong checksum")

    # Only the good message was stored.
    reader = healthy.client.create_reader(topic, pulsar.MessageId.earliest)
    assert payloads(read_n(reader, 1)) == [b"good-0"]
    try:
        m = reader.read_next(timeout_millis=500)
        raise AssertionError(f"the corrupt message was stored: {m.data()!r}")
    except pulsar.Timeout:
        pass
