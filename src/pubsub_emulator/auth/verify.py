"""Who is calling: the `Authorization: Bearer` credential of an API call, checked.

Two kinds of bearer token are accepted:

- the emulator's own access tokens (tokens.py), from its token endpoint (oauth2client,
  google-auth without self-signed JWTs);
- self-signed JWTs, what google-cloud-pubsub (Python, Node) sends with a key file: signed by a
  registered key of the account (`kid`, or any key of `iss` when absent), iss = sub = email,
  iat/exp at most an hour apart, and an `aud` or a `scope` (each checked when present):
  - `aud` is one of: `https://pubsub.googleapis.com/` (Python signs this constant, whatever
    endpoint it talks to); grpc-js's service_url `https://<host>/<service>`, for <service>
    google.pubsub.v1.Publisher, Subscriber, SchemaService or google.iam.v1.IAMPolicy, where
    <host> is pubsub.googleapis.com, one of the emulator's configured URLs or the host the
    request arrived at (a client pointed at the emulator names the emulator's host); the
    emulator's configured URLs themselves. A bare `https://<request host>/` is not enough:
    the Host header is the caller's to choose, and a token for another API (say
    `https://storage.googleapis.com/`) must not pass by naming that host; the service
    paths, on the other hand, only ever name Pub/Sub. Any other audience (another API, the
    token endpoint) is refused.
  - `scope` includes cloud-platform or pubsub.

Everything else is UNAUTHENTICATED with Google's messages (`AuthError`): "missing" when no
credential came, "invalid" for everything wrong with one. oauth2client refreshes its token
only after a 401, so expired or revoked tokens are UNAUTHENTICATED too, never 403. Reasons
are logged (never the token) at INFO.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import NoReturn
from urllib.parse import urlsplit

from ..core.errors import ApiError, Status
from ..store import Kind
from . import jws
from .keys import ServiceAccountKeys
from .tokens import CLOCK_SKEW_S, MAX_LIFETIME_S, AccessTokens, has_pubsub_scope

log = logging.getLogger(__name__)

_SEE = ("Expected OAuth 2 access token, login cookie or other valid authentication credential. "
        "See https://developers.google.com/identity/sign-in/web/devconsole-project.")
MISSING_MESSAGE = "Request is missing required authentication credential. " + _SEE
INVALID_MESSAGE = "Request had invalid authentication credentials. " + _SEE
REALM = 'Bearer realm="https://accounts.google.com/"'

GOOGLE_HOST = "pubsub.googleapis.com"
SERVICES = ("google.pubsub.v1.Publisher", "google.pubsub.v1.Subscriber",
            "google.pubsub.v1.SchemaService", "google.iam.v1.IAMPolicy")


class AuthError(ApiError):
    """UNAUTHENTICATED, with Google's message for a missing or an invalid credential.

    An ApiError, so the adapters already map it (gRPC UNAUTHENTICATED, HTTP 401); REST adds
    the `www_authenticate` header. `reason` is for logs only: never send it to the client.
    """

    def __init__(self, missing: bool, reason: str) -> None:
        super().__init__(Status.UNAUTHENTICATED, MISSING_MESSAGE if missing else INVALID_MESSAGE)
        self.missing = missing
        self.reason = reason

    @property
    def www_authenticate(self) -> str:
        """The `WWW-Authenticate` header of a REST 401 (RFC 6750 3)."""
        return REALM if self.missing else REALM + ', error="invalid_token"'


@dataclass(frozen=True)
class Identity:
    """An authenticated caller."""

    email: str
    key_id: str  # the service account key its credential was made with
    admin: bool
    project_id: str
    access_token: bool  # True: an access token from the token endpoint; False: a self-signed JWT


def _service_urls(host: str, schemes: Iterable[str]) -> set[str]:
    return {f"{scheme}://{host}/{service}" for scheme in schemes for service in SERVICES}


def _roots(host: str, schemes: Iterable[str]) -> set[str]:
    return {f"{scheme}://{host}{end}" for scheme in schemes for end in ("", "/")}


VERIFIED_CACHE_SIZE = 10_000


class Authenticator:
    """Checks bearer credentials against the registered keys and the emulator's tokens."""

    def __init__(self, keys: ServiceAccountKeys, tokens: AccessTokens,
                 own_urls: Iterable[str] = (), clock: Callable[[], float] = time.time) -> None:
        """`own_urls`: the emulator's URLs as clients may name them (`http://localhost:8085`);
        self-signed JWTs may name their hosts as audience."""
        self._keys = keys
        self._tokens = tokens
        self._clock = clock
        self._audiences = {f"https://{GOOGLE_HOST}/", *_service_urls(GOOGLE_HOST, ["https"])}
        # Tokens already verified, by (token, host), until they expire: a client sends the
        # same token for up to an hour, and parsing it and checking its RSA signature is most
        # of what authenticating a call costs. A hit still reads the key's record, so a key
        # deleted (by any process, or by `keys delete` on the data dir) stops working at once.
        self._verified: dict[tuple[str, str | None], tuple[Identity, float]] = {}
        self.add_own_urls(own_urls)

    def add_own_urls(self, own_urls: Iterable[str]) -> None:
        """More URLs of the emulator (a port known only once bound)."""
        for url in own_urls:
            host = urlsplit(url).netloc or url
            self._audiences |= _roots(host, ["http", "https"])
            self._audiences |= _service_urls(host, ["http", "https"])

    def changed(self, kind: Kind, name: str) -> None:
        """An `Events.on_change` listener (a key changed here or in another process)."""
        self._keys.changed(kind, name)

    async def authenticate(self, authorization: str | None, host: str | None = None
                           ) -> Identity:
        """The caller of a request with this `authorization` header (gRPC metadata or HTTP
        header value; None or "" when absent); `host` is the request's Host or :authority.
        Raises AuthError."""
        if not authorization or not authorization.strip():
            raise AuthError(True, "no credential")
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            self._refuse("not a bearer token")
        token = token.strip()
        known = await self._known(token, host)
        if known is not None:
            return known
        try:
            jwt = jws.parse(token)
            identity = await self._identify(jwt, host)
        except jws.CredentialError as exc:
            self._refuse(exc.reason)
        self._remember(token, host, identity, jwt.claims.get("exp"))
        return identity

    async def _known(self, token: str, host: str | None) -> Identity | None:
        """The identity of a token verified before and not expired, if its key still exists."""
        entry = self._verified.get((token, host))
        if entry is None:
            return None
        identity, until = entry
        if self._clock() >= until:
            del self._verified[(token, host)]
            return None
        record = await self._keys.get(identity.email, identity.key_id)
        if record is None:  # deleted: verified afresh, refused as any unknown key is
            del self._verified[(token, host)]
            return None
        return Identity(record.email, record.key_id, record.admin, record.project_id,
                        identity.access_token)

    def _remember(self, token: str, host: str | None, identity: Identity, exp: object) -> None:
        if not isinstance(exp, int):
            return
        if len(self._verified) >= VERIFIED_CACHE_SIZE:  # bounded: tokens are minted hourly
            self._verified.clear()
        self._verified[(token, host)] = (identity, float(exp) + CLOCK_SKEW_S)

    def _refuse(self, reason: str) -> NoReturn:
        log.info("credential refused: %s", reason)
        raise AuthError(False, reason)

    async def _identify(self, jwt: jws.Jwt, host: str | None) -> Identity:
        if AccessTokens.is_access_token(jwt):
            email, key_id = await self._tokens.verify(jwt)  # (its scope was checked when issued)
            record = await self._keys.get(email, key_id)
            if record is None:
                raise jws.CredentialError("the key of this access token was deleted")
            return Identity(record.email, record.key_id, record.admin, record.project_id, True)
        record = await self._keys.verify(jwt, self._clock(), CLOCK_SKEW_S, MAX_LIFETIME_S)
        audience, scope = jwt.string_claim("aud"), jwt.string_claim("scope")
        if audience is None and scope is None:
            raise jws.CredentialError("Invalid JWT: neither aud nor scope.")
        if audience is not None and audience not in self._audiences and (
                host is None or audience not in _service_urls(host, ["http", "https"])):
            raise jws.CredentialError("Invalid JWT: the audience is not Pub/Sub.")
        if scope is not None and not has_pubsub_scope(scope):
            raise jws.CredentialError("Invalid JWT: no Pub/Sub scope.")
        return Identity(record.email, record.key_id, record.admin, record.project_id, False)
