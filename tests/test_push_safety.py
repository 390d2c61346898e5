"""Push when the emulator is reachable from other machines: where push may go (--push-allow,
the default under --auth), secrets in endpoints, and who may name an OIDC service account.

The push cases run a PushDispatcher in-process over an in-memory store, against a recording
endpoint on 127.0.0.1; the OIDC rules drive the service core directly, setting the caller as
the adapters do under --auth.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp.abc import AbstractResolver, ResolveResult
from google.pubsub_v1 import types as t

from pubsub_emulator.auth.keys import ServiceAccountKeys
from pubsub_emulator.core import caller
from pubsub_emulator.core.errors import ApiError, Status
from pubsub_emulator.core.push_config import has_registered_key, redact_text, redact_url
from pubsub_emulator.core.service import PubSubService
from pubsub_emulator.push import (
    Destinations,
    PushDispatcher,
    PushRefused,
    SigningRefused,
    TokenIssuer,
    parse_push_allow,
)
from pubsub_emulator.push.destinations import AllowedResolver
from pubsub_emulator.store.sqlite import SqliteStore

T = "projects/p/topics/topic"
S = "projects/p/subscriptions/sub"
SA = "pusher@p.iam.gserviceaccount.com"
OTHER = "someone@p.iam.gserviceaccount.com"
NOT_AUTHORIZED = "User not authorized to perform this action."


def req(type_name: str, **fields: Any) -> Any:
    return getattr(t, type_name).pb()(**fields)


# --- redaction ------------------------------------------------------------------------------

def test_redact_url_keeps_names_and_hides_values():
    assert redact_url("https://h:8/push?token=SECRET&x=1") == "https://h:8/push?token=…&x=…"
    assert redact_url("http://u:pw@h/p?SECRET#frag") == "http://u:…@h/p?…#…"
    assert redact_url("http://h/p?empty=") == "http://h/p?empty="
    assert redact_url("http://h/p") == "http://h/p"
    assert redact_url("http://[::1/p?token=SECRET") == "http://[::1/p?…"


def test_redact_text_hides_query_values_in_messages():
    text = "InvalidURL: http://h/p?token=SECRET&a=b (from 'http://u:pw@h/?k=v')"
    out = redact_text(text)
    assert "SECRET" not in out and "pw" not in out and "=v" not in out
    assert "token=…&a=…" in out and "u:…@h" in out


# --- destinations ---------------------------------------------------------------------------

def test_defaults_and_entries():
    anywhere = Destinations.from_flags(None, auth_required=False)
    assert anywhere.unrestricted and anywhere.resolver() is None
    under_auth = Destinations.from_flags(None, auth_required=True)
    for allowed in ("127.0.0.1", "::1", "10.1.2.3", "172.20.0.1", "192.168.1.1", "fd00::1",
                    "::ffff:10.0.0.1"):
        assert under_auth.allows_address(allowed), allowed
    for refused in ("169.254.169.254", "fe80::1", "8.8.8.8", "2001:db8::1", "0.0.0.0",
                    "::ffff:8.8.8.8"):
        assert not under_auth.allows_address(refused), refused
    assert parse_push_allow(" 10.0.0.0/8, Push.Example.com.,::1 ,") == [
        "10.0.0.0/8", "Push.Example.com.", "::1"]
    named = Destinations.from_flags(["Push.Example.com."], auth_required=False)
    assert named.allows_host("push.example.COM") and not named.allows_host("example.com")
    for bad in ("127.1", "not a host", "10.0.0.0/33", "*.example.com"):
        with pytest.raises(ValueError):
            parse_push_allow(bad)


def test_hosts_written_as_addresses_are_judged_before_connecting():
    only_ten = Destinations.from_flags(["10.0.0.0/8"], auth_required=True)
    assert "outside" in only_ten.refusal("http://127.0.0.1:9/p")
    assert only_ten.refusal("http://10.9.9.9:9/p") == ""
    assert "outside" in only_ten.refusal("http://[::ffff:127.0.0.1]:9/p")
    assert only_ten.refusal("http://localhost:9/p") == ""  # a name: the resolver judges it


class FakeResolver(AbstractResolver):
    """Answers each lookup with the next of `answers` (a rebinding name)."""

    def __init__(self, *answers: list[str]) -> None:
        self.answers = list(answers)

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        return [ResolveResult(hostname=host, host=a, port=port, family=socket.AF_INET,
                              proto=0, flags=0) for a in self.answers.pop(0)]

    async def close(self) -> None:
        pass


def test_resolver_returns_only_allowed_addresses_at_each_lookup():
    only_ten = Destinations.from_flags(["10.0.0.0/8", "trusted.test"], auth_required=True)

    async def scenario() -> None:
        resolver = AllowedResolver(only_ten, FakeResolver(
            ["10.0.0.7", "8.8.8.8"], ["127.0.0.1"], ["8.8.8.8"]))
        assert [r["host"] for r in await resolver.resolve("rebind.test", 80)] == ["10.0.0.7"]
        with pytest.raises(PushRefused, match=r"rebind.test \(127.0.0.1\) is outside"):
            await resolver.resolve("rebind.test", 80)  # the second answer: not connected to
        assert [r["host"] for r in await resolver.resolve("Trusted.Test.", 80)] == ["8.8.8.8"]

    asyncio.run(scenario())


# --- push in-process ------------------------------------------------------------------------

@dataclass
class Env:
    service: PubSubService
    store: SqliteStore
    dispatcher: PushDispatcher

    def stats(self) -> dict[str, Any]:
        return self.dispatcher.stats()["subscriptions"].get(S, {})

    async def until(self, done: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
        for _ in range(200):
            stats = self.stats()
            if stats and done(stats):
                return stats
            await asyncio.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}: {self.stats()}")

    async def push_sub(self, endpoint: str, oidc_email: str = "") -> None:
        config: dict[str, Any] = {"push_endpoint": endpoint}
        if oidc_email:
            config["oidc_token"] = {"service_account_email": oidc_email}
        await self.service.topics.create_topic(req("Topic", name=T))
        await self.service.subscriptions.create_subscription(
            req("Subscription", name=S, topic=T, push_config=config))
        await self.service.publishing.publish(req("PublishRequest", topic=T, messages=[
            req("PubsubMessage", data=b"hello")]))


@asynccontextmanager
async def pushing(allow: list[str] | None, auth_required: bool) -> AsyncIterator[Env]:
    store = SqliteStore(None)
    service = PubSubService(store)
    dispatcher = PushDispatcher(service, TokenIssuer(store.resources), allow=allow,
                                auth_required=auth_required)
    await dispatcher.start()
    try:
        yield Env(service, store, dispatcher)
    finally:
        await dispatcher.stop()
        await store.close()


def delivered(stats: dict[str, Any]) -> bool:
    return stats["delivered"] >= 1


def refused_thrice(stats: dict[str, Any]) -> bool:
    return stats["attempts"] >= 3


def run_push(allow: list[str] | None, auth_required: bool, endpoint: str,
             done: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    async def scenario() -> dict[str, Any]:
        async with pushing(allow, auth_required) as env:
            await env.push_sub(endpoint)
            return await env.until(done, "the push outcome")

    return asyncio.run(scenario())


@pytest.mark.parametrize("allow, auth_required, host", [
    (None, True, "127.0.0.1"),  # the default under --auth allows loopback
    (None, False, "127.0.0.1"),  # no --auth: anywhere, as before
    (["127.0.0.1"], False, "127.0.0.1"),  # an allow list applies without --auth too
    (["10.0.0.0/8", "127.0.0.0/8"], True, "127.0.0.1"),
    (["LocalHost"], True, "localhost"),  # a host entry: the name, case-insensitively
])
def test_allowed_destinations_are_pushed_to(receiver, allow, auth_required, host):
    stats = run_push(allow, auth_required, f"http://{host}:{receiver.port}/push", delivered)
    assert len(receiver.snapshot()) >= 1 and stats["last_error"] == ""


@pytest.mark.parametrize("allow, host, why", [
    (["10.0.0.0/8"], "127.0.0.1", "127.0.0.1 is outside"),  # judged before connecting
    (["localhost"], "127.0.0.1", "127.0.0.1 is outside"),  # a name entry is no address
    (["10.0.0.0/8"], "localhost", "localhost ("),  # judged by the resolver, at the connection
])
def test_other_destinations_are_never_posted_to(receiver, caplog, allow, host, why):
    caplog.set_level(logging.INFO, logger="pubsub_emulator")
    stats = run_push(allow, True, f"http://{host}:{receiver.port}/push", refused_thrice)
    assert receiver.snapshot() == []
    assert stats["delivered"] == 0 and stats["nacked"] >= 3
    assert why in stats["last_error"] and "--push-allow" in stats["last_error"]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and S in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]  # once, not per message


def test_endpoint_secrets_stay_out_of_logs_and_debug_push(receiver, caplog):
    caplog.set_level(logging.DEBUG, logger="pubsub_emulator")
    secret = "S3CRET-value"

    async def scenario() -> dict[str, Any]:
        async with pushing(["10.0.0.0/8"], True) as env:
            await env.push_sub(f"http://127.0.0.1:{receiver.port}/push?token={secret}&a=1")
            return await env.until(refused_thrice, "refusals")

    stats = asyncio.run(scenario())
    assert stats["endpoint"] == f"http://127.0.0.1:{receiver.port}/push?token=…&a=…"
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "pushing to" in logged and "token=…" in logged and secret not in logged


def test_invalid_endpoint_error_hides_the_query():
    async def scenario() -> None:
        store = SqliteStore(None)
        service = PubSubService(store)
        await service.topics.create_topic(req("Topic", name=T))
        with pytest.raises(ApiError) as err:
            await service.subscriptions.create_subscription(req(
                "Subscription", name=S, topic=T,
                push_config={"push_endpoint": "ftp://h/p?token=S3CRET"}))
        assert err.value.message == "Invalid push_endpoint given: ftp://h/p?token=…"
        await store.close()

    asyncio.run(scenario())


def test_oidc_push_under_auth_needs_a_registered_key(receiver):
    """A subscription from before --auth names an account without a key: no token is signed
    and nothing is POSTed, until a key is registered."""

    async def scenario() -> None:
        async with pushing(None, True) as env:
            await env.push_sub(receiver.url(), oidc_email=SA)  # no caller: not checked
            stats = await env.until(refused_thrice, "refusals")
            assert receiver.snapshot() == []
            assert "no key registered" in stats["last_error"] and SA in stats["last_error"]
            await ServiceAccountKeys(env.store.resources).create(SA, "http://127.0.0.1:1")
            await env.until(delivered, "a delivery once the key exists")
        got = receiver.snapshot()[0]
        assert (got.header("Authorization") or "").startswith("Bearer ")

    asyncio.run(scenario())


def test_token_issuer_refuses_unregistered_accounts_only_when_asked():
    async def scenario() -> None:
        store = SqliteStore(None)
        issuer = TokenIssuer(store.resources)
        assert await issuer.token(SA, "aud")  # without --auth: any account, as before
        with pytest.raises(SigningRefused, match="no key registered"):
            await issuer.token(SA, "aud", require_key=True)  # cached token or not
        await ServiceAccountKeys(store.resources).create(SA, "http://127.0.0.1:1")
        assert await issuer.token(SA, "aud", require_key=True)
        await store.close()

    asyncio.run(scenario())


# --- OIDC service accounts in push configs (core) -------------------------------------------

@dataclass
class Core:
    service: PubSubService
    keys: ServiceAccountKeys

    async def as_caller(self, who: caller.Caller | None, call: Awaitable[Any]) -> Any:
        token = caller.current.set(who)
        try:
            return await call
        finally:
            caller.current.reset(token)

    async def status_of(self, who: caller.Caller | None, call: Awaitable[Any]) -> Status | None:
        try:
            await self.as_caller(who, call)
        except ApiError as exc:
            # Each refusal is the OIDC rule's, not another check's (a bad name, ...).
            if exc.status is Status.PERMISSION_DENIED:
                assert exc.message == NOT_AUTHORIZED
            else:
                assert "has no key registered with this emulator" in exc.message, exc.message
            return exc.status
        return None


def oidc_config(email: str, endpoint: str = "https://h/push") -> dict[str, Any]:
    return {"push_endpoint": endpoint, "oidc_token": {"service_account_email": email}}


def core_run(scenario: Callable[[Core], Awaitable[None]], **service_args: Any) -> None:
    async def main() -> None:
        store = SqliteStore(None)
        core = Core(PubSubService(store, **service_args), ServiceAccountKeys(store.resources))
        await core.service.topics.create_topic(req("Topic", name=T))
        await core.keys.create(SA, "http://127.0.0.1:1")
        try:
            await scenario(core)
        finally:
            await store.close()

    asyncio.run(main())


def create(core: Core, name: str, push_config: dict[str, Any]) -> Awaitable[Any]:
    return core.service.subscriptions.create_subscription(
        req("Subscription", name=f"projects/p/subscriptions/{name}", topic=T,
            push_config=push_config))


def test_keys_are_found_where_auth_registers_them():
    async def scenario(core: Core) -> None:
        table = core.service.store.resources
        assert await has_registered_key(table, SA)
        assert not await has_registered_key(table, OTHER)
        assert not await has_registered_key(table, "pusher@p.iam.gserviceaccount")  # a prefix

    core_run(scenario)


def test_create_needs_the_account_itself_or_an_admin_and_a_key():
    admin = caller.Caller("admin@p.iam.gserviceaccount.com", admin=True)

    async def scenario(core: Core) -> None:
        assert await core.status_of(None, create(core, "no-auth", oidc_config(OTHER))) is None
        owner = caller.Caller(SA)
        assert await core.status_of(owner, create(core, "own", oidc_config(SA))) is None
        assert await core.status_of(admin, create(core, "admin", oidc_config(SA))) is None
        stranger = caller.Caller(OTHER)
        denied = await core.status_of(stranger, create(core, "sub-x", oidc_config(SA)))
        assert denied is Status.PERMISSION_DENIED
        # The permission is checked first: a non-admin learns nothing about other accounts.
        unknown = "ghost@p.iam.gserviceaccount.com"
        denied = await core.status_of(stranger, create(core, "sub-y", oidc_config(unknown)))
        assert denied is Status.PERMISSION_DENIED
        assert await core.status_of(admin, create(core, "sub-z", oidc_config(unknown))) is \
            Status.INVALID_ARGUMENT
        # An account whose keys were deleted cannot name itself any more.
        await core.keys.delete(SA)
        assert await core.status_of(owner, create(core, "sub-w", oidc_config(SA))) is \
            Status.INVALID_ARGUMENT
        # Push without OIDC, and pull, are anyone's.
        assert await core.status_of(stranger, create(
            core, "plain", {"push_endpoint": "https://h/push"})) is None

    core_run(scenario)


def test_update_and_modify_push_config_check_the_resulting_account():
    owner = caller.Caller(SA)
    stranger = caller.Caller(OTHER)
    name = "projects/p/subscriptions/signed"

    def update(paths: list[str], push_config: dict[str, Any], labels: Any = None) -> Any:
        return req("UpdateSubscriptionRequest", subscription=req(
            "Subscription", name=name, push_config=push_config, labels=labels or {}),
            update_mask={"paths": paths})

    async def scenario(core: Core) -> None:
        subs = core.service.subscriptions
        await core.as_caller(owner, create(core, "signed", oidc_config(SA)))
        # Redirecting the account's tokens elsewhere is acting as it, even by the endpoint only.
        redirect = update(["push_config.push_endpoint"], {"push_endpoint": "https://evil/"})
        assert await core.status_of(stranger, subs.update_subscription(redirect)) is \
            Status.PERMISSION_DENIED
        assert await core.status_of(owner, subs.update_subscription(redirect)) is None
        # A change that leaves the push config alone is not about the account.
        relabel = update(["labels"], {}, labels={"a": "b"})
        assert await core.status_of(stranger, subs.update_subscription(relabel)) is None
        modify = req("ModifyPushConfigRequest", subscription=name, push_config=oidc_config(SA))
        assert await core.status_of(stranger, subs.modify_push_config(modify)) is \
            Status.PERMISSION_DENIED
        assert await core.status_of(owner, subs.modify_push_config(modify)) is None
        stored = await subs.get_subscription(req("GetSubscriptionRequest", subscription=name))
        assert stored.push_config.oidc_token.service_account_email == SA
        # Dropping OIDC is anyone's: no account is named any more.
        plain = req("ModifyPushConfigRequest", subscription=name,
                    push_config={"push_endpoint": "https://h/?token=kept"})
        assert await core.status_of(stranger, subs.modify_push_config(plain)) is None
        stored = await subs.get_subscription(req("GetSubscriptionRequest", subscription=name))
        assert stored.push_config.push_endpoint == "https://h/?token=kept"  # as stored

    core_run(scenario)


def test_the_act_as_decision_is_replaceable():
    """The IAM issue's seam: PubSubService(act_as=...) decides who may act as an account."""
    seen: list[tuple[str, str]] = []

    async def everyone_but_eve(who: caller.Caller, email: str) -> bool:
        seen.append((who.email, email))
        return who.email != "eve@p.iam.gserviceaccount.com"

    async def scenario(core: Core) -> None:
        assert await core.status_of(caller.Caller(OTHER), create(core, "sub-a", oidc_config(SA))) \
            is None
        eve = caller.Caller("eve@p.iam.gserviceaccount.com", admin=True)
        assert await core.status_of(eve, create(core, "sub-b", oidc_config(SA))) is \
            Status.PERMISSION_DENIED

    core_run(scenario, act_as=everyone_but_eve)
    assert seen == [(OTHER, SA), ("eve@p.iam.gserviceaccount.com", SA)]
