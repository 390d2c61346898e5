"""Authentication: service account keys, the token endpoint, and checking credentials.

- `keys`: `ServiceAccountKeys` creates key files (RSA 2048, Google's JSON) and keeps their
  public halves in the store (`Kind.SERVICE_ACCOUNT_KEY`); list, delete, find by kid or iss.
- `tokens`: `AccessTokens` (the emulator's access tokens, JWTs signed by a key in the store)
  and `TokenEndpoint` (the JWT-bearer exchange at `TOKEN_PATH`, with its aiohttp route).
- `verify`: `Authenticator.authenticate(authorization)` -> `Identity`, or `AuthError`
  (UNAUTHENTICATED with Google's messages) for a missing or invalid credential.
- `jws`: strict RS256 JWT parsing and checks, shared by the above.

`Auth` puts them together over one store, as the server wires them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from ..store import ResourceTable
from .jws import CredentialError
from .keys import TOKEN_PATH, CreatedKey, KeyRecord, ServiceAccountKeys, project_of
from .tokens import AccessTokens, TokenEndpoint, TokenError
from .verify import INVALID_MESSAGE, MISSING_MESSAGE, Authenticator, AuthError, Identity


class Auth:
    """The package over one store: keys, token endpoint and authenticator sharing caches."""

    def __init__(self, table: ResourceTable, own_urls: Iterable[str] = (),
                 clock: Callable[[], float] = time.time) -> None:
        self.keys = ServiceAccountKeys(table, clock)
        self.tokens = AccessTokens(table, clock)
        self.endpoint = TokenEndpoint(self.keys, self.tokens, clock)
        self.authenticator = Authenticator(self.keys, self.tokens, own_urls, clock)


__all__ = [
    "INVALID_MESSAGE", "MISSING_MESSAGE", "TOKEN_PATH", "AccessTokens", "Auth", "AuthError",
    "Authenticator", "CreatedKey", "CredentialError", "Identity", "KeyRecord",
    "ServiceAccountKeys", "TokenEndpoint", "TokenError", "project_of",
]
