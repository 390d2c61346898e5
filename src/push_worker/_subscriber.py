"""The SubscriberClient the worker pulls with, built from the configuration.

- ``credentials_file`` set: gRPC over TLS to ``pubsub_endpoint`` (an emulator started with TLS
  and ``--auth``) or, without it, to Cloud Pub/Sub, every call carrying a self-signed JWT made
  with that service-account key; the server certificate is checked against ``ca_file`` or, if
  none is given, gRPC's default roots (the public CAs grpcio ships, or the file named by
  ``GRPC_DEFAULT_SSL_ROOTS_FILE_PATH``).
- otherwise: ``pubsub_endpoint`` means the emulator without auth (plain gRPC, as the client
  library does for ``PUBSUB_EMULATOR_HOST``); no endpoint means Cloud Pub/Sub with application
  default credentials.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from ._config import Config

log = logging.getLogger("push_worker")

GOOGLE_ENDPOINT = "pubsub.googleapis.com:443"


def make_subscriber(config: Config) -> Any:
    """A ``pubsub_v1.SubscriberClient`` for `config` (see the module docstring)."""
    from google.cloud import pubsub_v1

    if config.credentials_file is not None:
        return pubsub_v1.SubscriberClient(transport=tls_transport(config))
    if config.pubsub_endpoint:
        # The client library reads this variable: plain channel, anonymous credentials.
        os.environ["PUBSUB_EMULATOR_HOST"] = config.pubsub_endpoint
        log.info("using the Pub/Sub emulator at %s", config.pubsub_endpoint)
    elif os.environ.get("PUBSUB_EMULATOR_HOST"):
        log.warning("pubsub_endpoint is not set but PUBSUB_EMULATOR_HOST=%s is in the "
                    "environment: using that emulator", os.environ["PUBSUB_EMULATOR_HOST"])
    else:
        log.info("using Cloud Pub/Sub with application default credentials")
    return pubsub_v1.SubscriberClient()


def channel_credentials(ca_file: Path | None) -> Any:
    """TLS channel credentials trusting `ca_file` (PEM), or gRPC's default roots when None."""
    import grpc

    if ca_file is None:
        return grpc.ssl_channel_credentials()
    return grpc.ssl_channel_credentials(root_certificates=ca_file.read_bytes())


def tls_transport(config: Config) -> Any:
    """The gRPC transport for ``credentials_file``: TLS, the key's self-signed JWTs."""
    from google.oauth2 import service_account
    from google.pubsub_v1.services.subscriber.transports import SubscriberGrpcTransport

    assert config.credentials_file is not None
    # With PUBSUB_EMULATOR_HOST set the library would swap in a plain channel and anonymous
    # credentials, i.e. send the subscription's traffic unauthenticated and unencrypted.
    stale = os.environ.pop("PUBSUB_EMULATOR_HOST", None)
    if stale:
        log.warning("PUBSUB_EMULATOR_HOST=%s ignored: credentials_file is set, so the worker "
                    "uses TLS and credentials", stale)
    credentials = service_account.Credentials.from_service_account_file(
        str(config.credentials_file))
    host = config.pubsub_endpoint or GOOGLE_ENDPOINT
    log.info("using Pub/Sub at %s over TLS (%s) as %s", host,
             f"CA {config.ca_file}" if config.ca_file else "default CA roots",
             credentials.service_account_email)
    return SubscriberGrpcTransport(
        host=host, credentials=credentials,
        ssl_channel_credentials=channel_credentials(config.ca_file),
        # As SubscriberClient itself asks: self-signed JWTs, no token exchange.
        always_use_jwt_access=True)
