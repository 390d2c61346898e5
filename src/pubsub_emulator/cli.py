"""`pubsub-emulator`: the command line."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Awaitable, Callable

from . import topology
from .server import RunningServer, create_gateway, create_server
from .store import open_store

log = logging.getLogger("pubsub_emulator")

DEFAULT_PORT = 8085
DEFAULT_DATA_DIR = "./data/pubsub"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pubsub-emulator",
        description="A Google Cloud Pub/Sub v1 emulator: gRPC and REST on one port, durable by "
                    "default. Point Google's client libraries at it with "
                    "PUBSUB_EMULATOR_HOST=HOST:PORT.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    start = sub.add_parser(
        "start", help="run the emulator",
        description="Serve the Publisher and Subscriber APIs over gRPC and REST (Google's JSON "
                    "mapping) on one port, with GET /healthz for readiness checks.")
    start.add_argument("--host", default="127.0.0.1",
                       help="address to bind (default: %(default)s, loopback only; use 0.0.0.0 "
                            "to accept other machines)")
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
    start.add_argument("--log-level", default="info",
                       choices=["debug", "info", "warning", "error"],
                       help="debug logs one line per RPC (default: %(default)s)")

    gateway = sub.add_parser(
        "gateway", help="serve REST in front of any Pub/Sub gRPC endpoint",
        description="The REST (JSON) API alone, translating each call to gRPC against "
                    "--upstream; gRPC connections to this port are passed through to it.")
    gateway.add_argument("--upstream", required=True, metavar="HOST:PORT",
                         help="the Pub/Sub gRPC endpoint to forward to")
    gateway.add_argument("--host", default="127.0.0.1",
                         help="address to bind (default: %(default)s)")
    gateway.add_argument("--port", type=int, default=8086,
                         help="port to serve (default: %(default)s)")
    gateway.add_argument("--log-level", default="info",
                         choices=["debug", "info", "warning", "error"])
    return parser


class _StoreUnavailable(RuntimeError):
    """The store could not be opened (NATS unreachable, JetStream disabled, bad data dir)."""


async def _run(start: Callable[[], Awaitable[RunningServer]], what: str) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = await start()
    log.info("%s listening on %s (gRPC and REST)", what, server.port)
    await stop.wait()
    log.info("shutting down")
    await server.stop(grace=5.0)
    log.info("stopped")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "start":
        resources = None
        if args.config:
            try:
                resources = topology.load(args.config)
            except topology.TopologyError as exc:
                print(f"pubsub-emulator: {exc}", file=sys.stderr)
                return 2
        if args.store and not args.store.startswith("nats://"):
            print(f"pubsub-emulator: unsupported --store {args.store!r} (expected nats://...)",
                  file=sys.stderr)
            return 2
        where = args.store or ("memory" if args.in_memory else args.data_dir)

        async def start() -> RunningServer:
            try:
                store = await open_store(args.data_dir, args.in_memory, args.store,
                                         args.nats_replicas)
            except Exception as exc:  # no server, JetStream disabled, ...
                raise _StoreUnavailable(f"{where}: {str(exc) or repr(exc)}") from exc
            log.info("store: %s", where)
            try:
                return await create_server(store, args.host, args.port, resources,
                                           args.grpc_port)
            except BaseException:
                await store.close()
                raise

        try:
            return asyncio.run(_run(start, f"pubsub emulator on {args.host}"))
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

    async def start_gateway() -> RunningServer:
        return await create_gateway(args.upstream, args.host, args.port)

    return asyncio.run(_run(start_gateway, f"pubsub gateway to {args.upstream} on {args.host}"))


if __name__ == "__main__":
    sys.exit(main())
