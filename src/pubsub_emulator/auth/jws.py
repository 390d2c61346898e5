"""Strict RS256 JSON Web Tokens: parsing, signature checks, time claims, signing.

google-auth's `jwt.decode` accepts any algorithm it has a verifier for and puts the token in
its error messages; a server checking credentials wants neither. This module accepts RS256
only (so no `none` and no HS256 "key confusion" with a public key used as an HMAC secret),
rejects what a lenient parser would let through (non-integer or non-finite times, duplicate
JSON members, padding or foreign characters in segments, oversized tokens) and describes
failures without echoing the token or a key, so a reason may be logged.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

ALGORITHM = "RS256"
# Far above any real credential (about 1 KB): a bound before any decoding work.
MAX_TOKEN_CHARS = 16 * 1024
_SEGMENT = re.compile(r"[A-Za-z0-9_-]+")


class CredentialError(Exception):
    """A credential that does not hold. `reason` is Google's wording where there is one; it
    never contains the token or a key. `expired` tells a stale credential from a bad one."""

    def __init__(self, reason: str, expired: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.expired = expired


SIGNATURE_ERROR = "Invalid JWT Signature."
TIMEFRAME_ERROR = ("Invalid JWT: Token must be a short-lived token (60 minutes) and in a "
                   "reasonable timeframe. Check your iat and exp values in the JWT claim.")


@dataclass(frozen=True)
class Jwt:
    """A parsed, not yet verified, token."""

    header: Mapping[str, Any]
    claims: Mapping[str, Any]
    signed: bytes  # header.payload as sent: what the signature covers
    signature: bytes

    @property
    def key_id(self) -> str | None:
        kid = self.header.get("kid")
        if kid is None:
            return None
        if not isinstance(kid, str) or not kid:
            raise CredentialError("Invalid JWT: malformed key id.")
        return kid

    def string_claim(self, name: str) -> str | None:
        """A claim that must be a string when present."""
        value = self.claims.get(name)
        if value is not None and not isinstance(value, str):
            raise CredentialError(f"Invalid JWT: claim {name} must be a string.")
        return value

    def int_claim(self, name: str) -> int:
        """A required integer claim (seconds since the epoch): no floats, no booleans."""
        value = self.claims.get(name)
        if type(value) is not int:
            raise CredentialError(f"Invalid JWT: claim {name} must be an integer.")
        return value


def _reject_constant(name: str) -> Any:
    # json would otherwise turn NaN / Infinity into floats.
    raise ValueError(f"non-finite number {name}")


def _unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Duplicate members are read differently by different parsers: refuse them.
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError("duplicate member")
        result[key] = value
    return result


def _decode_segment(segment: str) -> bytes:
    if not _SEGMENT.fullmatch(segment):
        raise CredentialError("Invalid JWT: malformed segment.")
    try:
        return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError) as exc:
        raise CredentialError("Invalid JWT: malformed segment.") from exc


def _json_object(segment: str) -> dict[str, Any]:
    try:
        value = json.loads(_decode_segment(segment), parse_constant=_reject_constant,
                           object_pairs_hook=_unique_members)
    except (ValueError, RecursionError) as exc:  # bad JSON, UTF-8, huge integers
        raise CredentialError("Invalid JWT: malformed JSON.") from exc
    if not isinstance(value, dict):
        raise CredentialError("Invalid JWT: header and claims must be JSON objects.")
    return value


def parse(token: str) -> Jwt:
    """Split and decode a compact JWS; only RS256 passes."""
    if not token or len(token) > MAX_TOKEN_CHARS or not token.isascii():
        raise CredentialError("Invalid JWT: malformed token.")
    parts = token.split(".")
    if len(parts) != 3:
        raise CredentialError("Invalid JWT: malformed token.")
    header = _json_object(parts[0])
    if header.get("alg") != ALGORITHM:
        raise CredentialError("Invalid JWT: the algorithm must be RS256.")
    if "crit" in header:  # extensions we would have to understand (RFC 7515 4.1.11)
        raise CredentialError("Invalid JWT: unsupported critical header.")
    claims = _json_object(parts[1])
    signature = _decode_segment(parts[2])
    return Jwt(header, claims, f"{parts[0]}.{parts[1]}".encode("ascii"), signature)


def signature_valid(jwt: Jwt, key: rsa.RSAPublicKey) -> bool:
    try:
        key.verify(jwt.signature, jwt.signed, padding.PKCS1v15(), hashes.SHA256())
    except (InvalidSignature, ValueError):
        return False
    return True


def check_times(jwt: Jwt, now: float, skew_s: int, max_lifetime_s: int) -> None:
    """iat and exp are integers, exp after iat by at most the lifetime, and now (give or take
    the clock skew) lies between them; nbf, when present, has passed."""
    iat, exp = jwt.int_claim("iat"), jwt.int_claim("exp")
    if not 0 < exp - iat <= max_lifetime_s:
        raise CredentialError(TIMEFRAME_ERROR)
    if iat > now + skew_s:
        raise CredentialError(TIMEFRAME_ERROR)  # issued in the future: a clock is wrong
    if "nbf" in jwt.claims and jwt.int_claim("nbf") > now + skew_s:
        raise CredentialError(TIMEFRAME_ERROR)
    if exp + skew_s < now:
        raise CredentialError("Invalid JWT: Token has expired.", expired=True)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def sign(key: rsa.RSAPrivateKey, header: Mapping[str, Any], claims: Mapping[str, Any]) -> str:
    """A compact RS256 JWS of the claims (header's alg is set here)."""
    head = _b64(json.dumps({**header, "alg": ALGORITHM}, separators=(",", ":")).encode())
    body = _b64(json.dumps(dict(claims), separators=(",", ":")).encode())
    signed = f"{head}.{body}"
    signature = key.sign(signed.encode("ascii"), padding.PKCS1v15(), hashes.SHA256())
    return f"{signed}.{_b64(signature)}"
