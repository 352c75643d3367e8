"""A tiny hand-written codec for raw Pulsar frames, for tests that must send
bytes no real client would (bad checksums, oversize frames, garbage).

Frame format (all integers big-endian)::

    simple:  [u32 total_size][u32 command_size][BaseCommand]
    payload: [u32 total_size][u32 command_size][BaseCommand]
             [u16 0x0e01][u32 crc32c][u32 metadata_size][MessageMetadata][payload]

`total_size` counts everything after itself; the CRC32C (Castagnoli) covers
everything after the checksum field.

Protobuf is encoded by hand: only varint (wire type 0) and length-delimited
(wire type 2) fields are written; the decoder also skips fixed32/fixed64.
"""

from __future__ import annotations

import socket
import struct
import time

# BaseCommand.Type values used by the tests.
CONNECT = 2
CONNECTED = 3
SUBSCRIBE = 4
PRODUCER = 5
SEND = 6
SEND_RECEIPT = 7
SEND_ERROR = 8
MESSAGE = 9
SUCCESS = 13
ERROR = 14
CLOSE_PRODUCER = 15
CLOSE_CONSUMER = 16
PRODUCER_SUCCESS = 17
PING = 18
PONG = 19
PARTITIONED_METADATA = 21
PARTITIONED_METADATA_RESPONSE = 22
LOOKUP = 23
LOOKUP_RESPONSE = 24
GET_SCHEMA = 34
GET_SCHEMA_RESPONSE = 35

TYPE_NAMES = {
    v: k
    for k, v in dict(globals()).items()
    if k.isupper() and isinstance(v, int) and not k.startswith("_")
}

# ServerError values.
SERVER_ERRORS = {
    0: "UnknownError",
    1: "MetadataError",
    2: "PersistenceError",
    3: "AuthenticationError",
    4: "AuthorizationError",
    5: "ConsumerBusy",
    6: "ServiceNotReady",
    7: "ProducerBlockedQuotaExceededError",
    8: "ProducerBlockedQuotaExceededException",
    9: "ChecksumError",
    10: "UnsupportedVersionError",
    11: "TopicNotFound",
    12: "SubscriptionNotFound",
    13: "ConsumerNotFound",
    14: "TooManyRequests",
    15: "TopicTerminatedError",
    16: "ProducerBusy",
    17: "InvalidTopicName",
    18: "IncompatibleSchema",
    19: "ConsumerAssignError",
    20: "TransactionCoordinatorNotFound",
    21: "InvalidTxnStatus",
    22: "NotAllowedError",
    23: "TransactionConflict",
    24: "TransactionNotFound",
    25: "ProducerFenced",
}
CHECKSUM_ERROR = 9

MAGIC_CRC32C = 0x0E01
DEFAULT_MAX_FRAME_BYTES = (5 << 20) + (10 << 10)


# ---------------------------------------------------------------- CRC32C


def _crc32c_table() -> list[int]:
    poly = 0x82F63B78  # Castagnoli, reflected
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ poly if c & 1 else c >> 1
        table.append(c)
    return table


_CRC_TABLE = _crc32c_table()


def crc32c(data: bytes, crc: int = 0) -> int:
    crc ^= 0xFFFFFFFF
    table = _CRC_TABLE
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


# ---------------------------------------------------------------- protobuf


def varint(n: int) -> bytes:
    if n < 0:
        n &= (1 << 64) - 1  # int32/int64 negatives are 10-byte varints
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def pb(*fields: tuple[int, int | str | bytes]) -> bytes:
    """Encodes a message from (field number, value) pairs, in order.

    int -> varint; str/bytes -> length-delimited (nested messages are bytes
    produced by another `pb` call). `None` values are skipped.
    """
    out = bytearray()
    for num, value in fields:
        if value is None:
            continue
        if isinstance(value, bool):
            value = int(value)
        if isinstance(value, int):
            out += varint(num << 3 | 0) + varint(value)
        else:
            if isinstance(value, str):
                value = value.encode("utf-8")
            out += varint(num << 3 | 2) + varint(len(value)) + value
    return bytes(out)


def read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    shift = 0
    result = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 70:
            raise ValueError("varint too long")


def unpb(buf: bytes) -> dict[int, list]:
    """Decodes a message into {field number: [values]} (ints or bytes)."""
    fields: dict[int, list] = {}
    pos = 0
    while pos < len(buf):
        key, pos = read_varint(buf, pos)
        num, wt = key >> 3, key & 7
        if wt == 0:
            value, pos = read_varint(buf, pos)
        elif wt == 2:
            n, pos = read_varint(buf, pos)
            if pos + n > len(buf):
                raise ValueError("truncated field")
            value = bytes(buf[pos : pos + n])
            pos += n
        elif wt == 1:
            value = struct.unpack_from("<Q", buf, pos)[0]
            pos += 8
        elif wt == 5:
            value = struct.unpack_from("<I", buf, pos)[0]
            pos += 4
        else:
            raise ValueError(f"unsupported wire type {wt}")
        fields.setdefault(num, []).append(value)
    return fields


def first(fields: dict[int, list], num: int, default=None):
    values = fields.get(num)
    return values[0] if values else default


# ---------------------------------------------------------------- commands


def base_command(cmd_type: int, body: bytes | None) -> bytes:
    """BaseCommand with `type` and the body in the field numbered like the type."""
    return pb((1, cmd_type), (cmd_type, body))


def frame(command: bytes) -> bytes:
    return struct.pack(">II", 4 + len(command), len(command)) + command


def payload_frame(command: bytes, metadata: bytes, payload: bytes, checksum: int | None = None) -> bytes:
    covered = struct.pack(">I", len(metadata)) + metadata + payload
    crc = crc32c(covered) if checksum is None else checksum
    rest = struct.pack(">HI", MAGIC_CRC32C, crc) + covered
    return struct.pack(">II", 4 + len(command) + len(rest), len(command)) + command + rest


def connect_cmd(client_version: str = "kilonova-raw-test", protocol_version: int = 19) -> bytes:
    return frame(base_command(CONNECT, pb((1, client_version), (4, protocol_version))))


def producer_cmd(topic: str, producer_id: int, request_id: int) -> bytes:
    return frame(base_command(PRODUCER, pb((1, topic), (2, producer_id), (3, request_id))))


def subscribe_cmd(topic: str, subscription: str, consumer_id: int, request_id: int,
                  sub_type: int = 0, consumer_name: str | None = None,
                  initial_position: int | None = None) -> bytes:
    """CommandSubscribe: topic, subscription, subType (0 Exclusive, 1 Shared),
    consumer_id, request_id, consumer_name (6), initialPosition (13; 1: earliest)."""
    return frame(base_command(SUBSCRIBE, pb(
        (1, topic), (2, subscription), (3, sub_type), (4, consumer_id), (5, request_id),
        (6, consumer_name), (13, initial_position))))


def close_consumer_cmd(consumer_id: int, request_id: int) -> bytes:
    return frame(base_command(CLOSE_CONSUMER, pb((1, consumer_id), (2, request_id))))


def get_schema_cmd(topic: str, request_id: int) -> bytes:
    """CommandGetSchema of the topic's latest schema."""
    return frame(base_command(GET_SCHEMA, pb((1, request_id), (2, topic))))


def producer_with_schema_cmd(topic: str, producer_id: int, request_id: int, schema: bytes) -> bytes:
    """CommandProducer carrying `schema`, an encoded `Schema` message (field 7)."""
    return frame(base_command(PRODUCER, pb((1, topic), (2, producer_id), (3, request_id), (7, schema))))


def partitioned_metadata_cmd(topic: str, request_id: int) -> bytes:
    return frame(base_command(PARTITIONED_METADATA, pb((1, topic), (2, request_id))))


def send_cmd(
    producer_id: int,
    sequence_id: int,
    producer_name: str,
    payload: bytes,
    publish_time_ms: int | None = None,
    checksum: int | None = None,
    schema_version: bytes | None = None,
) -> bytes:
    cmd = base_command(SEND, pb((1, producer_id), (2, sequence_id), (3, 1)))
    if publish_time_ms is None:
        publish_time_ms = int(time.time() * 1000)
    # MessageMetadata: producer_name, sequence_id, publish_time, schema_version (16).
    metadata = pb((1, producer_name), (2, sequence_id), (3, publish_time_ms), (16, schema_version))
    return payload_frame(cmd, metadata, payload, checksum)


def pong_cmd() -> bytes:
    return frame(base_command(PONG, b""))


# ---------------------------------------------------------------- a raw connection


class Closed(Exception):
    """The peer closed the connection (EOF or reset)."""


class Frame:
    def __init__(self, cmd_type: int, body: dict[int, list], raw_body: bytes, rest: bytes):
        self.type = cmd_type
        self.body = body  # the decoded sub-message in field `type`
        self.raw_body = raw_body
        self.rest = rest  # bytes after the command (payload part), if any

    @property
    def name(self) -> str:
        return TYPE_NAMES.get(self.type, f"type {self.type}")

    def __repr__(self) -> str:
        return f"Frame({self.name}, {self.body})"


def parse_frame(body: bytes) -> Frame:
    """`body` is everything after total_size."""
    (cmd_size,) = struct.unpack_from(">I", body, 0)
    cmd = unpb(body[4 : 4 + cmd_size])
    cmd_type = first(cmd, 1)
    raw_body = first(cmd, cmd_type, b"") if cmd_type is not None else b""
    return Frame(cmd_type, unpb(raw_body), raw_body, body[4 + cmd_size :])


class RawConnection:
    def __init__(self, host: str, port: int, timeout: float = 5.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def send(self, data: bytes) -> None:
        """Sends; a peer that already closed is not an error here (the reads
        that follow observe the close)."""
        try:
            self.sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _fill(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no data from the broker in time")
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(65536)
        except socket.timeout:
            raise TimeoutError("no data from the broker in time") from None
        except (ConnectionResetError, ConnectionAbortedError, BrokenPipeError):
            raise Closed("connection reset") from None
        if not chunk:
            raise Closed("EOF")
        self.buf += chunk

    def read_frame(self, timeout: float = 5.0, answer_pings: bool = True) -> Frame:
        """Next frame from the broker. Raises Closed on EOF, TimeoutError if none
        arrives in time. Broker PINGs are answered and skipped."""
        deadline = time.monotonic() + timeout
        while True:
            while len(self.buf) < 4:
                self._fill(deadline)
            (total,) = struct.unpack_from(">I", self.buf, 0)
            while len(self.buf) < 4 + total:
                self._fill(deadline)
            body = bytes(self.buf[4 : 4 + total])
            del self.buf[: 4 + total]
            f = parse_frame(body)
            if f.type == PING and answer_pings:
                self.send(pong_cmd())
                continue
            return f

    def expect(self, cmd_type: int, timeout: float = 5.0) -> Frame:
        f = self.read_frame(timeout)
        assert f.type == cmd_type, f"expected {TYPE_NAMES.get(cmd_type, cmd_type)}, got {f!r}"
        return f

    def handshake(self) -> Frame:
        self.send(connect_cmd())
        return self.expect(CONNECTED)

    def outcome(self, timeout: float = 5.0) -> tuple[str, Frame | None]:
        """How the broker reacted: ("closed", None), ("error", frame) for
        ERROR/SEND_ERROR, ("frame", frame) for anything else, or ("silent", None)
        when nothing happened within `timeout`."""
        try:
            f = self.read_frame(timeout)
        except Closed:
            return "closed", None
        except TimeoutError:
            return "silent", None
        if f.type in (ERROR, SEND_ERROR):
            return "error", f
        return "frame", f

    def wait_closed(self, timeout: float = 5.0) -> list[Frame]:
        """Reads until EOF; returns the frames seen before it. Raises
        TimeoutError if the connection stays open."""
        deadline = time.monotonic() + timeout
        seen = []
        while True:
            try:
                seen.append(self.read_frame(max(0.0, deadline - time.monotonic())))
            except Closed:
                return seen
