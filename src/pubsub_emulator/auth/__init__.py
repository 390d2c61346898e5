"""Authentication: service account keys, the token endpoint, and checking credentials.

- `keys`: `ServiceAccountKeys` creates key files (RSA 2048, Google's JSON) and keeps their
  public halves in the store (`Kind.SERVICE_ACCOUNT_KEY`); list, delete, find by kid or iss.
- `tokens`: `AccessTokens` (the emulator's access tokens, JWTs signed by a key in the store)
  and `TokenEndpoint` (the JWT-bearer exchange at `TOKEN_PATH`, with its aiohttp route).
- `verify`: `Authenticator.authenticate(authorization)` -> `Identity`, or `AuthError`
  (UNAUTHENTICATED with Google's messages) for a missing or invalid credential.
- `jws`: strict RS256 JWT parsing and checks, shared by the above.

`Auth` puts them together over one store, as the server wires them; `Auth.caller` is what
the adapters call under `--auth` (an `Authenticate`): the credential in, the core's `Caller` out.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable

from ..core.caller import Caller
from ..store import ResourceTable
from .jws import CredentialError
from .keys import TOKEN_PATH, CreatedKey, KeyRecord, ServiceAccountKeys, project_of
from .tokens import AccessTokens, TokenEndpoint, TokenError
from .verify import INVALID_MESSAGE, MISSING_MESSAGE, Authenticator, AuthError, Identity

# (authorization header or metadata value, Host or :authority) -> the caller, or AuthError.
Authenticate = Callable[[str | None, str | None], Awaitable[Caller]]


class Auth:
    """The package over one store: keys, token endpoint and authenticator sharing caches."""

    def __init__(self, table: ResourceTable, own_urls: Iterable[str] = (),
                 clock: Callable[[], float] = time.time) -> None:
        self.keys = ServiceAccountKeys(table, clock)
        self.tokens = AccessTokens(table, clock)
        self.endpoint = TokenEndpoint(self.keys, self.tokens, clock)
        self.authenticator = Authenticator(self.keys, self.tokens, own_urls, clock)

    async def caller(self, authorization: str | None, host: str | None = None) -> Caller:
        """An `Authenticate`: who makes a call with this credential; AuthError otherwise."""
        identity = await self.authenticator.authenticate(authorization, host)
        return Caller(identity.email, identity.admin)


__all__ = [
    "INVALID_MESSAGE", "MISSING_MESSAGE", "TOKEN_PATH", "AccessTokens", "Auth", "AuthError",
    "Authenticate", "Authenticator", "CreatedKey", "CredentialError", "Identity", "KeyRecord",
    "ServiceAccountKeys", "TokenEndpoint", "TokenError", "project_of",
]
