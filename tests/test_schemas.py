"""SchemaService and topic schema validation, with Google's generated clients over gRPC and REST."""

from __future__ import annotations

import json
import os

import pytest
from google.api_core import exceptions
from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from clients import TRANSPORTS, gapic_clients, unique
from support import EmulatorProcess

P = "schema-project"

AVRO_DEF = json.dumps({
    "type": "record", "name": "Item", "namespace": "test",
    "fields": [{"name": "name", "type": "string"}, {"name": "count", "type": "int"},
               {"name": "note", "type": ["null", "string"], "default": None}]})
AVRO_DEF_V2 = json.dumps({
    "type": "record", "name": "Item", "namespace": "test",
    "fields": [{"name": "name", "type": "string"}, {"name": "price", "type": "double"}]})
PROTO_DEF = """syntax = "proto3";
message Item {
  string name = 1;
  int32 count = 2;
  repeated string tags = 3;
}
"""
PROTO_DEF_V2 = 'syntax = "proto3"; message Item { string name = 1; double price = 2; }'


def _schema_client(host: str, transport: str):
    from google import pubsub_v1 as gapic
    from google.pubsub_v1.services.schema_service.transports import SchemaServiceGrpcTransport

    if transport == "grpc":
        import grpc

        return gapic.SchemaServiceClient(
            transport=SchemaServiceGrpcTransport(channel=grpc.insecure_channel(host)))
    saved = os.environ.pop("PUBSUB_EMULATOR_HOST", None)
    try:
        return gapic.SchemaServiceClient(
            transport="rest", client_options=ClientOptions(api_endpoint=f"http://{host}"),
            credentials=AnonymousCredentials())
    finally:
        if saved is not None:
            os.environ["PUBSUB_EMULATOR_HOST"] = saved


@pytest.fixture(scope="module", params=TRANSPORTS)
def clients(request, emulator):
    publisher, subscriber = gapic_clients(emulator.host, request.param)
    return request.param, _schema_client(emulator.host, request.param), publisher, subscriber


def _create(schemas, schema_type, definition, schema_id=None, **kwargs):
    return schemas.create_schema(request={
        "parent": f"projects/{P}", "schema_id": schema_id or unique("sc"),
        "schema": {"type_": schema_type, "definition": definition}}, **kwargs)


def _code(error) -> str:
    if isinstance(error, exceptions.GoogleAPICallError) and error.grpc_status_code:
        return error.grpc_status_code.name
    return {400: "INVALID_ARGUMENT", 404: "NOT_FOUND", 409: "ALREADY_EXISTS"}.get(
        error.code, str(error.code))


def _fails(expected: str, call, *args, **kwargs):
    with pytest.raises(exceptions.GoogleAPICallError) as info:
        call(*args, retry=None, timeout=30, **kwargs)
    # REST: 400 covers INVALID_ARGUMENT and FAILED_PRECONDITION; the body names the status.
    response = getattr(info.value, "response", None)
    if response is not None and hasattr(response, "json"):
        assert response.json()["error"]["status"] == expected
    else:
        assert _code(info.value) == expected, info.value
    return info.value


def _topic_with_schema(publisher, subscriber, schema_name, encoding, **settings):
    topic = publisher.create_topic(request={
        "name": f"projects/{P}/topics/{unique('t')}",
        "schema_settings": {"schema": schema_name, "encoding": encoding, **settings}})
    sub = subscriber.create_subscription(
        name=f"projects/{P}/subscriptions/{unique('s')}", topic=topic.name).name
    return topic, sub


def _pull_one(subscriber, sub):
    for _ in range(10):
        got = subscriber.pull(subscription=sub, max_messages=10, timeout=30).received_messages
        if got:
            subscriber.acknowledge(subscription=sub, ack_ids=[m.ack_id for m in got])
            return got
    raise AssertionError("no message")


def test_schema_lifecycle(clients):
    _, schemas, _, _ = clients
    from google import pubsub_v1 as gapic

    created = _create(schemas, gapic.Schema.Type.AVRO, AVRO_DEF)
    assert created.name.startswith(f"projects/{P}/schemas/sc-")
    assert len(created.revision_id) == 8 and int(created.revision_id, 16) >= 0
    assert created.definition == AVRO_DEF and created.revision_create_time

    full = schemas.get_schema(request={"name": created.name})
    assert full.definition == AVRO_DEF and full.type_ == gapic.Schema.Type.AVRO
    basic = schemas.get_schema(request={"name": created.name, "view": gapic.SchemaView.BASIC})
    assert basic.name == created.name and basic.type_ == gapic.Schema.Type.AVRO
    assert basic.definition == ""

    listed = {s.name: s for s in schemas.list_schemas(request={"parent": f"projects/{P}"})}
    assert created.name in listed and listed[created.name].definition == ""  # BASIC default
    full_list = {s.name: s for s in schemas.list_schemas(
        request={"parent": f"projects/{P}", "view": gapic.SchemaView.FULL})}
    assert full_list[created.name].definition == AVRO_DEF

    v2 = schemas.commit_schema(request={
        "name": created.name, "schema": {"type_": gapic.Schema.Type.AVRO,
                                         "definition": AVRO_DEF_V2}})
    assert v2.revision_id != created.revision_id and v2.definition == AVRO_DEF_V2
    assert schemas.get_schema(request={"name": created.name}).revision_id == v2.revision_id
    old = schemas.get_schema(request={"name": f"{created.name}@{created.revision_id}"})
    assert old.definition == AVRO_DEF

    v3 = schemas.rollback_schema(request={"name": created.name,
                                          "revision_id": created.revision_id})
    assert v3.definition == AVRO_DEF and v3.revision_id not in (created.revision_id,
                                                                v2.revision_id)
    revisions = list(schemas.list_schema_revisions(
        request={"name": created.name, "view": gapic.SchemaView.FULL}))
    assert [r.revision_id for r in revisions] == [v3.revision_id, v2.revision_id,
                                                  created.revision_id]  # newest first
    paged = schemas.list_schema_revisions(request={"name": created.name, "page_size": 2})
    assert [r.revision_id for r in paged] == [r.revision_id for r in revisions]  # 2 pages

    deleted = schemas.delete_schema_revision(
        request={"name": f"{created.name}@{v2.revision_id}"})
    assert deleted.revision_id == v2.revision_id
    assert [r.revision_id for r in schemas.list_schema_revisions(request={
        "name": created.name})] == [v3.revision_id, created.revision_id]
    _fails("NOT_FOUND", schemas.get_schema,
           request={"name": f"{created.name}@{v2.revision_id}"})
    schemas.delete_schema_revision(request={"name": f"{created.name}@{created.revision_id}"})
    _fails("FAILED_PRECONDITION", schemas.delete_schema_revision,
           request={"name": f"{created.name}@{v3.revision_id}"})

    schemas.delete_schema(request={"name": created.name})
    _fails("NOT_FOUND", schemas.get_schema, request={"name": created.name})
    _fails("NOT_FOUND", schemas.delete_schema, request={"name": created.name})


def test_schema_errors(clients):
    _, schemas, _, _ = clients
    from google import pubsub_v1 as gapic

    avro, proto = gapic.Schema.Type.AVRO, gapic.Schema.Type.PROTOCOL_BUFFER
    existing = _create(schemas, avro, AVRO_DEF)
    _fails("ALREADY_EXISTS", _create, schemas, avro, AVRO_DEF,
           schema_id=existing.name.rsplit("/", 1)[1])
    _fails("INVALID_ARGUMENT", _create, schemas, avro, '{"type": "record"}')
    _fails("INVALID_ARGUMENT", _create, schemas, avro, "not json")
    _fails("INVALID_ARGUMENT", _create, schemas, proto, "message {")
    _fails("INVALID_ARGUMENT", _create, schemas, proto,
           'syntax = "proto3"; message A { int32 a = 1; } message B { int32 b = 1; }')
    _fails("INVALID_ARGUMENT", _create, schemas, proto,
           'syntax = "proto3"; import "google/protobuf/timestamp.proto"; '
           'message A { google.protobuf.Timestamp t = 1; }')
    _fails("INVALID_ARGUMENT", _create, schemas, gapic.Schema.Type.TYPE_UNSPECIFIED, AVRO_DEF)
    _fails("INVALID_ARGUMENT", _create, schemas, avro, AVRO_DEF, schema_id="goog-schema")
    _fails("NOT_FOUND", schemas.get_schema, request={"name": f"projects/{P}/schemas/nope-x"})
    _fails("INVALID_ARGUMENT", schemas.commit_schema, request={
        "name": existing.name, "schema": {"type_": proto, "definition": PROTO_DEF}})
    _fails("NOT_FOUND", schemas.rollback_schema,
           request={"name": existing.name, "revision_id": "deadbeef"})

    schemas.validate_schema(request={"parent": f"projects/{P}",
                                     "schema": {"type_": proto, "definition": PROTO_DEF}})
    _fails("INVALID_ARGUMENT", schemas.validate_schema, request={
        "parent": f"projects/{P}", "schema": {"type_": proto, "definition": "message X {"}})


def test_validate_message(clients):
    _, schemas, _, _ = clients
    from google import pubsub_v1 as gapic

    avro = _create(schemas, gapic.Schema.Type.AVRO, AVRO_DEF)
    good = json.dumps({"name": "w", "count": 3, "note": {"string": "n"}}).encode()
    schemas.validate_message(request={"parent": f"projects/{P}", "name": avro.name,
                                      "message": good, "encoding": gapic.Encoding.JSON})
    error = _fails("INVALID_ARGUMENT", schemas.validate_message, request={
        "parent": f"projects/{P}", "name": avro.name,
        "message": b'{"name": "w", "count": "three"}', "encoding": gapic.Encoding.JSON})
    assert "Invalid data in message" in error.message
    inline = {"type_": gapic.Schema.Type.PROTOCOL_BUFFER, "definition": PROTO_DEF}
    schemas.validate_message(request={"parent": f"projects/{P}", "schema": inline,
                                      "message": b'{"name": "a", "tags": ["x"]}',
                                      "encoding": gapic.Encoding.JSON})
    _fails("INVALID_ARGUMENT", schemas.validate_message, request={
        "parent": f"projects/{P}", "schema": inline, "message": b'{"nope": 1}',
        "encoding": gapic.Encoding.JSON})
    _fails("INVALID_ARGUMENT", schemas.validate_message, request={
        "parent": f"projects/{P}", "schema": inline, "message": b"\xff\xff\xff",
        "encoding": gapic.Encoding.BINARY})
    _fails("NOT_FOUND", schemas.validate_message, request={
        "parent": f"projects/{P}", "name": f"projects/{P}/schemas/nope-x", "message": good,
        "encoding": gapic.Encoding.JSON})


def test_avro_json_topic(clients):
    transport, schemas, publisher, subscriber = clients
    from google import pubsub_v1 as gapic

    schema = _create(schemas, gapic.Schema.Type.AVRO, AVRO_DEF)
    topic, sub = _topic_with_schema(publisher, subscriber, schema.name, gapic.Encoding.JSON)
    assert publisher.get_topic(topic=topic.name).schema_settings.schema == schema.name
    data = json.dumps({"name": "widget", "count": 2, "note": None}).encode()
    publisher.publish(topic=topic.name, messages=[{"data": data, "attributes": {"k": "v"}}])
    [received] = _pull_one(subscriber, sub)
    assert received.message.data == data
    assert dict(received.message.attributes) == {
        "k": "v", "googclient_schemaname": schema.name, "googclient_schemaencoding": "JSON",
        "googclient_schemarevisionid": schema.revision_id}
    for bad in (b'{"name": "widget"}', b"not json", b'{"name": 1, "count": 2}'):
        error = _fails("INVALID_ARGUMENT", publisher.publish, topic=topic.name,
                       messages=[{"data": data}, {"data": bad}])
        assert error.message.endswith(
            "Invalid data in message: Message failed schema validation.")
        assert error.reason == "INVALID_JSON_AVRO_MESSAGE"
        assert error.domain == "pubsub.googleapis.com"
    # Nothing of a rejected batch was published.
    assert not subscriber.pull(subscription=sub, max_messages=10, return_immediately=True,
                               timeout=30).received_messages


def _proto_class(definition_name: str):
    file = descriptor_pb2.FileDescriptorProto(name=definition_name, syntax="proto3")
    item = file.message_type.add(name="Item")
    item.field.add(name="name", number=1, type=9, label=1)
    item.field.add(name="count", number=2, type=5, label=1)
    item.field.add(name="tags", number=3, type=9, label=3)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("Item"))


def test_protobuf_binary_topic(clients):
    _, schemas, publisher, subscriber = clients
    from google import pubsub_v1 as gapic

    schema = _create(schemas, gapic.Schema.Type.PROTOCOL_BUFFER, PROTO_DEF)
    topic, sub = _topic_with_schema(publisher, subscriber, schema.name, gapic.Encoding.BINARY)
    data = _proto_class("item.proto")(name="x", count=5, tags=["a"]).SerializeToString()
    publisher.publish(topic=topic.name, messages=[{"data": data}])
    [received] = _pull_one(subscriber, sub)
    assert received.message.data == data
    assert received.message.attributes["googclient_schemaencoding"] == "BINARY"
    assert received.message.attributes["googclient_schemarevisionid"] == schema.revision_id
    _fails("INVALID_ARGUMENT", publisher.publish, topic=topic.name,
           messages=[{"data": b"\x0a\xff"}])  # truncated length-delimited field


def test_revision_ranges(clients):
    _, schemas, publisher, subscriber = clients
    from google import pubsub_v1 as gapic

    avro = gapic.Schema.Type.AVRO
    v1 = _create(schemas, avro, AVRO_DEF)
    v2 = schemas.commit_schema(request={"name": v1.name,
                                        "schema": {"type_": avro, "definition": AVRO_DEF_V2}})
    old = json.dumps({"name": "a", "count": 1, "note": None}).encode()
    new = json.dumps({"name": "a", "price": 1.5}).encode()

    any_rev, sub = _topic_with_schema(publisher, subscriber, v1.name, gapic.Encoding.JSON)
    publisher.publish(topic=any_rev.name, messages=[{"data": old}, {"data": new}])
    got = sorted(list(_pull_one(subscriber, sub)) + _maybe_more(subscriber, sub),
                 key=lambda m: m.message.data)
    assert {m.message.attributes["googclient_schemarevisionid"] for m in got} == {
        v1.revision_id, v2.revision_id}

    only_new, _ = _topic_with_schema(publisher, subscriber, v1.name, gapic.Encoding.JSON,
                                     first_revision_id=v2.revision_id)
    publisher.publish(topic=only_new.name, messages=[{"data": new}])
    _fails("INVALID_ARGUMENT", publisher.publish, topic=only_new.name, messages=[{"data": old}])
    only_old, _ = _topic_with_schema(publisher, subscriber, v1.name, gapic.Encoding.JSON,
                                     last_revision_id=v1.revision_id)
    publisher.publish(topic=only_old.name, messages=[{"data": old}])
    _fails("INVALID_ARGUMENT", publisher.publish, topic=only_old.name, messages=[{"data": new}])

    # Invalid settings.
    name = f"projects/{P}/topics/{unique('t')}"
    for settings, expected in [
        ({"schema": f"projects/{P}/schemas/nope-x", "encoding": gapic.Encoding.JSON},
         "NOT_FOUND"),
        ({"schema": v1.name}, "INVALID_ARGUMENT"),  # encoding unspecified
        ({"schema": v1.name, "encoding": gapic.Encoding.JSON, "first_revision_id": "deadbeef"},
         "INVALID_ARGUMENT"),
        ({"schema": v1.name, "encoding": gapic.Encoding.JSON,
          "first_revision_id": v2.revision_id, "last_revision_id": v1.revision_id},
         "INVALID_ARGUMENT"),
    ]:
        _fails(expected, publisher.create_topic,
               request={"name": name, "schema_settings": settings})

    # UpdateTopic can attach a schema to an existing topic.
    plain = publisher.create_topic(name=f"projects/{P}/topics/{unique('t')}")
    publisher.update_topic(request={
        "topic": {"name": plain.name, "schema_settings": {
            "schema": v1.name, "encoding": gapic.Encoding.JSON,
            "first_revision_id": v2.revision_id}},
        "update_mask": {"paths": ["schema_settings"]}})
    _fails("INVALID_ARGUMENT", publisher.publish, topic=plain.name, messages=[{"data": old}])

    # Deleting the schema leaves the topics pointing at "_deleted-schema_".
    schemas.delete_schema(request={"name": v1.name})
    assert publisher.get_topic(topic=only_new.name).schema_settings.schema == "_deleted-schema_"
    # ... and publishing to them is no longer validated.
    publisher.publish(topic=only_new.name, messages=[{"data": b"anything"}])
    publisher.update_topic(request={"topic": publisher.get_topic(topic=only_new.name),
                                    "update_mask": {"paths": ["labels"]}})


def _maybe_more(subscriber, sub):
    got = subscriber.pull(subscription=sub, max_messages=10, return_immediately=True,
                          timeout=30).received_messages
    if got:
        subscriber.acknowledge(subscription=sub, ack_ids=[m.ack_id for m in got])
    return list(got)


def test_schemas_survive_restart(tmp_path):
    """Schemas and their compiled revisions are stored: a restarted emulator still validates."""
    from google import pubsub_v1 as gapic

    with EmulatorProcess(data_dir=str(tmp_path)) as emu:
        schemas = _schema_client(emu.host, "grpc")
        publisher, _ = gapic_clients(emu.host, "grpc")
        schema = _create(schemas, gapic.Schema.Type.PROTOCOL_BUFFER, PROTO_DEF)
        topic = publisher.create_topic(request={
            "name": f"projects/{P}/topics/{unique('t')}",
            "schema_settings": {"schema": schema.name, "encoding": gapic.Encoding.JSON}}).name
    with EmulatorProcess(data_dir=str(tmp_path)) as emu:
        schemas = _schema_client(emu.host, "grpc")
        publisher, _ = gapic_clients(emu.host, "grpc")
        assert schemas.get_schema(request={"name": schema.name}).definition == PROTO_DEF
        publisher.publish(topic=topic, messages=[{"data": b'{"name": "x", "count": 2}'}])
        _fails("INVALID_ARGUMENT", publisher.publish, topic=topic,
               messages=[{"data": b'{"count": "many"}'}])
