"""auth.keys: key files as Google writes them, public halves in the store, list and delete."""

from __future__ import annotations

import asyncio
import json
import re

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.auth import crypt
from google.oauth2 import service_account

from pubsub_emulator.auth import Auth, KeyRecord, project_of
from pubsub_emulator.store import ANNOUNCED_KINDS, Kind
from pubsub_emulator.store.sqlite import SqliteStore

BASE = "http://localhost:8085"
EMAIL = "sender@my-project.iam.gserviceaccount.com"


@pytest.fixture
def auth() -> Auth:
    return Auth(SqliteStore(None).resources)


def test_key_file_has_googles_members(auth: Auth) -> None:
    created = asyncio.run(auth.keys.create(EMAIL, BASE + "/"))
    key_file = created.key_file
    assert set(key_file) == {"type", "project_id", "private_key_id", "private_key",
                             "client_email", "client_id", "auth_uri", "token_uri",
                             "auth_provider_x509_cert_url", "client_x509_cert_url",
                             "universe_domain"}
    assert key_file["type"] == "service_account"
    assert key_file["project_id"] == "my-project"
    assert key_file["client_email"] == EMAIL
    assert re.fullmatch(r"[0-9a-f]{40}", key_file["private_key_id"])
    assert re.fullmatch(r"[0-9]{21}", key_file["client_id"])
    assert key_file["token_uri"] == "http://localhost:8085/token"
    assert key_file["universe_domain"] == "googleapis.com"
    assert key_file["private_key"].startswith("-----BEGIN PRIVATE KEY-----\n")  # PKCS#8
    private = serialization.load_pem_private_key(key_file["private_key"].encode(), None)
    assert isinstance(private, rsa.RSAPrivateKey) and private.key_size == 2048
    assert json.loads(created.key_file_json()) == key_file
    # google-auth reads it as a key file, with the key id as the JWT kid.
    creds = service_account.Credentials.from_service_account_info(key_file)
    assert creds.service_account_email == EMAIL
    assert crypt.RSASigner.from_service_account_info(key_file).key_id == \
        created.record.key_id == key_file["private_key_id"]


def test_the_store_keeps_only_the_public_key() -> None:
    store = SqliteStore(None)
    auth = Auth(store.resources)
    created = asyncio.run(auth.keys.create(EMAIL, BASE, admin=True))
    name = f"serviceAccounts/{EMAIL}/keys/{created.record.key_id}"
    raw = asyncio.run(store.resources.get(Kind.SERVICE_ACCOUNT_KEY, name))
    assert raw is not None and b"PRIVATE" not in raw
    stored = json.loads(raw)
    assert stored["email"] == EMAIL and stored["keyId"] == created.record.key_id
    assert stored["admin"] is True and stored["createTime"].endswith("Z")
    assert stored["publicKeyPem"].startswith("-----BEGIN PUBLIC KEY-----")
    assert Kind.SERVICE_ACCOUNT_KEY in ANNOUNCED_KINDS  # other processes hear of changes


def test_record_keeps_members_of_later_versions() -> None:
    record = KeyRecord("a@p.iam.gserviceaccount.com", "k1", "PEM", "2024-01-01T00:00:00Z")
    later = json.loads(record.to_bytes())
    later["roles"] = ["roles/pubsub.admin"]
    read = KeyRecord.from_bytes(json.dumps(later).encode())
    assert read.extra == {"roles": ["roles/pubsub.admin"]}
    assert json.loads(read.to_bytes()) == later


def test_project_from_email_or_given(auth: Auth) -> None:
    assert project_of("x@proj-1.iam.gserviceaccount.com") == "proj-1"
    assert project_of("proj-2@appspot.gserviceaccount.com") == "proj-2"
    with pytest.raises(ValueError):
        project_of("someone@example.com")
    created = asyncio.run(auth.keys.create("someone@example.com", BASE, project_id="given-1"))
    assert created.key_file["project_id"] == created.record.project_id == "given-1"
    with pytest.raises(ValueError):
        asyncio.run(auth.keys.create("someone@example.com", BASE))


@pytest.mark.parametrize("email", ["", "no-at-sign", "a/b@p.iam.gserviceaccount.com",
                                   "a b@p.iam.gserviceaccount.com", "a@nodot"])
def test_invalid_emails_are_refused(auth: Auth, email: str) -> None:
    with pytest.raises(ValueError):
        asyncio.run(auth.keys.create(email, BASE, project_id="proj-1"))


def test_list_and_delete(auth: Auth) -> None:
    other = "other@my-project.iam.gserviceaccount.com"

    async def scenario() -> None:
        first = await auth.keys.create(EMAIL, BASE, admin=True)
        second = await auth.keys.create(EMAIL, BASE)
        third = await auth.keys.create(other, BASE)
        assert {r.key_id for r in await auth.keys.list_keys(EMAIL)} == {
            first.record.key_id, second.record.key_id}
        assert len(await auth.keys.list_keys()) == 3
        assert (await auth.keys.get(EMAIL, first.record.key_id)) == first.record
        assert await auth.keys.get(other, first.record.key_id) is None  # not its key
        # By key id alone.
        deleted = await auth.keys.delete(key_id=second.record.key_id)
        assert [r.key_id for r in deleted] == [second.record.key_id]
        # A key id with the wrong account deletes nothing.
        assert await auth.keys.delete(email=other, key_id=first.record.key_id) == []
        # By email: all of the account's keys.
        await auth.keys.create(EMAIL, BASE)
        assert len(await auth.keys.delete(email=EMAIL)) == 2
        assert [r.key_id for r in await auth.keys.list_keys()] == [third.record.key_id]
        assert await auth.keys.delete(email=EMAIL) == []
        with pytest.raises(ValueError):
            await auth.keys.delete()

    asyncio.run(scenario())


def test_set_admin(auth: Auth) -> None:
    async def scenario() -> None:
        created = await auth.keys.create(EMAIL, BASE)
        assert await auth.keys.set_admin(EMAIL, created.record.key_id, True)
        record = await auth.keys.get(EMAIL, created.record.key_id)
        assert record is not None and record.admin
        assert not await auth.keys.set_admin(EMAIL, "0" * 40, True)

    asyncio.run(scenario())
