"""Service account keys: made here, their public halves kept in the store.

`ServiceAccountKeys.create` makes an RSA 2048 key pair and returns the key file Google's
clients read (the private key is in it and nowhere else: like a user-managed key of Google
IAM, the emulator keeps only the public key). The public key is a resource of kind
`SERVICE_ACCOUNT_KEY` named `serviceAccounts/{email}/keys/{key id}`, so a credential's
issuer and `kid` name its key directly and `list_prefixed` finds an account's keys.

The record is JSON (`KeyRecord`): email, key id, public key, create time, project, token
URI and an `admin` flag; members a later version adds are kept when this one rewrites a record.

Deleting a key revokes it at once: every check reads the store (which caches announced kinds
only until another process announces a change), and this module only caches the parsed public
key beside the bytes it was parsed from. `changed` drops that cache on the store's notices.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import hashlib
import json
import re
import time
from collections.abc import Callable, Mapping
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from ..push.oidc import subject_for
from ..store import Kind, ResourceTable
from . import jws

KIND = Kind.SERVICE_ACCOUNT_KEY
KEY_SIZE = 2048
# The token endpoint's path on the emulator's port (tokens.py serves it): key files name
# `<base URL>/token`, the path of Google's https://oauth2.googleapis.com/token.
TOKEN_PATH = "/token"
UNIVERSE_DOMAIN = "googleapis.com"  # any other value makes google-auth always self-sign JWTs
# Informational members of Google's key files; no service-account flow fetches them.
AUTH_URI = "https://accounts.google.com/o/oauth2/auth"
AUTH_PROVIDER_CERT_URL = "https://www.googleapis.com/oauth2/v1/certs"
CLIENT_CERT_URL = "https://www.googleapis.com/robot/v1/metadata/x509/"

# No "/" (it separates the parts of a key's name) and no whitespace.
_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+")
_SA_DOMAIN = ".iam.gserviceaccount.com"
_APPSPOT_DOMAIN = "@appspot.gserviceaccount.com"
_PROJECT = re.compile(r"[a-z][a-z0-9-]{4,28}[a-z0-9]|[a-z0-9.:-]{1,100}")
_PARSED_CACHE_MAX = 1024


def check_email(email: str) -> str:
    if len(email) > 254 or not _EMAIL.fullmatch(email):
        raise ValueError(f"not a service account email: {email!r}")
    return email


def project_of(email: str) -> str:
    """The project of NAME@PROJECT.iam.gserviceaccount.com (or PROJECT@appspot...)."""
    if email.endswith(_SA_DOMAIN):
        return email.partition("@")[2][:-len(_SA_DOMAIN)]
    if email.endswith(_APPSPOT_DOMAIN):
        return email.partition("@")[0]
    raise ValueError(f"cannot tell the project of {email!r}: give it")


def account_prefix(email: str) -> str:
    return f"serviceAccounts/{email}/keys/"


def key_name(email: str, key_id: str) -> str:
    return account_prefix(email) + key_id


def _now_rfc3339(clock: Callable[[], float]) -> str:
    stamp = dt.datetime.fromtimestamp(clock(), dt.timezone.utc)
    return stamp.strftime("%Y-%m-%dT%H:%M:%SZ")


_FIELDS = {"email": "email", "key_id": "keyId", "public_key_pem": "publicKeyPem",
           "create_time": "createTime", "admin": "admin", "project_id": "projectId",
           "token_uri": "tokenUri"}


@dataclasses.dataclass(frozen=True)
class KeyRecord:
    """A registered key as stored (JSON, Google's camelCase spelling)."""

    email: str
    key_id: str
    public_key_pem: str
    create_time: str  # RFC 3339, UTC
    admin: bool = False  # the emulator's first administrator (roles come later, as data)
    project_id: str = ""
    token_uri: str = ""
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # members of later versions

    @property
    def name(self) -> str:
        return key_name(self.email, self.key_id)

    def to_bytes(self) -> bytes:
        data = dict(self.extra)
        data.update({wire: getattr(self, attr) for attr, wire in _FIELDS.items()})
        return json.dumps(data, sort_keys=True).encode("utf-8")

    @classmethod
    def from_bytes(cls, raw: bytes) -> KeyRecord:
        data = json.loads(raw)
        known = {attr: data.pop(wire) for attr, wire in _FIELDS.items() if wire in data}
        record = cls(**known, extra=data)
        if not isinstance(record.admin, bool):
            raise ValueError("admin must be a boolean")
        return record


@dataclasses.dataclass(frozen=True)
class CreatedKey:
    record: KeyRecord
    # Google's service account key file, private key included: hand it out once, never keep it.
    key_file: dict[str, str]

    def key_file_json(self) -> str:
        return json.dumps(self.key_file, indent=2) + "\n"


def _key_id(public: rsa.RSAPublicKey) -> str:
    der = public.public_bytes(serialization.Encoding.DER,
                              serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha1(der).hexdigest()  # 40 hex digits, like Google's private_key_id


def make_key_file(email: str, project_id: str, key_id: str, private_pem: str,
                  token_uri: str) -> dict[str, str]:
    """The JSON of a service account key file, member for member as Google writes it."""
    return {
        "type": "service_account",
        "project_id": project_id,
        "private_key_id": key_id,
        "private_key": private_pem,
        "client_email": email,
        # 21 digits, stable per account, and the `sub` of the push OIDC tokens for the same
        # account, as Google's client_id is the `sub` of its tokens.
        "client_id": subject_for(email),
        "auth_uri": AUTH_URI,
        "token_uri": token_uri,
        "auth_provider_x509_cert_url": AUTH_PROVIDER_CERT_URL,
        "client_x509_cert_url": CLIENT_CERT_URL + email.replace("@", "%40"),
        "universe_domain": UNIVERSE_DOMAIN,
    }


class ServiceAccountKeys:
    """The registered keys: create, list, delete, and find the key that signed a JWT."""

    def __init__(self, table: ResourceTable, clock: Callable[[], float] = time.time) -> None:
        self._table = table
        self._clock = clock
        # name -> (stored bytes, record, public key): parsing is reused while the bytes match.
        self._parsed: dict[str, tuple[bytes, KeyRecord, rsa.RSAPublicKey]] = {}

    # --- administration ---------------------------------------------------------------------
    async def create(self, email: str, base_url: str, project_id: str | None = None,
                     admin: bool = False) -> CreatedKey:
        """A new key for the account; `base_url` is the emulator's URL as clients reach it
        (`http://HOST:PORT`): the key file's token_uri is `base_url` + TOKEN_PATH."""
        check_email(email)
        project = project_id or project_of(email)
        if not _PROJECT.fullmatch(project):
            raise ValueError(f"invalid project id {project!r}")
        # Off the event loop: making a key takes a CPU-bound tenth of a second.
        private = await asyncio.to_thread(rsa.generate_private_key, 65537, KEY_SIZE)
        public = private.public_key()
        private_pem = private.private_bytes(serialization.Encoding.PEM,
                                            serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption()).decode("ascii")
        public_pem = public.public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)
        token_uri = base_url.rstrip("/") + TOKEN_PATH
        record = KeyRecord(email=email, key_id=_key_id(public),
                           public_key_pem=public_pem.decode("ascii"),
                           create_time=_now_rfc3339(self._clock), admin=admin,
                           project_id=project, token_uri=token_uri)
        if not await self._table.create(KIND, record.name, record.to_bytes()):
            raise RuntimeError("key id collision")  # a fresh 2048-bit key: not in practice
        return CreatedKey(record, make_key_file(email, project, record.key_id, private_pem,
                                                token_uri))

    async def list_keys(self, email: str | None = None) -> list[KeyRecord]:
        """Every registered key (of one account when `email` is given), in name order."""
        prefix = account_prefix(email) if email is not None else ""
        page = await self._table.list_prefixed(KIND, prefix, 0, "")
        return [KeyRecord.from_bytes(item.data) for item in page.items]

    async def get(self, email: str, key_id: str) -> KeyRecord | None:
        found = await self._lookup(key_name(email, key_id))
        return found[0] if found is not None else None

    async def delete(self, email: str | None = None, key_id: str | None = None
                     ) -> list[KeyRecord]:
        """Delete an account's keys, one key by id, or (both given) that key of that account.
        Returns what was deleted; credentials made with it stop working at once."""
        if email is None and key_id is None:
            raise ValueError("give an email, a key id or both")
        doomed = [r for r in await self.list_keys(email) if key_id is None or r.key_id == key_id]
        deleted = []
        for record in doomed:
            self.forget(record.name)
            if await self._table.delete(KIND, record.name):
                deleted.append(record)
        return deleted

    async def set_admin(self, email: str, key_id: str, admin: bool) -> bool:
        """Mark a key as the administrator's (or not); False if the key does not exist."""
        while True:
            raw = await self._table.get(KIND, key_name(email, key_id))
            if raw is None:
                return False
            record = KeyRecord.from_bytes(raw)
            updated = dataclasses.replace(record, admin=admin)
            self.forget(record.name)
            if await self._table.update(KIND, record.name, updated.to_bytes(), expected=raw):
                return True

    # --- the cache --------------------------------------------------------------------------
    def forget(self, name: str) -> None:
        self._parsed.pop(name, None)

    def changed(self, kind: Kind, name: str) -> None:
        """An `Events.on_change` listener: a key changed here or in another process."""
        if kind is KIND:
            self.forget(name)

    # --- verification -----------------------------------------------------------------------
    async def _lookup(self, name: str) -> tuple[KeyRecord, rsa.RSAPublicKey] | None:
        raw = await self._table.get(KIND, name)
        if raw is None:
            self.forget(name)
            return None
        cached = self._parsed.get(name)
        if cached is not None and cached[0] == raw:
            return cached[1], cached[2]
        record = KeyRecord.from_bytes(raw)
        public = serialization.load_pem_public_key(record.public_key_pem.encode("ascii"))
        if not isinstance(public, rsa.RSAPublicKey):
            return None
        if len(self._parsed) >= _PARSED_CACHE_MAX:
            self._parsed.clear()
        self._parsed[name] = (raw, record, public)
        return record, public

    async def _candidates(self, email: str, key_id: str | None
                          ) -> list[tuple[KeyRecord, rsa.RSAPublicKey]]:
        if key_id is not None:
            found = await self._lookup(key_name(email, key_id))
            return [found] if found is not None else []
        # No kid (oauth2client may leave it out of an assertion): any key of the issuer.
        page = await self._table.list_prefixed(KIND, account_prefix(email), 0, "")
        looked = [await self._lookup(item.name) for item in page.items]
        return [found for found in looked if found is not None]

    async def verify(self, jwt: jws.Jwt, now: float, skew_s: int, max_lifetime_s: int
                     ) -> KeyRecord:
        """The registered key that signed a JWT its account issued (iss = sub = email), with
        valid times. Audience and scope are the caller's to check."""
        issuer = jwt.string_claim("iss")
        key_id = jwt.key_id
        if not issuer or not _EMAIL.fullmatch(issuer) or len(issuer) > 254:
            raise jws.CredentialError("Invalid JWT: the issuer must be a service account email.")
        subject = jwt.string_claim("sub")
        if subject is not None and subject != issuer:
            # Domain-wide delegation (acting as another user) has no meaning here.
            raise jws.CredentialError("Invalid JWT: the subject must be the issuer.")
        for record, public in await self._candidates(issuer, key_id):
            if jws.signature_valid(jwt, public):
                jws.check_times(jwt, now, skew_s, max_lifetime_s)
                return record
        # One answer for an unknown account, an unknown or deleted key, another account's
        # key and a bad signature: a caller learns nothing about which accounts exist.
        raise jws.CredentialError(jws.SIGNATURE_ERROR)
