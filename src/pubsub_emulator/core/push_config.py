"""Rules of push configs beyond their shape: secrets in endpoints, and OIDC service accounts.

Secrets: a push endpoint's query string often carries a verification token
(`https://host/push?token=SECRET`, Google's own advice for unauthenticated push), and its
userinfo may carry a password. Logs, error messages that adapters log, and `/debug/push` show
endpoints through `redact_url` / `redact_text`: parameter names are kept, values become `…`.
GetSubscription still returns the endpoint as stored (that is Google's API).

OIDC service accounts: under `--auth` (a caller is set in `caller.current`), a push config may
name `oidcToken.serviceAccountEmail` only if

1. the caller may act as that account: `ActAs(caller, email)` (else PERMISSION_DENIED,
   Google's wording). `PubSubService` passes IAM's (iam/enforce.py `Authorizer.act_as`: the
   account itself, an administrator, or a holder of `iam.serviceAccounts.actAs` on the
   account's project); `account_holder_or_admin`, the rule before IAM, stays the default here;
2. the account has a key registered with the emulator (else INVALID_ARGUMENT): the emulator
   signs push tokens only for accounts it knows, as Google signs only for accounts that exist.

The permission is checked before the key, so a caller who may not act as an account learns
nothing about whether it exists. Without `--auth` (no caller) any account is accepted, as
before.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from ..store import Kind, ResourceTable
from .caller import Caller, current
from .errors import ApiError, Status, invalid_argument

HIDDEN = "…"
NOT_AUTHORIZED = "User not authorized to perform this action."

# A query parameter's value, wherever it appears in free text (exception messages name URLs).
_QUERY_VALUE = re.compile(r"([?&;][^=&;#\s'\"<>?]*=)[^&;#\s'\"<>]*")
# The password of a URL's userinfo (scheme://user:password@host).
_PASSWORD = re.compile(r"(//[^/@\s:'\"<>]*:)[^/@\s'\"<>]*@")


def redact_text(text: str) -> str:
    """Text with every URL query value and userinfo password replaced by `…`."""
    return _PASSWORD.sub(rf"\g<1>{HIDDEN}@", _QUERY_VALUE.sub(rf"\g<1>{HIDDEN}", text))


def redact_url(url: str) -> str:
    """An endpoint as logs may show it: query values (and bare parameters, which may be a
    token themselves), the userinfo password and the fragment hidden; names kept."""
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. an unbalanced IPv6 bracket: keep only what precedes the query
        return url.split("?", 1)[0].split("#", 1)[0] + (f"?{HIDDEN}" if "?" in url else "")
    query = "&".join(_hide_value(p) for p in parts.query.split("&")) if parts.query else ""
    netloc = parts.netloc
    userinfo, at, host = netloc.rpartition("@")
    if at and ":" in userinfo:
        netloc = f"{userinfo.split(':', 1)[0]}:{HIDDEN}@{host}"
    fragment = HIDDEN if parts.fragment else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, fragment))


def _hide_value(parameter: str) -> str:
    name, equals, value = parameter.partition("=")
    if not equals:
        return HIDDEN if name else ""
    return f"{name}={HIDDEN}" if value else f"{name}="


# --- OIDC service accounts ------------------------------------------------------------------

ActAs = Callable[[Caller, str], Awaitable[bool]]
"""May `caller` have push tokens signed as the service account `email`? (the IAM seam)"""


async def account_holder_or_admin(caller: Caller, email: str) -> bool:
    """The rule until IAM: the account itself, or the emulator's administrator."""
    return caller.admin or caller.email == email


def key_prefix(email: str) -> str:
    """Names of an account's keys in the resource table. auth/keys.py writes them (its
    `account_prefix`); the core reads the table itself since the core sits below auth."""
    return f"serviceAccounts/{email}/keys/"


async def has_registered_key(table: ResourceTable, email: str) -> bool:
    """Whether the account has a key registered with the emulator (read now, not cached:
    deleting an account's last key withdraws it at once)."""
    if not email or "/" in email or any(ch.isspace() for ch in email):
        return False  # not an email a key could be registered for (and no prefix tricks)
    page = await table.list_prefixed(Kind.SERVICE_ACCOUNT_KEY, key_prefix(email), 1, "")
    return bool(page.items)


class PushAccounts:
    """Checks the OIDC service account a push config names against the caller (see above)."""

    def __init__(self, table: ResourceTable, act_as: ActAs = account_holder_or_admin) -> None:
        self._table = table
        self._act_as = act_as

    async def check(self, push_config: Any) -> None:
        """Raise PERMISSION_DENIED or INVALID_ARGUMENT if the calling identity may not have
        push requests signed as the account `push_config` names; nothing without --auth."""
        caller = current.get()
        if caller is None or not push_config.HasField("oidc_token"):
            return
        email = push_config.oidc_token.service_account_email
        if not email:
            raise invalid_argument(
                "Invalid push_config.oidc_token: service_account_email must be set.")
        if not await self._act_as(caller, email):
            raise ApiError(Status.PERMISSION_DENIED, NOT_AUTHORIZED)
        if not await has_registered_key(self._table, email):
            raise invalid_argument(
                f"Invalid push_config.oidc_token.service_account_email: {email} has no key "
                "registered with this emulator; under --auth push requests are signed only "
                "for service accounts with a registered key.")
