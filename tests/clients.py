"""Google's real client libraries, pointed at an emulator over gRPC or REST."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import googleapiclient
import httplib2
from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import pubsub_v1
from googleapiclient.discovery import build_from_document

TRANSPORTS = ("grpc", "rest")


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def _without_emulator_env() -> dict[str, str]:
    """The client libraries force gRPC when PUBSUB_EMULATOR_HOST is set; hide it briefly."""
    saved = {}
    if "PUBSUB_EMULATOR_HOST" in os.environ:
        saved["PUBSUB_EMULATOR_HOST"] = os.environ.pop("PUBSUB_EMULATOR_HOST")
    return saved


def make_clients(host: str, transport: str) -> tuple[Any, Any]:
    """(PublisherClient, SubscriberClient) talking to `host` over `transport`."""
    if transport == "grpc":
        old = os.environ.get("PUBSUB_EMULATOR_HOST")
        os.environ["PUBSUB_EMULATOR_HOST"] = host
        try:
            return pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
        finally:
            if old is None:
                os.environ.pop("PUBSUB_EMULATOR_HOST")
            else:
                os.environ["PUBSUB_EMULATOR_HOST"] = old
    saved = _without_emulator_env()
    try:
        options = ClientOptions(api_endpoint=f"http://{host}")
        kwargs = dict(transport="rest", client_options=options,
                      credentials=AnonymousCredentials())
        return pubsub_v1.PublisherClient(**kwargs), pubsub_v1.SubscriberClient(**kwargs)
    finally:
        os.environ.update(saved)


def discovery_document() -> dict[str, Any]:
    path = (Path(googleapiclient.__file__).parent / "discovery_cache" / "documents"
            / "pubsub.v1.json")
    return json.loads(path.read_text())


def discovery_client(host: str) -> Any:
    """google-api-python-client's pubsub v1 client, as the App Engine apps build it."""
    doc = discovery_document()
    doc["rootUrl"] = f"http://{host}/"
    doc["baseUrl"] = f"http://{host}/"
    return build_from_document(doc, http=httplib2.Http(timeout=30))


def gapic_clients(host: str, transport: str) -> tuple[Any, Any]:
    """The generated (unbatched) Publisher and Subscriber clients: one call, one RPC."""
    from google import pubsub_v1 as gapic
    from google.pubsub_v1.services.publisher.transports import PublisherGrpcTransport
    from google.pubsub_v1.services.subscriber.transports import SubscriberGrpcTransport

    if transport == "grpc":
        import grpc

        channel = grpc.insecure_channel(host, options=[
            ("grpc.max_send_message_length", 64 << 20),
            ("grpc.max_receive_message_length", 64 << 20)])
        return (gapic.PublisherClient(transport=PublisherGrpcTransport(channel=channel)),
                gapic.SubscriberClient(transport=SubscriberGrpcTransport(channel=channel)))
    saved = _without_emulator_env()
    try:
        kwargs = dict(transport="rest", client_options=ClientOptions(api_endpoint=f"http://{host}"),
                      credentials=AnonymousCredentials())
        return gapic.PublisherClient(**kwargs), gapic.SubscriberClient(**kwargs)
    finally:
        os.environ.update(saved)


def create_key(data_dir: Path, email: str, *extra: str) -> Path:
    """`pubsub-emulator keys create EMAIL` on the store in `data_dir` (`extra`: --admin, --role
    R...), the key file written beside the data directory; its path."""
    import subprocess

    from processes import VENV_BIN

    out = data_dir.parent / f"{email.partition('@')[0]}.json"
    subprocess.run([str(VENV_BIN / "pubsub-emulator"), "keys", "create", email, "--out",
                    str(out), "--data-dir", str(data_dir), *extra],
                   check=True, capture_output=True, timeout=60)
    return out


def self_signed_token(key_file: Path) -> str:
    """A bearer token the key signs itself (JWT access, as Google's clients send), no request
    made."""
    from google.oauth2 import service_account

    creds = service_account.Credentials.from_service_account_file(
        str(key_file), scopes=["https://www.googleapis.com/auth/pubsub"])
    creds = creds.with_always_use_jwt_access(True)
    creds.refresh(None)
    return creds.token
