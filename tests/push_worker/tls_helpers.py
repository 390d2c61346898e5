"""TLS and credentials stand-ins for the push worker tests: a throwaway CA and server
certificate, a service-account key file, and a fake Subscriber service over TLS that records
the metadata of every call (what the worker's channel sends).
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import json
import threading
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

START = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
END = dt.datetime(2099, 1, 1, tzinfo=dt.UTC)
SERVICE = "google.pubsub.v1.Subscriber"


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    cert: Path
    key: Path


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _name(text: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])


def _pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def make_tls(directory: Path, label: str = "a") -> TlsFiles:
    """A test CA and a server certificate it signed for 127.0.0.1 and localhost."""
    ca_key, key = _key(), _key()
    ca_name = _name(f"TEST ONLY push-worker CA {label}")
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(START).not_valid_after(END)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .sign(ca_key, hashes.SHA256()))
    sans = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = (x509.CertificateBuilder().subject_name(_name("localhost")).issuer_name(ca_name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(START).not_valid_after(END)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .sign(ca_key, hashes.SHA256()))
    files = TlsFiles(directory / f"ca-{label}.pem", directory / f"server-{label}.pem",
                     directory / f"server-{label}-key.pem")
    files.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(_pem(key))
    return files


def make_key_file(path: Path, email: str) -> rsa.RSAPublicKey:
    """A service-account key file as Google writes them; returns its public key."""
    key = _key()
    path.write_text(json.dumps({
        "type": "service_account", "project_id": email.split("@")[1].split(".")[0],
        "private_key_id": "c" * 40, "private_key": _pem(key).decode(),
        "client_email": email, "client_id": "1" * 21,
        "token_uri": "https://127.0.0.1:1/token"}))
    return key.public_key()


def verified_jwt_claims(bearer: str, public_key: rsa.RSAPublicKey) -> dict[str, Any]:
    """The claims of `Bearer <jwt>` after checking its RS256 signature with `public_key`."""
    scheme, _, token = bearer.partition(" ")
    assert scheme == "Bearer", bearer
    header, payload, signature = token.split(".")

    def decode(part: str) -> bytes:
        return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))

    public_key.verify(decode(signature), f"{header}.{payload}".encode(), padding.PKCS1v15(),
                      hashes.SHA256())  # raises InvalidSignature
    assert json.loads(decode(header))["alg"] == "RS256"
    return json.loads(decode(payload))


@dataclass
class FakeSubscriber:
    """The Subscriber service over TLS on 127.0.0.1: GetSubscription answers, StreamingPull
    sends `messages` (data bytes) once then holds the stream, Acknowledge and
    ModifyAckDeadline are recorded. `calls` holds (method, metadata dict) of every call."""

    tls: TlsFiles
    messages: list[bytes] = field(default_factory=list)
    calls: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    acked: list[str] = field(default_factory=list)
    port: int = 0
    _server: Any = None
    _done: threading.Event = field(default_factory=threading.Event)

    def _record(self, method: str, context: grpc.ServicerContext) -> None:
        self.calls.append((method, {k: v for k, v in context.invocation_metadata()
                                    if isinstance(v, str)}))

    def _get_subscription(self, request: Any, context: grpc.ServicerContext) -> Any:
        from google.pubsub_v1 import types

        self._record("GetSubscription", context)
        return types.Subscription(name=request.subscription, topic="projects/p/topics/t",
                                  ack_deadline_seconds=10)

    def _streaming_pull(self, requests: Iterator[Any],
                        context: grpc.ServicerContext) -> Iterator[Any]:
        from google.pubsub_v1 import types

        self._record("StreamingPull", context)
        first = next(requests)
        received = [types.ReceivedMessage(ack_id=f"ack-{i}", message=types.PubsubMessage(
            data=data, message_id=str(i), publish_time=dt.datetime.now(dt.UTC)))
            for i, data in enumerate(self.messages)]
        self.messages = []
        assert first.subscription
        if received:
            yield types.StreamingPullResponse(received_messages=received)
        for request in requests:  # until the client closes the stream
            self.acked.extend(request.ack_ids)
            if self._done.is_set():
                return

    def _acknowledge(self, request: Any, context: grpc.ServicerContext) -> Any:
        from google.protobuf import empty_pb2

        self._record("Acknowledge", context)
        self.acked.extend(request.ack_ids)
        return empty_pb2.Empty()

    def _modify_ack_deadline(self, request: Any, context: grpc.ServicerContext) -> Any:
        from google.protobuf import empty_pb2

        self._record("ModifyAckDeadline", context)
        return empty_pb2.Empty()

    def start(self) -> FakeSubscriber:
        from google.pubsub_v1 import types

        def unary(fn: Any, request: Any, serialize: Any) -> grpc.RpcMethodHandler:
            return grpc.unary_unary_rpc_method_handler(
                fn, request_deserializer=request.deserialize, response_serializer=serialize)

        def empty(message: Any) -> bytes:  # google.protobuf.Empty, a plain protobuf message
            return message.SerializeToString()

        handlers = {
            "GetSubscription": unary(self._get_subscription, types.GetSubscriptionRequest,
                                     types.Subscription.serialize),
            "Acknowledge": unary(self._acknowledge, types.AcknowledgeRequest, empty),
            "ModifyAckDeadline": unary(self._modify_ack_deadline,
                                       types.ModifyAckDeadlineRequest, empty),
            "StreamingPull": grpc.stream_stream_rpc_method_handler(
                self._streaming_pull, request_deserializer=types.StreamingPullRequest.deserialize,
                response_serializer=types.StreamingPullResponse.serialize),
        }
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        self._server.add_generic_rpc_handlers(
            [grpc.method_handlers_generic_handler(SERVICE, handlers)])
        credentials = grpc.ssl_server_credentials(
            [(self.tls.key.read_bytes(), self.tls.cert.read_bytes())])
        self.port = self._server.add_secure_port("127.0.0.1:0", credentials)
        self._server.start()
        return self

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        self._done.set()
        if self._server is not None:
            self._server.stop(grace=None)
