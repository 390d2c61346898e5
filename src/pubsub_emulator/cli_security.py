"""The command line's security part: TLS, --auth, --insecure, --push-allow, and `keys`.

A port reachable from other machines must be TLS with credentials: `start` refuses to bind a
non-loopback address without --auth, or with --auth but without TLS, unless --insecure says
the risk is taken on purpose (then it warns). `keys create|list|delete` administer service
account keys in the same store the server uses (SQLite: the data dir's file, which both may
open at once; NATS: shared by every process), so a running server sees a new or deleted key
at its next call.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import os
import re
import socket
import ssl
import sys
from pathlib import Path

from . import tls
from .auth import ServiceAccountKeys
from .core.errors import ApiError
from .iam import roles
from .iam.policies import PolicyBook
from .iam.rpcs import resource_kind
from .server import Security
from .store import ResourceTable, open_store

log = logging.getLogger("pubsub_emulator")

DEFAULT_KEY_URL = "https://localhost:8085"
_HOST_NAME = re.compile(r"(?=.{1,253}\.?$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                        r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?")
_WILDCARDS = ("", "0.0.0.0", "::")


class UsageError(Exception):
    """A combination of flags the emulator refuses to start with (exit code 2)."""


def _push_entries(text: str) -> list[str]:
    """One --push-allow value: CIDRs, addresses and host names, comma-separated."""
    entries = []
    for entry in (part.strip() for part in text.split(",") if part.strip()):
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError:
            # "127.1" would pass as a name: refuse what looks like an address but is none.
            if not _HOST_NAME.fullmatch(entry) or re.fullmatch(r"[0-9.]+", entry):
                raise argparse.ArgumentTypeError(
                    f"expected CIDR, address or host name, got {entry!r}") from None
        entries.append(entry)
    return entries


def _hostnames(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    for name in names:
        try:
            ipaddress.ip_address(name)
        except ValueError:
            if not _HOST_NAME.fullmatch(name):
                raise argparse.ArgumentTypeError(f"not a host name: {name!r}") from None
    return names


def add_security_flags(start: argparse.ArgumentParser) -> None:
    group = start.add_argument_group(
        "TLS and credentials", "reachable from other machines, safely (README: TLS and "
                               "credentials)")
    group.add_argument("--tls-cert", metavar="FILE",
                       help="serve TLS on the port (gRPC and REST alike) with this PEM "
                            "certificate chain; needs --tls-key")
    group.add_argument("--tls-key", metavar="FILE", help="the certificate's PEM private key")
    group.add_argument("--tls-self-signed", action="store_true",
                       help="serve TLS with a certificate from a local CA made once in "
                            "DATA_DIR/tls (clients trust DATA_DIR/tls/ca.pem; its path is logged)")
    group.add_argument("--tls-hostname", action="append", type=_hostnames, metavar="NAME[,...]",
                       help="a host name or address clients reach the emulator by (repeatable): "
                            "the self-signed certificate covers them, self-signed JWTs may name "
                            "them as audience (default: --host, localhost and 127.0.0.1; with "
                            "--tls-cert: the certificate's names)")
    group.add_argument("--auth", action="store_true",
                       help="require credentials on every call (gRPC and REST): keys made by "
                            "`pubsub-emulator keys create`; /healthz, /readyz, the token "
                            "endpoint and OIDC discovery stay open; /debug/*, /reset and "
                            "/metrics (unless --metrics-open) need an --admin key")
    group.add_argument("--insecure", action="store_true",
                       help="start even on a non-loopback address without --auth or without "
                            "TLS (a warning is logged): anyone who reaches the port can do "
                            "anything, or read credentials and messages on the way")
    group.add_argument("--push-allow", action="append", type=_push_entries,
                       metavar="CIDR|HOST[,...]",
                       help="destinations push subscriptions may POST to (repeatable; default "
                            "without --auth: any; with --auth: loopback and private ranges)")


def is_loopback(host: str) -> bool | None:
    """Whether every address `host` binds is a loopback one (None: it does not resolve, and
    binding will say so)."""
    if host in _WILDCARDS:
        return False
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except socket.gaierror:
        return None
    return all(ipaddress.ip_address(str(info[4][0]).split("%")[0]).is_loopback
               for info in infos)


def _default_hostnames(host: str) -> list[str]:
    names = [] if host in _WILDCARDS else [host]
    if host in _WILDCARDS:  # every interface: the machine's own name reaches one of them
        names.append(socket.gethostname())
    return list(dict.fromkeys([*names, "localhost", "127.0.0.1"]))


def _tls_files(args: argparse.Namespace, hostnames: list[str]) -> tls.TlsFiles | None:
    if args.tls_self_signed:
        if args.tls_cert or args.tls_key:
            raise UsageError("--tls-self-signed makes its own certificate: drop --tls-cert and "
                             "--tls-key, or --tls-self-signed")
        files = tls.self_signed(args.data_dir, hostnames)
        log.info("TLS with a self-signed certificate for %s; clients must trust the CA "
                 "certificate %s", ", ".join(hostnames), files.ca.resolve())
        return files
    if bool(args.tls_cert) != bool(args.tls_key):
        raise UsageError("--tls-cert and --tls-key go together")
    if not args.tls_cert:
        return None
    files = tls.TlsFiles(Path(args.tls_cert), Path(args.tls_key))
    try:
        tls.server_context(files.cert, files.key)  # unreadable or mismatched: say so now
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise UsageError(f"cannot use --tls-cert {args.tls_cert} with --tls-key "
                         f"{args.tls_key}: {exc}") from None
    return files


def _check_exposure(host: str, auth: bool, tls_on: bool, insecure: bool) -> None:
    """Refuse a non-loopback address without credentials or without TLS (unless --insecure)."""
    if is_loopback(host) is not False:
        return
    if not auth:
        why = (f"listening on {host} without --auth lets anyone who reaches the port read, "
               f"publish and delete everything")
    elif not tls_on:
        why = (f"listening on {host} with --auth but without TLS sends credentials and "
               f"messages across the network in the clear")
    else:
        return
    if insecure:
        log.warning("--insecure: %s", why)
        return
    raise UsageError(f"refusing to start: {why}. Give --auth with TLS (--tls-self-signed, or "
                     f"--tls-cert FILE --tls-key FILE) and make keys with `pubsub-emulator keys "
                     f"create`, or bind to 127.0.0.1, or pass --insecure to take the risk")


def security_from(args: argparse.Namespace) -> Security:
    """The server's Security from the start flags; UsageError for what cannot start."""
    tls_on = bool(args.tls_self_signed or args.tls_cert or args.tls_key)
    _check_exposure(args.host, args.auth, tls_on, args.insecure)
    given = [name for names in args.tls_hostname or [] for name in names]
    hostnames = given or _default_hostnames(args.host)
    files = _tls_files(args, hostnames)
    if files is not None and not given and not args.tls_self_signed:
        hostnames = list(dict.fromkeys([*tls.certificate_names(files.cert),
                                        *([] if args.host in _WILDCARDS else [args.host])]))
    if args.auth:
        log.info("credentials required on every call (--auth)")
    allow = [entry for entries in args.push_allow for entry in entries] if args.push_allow \
        else None
    return Security(files.cert if files else None, files.key if files else None, args.auth,
                    tuple(hostnames), allow)


# --- keys ------------------------------------------------------------------------------------
def _add_store_flags(parser: argparse.ArgumentParser, data_dir: str) -> None:
    parser.add_argument("--data-dir", default=data_dir,
                        help="the data dir of the emulator's embedded store (default: "
                             "%(default)s); the server may be running")
    parser.add_argument("--store", metavar="nats://HOST:PORT[,...]",
                        help="the emulator's NATS JetStream store instead")
    parser.add_argument("--nats-replicas", type=int, default=1, metavar="N",
                        help="as given to `start` (default: %(default)s)")


def _role_grant(text: str) -> tuple[str, str]:
    """One --role value: ROLE or ROLE@RESOURCE (a project, topic, subscription, snapshot or
    schema name); the resource is checked when the store is open."""
    role, _, resource = text.partition("@")
    if role not in roles.ROLES:
        raise argparse.ArgumentTypeError(
            f"unknown role {role!r}; one of: {', '.join(sorted(roles.ROLES))}")
    return role, resource


def add_keys_command(sub: argparse._SubParsersAction, data_dir: str  # type: ignore[type-arg]
                     ) -> None:
    keys = sub.add_parser(
        "keys", help="service account keys for --auth",
        description="Create, list and delete the service account keys callers authenticate "
                    "with under --auth, in the store the emulator uses (running or not).")
    actions = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    create = actions.add_parser("create", help="make a key file (Google's JSON format)")
    create.add_argument("email", metavar="EMAIL",
                        help="the service account, NAME@PROJECT.iam.gserviceaccount.com")
    create.add_argument("--out", required=True, metavar="KEY.json",
                        help="where to write the key file (mode 0600; it holds the private "
                             "key, which the emulator does not keep)")
    create.add_argument("--admin", action="store_true",
                        help="the key may administer the emulator (GET /debug/*, project-level "
                             "IAM policies)")
    create.add_argument("--role", action="append", type=_role_grant, default=[],
                        metavar="ROLE[@RESOURCE]",
                        help="grant the account this IAM role (repeatable), on RESOURCE "
                             "(projects/P[/topics/T|/subscriptions/S|...]; default: the key's "
                             "project, so it applies to every resource in it), e.g. "
                             "roles/pubsub.admin (docs/iam.md)")
    create.add_argument("--url", default=DEFAULT_KEY_URL, metavar="https://HOST:PORT",
                        help="the emulator as clients reach it: the key file's token_uri is "
                             "URL/token (default: %(default)s)")
    create.add_argument("--project", metavar="PROJECT_ID",
                        help="the key's project (default: from the email)")
    _add_store_flags(create, data_dir)
    listing = actions.add_parser("list", help="list the registered keys")
    listing.add_argument("--email", help="only this account's keys")
    _add_store_flags(listing, data_dir)
    delete = actions.add_parser("delete", help="delete keys: their credentials stop working "
                                               "at once")
    delete.add_argument("which", metavar="EMAIL|KEY_ID",
                        help="every key of an account, or one key by id")
    _add_store_flags(delete, data_dir)


def _write_private(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # an existing file keeps its mode through O_CREAT: set it
    with os.fdopen(fd, "w") as f:
        f.write(text)


async def _keys(args: argparse.Namespace) -> int:
    try:
        store = await open_store(args.data_dir, False, args.store, args.nats_replicas)
    except Exception as exc:  # no NATS server, JetStream disabled, an unusable data dir
        print(f"pubsub-emulator: cannot open the store: {str(exc) or repr(exc)}",
              file=sys.stderr)
        return 1
    try:
        keys = ServiceAccountKeys(store.resources)
        if args.keys_command == "create":
            return await _create_key(args, keys, store.resources)
        if args.keys_command == "list":
            for record in await keys.list_keys(args.email):
                print(f"{record.key_id}  {record.email}  {'admin' if record.admin else '-'}  "
                      f"{record.create_time}")
            return 0
        which = args.which
        deleted = await (keys.delete(email=which) if "@" in which else keys.delete(key_id=which))
        for record in deleted:
            print(f"deleted key {record.key_id} of {record.email}")
        if not deleted:
            print(f"pubsub-emulator: no key matches {which!r}", file=sys.stderr)
            return 1
        return 0
    finally:
        await store.close()


async def _check_grant_resource(table: ResourceTable, resource: str) -> None:
    """A --role resource must be a project or an existing resource (ValueError otherwise)."""
    try:
        kind = resource_kind(resource)
    except ApiError as exc:
        raise ValueError(f"--role: {exc.message}") from None
    if kind is not None and await table.get(kind, resource) is None:
        raise ValueError(f"--role: {resource} does not exist")


async def _create_key(args: argparse.Namespace, keys: ServiceAccountKeys,
                      table: ResourceTable) -> int:
    """`keys create`: the key file, then the --role grants (on the key's project by default)."""
    for _, resource in args.role:
        if resource:  # checked before the key is made, so a typo leaves nothing behind
            await _check_grant_resource(table, resource)
    created = await keys.create(args.email, args.url, args.project, args.admin)
    _write_private(args.out, created.key_file_json())
    record = created.record
    print(f"created key {record.key_id} for {record.email}"
          f"{' (admin)' if record.admin else ''}: {args.out}")
    policies = PolicyBook(table)
    for role, resource in args.role:
        where = resource or f"projects/{record.project_id}"
        await policies.grant(where, role, [f"serviceAccount:{record.email}"])
        print(f"granted {role} on {where} to serviceAccount:{record.email}")
    return 0


def run_keys(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(_keys(args))
    except ValueError as exc:  # a bad email, project or --role resource
        print(f"pubsub-emulator: {exc}", file=sys.stderr)
        return 2
    except ApiError as exc:  # a grant the policy refuses
        print(f"pubsub-emulator: {exc.message}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"pubsub-emulator: {exc}", file=sys.stderr)
        return 1
