"""auth.tokens: the JWT-bearer token endpoint and the emulator's access tokens.

The end-to-end tests serve the endpoint with aiohttp's test server and let google-auth's own
service_account.Credentials (not self-signed) refresh against the key file's token_uri, as it
does against Google's; the oauth2client-shaped requests are posted as oauth2client posts them.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
import requests
from aiohttp import web
from aiohttp.test_utils import TestServer
from google.auth import crypt, exceptions
from google.auth import jwt as google_jwt
from google.auth.transport.requests import Request
from google.oauth2 import service_account

from pubsub_emulator.auth import Auth, AuthError, CreatedKey, Identity, TokenError
from pubsub_emulator.store.sqlite import SqliteStore

ALICE = "alice@proj-two.iam.gserviceaccount.com"
PUBSUB_SCOPE = "https://www.googleapis.com/auth/pubsub"
CLOUD_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
FORM = "application/x-www-form-urlencoded; charset=UTF-8"


class Endpoint:
    """The token endpoint on a real port, over an in-memory store, with one key."""

    def __init__(self, store: SqliteStore, auth: Auth, server: TestServer, key: CreatedKey
                 ) -> None:
        self.store = store
        self.auth = auth
        self.server = server
        self.key = key
        self.url = key.key_file["token_uri"]

    async def post(self, data: dict[str, str], content_type: str = FORM
                   ) -> tuple[int, dict[str, Any]]:
        body = "&".join(f"{k}={v}" for k, v in data.items())
        async with aiohttp.ClientSession() as session, session.post(
                self.url, data=body, headers={"Content-Type": content_type}) as response:
            return response.status, await response.json()

    async def google_auth_refresh(self, key_file: dict[str, str],
                                  scopes: list[str] | None = None) -> str:
        """google-auth's refresh (a blocking HTTP client) against the endpoint."""
        creds = service_account.Credentials.from_service_account_info(
            key_file, scopes=[PUBSUB_SCOPE] if scopes is None else scopes)
        session = requests.Session()
        session.trust_env = False  # no proxy from the environment for a loopback port
        await asyncio.to_thread(creds.refresh, Request(session))
        assert creds.token and creds.expiry is not None
        return creds.token

    async def authenticate(self, token: str) -> Identity:
        return await self.auth.authenticator.authenticate(f"Bearer {token}")


def serve(test: Callable[[Endpoint], Awaitable[None]],
          clock: Callable[[], float] = time.time) -> None:
    async def main() -> None:
        store = SqliteStore(None)
        auth = Auth(store.resources, clock=clock)
        app = web.Application()
        app.add_routes(auth.endpoint.routes())
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        try:
            base = str(server.make_url("/")).rstrip("/")
            key = await auth.keys.create(ALICE, base, admin=True)
            await test(Endpoint(store, auth, server, key))
        finally:
            await server.close()
            await store.close()

    asyncio.run(main())


def assertion(key: CreatedKey, audience: str, scope: str | None = PUBSUB_SCOPE,
              with_kid: bool = True, **overrides: Any) -> str:
    """An exchange assertion as oauth2client (aud = token_uri) or google-auth (aud = Google's
    constant) signs it; oauth2client's header may lack the kid."""
    now = int(time.time())
    claims = {"iss": key.record.email, "scope": scope, "aud": audience, "iat": now,
              "exp": now + 3600, **overrides}
    claims = {k: v for k, v in claims.items() if v is not None}
    if with_kid:
        signer = crypt.RSASigner.from_service_account_info(key.key_file)
    else:
        signer = crypt.RSASigner.from_string(key.key_file["private_key"])
    return google_jwt.encode(signer, claims).decode()


# --- google-auth against the endpoint --------------------------------------------------------
def test_google_auth_refresh_gets_a_token_that_authenticates() -> None:
    async def test(endpoint: Endpoint) -> None:
        token = await endpoint.google_auth_refresh(endpoint.key.key_file)
        identity = await endpoint.authenticate(token)
        assert identity == Identity(ALICE, endpoint.key.record.key_id, True, "proj-two", True)
        # Every process sharing the store verifies it (its own caches, the same store).
        other = Auth(endpoint.store.resources)
        assert (await other.authenticator.authenticate(f"Bearer {token}")).email == ALICE

    serve(test)


def test_deleting_the_key_revokes_its_access_tokens_at_once() -> None:
    async def test(endpoint: Endpoint) -> None:
        token = await endpoint.google_auth_refresh(endpoint.key.key_file)
        await endpoint.authenticate(token)
        await endpoint.auth.keys.delete(email=ALICE)
        with pytest.raises(AuthError) as caught:
            await endpoint.authenticate(token)
        assert not caught.value.missing
        # ...and google-auth cannot get a new one: a 400 it does not retry.
        with pytest.raises(exceptions.RefreshError, match="invalid_grant"):
            await endpoint.google_auth_refresh(endpoint.key.key_file)

    serve(test)


def test_google_auth_without_scopes_is_refused() -> None:
    async def test(endpoint: Endpoint) -> None:
        with pytest.raises(exceptions.RefreshError, match="invalid_scope"):
            await endpoint.google_auth_refresh(endpoint.key.key_file, scopes=[])

    serve(test)


def test_a_key_file_of_an_unregistered_key_is_refused() -> None:
    async def test(endpoint: Endpoint) -> None:
        # A key made by another emulator: same account, a key this store never saw.
        other = await Auth(SqliteStore(None).resources).keys.create(ALICE, "http://elsewhere")
        forged = {**other.key_file, "token_uri": endpoint.url}
        with pytest.raises(exceptions.RefreshError, match="invalid_grant"):
            await endpoint.google_auth_refresh(forged)

    serve(test)


# --- oauth2client's requests -----------------------------------------------------------------
@pytest.mark.parametrize("audience", ["token_uri", "https://oauth2.googleapis.com/token"])
@pytest.mark.parametrize("with_kid", [True, False])
def test_oauth2client_style_exchange(audience: str, with_kid: bool) -> None:
    async def test(endpoint: Endpoint) -> None:
        aud = endpoint.url if audience == "token_uri" else audience
        jwt = assertion(endpoint.key, aud, scope=f"{CLOUD_SCOPE} {PUBSUB_SCOPE}",
                        with_kid=with_kid)
        status, body = await endpoint.post({"grant_type": GRANT, "assertion": jwt})
        assert status == 200, body
        assert set(body) == {"access_token", "expires_in", "token_type"}
        assert body["expires_in"] == 3599 and body["token_type"] == "Bearer"
        assert (await endpoint.authenticate(body["access_token"])).email == ALICE

    serve(test)


def test_plain_form_content_type_is_accepted() -> None:
    async def test(endpoint: Endpoint) -> None:
        jwt = assertion(endpoint.key, endpoint.url)
        status, _ = await endpoint.post({"grant_type": GRANT, "assertion": jwt},
                                        content_type="application/x-www-form-urlencoded")
        assert status == 200

    serve(test)


@pytest.mark.parametrize("case,expected", [
    ("grant_type", "unsupported_grant_type"),
    ("no_assertion", "invalid_request"),
    ("json_body", "invalid_request"),
    ("garbage", "invalid_grant"),
    ("self_signed_for_pubsub", "invalid_grant"),
    ("expired", "invalid_grant"),
    ("too_long", "invalid_grant"),
    ("unscoped", "invalid_scope"),
    ("storage_scope", "invalid_scope"),
    ("other_audience", "invalid_grant"),
    ("subject", "invalid_grant"),
    ("tampered", "invalid_grant"),
])
def test_refused_grants_answer_400_in_googles_shape(case: str, expected: str) -> None:
    async def test(endpoint: Endpoint) -> None:
        key, url, now = endpoint.key, endpoint.url, int(time.time())
        jwts = {
            "garbage": "not.a.jwt",
            "self_signed_for_pubsub": assertion(key, "https://pubsub.googleapis.com/"),
            "expired": assertion(key, url, iat=now - 7200, exp=now - 3600),
            "too_long": assertion(key, url, exp=now + 7200),
            "unscoped": assertion(key, url, scope=None),
            "storage_scope": assertion(
                key, url, scope="https://www.googleapis.com/auth/devstorage.read_only"),
            "other_audience": assertion(key, "https://example.com/token"),
            "subject": assertion(key, url, sub="someone@example.com"),
            "tampered": assertion(key, url)[:-6] + "AAAAAA",
        }
        form = {"grant_type": GRANT, "assertion": jwts.get(case, assertion(key, url))}
        content_type = FORM
        if case == "grant_type":
            form["grant_type"] = "client_credentials"
        elif case == "no_assertion":
            del form["assertion"]
        elif case == "json_body":
            content_type = "application/json"
        status, body = await endpoint.post(form, content_type)
        assert status == 400
        assert body["error"] == expected and isinstance(body["error_description"], str)
        assert set(body) == {"error", "error_description"}

    serve(test)


# --- access tokens: expiry and forgery -------------------------------------------------------
def test_access_token_expires_after_an_hour() -> None:
    now = [time.time()]

    async def test(endpoint: Endpoint) -> None:
        status, body = await endpoint.post({"grant_type": GRANT,
                                            "assertion": assertion(endpoint.key, endpoint.url)})
        assert status == 200
        token = body["access_token"]
        now[0] += 3500
        assert (await endpoint.authenticate(token)).email == ALICE
        now[0] += 200  # past exp (3600) and the clock skew (60)
        with pytest.raises(AuthError) as caught:
            await endpoint.authenticate(token)
        assert caught.value.status.name == "UNAUTHENTICATED"  # 401: oauth2client refreshes
        assert "expired" in caught.value.reason

    serve(test, clock=lambda: now[0])


def test_tampered_access_token_is_refused() -> None:
    async def test(endpoint: Endpoint) -> None:
        token = await endpoint.google_auth_refresh(endpoint.key.key_file)
        head, body, signature = token.split(".")
        claims = google_jwt.decode(token, verify=False)
        other = {**claims, "email": "bob@proj-two.iam.gserviceaccount.com"}
        forged_body = base64.urlsafe_b64encode(json.dumps(other).encode()).decode().rstrip("=")
        for forged in (f"{head}.{forged_body}.{signature}", f"{head}.{body}.{signature[:-4]}AAAA",
                       f"{head}.{body}."):
            with pytest.raises(AuthError):
                await endpoint.authenticate(forged)

    serve(test)


def test_exchange_logic_without_http() -> None:
    async def test(endpoint: Endpoint) -> None:
        jwt = assertion(endpoint.key, "http://emulator:8085/token")
        answer = await endpoint.auth.endpoint.exchange(
            {"grant_type": GRANT, "assertion": jwt}, {"http://emulator:8085/token"})
        assert answer["token_type"] == "Bearer"
        with pytest.raises(TokenError) as caught:
            await endpoint.auth.endpoint.exchange({"grant_type": GRANT, "assertion": jwt}, set())
        assert caught.value.error == "invalid_grant"
        # The key file's token_uri is accepted whatever URL the request arrived at.
        jwt = assertion(endpoint.key, endpoint.url)
        answer = await endpoint.auth.endpoint.exchange({"grant_type": GRANT, "assertion": jwt},
                                                       {"http://emulator:8085/token"})
        assert (await endpoint.authenticate(answer["access_token"])).email == ALICE

    serve(test)
