"""OIDC tokens for push requests, signed by the emulator's own key, verifiable like Google's.

The emulator plays accounts.google.com for its push subscriptions: `pushConfig.oidcToken` puts
a JWT (RS256) with Google's claims in `Authorization: Bearer`, and the emulator's one port
serves what a receiver needs to check it:

- `GET /.well-known/openid-configuration`: issuer and `jwks_uri`, as Google's discovery document.
- `GET /oauth2/v3/certs`: the public key as a JWK set (Google's v3 format; google-auth reads it
  only with PyJWT installed).
- `GET /oauth2/v1/certs`: the same key as `{kid: x509 PEM certificate}` (Google's v1 format,
  what google-auth and oauth2client verify against by default, without PyJWT).

So `google.oauth2.id_token.verify_token(token, Request(), audience=...,
certs_url="http://HOST:PORT/oauth2/v1/certs")` accepts the emulator's tokens as it accepts
Google's. The key pair is made once and kept in the store (the data dir; in memory with
--in-memory), so tokens and certificates stay valid across restarts.

Under `--auth` the pusher asks for tokens with `require_key=True`: the emulator signs only as
a service account that has a key registered with it (SigningRefused otherwise), checked on
every request, so a subscription made before `--auth` was on, or whose account's keys were
deleted since, gets no token (the core refuses to create such a config under --auth).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import time
from typing import Any

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID
from google.auth import crypt
from google.auth import jwt as google_jwt

from ..core.push_config import has_registered_key
from ..signing_keys import stored_rsa_key
from ..store import ResourceTable

ISSUER = "https://accounts.google.com"
TOKEN_LIFETIME_S = 3600
KEY_NAME = "oidc-signing-key"
CERT_PATH_V1 = "/oauth2/v1/certs"
CERT_PATH_V3 = "/oauth2/v3/certs"
DISCOVERY_PATH = "/.well-known/openid-configuration"


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _int_bytes(value: int) -> bytes:
    return value.to_bytes((value.bit_length() + 7) // 8, "big")


def subject_for(email: str) -> str:
    """A stable numeric id for a service account email, shaped like Google's (21 digits)."""
    digest = int.from_bytes(hashlib.sha256(email.encode("utf-8")).digest()[:9], "big")
    return "1" + str(digest).zfill(20)[:20]


class SigningRefused(Exception):
    """The emulator will not sign a push token as this account (the push is nacked)."""


class TokenIssuer:
    """Makes and caches signed ID tokens; the key is loaded or created on first use."""

    def __init__(self, table: ResourceTable) -> None:
        self._table = table
        self._signer: crypt.RSASigner | None = None
        self._kid = ""
        self._public_numbers: Any = None
        self._cert_pem = ""
        self._cache: dict[tuple[str, str], tuple[str, float]] = {}

    async def load(self) -> None:
        """Read the signing key from the store, or make and store one (first use only)."""
        if self._signer is not None:
            return
        stored = await stored_rsa_key(self._table, KEY_NAME)
        private, pem, self._kid = stored.private, stored.pem, stored.kid
        public = private.public_key()
        self._public_numbers = public.public_numbers()
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME,
                                             "pubsub-emulator OIDC signing key")])
        # Fixed validity dates: the certificate is the same bytes on every start.
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                .public_key(public).serial_number(int(self._kid[:16], 16))
                .not_valid_before(dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc))
                .not_valid_after(dt.datetime(2099, 1, 1, tzinfo=dt.timezone.utc))
                .sign(private, hashes.SHA256()))
        self._cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode("ascii")
        self._signer = crypt.RSASigner.from_string(pem, key_id=self._kid)

    async def token(self, email: str, audience: str, require_key: bool = False) -> str:
        """A JWT as Google signs for push: iss, aud, email, email_verified, sub, azp, iat, exp.

        `require_key` (under --auth): SigningRefused unless the account has a registered key;
        checked before the cache, so a deleted key stops the signing at once."""
        if require_key and not await has_registered_key(self._table, email):
            raise SigningRefused(f"push refused: no token is signed as {email or '(no account)'}"
                                 ": it has no key registered with the emulator (--auth)")
        await self.load()
        now = time.time()
        cached = self._cache.get((email, audience))
        if cached is not None and cached[1] - now > 300:  # reuse until 5 min before expiry
            return cached[0]
        iat = int(now)
        sub = subject_for(email)
        claims = {"aud": audience, "azp": sub, "email": email, "email_verified": True,
                  "exp": iat + TOKEN_LIFETIME_S, "iat": iat, "iss": ISSUER, "sub": sub}
        assert self._signer is not None
        token = google_jwt.encode(self._signer, claims, key_id=self._kid).decode("ascii")
        self._cache[(email, audience)] = (token, iat + TOKEN_LIFETIME_S)
        return token

    async def jwks(self) -> dict[str, Any]:
        await self.load()
        numbers = self._public_numbers
        return {"keys": [{"kty": "RSA", "alg": "RS256", "use": "sig", "kid": self._kid,
                          "n": _b64url(_int_bytes(numbers.n)),
                          "e": _b64url(_int_bytes(numbers.e))}]}

    async def x509_certs(self) -> dict[str, str]:
        await self.load()
        return {self._kid: self._cert_pem}

    def routes(self) -> list[web.RouteDef]:
        """The discovery document and the certificates, for the emulator's HTTP app."""

        async def discovery(request: web.Request) -> web.Response:
            base = f"{request.scheme}://{request.host}"
            return web.json_response({
                "issuer": ISSUER,
                "jwks_uri": base + CERT_PATH_V3,
                "response_types_supported": ["id_token"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "claims_supported": ["aud", "azp", "email", "email_verified", "exp", "iat",
                                     "iss", "sub"],
            })

        async def certs_v3(_: web.Request) -> web.Response:
            return web.json_response(await self.jwks(), headers=_CACHE)

        async def certs_v1(_: web.Request) -> web.Response:
            return web.json_response(await self.x509_certs(), headers=_CACHE)

        return [web.get(DISCOVERY_PATH, discovery), web.get(CERT_PATH_V3, certs_v3),
                web.get(CERT_PATH_V1, certs_v1)]


_CACHE = {"Cache-Control": "public, max-age=3600"}
