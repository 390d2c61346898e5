"""Where push requests may go (`--push-allow CIDR|HOST[,...]`), enforced on every connection.

An emulator reachable from other machines must not let whoever creates a subscription make it
POST (with tokens signed by the emulator's key) into networks its callers cannot reach
themselves: cloud metadata servers, admin consoles, the host's other services.

- Entries: a CIDR (`10.0.0.0/8`, `fc00::/7`) or a single address (`192.168.1.20`, `::1`)
  matches the addresses a host name resolves to; a HOST entry (`push.example.com`) matches
  an endpoint whose host is that name exactly (case-insensitive, trailing dot ignored),
  whatever it resolves to: naming a host trusts it.
- Default (no `--push-allow`): any destination without `--auth` (a local emulator, as
  before); under `--auth` loopback (127.0.0.0/8, ::1) and the private ranges (RFC 1918:
  10/8, 172.16/12, 192.168/16; RFC 4193: fc00::/7). Link-local (169.254.0.0/16, fe80::/10)
  is left out on purpose: 169.254.169.254 is the cloud metadata server, the classic target of
  a request forged through a server. Name it in `--push-allow` to reach a link-local host.
  IPv4-mapped IPv6 addresses (::ffff:10.1.2.3) are judged as the IPv4 address they carry.

DNS rebinding: a name may resolve to an allowed address when checked and to another when
connected. So the check is made where the connection is made: the pusher's client (client.py)
gets `AllowedResolver`, which resolves (loop.getaddrinfo, through aiohttp's ThreadedResolver)
and hands the client only the allowed addresses; the client connects to exactly the addresses
its resolver returned (numerically, no second lookup), and caches only those. The client does
not resolve hosts that look like addresses (a ":" or only digits and dots, aiohttp's test,
which the client keeps), so the pusher asks `refusal(url)` before each POST, which judges those
hosts itself (and refuses what looks like an address but is none, e.g. `127.1`). Redirects are
not followed and the client uses no proxy, so no other route leads elsewhere.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver
from yarl import URL

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

DEFAULT_UNDER_AUTH = ("127.0.0.0/8", "::1/128", "10.0.0.0/8", "172.16.0.0/12",
                      "192.168.0.0/16", "fc00::/7")
DEFAULT_DESCRIPTION = "loopback and private ranges, the default under --auth"


class PushRefused(OSError):
    """A push destination outside the allowed set (raised by the resolver, it reaches the
    pusher as it is: the client passes it on)."""


def parse_push_allow(value: str) -> list[str]:
    """The entries of a `--push-allow` value (comma-separated), each checked: ValueError
    names the first that is neither a CIDR, an address nor a host name."""
    entries = [entry.strip() for entry in value.split(",") if entry.strip()]
    for entry in entries:
        _parse_entry(entry)
    return entries


def _parse_entry(entry: str) -> Network | str:
    text = entry.strip()
    try:
        return ipaddress.ip_network(text.strip("[]"), strict=False)
    except ValueError:
        pass
    name = text.lower().rstrip(".")
    labels = name.split(".")
    if not name or looks_like_address(name) or not all(
            label and len(label) <= 63 and label.replace("-", "").replace("_", "").isalnum()
            and label.isascii() for label in labels):
        raise ValueError(f"--push-allow: {entry!r} is neither a CIDR, an address nor a host name")
    return name


def looks_like_address(host: str) -> bool:
    """Whether the push client connects to `host` as written rather than resolving it
    (aiohttp's test, kept by the client: the two checks must agree, see above)."""
    return ":" in host or host.replace(".", "").isdigit()


def _address(text: str) -> Address | None:
    try:
        address = ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id:
        return ipaddress.IPv6Address(str(address).split("%", 1)[0])
    return address


class Destinations:
    """The allowed push destinations of one emulator; `unrestricted` needs no checks at all."""

    def __init__(self, networks: Iterable[Network], hosts: Iterable[str], unrestricted: bool,
                 description: str) -> None:
        self.networks = tuple(networks)
        self.hosts = frozenset(hosts)
        self.unrestricted = unrestricted
        self.description = description

    @classmethod
    def from_flags(cls, allow: list[str] | None, auth_required: bool) -> Destinations:
        """From `--push-allow`'s entries (None: not given) and whether `--auth` is on."""
        if allow is None and not auth_required:
            return cls((), (), True, "any (no --auth, no --push-allow)")
        entries = list(DEFAULT_UNDER_AUTH) if allow is None else [e for e in allow if e.strip()]
        parsed = [_parse_entry(entry) for entry in entries]
        description = (DEFAULT_DESCRIPTION if allow is None
                       else "--push-allow " + ",".join(e.strip() for e in entries))
        return cls([p for p in parsed if not isinstance(p, str)],
                   [p for p in parsed if isinstance(p, str)], False, description)

    def allows_host(self, host: str) -> bool:
        return self.unrestricted or host.lower().rstrip(".") in self.hosts

    def allows_address(self, text: str) -> bool:
        if self.unrestricted:
            return True
        address = _address(text)
        return address is not None and any(address.version == net.version and address in net
                                           for net in self.networks)

    def refusal(self, url: str) -> str:
        """Why a POST to `url` must not be made, judged before connecting ("" if it may be
        tried: a host name is then judged by AllowedResolver, at the connection)."""
        if self.unrestricted:
            return ""
        try:
            host = URL(url).raw_host or ""  # as the push client reads it (yarl)
        except ValueError:
            return ""  # the client refuses the URL itself: a failed POST like any other
        if self.allows_host(host) or not looks_like_address(host):
            return ""
        if _address(host) is None:
            return (f"push refused: {host} is not an address the push client connects "
                    "to as written")
        if self.allows_address(host):
            return ""
        return self.outside(host, host)

    def outside(self, host: str, addresses: str) -> str:
        shown = host if host == addresses else f"{host} ({addresses})"
        return f"push refused: {shown} is outside the allowed destinations ({self.description})"

    def resolver(self) -> AllowedResolver | None:
        """The resolver for a pusher's client (None: the default, nothing to check)."""
        return None if self.unrestricted else AllowedResolver(self)


class AllowedResolver(AbstractResolver):
    """Resolves as aiohttp's resolver does and returns only allowed addresses (PushRefused if
    none)."""

    def __init__(self, destinations: Destinations,
                 inner: AbstractResolver | None = None) -> None:
        self._destinations = destinations
        self._inner = inner or ThreadedResolver()

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        found = await self._inner.resolve(host, port, family)
        if self._destinations.allows_host(host):
            return found
        allowed = [r for r in found if self._destinations.allows_address(r["host"])]
        if not allowed:
            shown = ", ".join(sorted({r["host"] for r in found})) or "no address"
            raise PushRefused(self._destinations.outside(host, shown))
        return allowed

    async def close(self) -> None:
        await self._inner.close()
