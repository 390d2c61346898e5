"""The token endpoint: a JWT-bearer assertion in, an access token out (OAuth 2, RFC 7523).

oauth2client (and google-auth's service_account.Credentials when it does not self-sign) POST
`grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer&assertion=<JWT>` to the key file's
token_uri and send the `access_token` of the answer as `Authorization: Bearer`.

The access token is itself a JWT (RS256, header `typ: at+jwt` as RFC 9068 names access-token
JWTs), signed by the emulator's access-token key, which is kept in the store like push/oidc's
key (a different key: an access token and a push OIDC token can never stand for each other):

    {"iss": "pubsub-emulator", "sub": email, "email": email, "key_id": <the account key's id>,
     "scope": <granted scopes>, "iat": now, "exp": now + 3600}

So every process sharing the store verifies it without shared sessions, and since it names
the account key it was granted for, and verification reads that key from the store, deleting
the key revokes the access tokens made with it at once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa

from ..signing_keys import stored_rsa_key
from ..store import ResourceTable
from . import jws
from .keys import TOKEN_PATH, KeyRecord, ServiceAccountKeys

log = logging.getLogger(__name__)

GRANT_TYPE = "urn:ietf:params:oauth:grant-type:jwt-bearer"
# Assertion audiences besides the token_uri the assertion was posted to: google-auth signs
# Google's token URI whatever token_uri it posts to (its older releases signed the v4 one).
GOOGLE_TOKEN_AUDIENCES = frozenset({"https://oauth2.googleapis.com/token",
                                    "https://www.googleapis.com/oauth2/v4/token"})
# A credential for Pub/Sub must carry one of these scopes.
PUBSUB_SCOPES = frozenset({"https://www.googleapis.com/auth/cloud-platform",
                           "https://www.googleapis.com/auth/pubsub"})
ACCESS_TOKEN_ISSUER = "pubsub-emulator"
ACCESS_TOKEN_TYPE = "at+jwt"
ACCESS_TOKEN_LIFETIME_S = 3600
MAX_LIFETIME_S = 3600  # Google refuses assertions and self-signed JWTs living longer
CLOCK_SKEW_S = 60
SERVER_KEY_NAME = "access-token-signing-key"  # under Kind.SIGNING_KEY, beside push's key


def has_pubsub_scope(scope: str) -> bool:
    return bool(PUBSUB_SCOPES.intersection(scope.split(" ")))


class AccessTokens:
    """Issues and verifies the emulator's access tokens; the key is loaded on first use."""

    def __init__(self, table: ResourceTable, clock: Callable[[], float] = time.time) -> None:
        self._table = table
        self._clock = clock
        self._private: rsa.RSAPrivateKey | None = None
        self._kid = ""

    async def _key(self) -> rsa.RSAPrivateKey:
        if self._private is not None:
            return self._private
        stored = await stored_rsa_key(self._table, SERVER_KEY_NAME)
        self._kid = stored.kid
        self._private = stored.private
        return stored.private

    async def issue(self, record: KeyRecord, scope: str) -> tuple[str, int]:
        """An access token for the account of `record`, and its lifetime in seconds."""
        key = await self._key()
        iat = int(self._clock())
        claims = {"iss": ACCESS_TOKEN_ISSUER, "sub": record.email, "email": record.email,
                  "key_id": record.key_id, "scope": scope, "iat": iat,
                  "exp": iat + ACCESS_TOKEN_LIFETIME_S}
        token = jws.sign(key, {"typ": ACCESS_TOKEN_TYPE, "kid": self._kid}, claims)
        # Google answers 3599: a second has passed by the time the client reads it.
        return token, ACCESS_TOKEN_LIFETIME_S - 1

    @staticmethod
    def is_access_token(jwt: jws.Jwt) -> bool:
        """Whether a JWT claims to be one of ours (it may still be forged: see verify)."""
        return (jwt.header.get("typ") == ACCESS_TOKEN_TYPE
                or jwt.claims.get("iss") == ACCESS_TOKEN_ISSUER)

    async def verify(self, jwt: jws.Jwt) -> tuple[str, str]:
        """The (email, key id) an access token was issued for; CredentialError otherwise."""
        key = await self._key()
        if (jwt.header.get("typ") != ACCESS_TOKEN_TYPE or jwt.key_id != self._kid
                or not jws.signature_valid(jwt, key.public_key())):
            raise jws.CredentialError("Invalid access token signature.")
        if jwt.claims.get("iss") != ACCESS_TOKEN_ISSUER:
            raise jws.CredentialError("Invalid access token issuer.")
        jws.check_times(jwt, self._clock(), CLOCK_SKEW_S, ACCESS_TOKEN_LIFETIME_S)
        email, key_id = jwt.string_claim("email"), jwt.string_claim("key_id")
        if not email or not key_id or jwt.string_claim("sub") != email:
            raise jws.CredentialError("Invalid access token claims.")
        return email, key_id


class TokenError(Exception):
    """An OAuth 2 error answer (RFC 6749 5.2): always 400, never a 5xx (google-auth
    retries those) nor 401."""

    def __init__(self, error: str, description: str) -> None:
        super().__init__(description)
        self.error = error
        self.description = description

    def body(self) -> dict[str, str]:
        return {"error": self.error, "error_description": self.description}


class TokenEndpoint:
    """The token endpoint's logic (`exchange`) and its aiohttp route (`routes`)."""

    def __init__(self, keys: ServiceAccountKeys, tokens: AccessTokens,
                 clock: Callable[[], float] = time.time) -> None:
        self._keys = keys
        self._tokens = tokens
        self._clock = clock

    async def exchange(self, form: Mapping[str, str], audiences: Iterable[str]
                       ) -> dict[str, Any]:
        """Google's token answer for a JWT-bearer grant; `audiences` are the URLs the
        request reached (an assertion's aud may name them, the key's token_uri or Google's)."""
        grant_type = form.get("grant_type", "")
        if grant_type != GRANT_TYPE:
            raise TokenError("unsupported_grant_type", f"Invalid grant_type: {grant_type}"[:200])
        assertion = form.get("assertion")
        if not assertion:
            raise TokenError("invalid_request", "Missing required parameter: assertion")
        try:
            jwt = jws.parse(assertion)
            record = await self._keys.verify(jwt, self._clock(), CLOCK_SKEW_S, MAX_LIFETIME_S)
            audience = jwt.string_claim("aud")
            if audience not in {*audiences, record.token_uri, *GOOGLE_TOKEN_AUDIENCES}:
                raise jws.CredentialError("Invalid JWT: the audience must be the token URI.")
            scope = jwt.string_claim("scope")
        except jws.CredentialError as exc:
            log.info("token request refused: %s", exc.reason)
            raise TokenError("invalid_grant", exc.reason) from None
        if not scope or not has_pubsub_scope(scope):
            raise TokenError("invalid_scope", "Invalid OAuth scope or ID token audience provided.")
        token, expires_in = await self._tokens.issue(record, scope)
        return {"access_token": token, "expires_in": expires_in, "token_type": "Bearer"}

    def routes(self, path: str = TOKEN_PATH) -> list[web.RouteDef]:
        """`POST path`, for the emulator's HTTP app."""

        async def token(request: web.Request) -> web.Response:
            if request.content_type != "application/x-www-form-urlencoded":
                return _answer(TokenError("invalid_request",
                                          "Content-Type must be application/x-www-form-urlencoded"
                                          ).body(), 400)
            form = await request.post()
            fields = {k: v for k, v in form.items() if isinstance(v, str)}
            here = f"{request.scheme}://{request.host}{request.path}"
            try:
                return _answer(await self.exchange(fields, {here}), 200)
            except TokenError as exc:
                return _answer(exc.body(), 400)

        return [web.post(path, token)]


def _answer(body: Mapping[str, Any], status: int) -> web.Response:
    # Token answers must not be cached (RFC 6749 5.1).
    return web.json_response(dict(body), status=status,
                             headers={"Cache-Control": "no-store", "Pragma": "no-cache"})
