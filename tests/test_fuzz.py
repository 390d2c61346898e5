"""Fuzzing both adapters with hypothesis: every REST route of the route table the server uses,
every gRPC method of the protos, with malformed paths, queries, bodies, methods, headers,
bytes and valid-but-wrong messages.

Whatever comes in: no 5xx but UNIMPLEMENTED, no gRPC UNKNOWN or INTERNAL, no hang, no
traceback in the emulator's log, and every REST error is Google's JSON error body. Examples
are bounded and derandomized so that the file runs in well under two minutes, the same way
every time.
"""

from __future__ import annotations

import gzip
import json
import urllib.parse
import zlib
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import FieldDescriptor as FD
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pubsub_emulator.api import protos, rest
from support import EmulatorProcess
from wire import assert_no_server_error, log_tracebacks, request_bytes, send

PROJECT = "projects/fuzz"
TOPIC = f"{PROJECT}/topics/fuzz-topic"
# Names the fuzzer uses as they are, so that some requests reach resources that exist.
NAMES = [PROJECT, TOPIC, f"{PROJECT}/topics/fuzz-other", f"{PROJECT}/subscriptions/fuzz-sub",
         f"{PROJECT}/snapshots/fuzz-snap", f"{PROJECT}/schemas/fuzz-schema", "projects/-",
         "projects/fuzz/topics/_deleted-topic_"]
SUBSCRIPTIONS = {n for n in NAMES if "/subscriptions/" in n}

FUZZ = settings(max_examples=600, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.filter_too_much])

# Every rule of every method: the IAM methods have one per resource type (and projects).
ROUTES = [(r.verb, r.template, r.method.request_type) for r in rest.compile_routes()]
METHODS = list(protos.methods().values())


@pytest.fixture(scope="module")
def emu():
    with EmulatorProcess() as process:
        created = send(process.port, request_bytes("PUT", f"/v1/{TOPIC}", b"{}"))
        assert created.status == 200, created
        yield process


def test_healthz_answers_before(emu):
    assert send(emu.port, request_bytes("GET", "/healthz")).status == 200


# -- REST --------------------------------------------------------------------------------

_ODD = ["%0A", "%0D%0A", "%00", "%FF%FE", "%2F", "..", "%", "%zz", " ", "\t", "?", "#", ":",
        "a" * 300, "\u00e9", "\U0001f600", "{", "}", "*", "**"]
segments = st.one_of(
    st.sampled_from(NAMES),
    st.text(max_size=20).map(lambda t: urllib.parse.quote(t, safe="")),
    st.lists(st.sampled_from(_ODD + ["projects", "topics", "x"]), max_size=4).map("".join),
    st.text(alphabet="abcXYZ019-_.~/", max_size=30),
)


@st.composite
def paths(draw: Any, template: str) -> str:
    """The route's template with each {variable} replaced by something, valid or not."""
    out, rest_of = "", template
    while "{" in rest_of:
        before, _, after = rest_of.partition("{")
        _, _, rest_of = after.partition("}")
        out += before + draw(segments)
    return out + rest_of


def json_values(max_leaves: int = 10) -> st.SearchStrategy[Any]:
    leaves = st.one_of(
        st.none(), st.booleans(), st.integers(), st.integers(min_value=10**18),
        st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=20),
        st.sampled_from(NAMES + ["!!!", "AAA", "====", "-5s", "1e400", "2020-13-45T99:00:00Z",
                                 "9" * 400, "3.5s", "projects/fuzz/topics/" + "x" * 300]))
    return st.recursive(leaves, lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)),
        max_leaves=max_leaves)


@st.composite
def bodies(draw: Any, request_type: Any) -> bytes:
    names = [f.json_name for f in request_type.DESCRIPTOR.fields] if request_type else []
    keys = st.sampled_from(names) if names else st.text(max_size=8)
    kind = draw(st.sampled_from(["object", "object", "object", "non-object", "deep", "bytes",
                                 "text", "empty"]))
    if kind == "object":
        return json.dumps(draw(st.dictionaries(st.one_of(keys, st.text(max_size=8)),
                                               json_values(), max_size=5))).encode()
    if kind == "non-object":
        return json.dumps(draw(json_values().filter(lambda v: not isinstance(v, dict)))).encode()
    if kind == "deep":
        depth = draw(st.integers(min_value=50, max_value=20_000))
        opener = draw(st.sampled_from(['{"a":', "[", '{"messages":[{"attributes":']))
        return opener.encode() * depth
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    if kind == "text":
        return draw(st.text(max_size=200)).encode("utf-8")
    return b""


HEADER_CHOICES = {
    "Content-Encoding": st.sampled_from(["gzip", "deflate", "br", "identity", "", "gzip, gzip",
                                         "x-gzip", "GZIP", "zstd", "\x7f"]),
    "Content-Type": st.sampled_from(["application/json", "text/plain", "application/x-protobuf",
                                     "multipart/form-data; boundary=x", "application/json; "
                                     "charset=latin-1", ";;;", "*/*"]),
    "X-HTTP-Method-Override": st.sampled_from(["GET", "POST", "DELETE", "FOO"]),
    "Expect": st.sampled_from(["100-continue", "nonsense"]),
    "Accept-Encoding": st.sampled_from(["gzip", "*", "identity;q=0"]),
}


@st.composite
def rest_requests(draw: Any) -> tuple[str, str, bytes, dict[str, str]]:
    verb, template, request_type = draw(st.sampled_from(ROUTES))
    method = draw(st.one_of(st.just(verb), st.just(verb), st.sampled_from(
        ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "FOO"])))
    target = draw(paths(template))
    query = draw(st.dictionaries(
        st.one_of(st.sampled_from([f.json_name for f in request_type.DESCRIPTOR.fields]
                                  if request_type else ["x"]), st.text(max_size=8)),
        st.one_of(st.text(max_size=12), st.integers().map(str), st.sampled_from(
            ["true", "FALSE", "9" * 5000, "-1", "1e3", "NONE", "ENCODING_UNSPECIFIED"])),
        max_size=3))
    if query:
        target += "?" + urllib.parse.urlencode(query)
    body = draw(bodies(request_type))
    headers = draw(st.dictionaries(st.sampled_from(sorted(HEADER_CHOICES)),
                                   st.just(""), max_size=3))
    headers = {name: draw(HEADER_CHOICES[name]) for name in headers}
    if headers.get("Content-Encoding") in ("gzip", "x-gzip") and draw(st.booleans()):
        body = gzip.compress(body)
    elif headers.get("Content-Encoding") == "deflate" and draw(st.booleans()):
        body = zlib.compress(body)
    return method, target, body, headers


@FUZZ
@given(rest_requests())
def test_rest_routes(emu, req):
    method, target, body, headers = req
    answer = send(emu.port, request_bytes(method, target, body, headers))
    if method == "HEAD":
        assert answer.status < 500 or answer.status == 501
    else:
        assert_no_server_error(answer)


# -- gRPC --------------------------------------------------------------------------------

_INTS = {FD.TYPE_INT32: (-2**31, 2**31 - 1), FD.TYPE_SINT32: (-2**31, 2**31 - 1),
         FD.TYPE_SFIXED32: (-2**31, 2**31 - 1), FD.TYPE_INT64: (-2**63, 2**63 - 1),
         FD.TYPE_SINT64: (-2**63, 2**63 - 1), FD.TYPE_SFIXED64: (-2**63, 2**63 - 1),
         FD.TYPE_UINT32: (0, 2**32 - 1), FD.TYPE_FIXED32: (0, 2**32 - 1),
         FD.TYPE_UINT64: (0, 2**64 - 1), FD.TYPE_FIXED64: (0, 2**64 - 1)}


def _scalar(fd: Any) -> st.SearchStrategy[Any]:
    if fd.type in _INTS:
        low, high = _INTS[fd.type]
        return st.one_of(st.integers(low, high), st.sampled_from([low, high, 0, -1 if low else 1]))
    if fd.type == FD.TYPE_ENUM:
        return st.one_of(st.sampled_from([v.number for v in fd.enum_type.values]),
                         st.integers(-2**31, 2**31 - 1))
    if fd.type == FD.TYPE_BOOL:
        return st.booleans()
    if fd.type in (FD.TYPE_DOUBLE, FD.TYPE_FLOAT):
        return st.floats(width=32 if fd.type == FD.TYPE_FLOAT else 64)
    if fd.type == FD.TYPE_BYTES:
        return st.binary(max_size=64)
    return st.one_of(st.sampled_from(NAMES), st.text(max_size=40))


def _fill(draw: Any, message: Any, depth: int) -> None:
    for fd in message.DESCRIPTOR.fields:
        if not draw(st.booleans()):
            continue
        target = getattr(message, fd.name)
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            value_fd = fd.message_type.fields_by_name["value"]
            if value_fd.message_type is None:
                target.update(draw(st.dictionaries(_scalar(fd.message_type.fields_by_name["key"]),
                                                   _scalar(value_fd), max_size=3)))
        elif fd.message_type is not None:
            if depth >= 3:
                continue
            for _ in range(draw(st.integers(1, 3)) if fd.is_repeated else 1):
                _fill(draw, target.add() if fd.is_repeated else target, depth + 1)
            if not fd.is_repeated:
                target.SetInParent()
        elif fd.is_repeated:
            target.extend(draw(st.lists(_scalar(fd), max_size=3)))
        else:
            setattr(message, fd.name, draw(_scalar(fd)))


@st.composite
def messages(draw: Any, message_type: Any) -> Any:
    message = message_type()
    _fill(draw, message, 0)
    return message


@st.composite
def grpc_calls(draw: Any, kind: str) -> tuple[Any, bytes, str]:
    """(method, request bytes, the subscription a StreamingPull would open)."""
    method = draw(st.sampled_from(METHODS))
    if kind == "bytes":
        return method, draw(st.binary(max_size=300)), ""
    # Valid messages of the method's type, or of another method's type (wrong but decodable
    # as often as not).
    message_type = draw(st.one_of(st.just(method.request_type),
                                  st.sampled_from([m.request_type for m in METHODS])))
    message = draw(messages(message_type))
    return method, message.SerializeToString(), getattr(message, "subscription", "")


def _call(channel: grpc.Channel, method: Any, data: bytes, subscription: str) -> None:
    if not method.client_streaming:
        try:
            channel.unary_unary(method.path)(data, timeout=15)
        except grpc.RpcError as exc:
            assert exc.code() not in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL,
                                      grpc.StatusCode.DEADLINE_EXCEEDED), exc
        return
    # An open StreamingPull on a subscription that exists legitimately runs until the deadline.
    opens = subscription in SUBSCRIPTIONS or subscription.startswith(PROJECT + "/subscriptions/")
    try:
        for _ in channel.stream_stream(method.path)(iter([data]), timeout=3 if opens else 15):
            pass
    except grpc.RpcError as exc:
        allowed = {grpc.StatusCode.DEADLINE_EXCEEDED} if opens else set()
        assert exc.code() not in {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL,
                                  grpc.StatusCode.DEADLINE_EXCEEDED} - allowed, exc


@pytest.fixture(scope="module")
def channel(emu):
    with grpc.insecure_channel(emu.host) as ch:
        yield ch


@settings(FUZZ, max_examples=300)
@given(grpc_calls("bytes"))
def test_grpc_methods_with_random_bytes(channel, call):
    _call(channel, *call)


@FUZZ
@given(grpc_calls("messages"))
def test_grpc_methods_with_wrong_messages(channel, call):
    _call(channel, *call)


def test_alive_and_no_traceback_after(emu):
    assert send(emu.port, request_bytes("GET", "/healthz")).status == 200
    assert log_tracebacks(emu.log_path) == [], emu.log_tail()
