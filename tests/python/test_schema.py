"""The schema registry: compatibility strategies on producer and consumer
creation (Avro resolution for AVRO and JSON schemas), the REST API under
/admin/v2/schemas, `kilonova admin schemas …`, the namespace's
schemaCompatibilityStrategy, and AUTO_CONSUME reading Avro messages through
GET_SCHEMA.

Evolutions of a record ``User`` (every class is named ``User``: Avro matches
records by name):

* V1: ``{id: long}``
* ADD_DEFAULT: V1 + ``email: ["null","string"]`` with a default — backward
  and forward compatible;
* ADD_REQUIRED: V1 + ``email: string`` without default — forward only (an
  old reader ignores it; a new reader cannot read old data);
* DROP_ID: ``{email}`` with a default, no ``id`` — backward only.
"""

from __future__ import annotations

import io
import json
import subprocess

import _pulsar
import fastavro
import pulsar
import pytest
from pulsar.schema import AvroSchema, Integer, JsonSchema, Long, Record, Schema, String

from conftest import http, receive_n, topic_name, unique


def user_class(**fields):
    return type("User", (Record,), dict(fields))


V1 = user_class(id=Long(required=True))
ADD_DEFAULT = user_class(id=Long(required=True), email=String(required_default=True))
ADD_REQUIRED = user_class(id=Long(required=True), email=String(required=True))
DROP_ID = user_class(email=String(required_default=True))

# strategy -> (evolutions accepted after V1, evolutions refused)
MATRIX = {
    "ALWAYS_COMPATIBLE": ([ADD_DEFAULT, ADD_REQUIRED, DROP_ID], []),
    "ALWAYS_INCOMPATIBLE": ([], [ADD_DEFAULT, ADD_REQUIRED, DROP_ID]),
    "BACKWARD": ([ADD_DEFAULT, DROP_ID], [ADD_REQUIRED]),
    "BACKWARD_TRANSITIVE": ([ADD_DEFAULT, DROP_ID], [ADD_REQUIRED]),
    "FORWARD": ([ADD_DEFAULT, ADD_REQUIRED], [DROP_ID]),
    "FORWARD_TRANSITIVE": ([ADD_DEFAULT, ADD_REQUIRED], [DROP_ID]),
    "FULL": ([ADD_DEFAULT], [ADD_REQUIRED, DROP_ID]),
    "FULL_TRANSITIVE": ([ADD_DEFAULT], [ADD_REQUIRED, DROP_ID]),
    # Not set: the broker default, FULL.
    "UNDEFINED": ([ADD_DEFAULT], [ADD_REQUIRED, DROP_ID]),
}


def rest(broker, method: str, path: str, body=None) -> tuple[int, object]:
    data = None if body is None else json.dumps(body).encode()
    status, raw = http(method, broker.http_url + path, data,
                       "application/json" if data is not None else None)
    try:
        return status, (json.loads(raw) if raw.strip() else None)
    except ValueError:
        return status, raw


def create_namespace(broker, strategy: str | None = None) -> str:
    ns = f"public/{unique('schema-ns')}"
    status, body = rest(broker, "PUT", f"/admin/v2/namespaces/{ns}")
    assert status == 204, body
    if strategy is not None:
        status, body = rest(broker, "PUT", f"/admin/v2/namespaces/{ns}/schemaCompatibilityStrategy",
                            strategy)
        assert status == 204, body
    return ns


def schema_path(topic: str) -> str:
    return "/admin/v2/schemas/" + topic.removeprefix("persistent://")


def avro_payload(cls) -> dict:
    return {"type": "AVRO", "schema": json.dumps(cls.schema()), "properties": {}}


def test_each_strategy_accepts_its_compatible_evolutions_and_refuses_the_others(broker):
    client = pulsar.Client(broker.service_url, operation_timeout_seconds=10)
    try:
        for strategy, (accepted, refused) in MATRIX.items():
            ns = create_namespace(broker, None if strategy == "UNDEFINED" else strategy)
            for i, evolution in enumerate(accepted + refused):
                topic = f"persistent://{ns}/{unique('t')}"
                client.create_producer(topic, schema=AvroSchema(V1)).close()
                what = f"{strategy}: {evolution.schema()} after {V1.schema()}"
                if evolution in accepted:
                    p = client.create_producer(topic, schema=AvroSchema(evolution))
                    p.close()
                    status, versions = rest(broker, "GET", schema_path(topic) + "/schemas")
                    assert status == 200, versions
                    assert [v["version"] for v in versions["getSchemaResponses"]] == [0, 1], what
                else:
                    with pytest.raises(pulsar.IncompatibleSchema):
                        client.create_producer(topic, schema=AvroSchema(evolution))
                    status, versions = rest(broker, "GET", schema_path(topic) + "/schemas")
                    assert len(versions["getSchemaResponses"]) == 1, what
            status, got = rest(broker, "GET", f"/admin/v2/namespaces/{ns}/schemaCompatibilityStrategy")
            assert (status, got) == (200, "FULL" if strategy == "UNDEFINED" else strategy)
    finally:
        client.close()


def test_transitive_strategies_check_every_version_and_the_others_only_the_latest(broker):
    """V1, then ADD_REQUIRED (under ALWAYS_COMPATIBLE); then a schema that reads
    ADD_REQUIRED's data but not V1's (`email` has no default)."""
    reads_latest_only = user_class(id=Long(required=True), email=String(required=True),
                                   phone=String(required_default=True))
    client = pulsar.Client(broker.service_url, operation_timeout_seconds=10)
    try:
        for strategy, accepted in [("BACKWARD", True), ("BACKWARD_TRANSITIVE", False)]:
            ns = create_namespace(broker, "ALWAYS_COMPATIBLE")
            topic = f"persistent://{ns}/{unique('t')}"
            client.create_producer(topic, schema=AvroSchema(V1)).close()
            client.create_producer(topic, schema=AvroSchema(ADD_REQUIRED)).close()
            rest(broker, "PUT", f"/admin/v2/namespaces/{ns}/schemaCompatibilityStrategy", strategy)
            if accepted:
                client.create_producer(topic, schema=AvroSchema(reads_latest_only)).close()
            else:
                with pytest.raises(pulsar.IncompatibleSchema):
                    client.create_producer(topic, schema=AvroSchema(reads_latest_only))
    finally:
        client.close()


class ReadingV1(Record):
    sensor = String(required=True)
    value = Integer(required=True)


def reading(**fields):
    return type("ReadingV1", (Record,), dict(fields))


READING_V2 = reading(sensor=String(required=True), value=Integer(required=True),
                     unit=String(required_default=True))
# Needs a field old writers never wrote, without a default.
READING_NEEDS_UNIT = reading(sensor=String(required=True), value=Integer(required=True),
                             unit=String(required=True))


def test_a_json_consumer_of_a_compatible_json_schema_reads_a_newer_producers_messages(client):
    topic = topic_name("json-evolve")
    client.create_producer(topic, schema=JsonSchema(ReadingV1)).close()
    producer = client.create_producer(topic, schema=JsonSchema(READING_V2))
    consumer = client.subscribe(topic, unique("sub"), schema=JsonSchema(ReadingV1),
                                initial_position=pulsar.InitialPosition.Earliest)
    producer.send(READING_V2(sensor="s1", value=7, unit="C"))
    [msg] = receive_n(consumer, 1)
    got = json.loads(msg.data())
    assert (got["sensor"], got["value"]) == ("s1", 7)
    # A reader that needs a field the topic's latest schema may lack is refused.
    with pytest.raises(pulsar.IncompatibleSchema):
        client.subscribe(topic, unique("sub"), schema=JsonSchema(READING_NEEDS_UNIT))
    # A consumer schema is checked, not registered.
    status, versions = rest_of(client, topic)
    assert [v["version"] for v in versions["getSchemaResponses"]] == [0, 1]


def rest_of(client, topic):
    return rest(client.kilonova_broker, "GET", schema_path(topic) + "/schemas")


@pytest.fixture
def client(broker):
    c = pulsar.Client(broker.service_url, operation_timeout_seconds=10)
    c.kilonova_broker = broker
    yield c
    c.close()


def test_rest_upload_get_versions_compatibility_and_delete(broker):
    topic = topic_name("rest")
    path = schema_path(topic)
    status, body = rest(broker, "GET", path + "/schema")
    assert status == 404 and "reason" in body

    status, body = rest(broker, "POST", path + "/schema", avro_payload(V1) | {"properties": {"k": "v"}})
    assert (status, body) == (200, {"version": 0})
    # The same schema again is the same version.
    assert rest(broker, "POST", path + "/schema", avro_payload(V1)) == (200, {"version": 0})
    status, body = rest(broker, "POST", path + "/schema", avro_payload(ADD_DEFAULT))
    assert (status, body) == (200, {"version": 1})

    status, latest = rest(broker, "GET", path + "/schema")
    assert status == 200
    assert latest["version"] == 1 and latest["type"] == "AVRO"
    assert json.loads(latest["data"]) == ADD_DEFAULT.schema()
    assert latest["timestamp"] > 0 and latest["properties"] == {}
    status, first = rest(broker, "GET", path + "/schema/0")
    assert status == 200 and first["properties"] == {"k": "v"}
    assert json.loads(first["data"]) == V1.schema()
    assert rest(broker, "GET", path + "/schema/7")[0] == 404
    status, all_versions = rest(broker, "GET", path + "/schemas")
    assert [v["version"] for v in all_versions["getSchemaResponses"]] == [0, 1]

    # FULL (the default): ADD_REQUIRED cannot read V1-era data.
    status, body = rest(broker, "POST", path + "/compatibility", avro_payload(ADD_REQUIRED))
    assert (status, body) == (200, {"isCompatible": False, "schemaCompatibilityStrategy": "FULL"})
    status, body = rest(broker, "POST", path + "/compatibility", avro_payload(ADD_DEFAULT))
    assert body["isCompatible"] is True
    status, body = rest(broker, "POST", path + "/schema", avro_payload(ADD_REQUIRED))
    assert status == 409 and "email" in body["reason"], body

    # Delete: a marker version; the schema is gone, numbering goes on.
    assert rest(broker, "DELETE", path + "/schema") == (200, {"version": 2})
    assert rest(broker, "GET", path + "/schema")[0] == 404
    assert rest(broker, "GET", path + "/schemas") == (200, {"getSchemaResponses": []})
    assert rest(broker, "DELETE", path + "/schema")[0] == 404
    # After a delete anything may be registered again.
    status, body = rest(broker, "POST", path + "/schema", avro_payload(ADD_REQUIRED))
    assert (status, body) == (200, {"version": 3})
    # force: every version goes, numbering starts over.
    assert rest(broker, "DELETE", path + "/schema?force=true") == (200, {"version": 3})
    assert rest(broker, "POST", path + "/schema", avro_payload(V1)) == (200, {"version": 0})


@pytest.mark.parametrize("payload, status, words", [
    pytest.param({"type": "NOPE", "schema": "", "properties": {}}, 400, "unknown schema type", id="unknown-type"),
    pytest.param({"type": "AVRO", "schema": "{not json", "properties": {}}, 422, "invalid Avro", id="not-json"),
    pytest.param({"type": "AVRO", "schema": json.dumps({"type": "record", "name": "R"}), "properties": {}},
                 422, "fields", id="record-without-fields"),
    pytest.param({"type": "JSON", "schema": json.dumps({"type": "nosuchtype"}), "properties": {}},
                 422, "nosuchtype", id="json-unknown-avro-type"),
    pytest.param({"schema": "x"}, 400, "invalid request body", id="no-type"),
    pytest.param([1, 2], 400, "invalid request body", id="not-an-object"),
])
def test_bad_schema_uploads_are_refused_with_a_reason(broker, payload, status, words):
    path = schema_path(topic_name("bad"))
    for route in ("/schema", "/compatibility"):
        got, body = rest(broker, "POST", path + route, payload)
        assert got == status, body
        assert words in body["reason"], body
    assert rest(broker, "GET", path + "/schema")[0] == 404


def test_bad_schema_paths_and_strategies_are_refused(broker):
    assert rest(broker, "GET", "/admin/v2/schemas/public/default/t/schema/abc")[0] == 400
    status, body = rest(broker, "POST", "/admin/v2/schemas/public/nosuchns/t/schema", avro_payload(V1))
    assert status == 404 and "nosuchns" in body["reason"], body
    status, body = rest(broker, "PUT", "/admin/v2/namespaces/public/default/schemaCompatibilityStrategy",
                        "SIDEWAYS")
    assert status == 400 and "SIDEWAYS" in body["reason"], body
    assert rest(broker, "GET", "/admin/v2/namespaces/public/nosuchns/schemaCompatibilityStrategy")[0] == 404


def test_an_invalid_avro_definition_from_a_producer_is_refused(client):
    class Broken(Schema):
        def __init__(self):
            self._record_cls = bytes
            self._schema_info = _pulsar.SchemaInfo(_pulsar.SchemaType.AVRO, "broken", '{"type":"record"}')

        def encode(self, obj):
            return obj

        def decode(self, data):
            return data

    with pytest.raises(pulsar.IncompatibleSchema):
        client.create_producer(topic_name("broken"), schema=Broken())


def run_cli(broker, *args, output_json=True) -> subprocess.CompletedProcess:
    cmd = [str(broker.binary), "admin", "--admin-url", broker.http_url]
    if output_json:
        cmd += ["--output", "json"]
    cmd += [str(a) for a in args]
    return subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)


def test_cli_schema_verbs(broker, tmp_path):
    topic = topic_name("cli")
    v1, v2, bad = tmp_path / "v1.json", tmp_path / "v2.json", tmp_path / "bad.json"
    v1.write_text(json.dumps(avro_payload(V1)))
    v2.write_text(json.dumps(avro_payload(ADD_DEFAULT)))
    bad.write_text(json.dumps(avro_payload(ADD_REQUIRED)))

    def ok(*args):
        proc = run_cli(broker, *args)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout) if proc.stdout.strip() else None

    assert ok("schemas", "upload", topic, "-f", v1) == {"version": 0}
    assert ok("schemas", "upload", topic, "--filename", v2) == {"version": 1}
    assert ok("schemas", "get", topic)["version"] == 1
    assert json.loads(ok("schemas", "get", topic, "--version", "0")["data"]) == V1.schema()
    assert [v["version"] for v in ok("schemas", "get", topic, "--all-version")["getSchemaResponses"]] == [0, 1]
    assert ok("schemas", "compatibility", topic, "-f", bad) == {
        "isCompatible": False, "schemaCompatibilityStrategy": "FULL"}
    proc = run_cli(broker, "schemas", "upload", topic, "-f", bad)
    assert proc.returncode != 0 and "incompatible" in proc.stderr and proc.stdout == ""
    assert ok("schemas", "delete", topic) == {"version": 2}
    proc = run_cli(broker, "schemas", "get", topic)
    assert proc.returncode != 0 and "not found" in proc.stderr

    ns = create_namespace(broker)
    assert ok("namespaces", "get-schema-compatibility-strategy", ns) == "FULL"
    ok("namespaces", "set-schema-compatibility-strategy", ns, "-c", "FORWARD_TRANSITIVE")
    assert ok("namespaces", "get-schema-compatibility-strategy", ns) == "FORWARD_TRANSITIVE"
    proc = run_cli(broker, "namespaces", "set-schema-compatibility-strategy", ns, "-c", "SIDEWAYS")
    assert proc.returncode != 0 and "SIDEWAYS" in proc.stderr


class AutoConsume(Schema):
    """A consumer schema of type AUTO_CONSUME: it sends no definition, and
    decodes each message with its writer's schema, fetched by version through
    GET_SCHEMA (the Python client has no AUTO_CONSUME schema of its own)."""

    def __init__(self):
        self._record_cls = dict
        self._schema_info = _pulsar.SchemaInfo(_pulsar.SchemaType.AUTO_CONSUME, "AUTO_CONSUME", "")
        self._writers = {}

    def encode(self, obj):
        raise TypeError("AUTO_CONSUME does not produce")

    def decode(self, data):
        return data

    def decode_message(self, msg):
        topic, version = msg.topic_name(), msg.int_schema_version()
        if (topic, version) not in self._writers:
            info = self._client.get_schema_info(topic, version)
            assert info.schema_type() == _pulsar.SchemaType.AVRO, info.schema_type()
            self._writers[(topic, version)] = json.loads(info.schema())
        return fastavro.schemaless_reader(io.BytesIO(msg.data()), self._writers[(topic, version)])


def test_auto_consume_reads_avro_messages_of_every_version_through_get_schema(client):
    topic = topic_name("auto-consume")
    consumer = client.subscribe(topic, unique("sub"), schema=AutoConsume())
    p1 = client.create_producer(topic, schema=AvroSchema(V1))
    p2 = client.create_producer(topic, schema=AvroSchema(ADD_DEFAULT))
    p1.send(V1(id=1))
    p2.send(ADD_DEFAULT(id=2, email="a@b"))
    got = [m.value() for m in receive_n(consumer, 2)]
    assert got == [{"id": 1}, {"id": 2, "email": "a@b"}]
    # The AUTO_CONSUME consumer registered nothing.
    status, versions = rest_of(client, topic)
    assert [v["version"] for v in versions["getSchemaResponses"]] == [0, 1]
