"""RSA signing keys the emulator keeps in its store (OIDC push tokens, access tokens).

Kept in the store, not in a file, so that every process sharing a store signs with the same key
and tokens stay valid across restarts (in memory with --in-memory).
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from .store import Kind, ResourceTable


@dataclass(frozen=True)
class StoredKey:
    private: rsa.RSAPrivateKey
    pem: bytes  # PKCS#8, unencrypted
    kid: str  # SHA-1 of the public key: 40 hex digits, like Google's key ids


async def stored_rsa_key(table: ResourceTable, name: str) -> StoredKey:
    """The RSA key stored under `name`, made on first use.

    Making a 2048-bit key takes a moment of CPU, so it is made off the event loop. Processes
    starting together on one store each may make one: the first create wins and the others
    read its key, so they all sign alike.
    """
    pem = await table.get(Kind.SIGNING_KEY, name)
    if pem is None:
        fresh = await asyncio.to_thread(rsa.generate_private_key, 65537, 2048)
        made = fresh.private_bytes(serialization.Encoding.PEM,
                                   serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption())
        if not await table.create(Kind.SIGNING_KEY, name, made):
            made = await table.get(Kind.SIGNING_KEY, name) or made
        pem = made
    private = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(private, rsa.RSAPrivateKey):
        raise TypeError(f"the signing key {name!r} in the store is not an RSA key")
    der = private.public_key().public_bytes(serialization.Encoding.DER,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
    return StoredKey(private, pem, hashlib.sha1(der).hexdigest())
