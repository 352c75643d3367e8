"""AUTO_PRODUCE (Pulsar's `Schema.AUTO_PRODUCE_BYTES()`), as clients do it on
the wire (issue #23).

The Java client's AUTO_PRODUCE_BYTES producer has no schema of its own: it
asks the topic's schema with GET_SCHEMA, creates its producer carrying that
schema (the broker answers with the existing version, registering nothing),
checks each message's bytes against it locally, and sends them stamped with
the version. A topic without a schema answers GET_SCHEMA with
`TopicNotFound`, and the producer falls back to BYTES (no schema). There is
no AUTO_PUBLISH schema type in the protocol: Pulsar's broker refuses
client-side types as schema data.

The Python client 3.13 has no AUTO_PRODUCE, so the Java client's exchange is
driven here with raw frames (wire.py), and read back by a real Python
consumer with the Avro schema. The C++ client's own `AUTO_PUBLISH` schema
type (reachable from Python through `_pulsar`) creates its producer with no
schema at all; that is checked too: Pulsar accepts a producer without a
schema on a topic with one unless `schemaValidationEnforced`, and so does
Kilonova.
"""

from __future__ import annotations

import io
import json
import struct

import _pulsar
import fastavro
from pulsar.schema import AvroSchema, Long, Record, Schema, String

import wire
from conftest import http, receive_n, topic_name, unique

AVRO = 4  # Schema.Type.Avro
TOPIC_NOT_FOUND = 11


class Reading(Record):
    sensor = String(required=True)
    value = Long(required=True)


def avro_bytes(record: dict) -> bytes:
    out = io.BytesIO()
    fastavro.schemaless_writer(out, fastavro.parse_schema(Reading.schema()), record)
    return out.getvalue()


def schema_versions(broker, topic: str) -> list[int]:
    status, body = http("GET", f"{broker.http_url}/admin/v2/schemas/"
                        f"{topic.removeprefix('persistent://')}/schemas")
    assert status == 200, body
    return [v["version"] for v in json.loads(body)["getSchemaResponses"]]


def auto_produce(conn: wire.RawConnection, topic: str, producer_id: int) -> bytes | None:
    """Creates a producer as the Java client's AUTO_PRODUCE_BYTES does:
    GET_SCHEMA, then PRODUCER with the schema found (none if the topic has
    none). Returns the schema version the broker gave the producer."""
    conn.send(wire.get_schema_cmd(topic, 100 + producer_id))
    answer = conn.expect(wire.GET_SCHEMA_RESPONSE, 10.0)
    assert wire.first(answer.body, 1) == 100 + producer_id
    schema = wire.first(answer.body, 4)
    if schema is None:
        assert wire.first(answer.body, 2) == TOPIC_NOT_FOUND, answer
        conn.send(wire.producer_cmd(topic, producer_id, 200 + producer_id))
    else:
        conn.send(wire.producer_with_schema_cmd(topic, producer_id, 200 + producer_id, schema))
    success = conn.expect(wire.PRODUCER_SUCCESS, 10.0)
    assert wire.first(success.body, 1) == 200 + producer_id
    return wire.first(success.body, 4)


def test_an_auto_produce_producer_takes_the_topics_avro_schema_and_avro_consumers_read_it(broker, client):
    topic = topic_name("auto-produce")
    consumer = client.subscribe(topic, unique("sub"), schema=AvroSchema(Reading))
    typed = client.create_producer(topic, schema=AvroSchema(Reading))
    typed.send(Reading(sensor="typed", value=1))

    with wire.RawConnection("127.0.0.1", broker.pulsar_port) as conn:
        conn.handshake()
        conn.send(wire.get_schema_cmd(topic, 1))
        answer = conn.expect(wire.GET_SCHEMA_RESPONSE, 10.0)
        found = wire.unpb(wire.first(answer.body, 4))
        assert wire.first(found, 4) == AVRO
        assert json.loads(wire.first(found, 3)) == Reading.schema()

        version = auto_produce(conn, topic, 1)
        assert version == struct.pack(">q", 0), "the topic's version, not a new one"
        for i, record in enumerate([{"sensor": "auto", "value": 2}, {"sensor": "auto", "value": 3}]):
            conn.send(wire.send_cmd(1, i, "auto-producer", avro_bytes(record), schema_version=version))
            conn.expect(wire.SEND_RECEIPT, 10.0)

    got = receive_n(consumer, 3)
    assert [(m.value().sensor, m.value().value) for m in got] == [("typed", 1), ("auto", 2), ("auto", 3)]
    # The client shows the 8-byte version as a str of its bytes.
    assert [m.schema_version().encode("latin-1") for m in got] == [version] * 3, \
        "every message is stamped with version 0"
    assert schema_versions(broker, topic) == [0], "AUTO_PRODUCE registered nothing"


def test_auto_produce_on_a_topic_without_a_schema_falls_back_to_bytes(broker, client):
    topic = topic_name("auto-produce-bytes")
    consumer = client.subscribe(topic, unique("sub"))
    with wire.RawConnection("127.0.0.1", broker.pulsar_port) as conn:
        conn.handshake()
        assert auto_produce(conn, topic, 1) is None, "no schema, no version"
        conn.send(wire.send_cmd(1, 0, "auto-producer", b"raw bytes"))
        conn.expect(wire.SEND_RECEIPT, 10.0)
    assert [m.data() for m in receive_n(consumer, 1)] == [b"raw bytes"]
    status, _ = http("GET", f"{broker.http_url}/admin/v2/schemas/"
                     f"{topic.removeprefix('persistent://')}/schema")
    assert status == 404, "still no schema"


class AutoPublish(Schema):
    """The C++ client's AUTO_PUBLISH schema type: bytes in, bytes out."""

    def __init__(self):
        self._record_cls = bytes
        self._schema_info = _pulsar.SchemaInfo(_pulsar.SchemaType.AUTO_PUBLISH, "AUTO_PUBLISH", "")

    def encode(self, obj):
        return obj

    def decode(self, data):
        return data


def test_the_cpp_clients_auto_publish_producer_sends_avro_bytes_an_avro_consumer_reads(broker, client):
    topic = topic_name("auto-publish")
    consumer = client.subscribe(topic, unique("sub"), schema=AvroSchema(Reading))
    client.create_producer(topic, schema=AvroSchema(Reading)).send(Reading(sensor="typed", value=1))
    producer = client.create_producer(topic, schema=AutoPublish())
    producer.send(avro_bytes({"sensor": "auto", "value": 2}))
    got = receive_n(consumer, 2)
    assert [(m.value().sensor, m.value().value) for m in got] == [("typed", 1), ("auto", 2)]
    assert schema_versions(broker, topic) == [0]
