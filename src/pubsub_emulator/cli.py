"""`pubsub-emulator`: the command line."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import logging
import resource
import signal
import sys
from collections.abc import Awaitable, Callable

from . import logs, topology
from .cli_security import (
    UsageError,
    add_keys_command,
    add_security_flags,
    run_keys,
    security_from,
)
from .push import MAX_WINDOW
from .server import Limits, RunningServer, Security, create_gateway, create_server
from .store import open_store

log = logging.getLogger("pubsub_emulator")

DEFAULT_PORT = 8085
DEFAULT_DATA_DIR = "./data/pubsub"
# Descriptors a connection may cost: a gRPC connection holds three (the client's, the splice to
# the private gRPC port and the gRPC server's end), plus the store, logs and outgoing push.
FDS_PER_CONNECTION = 3
FDS_SPARE = 256


def _seconds(text: str) -> float:
    value = float(text)
    if not value >= 0:  # also NaN
        raise argparse.ArgumentTypeError(f"expected seconds >= 0, got {text!r}")
    return value


def _address(text: str) -> str:
    """A --host value: an empty one (an unset variable in a service file) is a usage error,
    not a bind to every address or a failure to listen that a supervisor would retry."""
    if not text.strip():
        raise argparse.ArgumentTypeError("expected an address to bind, got an empty value")
    return text.strip()


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a count >= 0, got {text!r}")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a count >= 1, got {text!r}")
    return value


def _add_limits(start: argparse.ArgumentParser) -> None:
    default = Limits()
    limits = start.add_argument_group(
        "limits", "keep slow, idle or too many clients from holding the emulator "
                  "(seconds; 0 turns a timeout off)")
    limits.add_argument("--max-connections", type=_count, default=default.max_connections,
                        metavar="N",
                        help="open connections at most; more are closed at once (default: "
                             "%(default)s; 0: no limit)")
    limits.add_argument("--idle-timeout", type=_seconds, default=default.idle_timeout,
                        metavar="S",
                        help="close a connection with no request and no open call after this "
                             "long: a new one that sends nothing, HTTP/1.1 keep-alive, gRPC "
                             "without calls (an open StreamingPull is not idle; default: "
                             "%(default)s)")
    limits.add_argument("--header-timeout", type=_seconds, default=default.header_timeout,
                        metavar="S",
                        help="the HTTP/2 preface or an HTTP/1.1 request's headers must arrive "
                             "within this long of their first byte (default: %(default)s)")
    limits.add_argument("--body-timeout", type=_seconds, default=default.body_timeout,
                        metavar="S",
                        help="an HTTP/1.1 request's body must arrive within this long of its "
                             "headers (default: %(default)s)")
    limits.add_argument("--first-request-timeout", type=_seconds,
                        default=default.first_request_timeout, metavar="S",
                        help="a StreamingPull must send its first request within this long, "
                             "else it ends with DEADLINE_EXCEEDED (default: %(default)s)")
    limits.add_argument("--push-max-outstanding", type=_positive, default=MAX_WINDOW,
                        metavar="N",
                        help="POSTs outstanding per push subscription at most (the largest "
                             "slow-start window), whatever the number of processes sharing "
                             "the store: one of them pushes a subscription at a time, and "
                             "another takes over within seconds if it stops or dies "
                             "(default: %(default)s)")


def _limits(args: argparse.Namespace) -> Limits:
    return Limits(max_connections=args.max_connections, idle_timeout=args.idle_timeout,
                  header_timeout=args.header_timeout, body_timeout=args.body_timeout,
                  first_request_timeout=args.first_request_timeout)


def _raise_descriptor_limit(max_connections: int) -> None:
    """Raise the soft descriptor limit toward the hard one (as Go's runtime does), so that the
    connection limit, not the descriptor limit, is what a crowd of clients meets first."""
    if not max_connections:
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max_connections * FDS_PER_CONNECTION + FDS_SPARE
    if soft == resource.RLIM_INFINITY or soft >= want:
        return
    target = want if hard == resource.RLIM_INFINITY else min(hard, want)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if target < want:  # the limit is what it is: the front copes (see api/front.py)
        log.warning("descriptor limit %d is below the %d that --max-connections %d may need: "
                    "past it new connections wait until descriptors are freed",
                    max(soft, target), want, max_connections)


def _add_log_flags(command: argparse.ArgumentParser, metrics: bool = False) -> None:
    """--log-level and --log-format; with `metrics`, --metrics-open too."""
    if metrics:
        command.add_argument(
            "--metrics-open", action="store_true",
            help="with --auth: serve GET /metrics without credentials (a Prometheus server "
                 "cannot mint the emulator's tokens; keep the port on a trusted network). "
                 "Without it, /metrics under --auth needs an --admin key's token, as /debug/* "
                 "and POST /reset do")
    command.add_argument("--log-level", default="info",
                         choices=["debug", "info", "warning", "error"],
                         help="debug logs one line per RPC (default: %(default)s)")
    command.add_argument("--log-format", default="text", choices=logs.FORMATS,
                         help="json: one JSON object per line (time, level, logger, message; "
                              "method, resource, status, duration on each RPC's line) "
                              "(default: %(default)s)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pubsub-emulator",
        description="A Google Cloud Pub/Sub v1 emulator: gRPC and REST on one port, durable by "
                    "default. Point Google's client libraries at it with "
                    "PUBSUB_EMULATOR_HOST=HOST:PORT (or, with TLS and --auth, with an "
                    "api_endpoint, a key file and the CA).")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    start = sub.add_parser(
        "start", help="run the emulator",
        description="Serve the Publisher and Subscriber APIs over gRPC and REST (Google's JSON "
                    "mapping) on one port, with GET /healthz for readiness checks.")
    start.add_argument("--host", default="127.0.0.1", type=_address,
                       help="address to bind (default: %(default)s, loopback only; use 0.0.0.0 "
                            "to accept other machines, with --auth and TLS)")
    start.add_argument("--port", type=int, default=DEFAULT_PORT,
                       help="port for gRPC and REST alike (default: %(default)s; 0 picks a free "
                            "one and logs it)")
    start.add_argument("--data-dir", default=DEFAULT_DATA_DIR,
                       help="directory of the embedded store; topics, subscriptions, messages "
                            "and ack state survive restarts and crashes (default: %(default)s)")
    start.add_argument("--in-memory", action="store_true",
                       help="keep everything in memory instead (lost when the process ends)")
    start.add_argument("--store", metavar="nats://HOST:PORT[,nats://HOST:PORT...]",
                       help="keep everything in NATS JetStream (nats-server >= 2.9 started with "
                            "-js) instead of the embedded store, so several emulator processes "
                            "share topics, subscriptions and messages; list several servers of a "
                            "cluster to fail over between them (default: the embedded SQLite "
                            "store in --data-dir)")
    start.add_argument("--nats-replicas", type=int, default=1, metavar="N",
                       help="with --store nats://...: replicas of each JetStream stream (3 on a "
                            "3-node cluster survives losing a node; default: %(default)s)")
    start.add_argument("--config", metavar="TOPOLOGY_YAML",
                       help="topology file: projects, topics and subscriptions to create at "
                            "start if missing (a restart with the same file changes nothing)")
    start.add_argument("--grpc-port", type=int, metavar="PORT",
                       help="also serve gRPC alone on this port, bypassing the one-port front "
                            "(saves a loopback hop; `make bench` shows what it saves)")
    _add_log_flags(start, metrics=True)
    _add_limits(start)
    add_security_flags(start)

    gateway = sub.add_parser(
        "gateway", help="serve REST in front of any Pub/Sub gRPC endpoint",
        description="The REST (JSON) API alone, translating each call to gRPC against "
                    "--upstream; gRPC connections to this port are passed through to it.")
    gateway.add_argument("--upstream", required=True, metavar="HOST:PORT",
                         help="the Pub/Sub gRPC endpoint to forward to")
    gateway.add_argument("--host", default="127.0.0.1", type=_address,
                         help="address to bind (default: %(default)s)")
    gateway.add_argument("--port", type=int, default=8086,
                         help="port to serve (default: %(default)s)")
    _add_log_flags(gateway)
    add_keys_command(sub, DEFAULT_DATA_DIR)
    return parser


def settle_heap() -> None:
    """Move what start-up made (modules, protos, the server) out of the garbage collector's
    sight. A full collection walks every tracked object: with the ~80,000 start-up left it took
    30-45 ms on the 2-core test machine, a pause in every call then; they live until the
    process ends, so walking them finds nothing."""
    gc.collect()
    gc.freeze()


class _StoreUnavailable(RuntimeError):
    """The store could not be opened (NATS unreachable, JetStream disabled, bad data dir)."""


async def _run(start: Callable[[], Awaitable[RunningServer]], what: str,
               security: Security | None = None) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = await start()
    settle_heap()
    mode = "gRPC and REST"
    if security is not None and security.tls:
        mode += " over TLS"
    if security is not None and security.auth:
        mode += ", credentials required"
    log.info("%s listening on %s (%s)", what, server.port, mode)
    await stop.wait()
    log.info("shutting down")
    await server.stop(grace=5.0)
    log.info("stopped")
    return 0


def _start(args: argparse.Namespace) -> int:
    resources = None
    try:
        if args.config:
            resources = topology.load(args.config)
        if args.store and not args.store.startswith("nats://"):
            raise UsageError(f"unsupported --store {args.store!r} (expected nats://...)")
        security = dataclasses.replace(security_from(args), metrics_open=args.metrics_open)
    except (topology.TopologyError, UsageError) as exc:
        print(f"pubsub-emulator: {exc}", file=sys.stderr)
        return 2
    where = args.store or ("memory" if args.in_memory else args.data_dir)
    limits = _limits(args)
    _raise_descriptor_limit(limits.max_connections)

    async def start() -> RunningServer:
        try:
            store = await open_store(args.data_dir, args.in_memory, args.store,
                                     args.nats_replicas)
        except Exception as exc:  # no server, JetStream disabled, ...
            raise _StoreUnavailable(f"{where}: {str(exc) or repr(exc)}") from exc
        log.info("store: %s", where)
        try:
            return await create_server(store, args.host, args.port, resources,
                                       args.grpc_port, limits, security,
                                       args.push_max_outstanding)
        except BaseException:
            await store.close()
            raise

    try:
        return asyncio.run(_run(start, f"pubsub emulator on {args.host}", security))
    except _StoreUnavailable as exc:
        print(f"pubsub-emulator: cannot open the store {exc}", file=sys.stderr)
        return 1
    except topology.TopologyError as exc:
        print(f"pubsub-emulator: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"pubsub-emulator: cannot listen on {args.host}:{args.port}: {exc}",
              file=sys.stderr)
        return 1


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logs.configure(getattr(args, "log_level", "warning"), getattr(args, "log_format", "text"))
    if args.command == "start":
        return _start(args)
    if args.command == "keys":
        return run_keys(args)

    async def start_gateway() -> RunningServer:
        return await create_gateway(args.upstream, args.host, args.port)

    return asyncio.run(_run(start_gateway, f"pubsub gateway to {args.upstream} on {args.host}"))


if __name__ == "__main__":
    sys.exit(main())
