"""Hostile bytes on raw sockets. Each bad connection must be answered with an
error or closed, and all the while a well-behaved client on another connection
keeps publishing and consuming."""

import json
import random
import struct
import threading
import time

import pulsar
import pytest

import wire
from conftest import http, make_client, payloads, read_n, receive_n, topic_name, unique


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


def test_a_batch_claiming_more_messages_than_its_bytes_is_refused(broker, healthy):
    # num_messages_in_batch = 2^31 - 1 on a one-byte payload used to be stored
    # and counted as 2^31 messages: permits went negative for good and, under
    # a publish rate, every connection producing to the topic stopped.
    topic = topic_name("lying-batch")
    c = make_client(broker)
    consumer = c.subscribe(topic, unique("sub"), initial_position=pulsar.InitialPosition.Earliest)
    with raw(broker) as conn:
        conn.handshake()
        conn.send(wire.producer_cmd(topic, producer_id=1, request_id=1))
        ok = conn.expect(wire.PRODUCER_SUCCESS)
        name = wire.first(ok.body, 2, b"raw-producer").decode()
        cmd = wire.base_command(wire.SEND, wire.pb((1, 1), (2, 0), (3, 2**31 - 1)))
        metadata = wire.pb((1, name), (2, 0), (3, 1), (11, 2**31 - 1))
        conn.send(wire.payload_frame(cmd, metadata, b"x"))
        f = conn.expect(wire.SEND_ERROR)
        assert wire.SERVER_ERRORS.get(wire.first(f.body, 3)) == "NotAllowedError", f
        # The connection and the producer go on.
        conn.send(wire.send_cmd(1, 1, name, b"after-the-lie"))
        conn.expect(wire.SEND_RECEIPT)
    got = receive_n(consumer, 1, what="the good message after the refused batch")
    assert payloads(got) == [b"after-the-lie"]
    status, body = http("GET", f"{broker.http_url}/admin/v2/persistent/public/default/{topic.split('/')[-1]}/stats")
    assert status == 200, body
    assert json.loads(body)["msgInCounter"] == 1, body
    c.close()
    healthy.check("a batch that lies about its size")


def test_a_producer_id_reused_on_another_topic_leaves_no_ghost_producer(broker, healthy):
    # One connection creating producer id 1 on topic A, then again on topic B,
    # then closing, used to leave A with a producer forever: every new
    # exclusive producer got ProducerBusy and a non-forced delete was refused.
    a, b = topic_name("ghost-a"), topic_name("ghost-b")
    with raw(broker) as conn:
        conn.handshake()
        conn.send(wire.producer_cmd(a, producer_id=1, request_id=1))
        conn.expect(wire.PRODUCER_SUCCESS)
        conn.send(wire.producer_cmd(b, producer_id=1, request_id=2))
        f = conn.expect(wire.ERROR)
        assert wire.SERVER_ERRORS.get(wire.first(f.body, 2)) == "ProducerBusy", f
    c = make_client(broker)
    try:
        p = wait_for_exclusive_producer(c, a)
        p.close()
    finally:
        c.close()
    local = a.split("/")[-1]
    status, body = http("DELETE", f"{broker.http_url}/admin/v2/persistent/public/default/{local}")
    assert status == 204, (status, body)
    healthy.check("a reused producer id")


def wait_for_exclusive_producer(client, topic, timeout=10.0):
    """The raw connection's close reaches the topic asynchronously: retry the
    exclusive create until the earlier producer is gone, or fail."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return client.create_producer(topic, access_mode=pulsar.ProducerAccessMode.Exclusive)
        except pulsar.ProducerFenced:  # another producer still holds the topic
            if time.monotonic() >= deadline:
                raise AssertionError(f"{topic} still has a producer {timeout}s after its connection closed")
