"""Details Google's own samples rely on: update masks in either spelling, nested mask paths,
and the empty `pushConfig` of a pull subscription."""

from __future__ import annotations

import json

import pytest
from google.protobuf import duration_pb2, field_mask_pb2

from clients import TRANSPORTS, discovery_client, make_clients, unique

PROJECT = "test-project"


@pytest.fixture(params=TRANSPORTS)
def clients(request, emulator):
    publisher, subscriber = make_clients(emulator.host, request.param)
    yield publisher, subscriber
    if request.param == "grpc":
        subscriber.close()


@pytest.fixture
def json_spelling(clients, request) -> bool:
    """Whether the test may put JSON (camelCase) mask paths in the client's FieldMask.

    Over gRPC the paths go to the server as given. The REST transport writes a FieldMask in
    its JSON form itself (snake_case paths become "ackDeadlineSeconds,retryPolicy.minimumBackoff"
    on the wire) and refuses camelCase input, so there the test gives snake_case and the server
    receives the JSON spelling.
    """
    return request.node.callspec.params["clients"] == "grpc"


def spelled(paths: list[str], json_names: bool) -> list[str]:
    if json_names:
        return paths
    return [".".join("".join("_" + c.lower() if c.isupper() else c for c in part)
                     for part in path.split(".")) for path in paths]


def _topic_and_subscription(publisher, subscriber, **sub_fields):
    topic = publisher.create_topic(name=publisher.topic_path(PROJECT, unique("topic"))).name
    sub = subscriber.create_subscription(request={
        "name": subscriber.subscription_path(PROJECT, unique("sub")), "topic": topic,
        **sub_fields})
    return topic, sub


def test_update_masks_take_json_names_and_nested_paths(clients, json_spelling):
    publisher, subscriber = clients
    _, sub = _topic_and_subscription(publisher, subscriber, retry_policy={
        "minimum_backoff": duration_pb2.Duration(seconds=20),
        "maximum_backoff": duration_pb2.Duration(seconds=300)})
    updated = subscriber.update_subscription(request={
        "subscription": {"name": sub.name, "ack_deadline_seconds": 42,
                         "retry_policy": {"minimum_backoff": duration_pb2.Duration(seconds=5)}},
        "update_mask": field_mask_pb2.FieldMask(
            paths=spelled(["ackDeadlineSeconds", "retryPolicy.minimumBackoff"], json_spelling))})
    assert updated.ack_deadline_seconds == 42
    assert updated.retry_policy.minimum_backoff.seconds == 5
    assert updated.retry_policy.maximum_backoff.seconds == 300  # not in the mask: kept
    again = subscriber.get_subscription(subscription=sub.name)
    assert again.ack_deadline_seconds == 42 and again.retry_policy.minimum_backoff.seconds == 5


def test_a_mask_naming_no_field_is_refused(clients, json_spelling):
    from google.api_core import exceptions

    publisher, subscriber = clients
    _, sub = _topic_and_subscription(publisher, subscriber)
    for path in spelled(["ackDeadline", "retryPolicy.nothing", "labels.x.y"], json_spelling):
        with pytest.raises(exceptions.BadRequest):  # InvalidArgument over gRPC
            subscriber.update_subscription(request={
                "subscription": {"name": sub.name},
                "update_mask": field_mask_pb2.FieldMask(paths=[path])})


def test_topic_mask_in_json_spelling(clients, json_spelling):
    publisher, _ = clients
    topic = publisher.create_topic(name=publisher.topic_path(PROJECT, unique("topic")))
    updated = publisher.update_topic(request={
        "topic": {"name": topic.name,
                  "message_retention_duration": duration_pb2.Duration(seconds=3600)},
        "update_mask": field_mask_pb2.FieldMask(
            paths=spelled(["messageRetentionDuration"], json_spelling))})
    assert updated.message_retention_duration.seconds == 3600


def test_schema_settings_revision_range_by_nested_mask(emulator):
    import grpc
    from google import pubsub_v1 as gapic
    from google.pubsub_v1.services.schema_service.transports import SchemaServiceGrpcTransport

    schemas = gapic.SchemaServiceClient(
        transport=SchemaServiceGrpcTransport(channel=grpc.insecure_channel(emulator.host)))
    publisher, _ = make_clients(emulator.host, "grpc")

    def definition(field: str) -> str:
        return json.dumps({"type": "record", "name": "R",
                           "fields": [{"name": field, "type": "string"}]})

    avro = gapic.Schema.Type.AVRO
    schema = schemas.create_schema(request={
        "parent": f"projects/{PROJECT}", "schema_id": unique("schema"),
        "schema": {"type_": avro, "definition": definition("a")}})
    second = schemas.commit_schema(request={"name": schema.name, "schema": {
        "type_": avro, "definition": definition("b")}})
    topic = publisher.create_topic(request={
        "name": publisher.topic_path(PROJECT, unique("topic")),
        "schema_settings": {"schema": schema.name, "encoding": gapic.Encoding.JSON}})
    updated = publisher.update_topic(request={
        "topic": {"name": topic.name, "schema_settings": {
            "schema": schema.name, "first_revision_id": second.revision_id}},
        "update_mask": field_mask_pb2.FieldMask(paths=["schemaSettings.firstRevisionId"])})
    assert updated.schema_settings.first_revision_id == second.revision_id
    assert updated.schema_settings.encoding == gapic.Encoding.JSON  # not in the mask: kept
    with pytest.raises(Exception, match="schema validation"):  # revision "a" no longer allowed
        publisher.publish(topic.name, json.dumps({"a": "x"}).encode()).result(timeout=30)
    publisher.publish(topic.name, json.dumps({"b": "x"}).encode()).result(timeout=30)


def test_pull_subscription_has_an_empty_push_config_over_rest(emulator):
    """Google returns `"pushConfig": {}` for a pull subscription; clients read
    `pushConfig.pushEndpoint` without checking that it is there."""
    api = discovery_client(emulator.host)
    topic = f"projects/{PROJECT}/topics/{unique('topic')}"
    name = f"projects/{PROJECT}/subscriptions/{unique('sub')}"
    api.projects().topics().create(name=topic, body={}).execute()
    created = api.projects().subscriptions().create(name=name, body={"topic": topic}).execute()
    got = api.projects().subscriptions().get(subscription=name).execute()
    listed = api.projects().subscriptions().list(project=f"projects/{PROJECT}").execute()
    updated = api.projects().subscriptions().patch(name=name, body={
        "subscription": {"ackDeadlineSeconds": 30}, "updateMask": "ackDeadlineSeconds"}).execute()
    mine = [s for s in listed["subscriptions"] if s["name"] == name]
    for response in (created, got, updated, *mine):
        assert response["pushConfig"] == {}, response
    # Switching a push subscription back to pull leaves the empty object too.
    api.projects().subscriptions().modifyPushConfig(subscription=name, body={
        "pushConfig": {"pushEndpoint": "http://127.0.0.1:9/push"}}).execute()
    api.projects().subscriptions().modifyPushConfig(subscription=name, body={
        "pushConfig": {}}).execute()
    assert api.projects().subscriptions().get(subscription=name).execute()["pushConfig"] == {}


def test_rest_masks_in_either_spelling(emulator):
    """A mask's paths in JSON are camelCase ("deadLetterPolicy"); Google's Node client over
    REST sends the protos' names ("dead_letter_policy", "ack_deadline_seconds"): both are read
    as the same fields."""
    api = discovery_client(emulator.host)
    topic = f"projects/{PROJECT}/topics/{unique('topic')}"
    name = f"projects/{PROJECT}/subscriptions/{unique('sub')}"
    api.projects().topics().create(name=topic, body={}).execute()
    api.projects().subscriptions().create(name=name, body={"topic": topic}).execute()
    subscriptions = api.projects().subscriptions()
    for mask, seconds in (("ackDeadlineSeconds,labels", 30),
                          ("ack_deadline_seconds,labels", 40)):
        updated = subscriptions.patch(name=name, body={
            "subscription": {"ackDeadlineSeconds": seconds, "labels": {"k": "v"}},
            "updateMask": mask}).execute()
        assert (updated["ackDeadlineSeconds"], updated["labels"]) == (seconds, {"k": "v"})
    updated = subscriptions.patch(name=name, body={
        "subscription": {"retryPolicy": {"minimumBackoff": "5s"}},
        "updateMask": "retry_policy.minimum_backoff"}).execute()
    assert updated["retryPolicy"]["minimumBackoff"] == "5s"
