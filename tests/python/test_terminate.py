"""Topic termination (`kilonova admin topics terminate`, Pulsar's
`POST …/{topic}/terminate`), driven by the real Python client: producers are
refused with TopicTerminated, what was published stays readable, consumers
hear REACHED_END_OF_TOPIC once nothing is left to acknowledge, and the
termination survives a restart.
"""

from __future__ import annotations

import logging

import pulsar
import pytest

from conftest import (
    make_client, msg_key, payloads, read_n, receive_n, topic_name, unique, wait_until,
)
import wire
from test_admin_cli import Cli, rest, rest_json, topic_rest_path

ACK = 10
FLOW = 11
REACHED_END_OF_TOPIC = 27
GET_LAST_MESSAGE_ID = 29
GET_LAST_MESSAGE_ID_RESPONSE = 30


def publish(client, topic: str, n: int) -> list:
    producer = client.create_producer(topic, batching_enabled=False)
    ids = [producer.send(f"m-{i}".encode()) for i in range(n)]
    producer.close()
    return ids


def terminate(broker, topic: str) -> dict:
    status, doc = rest(broker, "POST", f"{topic_rest_path(topic)}/terminate")
    assert status == 200, (status, doc)
    return doc


def test_terminate_answers_the_last_message_id_and_refuses_producers(broker, client):
    topic = topic_name("terminate")
    producer = client.create_producer(topic, batching_enabled=False)
    ids = [producer.send(f"m-{i}".encode()) for i in range(5)]
    doc = terminate(broker, topic)
    assert (doc["ledgerId"], doc["entryId"]) == (ids[-1].ledger_id(), ids[-1].entry_id())
    assert doc["partitionIndex"] == -1
    # The connected producer was closed; its client comes back and is refused.
    with pytest.raises(pulsar.TopicTerminated):
        producer.send(b"after")
    with pytest.raises(pulsar.TopicTerminated):
        client.create_producer(topic)
    # Terminating again is idempotent: the same end.
    assert terminate(broker, topic) == doc
    # Everything published before the end is still there.
    reader = client.create_reader(topic, pulsar.MessageId.earliest)
    assert payloads(read_n(reader, 5)) == [f"m-{i}".encode() for i in range(5)]
    assert not reader.has_message_available()


def test_a_terminated_topic_stays_terminated_after_a_restart(broker):
    topic = topic_name("terminate-restart")
    c = make_client(broker)
    # A subscription keeps the messages (without one and without retention
    # they are free to go, as in Pulsar).
    c.subscribe(topic, "s", initial_position=pulsar.InitialPosition.Earliest).close()
    ids = publish(c, topic, 3)
    terminate(broker, topic)
    c.close()
    broker.kill()  # kill -9: the termination was on disk when it was answered
    broker.restart()
    c = make_client(broker)
    try:
        with pytest.raises(pulsar.TopicTerminated):
            c.create_producer(topic)
        consumer = c.subscribe(topic, "s", initial_position=pulsar.InitialPosition.Earliest)
        got = receive_n(consumer, 3)
        assert [msg_key(m.message_id()) for m in got] == [msg_key(i) for i in ids]
        stats = rest_json(broker, f"{topic_rest_path(topic)}/lastMessageId")
        assert (stats["ledgerId"], stats["entryId"]) == (ids[-1].ledger_id(), ids[-1].entry_id())
    finally:
        c.close()


def subscribe_cmd(topic: str, sub: str, consumer_id: int, request_id: int) -> bytes:
    # Exclusive, initial position Earliest.
    return wire.frame(wire.base_command(wire.SUBSCRIBE, wire.pb(
        (1, topic), (2, sub), (3, 0), (4, consumer_id), (5, request_id), (13, 1))))


def test_consumers_hear_the_end_of_the_topic_once_everything_is_acknowledged(broker, client):
    topic = topic_name("terminate-end")
    publish(client, topic, 2)
    with wire.RawConnection("127.0.0.1", broker.pulsar_port) as conn:
        conn.handshake()
        conn.send(subscribe_cmd(topic, "s", 1, 1))
        conn.expect(wire.SUCCESS)
        terminate(broker, topic)
        conn.send(wire.frame(wire.base_command(FLOW, wire.pb((1, 1), (2, 10)))))
        ids = [wire.first(conn.expect(wire.MESSAGE).body, 2) for _ in range(2)]
        # One of two acknowledged: not the end yet. The topic answers in
        # order, so the last-message-id answer comes before any end notice.
        conn.send(wire.frame(wire.base_command(ACK, wire.pb((1, 1), (2, 0), (3, ids[0])))))
        conn.send(wire.frame(wire.base_command(GET_LAST_MESSAGE_ID, wire.pb((1, 1), (2, 7)))))
        frame = conn.read_frame()
        assert frame.type == GET_LAST_MESSAGE_ID_RESPONSE, f"{frame!r} before the last ack"
        # The last acknowledgement leaves nothing: the end comes.
        conn.send(wire.frame(wire.base_command(ACK, wire.pb((1, 1), (2, 0), (3, ids[1])))))
        frame = conn.read_frame()
        assert frame.type == REACHED_END_OF_TOPIC, frame
        assert wire.first(frame.body, 1) == 1
        # A consumer of a subscription with nothing to read hears it at once.
        status, doc = rest(broker, "PUT", f"{topic_rest_path(topic)}/subscription/late")
        assert status in (200, 204), (status, doc)
        conn.send(subscribe_cmd(topic, "late", 2, 2))
        conn.expect(wire.SUCCESS)
        frame = conn.read_frame()
        assert frame.type == REACHED_END_OF_TOPIC, frame
        assert wire.first(frame.body, 1) == 2


def test_clients_that_cannot_handle_it_are_not_told_the_end(broker, client):
    # The C++ client (under the Python and Node.js ones) announces v20 but
    # drops the connection on REACHED_END_OF_TOPIC; Pulsar tells from v9 on.
    topic = topic_name("terminate-untold")
    publish(client, topic, 1)
    terminate(broker, topic)
    status, doc = rest(broker, "PUT", f"{topic_rest_path(topic)}/subscription/late")
    assert status in (200, 204), (status, doc)
    for consumer_id, (client_version, protocol_version) in enumerate(
        [("Pulsar-CPP-v4.2.0", 20), ("an-old-client", 8)], start=1
    ):
        with wire.RawConnection("127.0.0.1", broker.pulsar_port) as conn:
            conn.send(wire.connect_cmd(client_version, protocol_version))
            conn.expect(wire.CONNECTED)
            # Nothing left for "late": a client that handles it hears the
            # end right after SUCCESS (see the test above), before any answer
            # to a later request.
            conn.send(wire.frame(wire.base_command(wire.SUBSCRIBE, wire.pb(
                (1, topic), (2, "late"), (3, 1), (4, consumer_id), (5, 1)))))
            conn.expect(wire.SUCCESS)
            conn.send(wire.frame(wire.base_command(
                GET_LAST_MESSAGE_ID, wire.pb((1, consumer_id), (2, 2)))))
            frame = conn.read_frame()
            assert frame.type == GET_LAST_MESSAGE_ID_RESPONSE, (client_version, frame)


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_python_clients_keep_their_connection_at_the_end_of_a_terminated_topic(broker):
    # Told REACHED_END_OF_TOPIC, the C++ client under the Python one logs
    # "Received invalid message from server" and drops the connection (a
    # consumer resubscribes, is told again, drops it again); a close racing
    # with a drop failed with NotConnected.
    records = _Records()
    logger = logging.getLogger(unique("terminate-client"))
    logger.setLevel(logging.INFO)
    logger.addHandler(records)
    logger.propagate = False

    def drops():
        return [m for m in records.messages if "invalid message" in m or "disconnected" in m]

    topic = topic_name("terminate-conn")
    c = make_client(broker, logger=logger)
    try:
        publish(c, topic, 2)
        terminate(broker, topic)
        # Nothing left for a subscription at the end: its consumer would be
        # told at once. A round trip on the connection: what the broker sent
        # before its answer has been handled.
        consumer = c.subscribe(topic, "late", initial_position=pulsar.InitialPosition.Latest)
        consumer.get_last_message_id()
        assert drops() == []
        # A reader that reads everything would be told when its
        # acknowledgement of the last message lands.
        reader = c.create_reader(topic, pulsar.MessageId.earliest)
        assert payloads(read_n(reader, 2)) == [b"m-0", b"m-1"]

        def reader_backlog():
            subs = rest_json(broker, f"{topic_rest_path(topic)}/stats")["subscriptions"]
            return [s["msgBacklog"] for name, s in subs.items() if name.startswith("reader-")]

        wait_until(lambda: reader_backlog() == [0], 10, "the reader's acknowledgement")
        assert not reader.has_message_available()
        assert drops() == []
        reader.close()
        consumer.close()
    finally:
        c.close()


def test_partitioned_topics_are_terminated_per_partition(broker, client):
    local = unique("terminate-part")
    broker.create_partitioned_topic(local, 2)
    topic = f"persistent://public/default/{local}"
    producer = client.create_producer(topic, batching_enabled=False)
    for i in range(6):
        producer.send(f"m-{i}".encode(), partition_key=f"k{i}")
    producer.close()
    status, doc = rest(broker, "POST", f"{topic_rest_path(topic)}/terminate")
    assert status == 405, (status, doc)
    assert "partitioned" in str(doc)
    status, doc = rest(broker, "POST", f"{topic_rest_path(topic)}/terminate/partitions")
    assert status == 200, (status, doc)
    assert sorted(doc) == ["0", "1"]
    for i, last in sorted(doc.items()):
        assert last["partitionIndex"] == int(i)
    with pytest.raises(pulsar.TopicTerminated):
        client.create_producer(f"{topic}-partition-0")


def test_cli_terminate_prints_the_last_message_id(broker, client):
    topic = topic_name("terminate-cli")
    ids = publish(client, topic, 2)
    out = Cli(broker).ok("topics", "terminate", topic).stdout
    assert out.strip() == (
        f"Topic successfully terminated at {ids[-1].ledger_id()}:{ids[-1].entry_id()}:-1"
    )
    with pytest.raises(pulsar.TopicTerminated):
        client.create_producer(topic)


def test_a_non_persistent_topic_cannot_be_terminated(broker, client):
    topic = f"non-persistent://public/default/{unique('np-terminate')}"
    client.create_producer(topic).send(b"x")
    status, doc = rest(broker, "POST", f"{topic_rest_path(topic)}/terminate")
    assert status == 405, (status, doc)
