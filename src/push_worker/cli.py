"""``push-worker CONFIG``: command-line entry point."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence
from types import FrameType

from ._config import ConfigError, load_config
from ._delivery import redact

EXIT_CONFIG = 2

DESCRIPTION = """\
Push worker: keeps a gRPC streaming pull open on Pub/Sub subscriptions (the emulator or real
Cloud Pub/Sub) and POSTs every message to an HTTP endpoint, exactly as Pub/Sub push would.
Use it where Google's push cannot reach the endpoint (a private network, localhost, the
emulator)."""

EPILOG = """\
configuration (YAML):
  pubsub_endpoint: 127.0.0.1:8085   # emulator host:port; omit or null for real Cloud Pub/Sub
                                    # (application default credentials)
  # credentials_file: key.json      # service-account key: TLS + its credentials to
                                    # pubsub_endpoint (emulator with --auth) or Google
  # ca_file: ca.pem                 # with credentials_file: CA bundle for the server
                                    # (default: public roots); relative: to the config
  stats_interval: 30                # seconds between info-level count lines (default 30)
  metrics_port: 9464                # optional: Prometheus /metrics (needs prometheus-client)
  metrics_host: 127.0.0.1           # optional: address for metrics_port (default 127.0.0.1)
  subscriptions:
    - project_id: my-project        # required
      subscription_id: my-sub       # required
      endpoint: http://127.0.0.1:8080/_ah/push-handlers/receive   # required, http(s)
      concurrency: 10               # POSTs in flight at once (FlowControl max_messages)
      timeout: 30                   # seconds per POST; a timeout is a nack
      token: s3cret                 # appended as ?token=...; never logged
      # token_file: /run/secrets/push-token   # alternative to token (relative: to config)
      format: wrapped               # wrapped (Google's JSON push body) or unwrapped (raw data)
      write_metadata: false         # unwrapped only: x-goog-pubsub-* and attribute headers
      backoff: {initial: 0.1, multiplier: 2, max: 60}   # per endpoint, full jitter

behaviour:
  HTTP 102/200/201/202/204 acks the message. Anything else, a timeout or a connection
  error nacks it (Pub/Sub redelivers) and puts the endpoint in backoff: the worker waits
  (exponentially longer, with jitter) before POSTing to it again, probing with one request
  at a time; other endpoints keep flowing. 400/403/413 are logged at error level (they will
  not succeed on retry; put a dead-letter policy on the subscription).
  SIGTERM/SIGINT: stop pulling, let in-flight POSTs finish, nack the rest, exit 0.

exit status: 0 after a clean shutdown, 2 for a bad configuration, 1 otherwise."""


class _RedactFilter(logging.Filter):
    def __init__(self, secrets: Sequence[str]) -> None:
        super().__init__()
        self._secrets = tuple(secrets)

    def filter(self, record: logging.LogRecord) -> bool:
        if self._secrets:
            message = record.getMessage()
            redacted = redact(message, self._secrets)
            if redacted != message:
                record.msg, record.args = redacted, ()
        return True


def setup_logging(level: str, secrets: Sequence[str] = ()) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(_RedactFilter(secrets))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Client libraries are chatty at debug/info; their warnings and errors still show.
    for name in ("google", "grpc", "urllib3", "requests"):
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLevelName(level)))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="push-worker", description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", metavar="CONFIG", help="path of the YAML configuration file")
    parser.add_argument("--log-level", default="INFO", type=str.upper,
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="DEBUG logs every message; INFO (default) logs counts every "
                             "stats_interval seconds, endpoint state changes and errors")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as e:
        print(f"push-worker: invalid configuration: {e}", file=sys.stderr)
        return EXIT_CONFIG
    setup_logging(args.log_level, config.tokens)
    log = logging.getLogger("push_worker")

    from ._worker import Worker

    worker = Worker(config)

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s", signal.Signals(signum).name)
        worker.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        worker.run()
    except Exception:
        log.exception("push worker failed")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
