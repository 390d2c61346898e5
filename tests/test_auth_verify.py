"""auth.verify: bearer credentials as Google's clients make them, and every way to get one wrong.

Credentials are made by google-auth's own signers (service_account.Credentials for self-signed
JWTs, google.auth.jwt.encode for hand-made claims), so what passes here is what the clients send.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.auth import crypt
from google.auth import jwt as google_jwt
from google.oauth2 import service_account

from pubsub_emulator.auth import (
    INVALID_MESSAGE,
    MISSING_MESSAGE,
    Auth,
    AuthError,
    CreatedKey,
    Identity,
)
from pubsub_emulator.core.errors import ApiError, Status
from pubsub_emulator.push.oidc import TokenIssuer
from pubsub_emulator.store import Kind
from pubsub_emulator.store.sqlite import SqliteStore

BASE = "http://localhost:8085"
ALICE = "alice@proj-one.iam.gserviceaccount.com"
BOB = "bob@proj-one.iam.gserviceaccount.com"
PUBSUB_AUD = "https://pubsub.googleapis.com/"
NODE_SCOPES = ["https://www.googleapis.com/auth/cloud-platform",
               "https://www.googleapis.com/auth/pubsub"]


class World:
    """One in-memory store, the package over it, and two accounts with a key each."""

    def __init__(self) -> None:
        self.store = SqliteStore(None)
        self.auth = Auth(self.store.resources, own_urls=[BASE])
        self.alice: CreatedKey = asyncio.run(self.auth.keys.create(ALICE, BASE, admin=True))
        self.bob: CreatedKey = asyncio.run(self.auth.keys.create(BOB, BASE))

    def authenticate(self, header: str | None, host: str | None = None) -> Identity:
        return asyncio.run(self.auth.authenticator.authenticate(header, host))

    def refused(self, header: str | None, host: str | None = None, why: str = "") -> AuthError:
        """The AuthError, whose (logged, never sent) reason mentions `why`."""
        with pytest.raises(AuthError) as caught:
            self.authenticate(header, host)
        assert why in caught.value.reason
        return caught.value


@pytest.fixture(scope="module")
def world() -> World:
    return World()


def self_signed(key: CreatedKey, audience: str | None = PUBSUB_AUD,
                scopes: list[str] | None = None) -> str:
    """The JWT google-cloud-pubsub (Python) sends with a key file, made by google-auth."""
    creds = service_account.Credentials.from_service_account_info(key.key_file, scopes=scopes)
    creds = creds.with_always_use_jwt_access(True)
    creds._create_self_signed_jwt(audience)
    creds.refresh(None)  # self-signed: no request is made
    return creds.token


def signed(key: CreatedKey, claims: dict[str, Any], header: dict[str, Any] | None = None,
           key_id: str | None = None) -> str:
    """A JWT with hand-made claims, signed by google-auth's signer with the account's key."""
    signer = crypt.RSASigner.from_service_account_info(key.key_file)
    return google_jwt.encode(signer, claims, header=header, key_id=key_id).decode()


def claims_of(email: str, **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {"iss": email, "sub": email, "aud": PUBSUB_AUD, "iat": now, "exp": now + 3600}
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def bearer(token: str) -> str:
    return f"Bearer {token}"


# --- accepted ------------------------------------------------------------------------------
def test_python_self_signed_jwt_is_accepted(world: World) -> None:
    token = self_signed(world.alice)
    header = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    assert header == {"alg": "RS256", "typ": "JWT", "kid": world.alice.record.key_id}
    identity = world.authenticate(bearer(token))
    assert identity == Identity(ALICE, world.alice.record.key_id, True, "proj-one", False)
    assert not world.authenticate(bearer(self_signed(world.bob))).admin


def test_scoped_self_signed_jwt_is_accepted(world: World) -> None:
    token = self_signed(world.bob, audience=None, scopes=NODE_SCOPES)
    claims = google_jwt.decode(token, verify=False)
    assert "aud" not in claims and claims["scope"] == " ".join(NODE_SCOPES)
    assert world.authenticate(bearer(token)).email == BOB
    pubsub_only = self_signed(world.bob, audience=None,
                              scopes=["https://www.googleapis.com/auth/pubsub"])
    assert world.authenticate(bearer(pubsub_only)).email == BOB


@pytest.mark.parametrize("audience,host", [
    ("https://pubsub.googleapis.com/google.pubsub.v1.Publisher", None),
    ("https://pubsub.googleapis.com/google.pubsub.v1.Subscriber", None),
    ("http://localhost:8085/", None),  # the emulator's configured URL
    ("http://localhost:8085", None),
    ("https://localhost:8085/google.pubsub.v1.SchemaService", None),
    ("https://emulator:8085/google.pubsub.v1.Publisher", "emulator:8085"),  # request's host
    ("https://emulator:8085/google.iam.v1.IAMPolicy", "emulator:8085"),
])
def test_other_pubsub_audiences_are_accepted(world: World, audience: str, host: str) -> None:
    token = self_signed(world.alice, audience=audience)
    assert world.authenticate(bearer(token), host).email == ALICE


def test_kid_may_be_absent(world: World) -> None:
    signer = crypt.RSASigner.from_string(world.alice.key_file["private_key"])  # no key id
    token = google_jwt.encode(signer, claims_of(ALICE)).decode()
    assert "kid" not in google_jwt.decode_header(token)
    assert world.authenticate(bearer(token)).key_id == world.alice.record.key_id


def test_scheme_is_case_insensitive(world: World) -> None:
    assert world.authenticate("bearer " + self_signed(world.alice)).email == ALICE


# --- refused: the credential is missing or not a bearer JWT ----------------------------------
@pytest.mark.parametrize("header", [None, "", "   "])
def test_missing_credential(world: World, header: str | None) -> None:
    error = world.refused(header)
    assert isinstance(error, ApiError) and error.status is Status.UNAUTHENTICATED
    assert error.missing and error.message == MISSING_MESSAGE
    assert error.www_authenticate == 'Bearer realm="https://accounts.google.com/"'


@pytest.mark.parametrize("header", ["Basic YWxhZGRpbjpvcGVuc2VzYW1l", "Bearer", "Bearer  ",
                                    "Bearer not-a-jwt", "Bearer a.b.c", "Bearer ....",
                                    "Bearer " + "A" * 20000],
                         ids=["basic", "bearer", "bearer-blank", "not-a-jwt", "bad-segments",
                              "dots", "oversized"])
def test_malformed_credential(world: World, header: str) -> None:
    error = world.refused(header)
    assert error.status is Status.UNAUTHENTICATED and error.message == INVALID_MESSAGE
    assert error.www_authenticate == ('Bearer realm="https://accounts.google.com/", '
                                      'error="invalid_token"')


# --- refused: times --------------------------------------------------------------------------
@pytest.mark.parametrize("overrides", [
    pytest.param({"iat": -7200, "exp": -3600}, id="expired"),
    pytest.param({"iat": -3700, "exp": -100}, id="expired-beyond-skew"),
    pytest.param({"iat": 600, "exp": 4200}, id="issued-in-the-future"),
    pytest.param({"iat": 0, "exp": 7200}, id="lifetime-over-an-hour"),
    pytest.param({"iat": 0, "exp": 0}, id="exp-not-after-iat"),
    pytest.param({"nbf": 600}, id="not-before-in-the-future"),
])
def test_bad_times(world: World, overrides: dict[str, int]) -> None:
    now = int(time.time())
    token = signed(world.alice, claims_of(ALICE, **{k: now + v for k, v in overrides.items()}))
    error = world.refused(bearer(token))
    assert "expired" in error.reason or "timeframe" in error.reason


def test_small_clock_skew_is_tolerated(world: World) -> None:
    now = int(time.time())
    ahead = signed(world.alice, claims_of(ALICE, iat=now + 20, exp=now + 3620))
    assert world.authenticate(bearer(ahead)).email == ALICE


@pytest.mark.parametrize("overrides", [
    pytest.param({"exp": float("inf")}, id="infinite-exp"),
    pytest.param({"iat": float("nan")}, id="nan-iat"),
    pytest.param({"exp": "EXP"}, id="string-exp"),
    pytest.param({"exp": True}, id="boolean-exp"),
    pytest.param({"exp": 10 ** 400}, id="huge-exp"),
    pytest.param({"exp": None}, id="no-exp"),
    pytest.param({"iat": None}, id="no-iat"),
])
def test_non_integer_times(world: World, overrides: dict[str, Any]) -> None:
    claims = claims_of(ALICE)
    for name, value in overrides.items():
        claims[name] = value
        if value == "EXP":
            claims[name] = str(claims_of(ALICE)["exp"])
    claims = {k: v for k, v in claims.items() if v is not None}
    error = world.refused(bearer(signed(world.alice, claims)))
    assert any(w in error.reason for w in ("integer", "malformed JSON", "timeframe"))


def test_fractional_times(world: World) -> None:
    claims = claims_of(ALICE)
    claims["exp"] = claims["exp"] - 0.5
    world.refused(bearer(signed(world.alice, claims)), why="integer")


# --- refused: signature and key --------------------------------------------------------------
def test_tampered_signature_and_claims(world: World) -> None:
    token = self_signed(world.alice)
    head, body, signature = token.split(".")
    flipped = signature[:-4] + ("AAAA" if signature[-4:] != "AAAA" else "BBBB")
    world.refused(bearer(f"{head}.{body}.{flipped}"), why="Signature")
    forged = json.loads(base64.urlsafe_b64decode(body + "=="))
    forged["iss"] = forged["sub"] = BOB
    world.refused(bearer(f"{head}.{b64(json.dumps(forged).encode())}.{signature}"), why="Signature")


def test_kid_of_another_account(world: World) -> None:
    # Signed by bob's (registered) key, claiming to be alice.
    token = signed(world.bob, claims_of(ALICE), key_id=world.bob.record.key_id)
    world.refused(bearer(token), why="Signature")
    # Alice's kid, signed by bob's key.
    token = signed(world.bob, claims_of(ALICE), key_id=world.alice.record.key_id)
    world.refused(bearer(token), why="Signature")


def test_unregistered_key(world: World) -> None:
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = stranger.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption()).decode()
    for kid in (world.alice.record.key_id, None, "0" * 40):
        signer = crypt.RSASigner.from_string(pem, key_id=kid)
        world.refused(bearer(google_jwt.encode(signer, claims_of(ALICE)).decode()), why="Signature")


def test_unknown_issuer(world: World) -> None:
    carol = "carol@proj-one.iam.gserviceaccount.com"
    world.refused(bearer(signed(world.alice, claims_of(carol))), why="Signature")
    world.refused(bearer(signed(world.alice, claims_of("not an email"))))
    world.refused(bearer(signed(world.alice, claims_of(ALICE, iss=None))))


def test_subject_other_than_the_issuer(world: World) -> None:
    world.refused(bearer(signed(world.alice, claims_of(ALICE, sub="boss@example.com"))))


def test_deleted_key_stops_working_at_once(world: World) -> None:
    key = asyncio.run(world.auth.keys.create("dave@proj-one.iam.gserviceaccount.com", BASE))
    other_process = Auth(world.store.resources, own_urls=[BASE])  # its own caches
    token = bearer(self_signed(key))
    assert world.authenticate(token).email == key.record.email
    assert asyncio.run(other_process.authenticator.authenticate(token)).email
    asyncio.run(world.auth.keys.delete(key_id=key.record.key_id))
    world.refused(token, why="Signature")
    with pytest.raises(AuthError):
        asyncio.run(other_process.authenticator.authenticate(token))


def test_a_token_verified_once_is_not_parsed_again_while_its_key_stands(world: World,
                                                                          monkeypatch) -> None:
    from pubsub_emulator.auth import jws

    key = asyncio.run(world.auth.keys.create("fay@proj-one.iam.gserviceaccount.com", BASE))
    token = bearer(self_signed(key))
    assert world.authenticate(token).email == key.record.email

    def not_again(raw: str) -> None:
        raise AssertionError("the token was parsed and verified a second time")

    monkeypatch.setattr(jws, "parse", not_again)
    assert world.authenticate(token).email == key.record.email  # from what was verified
    monkeypatch.undo()
    asyncio.run(world.auth.keys.delete(key_id=key.record.key_id))
    world.refused(token, why="Signature")  # the key is gone: verified afresh, and refused


def test_change_notice_drops_the_cache(world: World) -> None:
    key = asyncio.run(world.auth.keys.create("erin@proj-one.iam.gserviceaccount.com", BASE))
    token = bearer(self_signed(key))
    world.authenticate(token)
    # What a store shared by processes announces: the record changed (here, deleted behind
    # this process's back, as another process would).
    asyncio.run(world.store.resources.delete(Kind.SERVICE_ACCOUNT_KEY, key.record.name))
    world.auth.authenticator.changed(Kind.SERVICE_ACCOUNT_KEY, key.record.name)
    world.refused(token, why="Signature")


# --- refused: algorithm ----------------------------------------------------------------------
def _with_header(header: dict[str, Any], body: str, signature: bytes) -> str:
    return f"{b64(json.dumps(header).encode())}.{body}.{b64(signature)}"


def test_alg_none_is_refused(world: World) -> None:
    body = b64(json.dumps(claims_of(ALICE)).encode())
    for alg in ("none", "None", "NONE"):
        header = {"alg": alg, "typ": "JWT", "kid": world.alice.record.key_id}
        world.refused(bearer(f"{b64(json.dumps(header).encode())}.{body}."), why="algorithm")
        world.refused(bearer(_with_header(header, body, b"x")), why="algorithm")


def test_hs256_with_the_public_key_as_secret_is_refused(world: World) -> None:
    header = {"alg": "HS256", "typ": "JWT", "kid": world.alice.record.key_id}
    head = b64(json.dumps(header).encode())
    body = b64(json.dumps(claims_of(ALICE)).encode())
    secret = world.alice.record.public_key_pem.encode()
    mac = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
    world.refused(bearer(f"{head}.{body}.{b64(mac)}"), why="algorithm")


def test_other_algorithms_with_a_valid_rs256_signature_are_refused(world: World) -> None:
    # A correct RS256 signature under a header naming another algorithm (or none).
    for alg in ("RS512", "PS256", "ES256", None):
        header = {"typ": "JWT", "kid": world.alice.record.key_id}
        if alg is not None:
            header["alg"] = alg
        signer = crypt.RSASigner.from_service_account_info(world.alice.key_file)
        head = b64(json.dumps(header).encode())
        body = b64(json.dumps(claims_of(ALICE)).encode())
        world.refused(bearer(f"{head}.{body}.{b64(signer.sign(f'{head}.{body}'.encode()))}"),
                      why="algorithm")


def test_duplicate_members_are_refused(world: World) -> None:
    signer = crypt.RSASigner.from_service_account_info(world.alice.key_file)
    head = b64(json.dumps({"alg": "RS256", "kid": world.alice.record.key_id}).encode())
    text = json.dumps(claims_of(ALICE))[:-1] + ', "iss": "bob@proj-one.iam.gserviceaccount.com"}'
    body = b64(text.encode())
    world.refused(bearer(f"{head}.{body}.{b64(signer.sign(f'{head}.{body}'.encode()))}"))


# --- refused: audience and scope -------------------------------------------------------------
@pytest.mark.parametrize("audience,host", [
    ("https://storage.googleapis.com/", None),
    ("https://storage.googleapis.com/", "storage.googleapis.com"),  # a chosen Host header
    ("https://oauth2.googleapis.com/token", None),
    ("http://localhost:8085/token", None),  # an exchange assertion is not a bearer token
    ("https://evil.example/google.pubsub.v1.Publisher", None),
    ("https://pubsub.googleapis.com/google.storage.v2.Storage", None),
    ("https://pubsub.googleapis.com", None),
    ("", None),
])
def test_wrong_audience(world: World, audience: str, host: str | None) -> None:
    world.refused(bearer(signed(world.alice, claims_of(ALICE, aud=audience))), host,
                  why="audience")


def test_audience_must_be_a_string(world: World) -> None:
    world.refused(bearer(signed(world.alice, claims_of(ALICE, aud=[PUBSUB_AUD]))))


@pytest.mark.parametrize("scope", ["https://www.googleapis.com/auth/devstorage.read_only",
                                   "", "cloud-platform pubsub",
                                   "https://www.googleapis.com/auth/cloud-platformX"])
def test_wrong_scope(world: World, scope: str) -> None:
    token = signed(world.alice, claims_of(ALICE, aud=None, scope=scope))
    world.refused(bearer(token), why="scope")


def test_neither_audience_nor_scope(world: World) -> None:
    world.refused(bearer(signed(world.alice, claims_of(ALICE, aud=None))))


def test_good_scope_does_not_excuse_a_wrong_audience(world: World) -> None:
    claims = claims_of(ALICE, aud="https://storage.googleapis.com/",
                       scope=" ".join(NODE_SCOPES))
    world.refused(bearer(signed(world.alice, claims)), why="audience")


# --- access tokens ---------------------------------------------------------------------------
def test_push_oidc_token_is_not_an_access_token(world: World) -> None:
    oidc = asyncio.run(TokenIssuer(world.store.resources).token(ALICE, PUBSUB_AUD))
    world.refused(bearer(oidc))


def test_forged_access_token_is_refused(world: World) -> None:
    # Claims of an access token, signed by a registered account key instead of the server's.
    now = int(time.time())
    claims = {"iss": "pubsub-emulator", "sub": ALICE, "email": ALICE,
              "key_id": world.alice.record.key_id, "scope": NODE_SCOPES[0], "iat": now,
              "exp": now + 3600}
    world.refused(bearer(signed(world.alice, claims, header={"typ": "at+jwt"})),
                  why="access token signature")
    world.refused(bearer(signed(world.alice, claims)), why="access token signature")
