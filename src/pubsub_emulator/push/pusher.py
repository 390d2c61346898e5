"""Native push delivery: subscriptions with `pushConfig.pushEndpoint` get their messages POSTed.

One task per push subscription leases messages through the delivery engine (so dead-letter
forwarding, delivery attempts and the retry policy apply as for pull) and POSTs each one to the
endpoint with its own connection pool and its own limits, so a slow or dead endpoint never holds
up another subscription.

- Body: Google's wrapped JSON envelope (see docs/push-worker.md), or with
  `pushConfig.noWrapper` the raw data, plus with `noWrapper.writeMetadata` the metadata in
  `x-goog-pubsub-*` headers and the attributes in headers of their own names.
- `pushConfig.attributes["x-goog-version"]`: "v1" and "v1beta2" select the v1 body above, as
  does no value; "v1beta1" (Google's long-gone first format) is also sent the v1 body.
- `pushConfig.oidcToken`: `Authorization: Bearer <JWT>` signed by the emulator's key (_oidc).
- Ack: HTTP 102, 200, 201, 202, 204. Any other status, a connection error or no answer within the
  subscription's ack deadline is a nack.
- Push backoff (push_contract.backoff): a nack pauses the subscription for 100 ms, doubling on
  repeated nacks up to 60 s and easing off one step on each success; the retry policy's
  per-message delay applies on top (the larger wins, since both must have passed before the
  message goes out again).
- Slow start: at most `window` POSTs are outstanding; it starts at 1, grows by one per ack up
  to `max_window` (`--push-max-outstanding`, MAX_WINDOW by default), and halves on a nack.
- One owner (ownership.py): among the processes sharing a store, only the one holding the
  subscription's ownership record leases and POSTs its messages; the others wait, and take
  over (with the window and backoff state of the last owner) when it releases it or dies. So
  the window and the backoff are the subscription's, not each process's.
- Switching: when a subscription stops being push (ModifyPushConfig, UpdateSubscription,
  detach, delete), its task stops leasing; POSTs already under way finish and ack or nack.
  When it becomes push, a task starts.
- Destinations (destinations.py): a POST to a host outside the allowed set is not made; the
  message is nacked (with the backoff of a failed POST), `last_error` says why, and a warning
  is logged once per subscription per change of that reason, not per message. Likewise a
  token the issuer refuses to sign under --auth (oidc.py).
- Visibility: `GET /debug/push` on the emulator port returns per-subscription counters as JSON
  (delivered, nacked, attempts, in_backoff, backoff_ms, window, in_flight, last_status, owner,
  owner_id, ...),
  and the `pubsub_emulator.push` logger writes one debug line per attempt. Endpoints and
  errors are shown with their query values hidden (`?token=…`): they often hold a secret.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import aiohttp

from push_contract import (
    ACK_STATUSES,
    BackoffPolicy,
    BackoffState,
    MessageFields,
    build_request,
    record_ack,
    record_nack,
)

from ..core.delivery import DeliveryEngine
from ..core.errors import ApiError
from ..core.events import Events
from ..core.push_config import redact_text, redact_url
from .destinations import Destinations, PushRefused
from .oidc import SigningRefused, TokenIssuer
from .ownership import Handover, Ownership, wall_ms

log = logging.getLogger("pubsub_emulator.push")

INITIAL_WINDOW = 1
MAX_WINDOW = 64
BACKOFF = BackoffPolicy(initial=0.1, multiplier=2.0, maximum=60.0)
# The lease outlives the POST's timeout (the ack deadline), so the outcome of a POST, ack or
# nack, always lands on a lease we still hold.
LEASE_MARGIN_MS = 5_000
USER_AGENT = "CloudPubSub-Google"  # as in Google's push examples (docs/payload-unwrapping)


def push_request(sub: Any, received: Any) -> tuple[bytes, dict[str, str]]:
    """Body and headers (without Authorization) of the POST for one received message.

    The envelope is Google's push contract, shared with the push worker; `deliveryAttempt`
    only when the subscription has a dead-letter policy (the core sets it only then).
    """
    config = sub.push_config
    message = received.message
    fields = MessageFields(
        data=bytes(message.data), message_id=message.message_id,
        publish_seconds=message.publish_time.seconds, publish_nanos=message.publish_time.nanos,
        attributes=dict(message.attributes), ordering_key=message.ordering_key,
        delivery_attempt=received.delivery_attempt or None)
    if config.HasField("no_wrapper"):
        request = build_request(fields, sub.name, "unwrapped", config.no_wrapper.write_metadata)
    else:
        request = build_request(fields, sub.name)
    return request.body, {**request.headers, "User-Agent": USER_AGENT}


def response_class(status: int | None, error: str) -> tuple[str, str]:
    """A push attempt's response class and code, for metrics: `2xx`, `4xx`, `5xx`... and the
    HTTP status; or `error` and what went wrong when no HTTP answer came."""
    if status is not None:
        return f"{status // 100}xx", str(status)
    if error.startswith("no answer within"):
        return "error", "deadline_exceeded"
    return "error", "unreachable"


class SubscriptionPusher:
    """Push delivery state of one subscription: its loop, its POSTs in flight, its counters."""

    def __init__(self, name: str, engine: DeliveryEngine, events: Events, issuer: TokenIssuer,
                 on_idle: Callable[[SubscriptionPusher], None],
                 on_failure: Callable[[str], None],
                 destinations: Destinations | None = None, auth_required: bool = False, *,
                 ownership: Ownership, max_window: int = MAX_WINDOW) -> None:
        self.engine = engine
        self.ownership = ownership  # whether this process may push it now (ownership.py)
        self.max_window = max(INITIAL_WINDOW, max_window)
        self.events = events
        self.issuer = issuer
        self.destinations = destinations or Destinations.from_flags(None, auth_required)
        self.auth_required = auth_required  # tokens only for accounts with a registered key
        self._on_idle = on_idle  # the loop ended and nothing is in flight
        self._on_failure = on_failure  # the loop failed: the dispatcher restarts it
        self.name = name
        self.task: asyncio.Task[None] | None = None
        self.wake: asyncio.Event | None = None
        self.session: aiohttp.ClientSession | None = None
        self.in_flight: dict[str, asyncio.Task[None]] = {}
        self.window = INITIAL_WINDOW
        self.backoff = BackoffState()  # not_before: loop.time()
        self.epoch = 0  # bumped by each backoff step; a POST started earlier does not step again
        self.endpoint = ""
        self.delivered = 0
        self.nacked = 0
        self.attempts = 0
        self.last_status: int | None = None
        self.last_error = ""
        self.last_attempt = 0.0
        self.noted_refusal = ""  # the refusal last logged: logged again only when it changes
        self.releasing: asyncio.Future[None] | None = None

    @property
    def running(self) -> bool:
        return self.task is not None and not self.task.done()

    def start(self) -> None:
        if not self.running:
            self.task = asyncio.ensure_future(self._run())

    def poke(self) -> None:
        if self.wake is not None:
            self.wake.set()

    def changed(self) -> None:
        """The subscription changed: reread it, and if waiting for ownership, try at once."""
        self.ownership.retry_now()
        self.poke()

    def stats(self) -> dict[str, Any]:
        now = asyncio.get_running_loop().time()
        return {
            "endpoint": redact_url(self.endpoint),
            "active": self.running,
            "delivered": self.delivered,
            "nacked": self.nacked,
            "attempts": self.attempts,
            "in_flight": len(self.in_flight),
            "window": self.window,
            "in_backoff": self.backoff.not_before > now,
            "backoff_ms": round(BACKOFF.cap(self.backoff.failures) * 1000),
            "last_status": self.last_status,
            "last_error": self.last_error,
            "last_attempt_unix": self.last_attempt,
            "owner": self.ownership.owned,
            "owner_id": self.ownership.holder,
        }

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        wake: asyncio.Event | None = None
        try:
            while True:
                try:
                    sub = await self.engine.deliverable(self.name)
                except ApiError:
                    break  # deleted or detached
                if not sub.push_config.push_endpoint:
                    break  # a pull subscription now
                if wake is None:  # (publishes to its topic wake it: the topic is needed)
                    wake = self.wake = self.events.watch(self.name, sub.topic)
                if self.endpoint != sub.push_config.push_endpoint:
                    self.endpoint = sub.push_config.push_endpoint
                    self.noted_refusal = ""  # a new endpoint: its refusal is news
                wake.clear()
                timeout = await self._step(sub, loop)
                if timeout is not None:
                    await _wait(wake, timeout)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s: push delivery loop failed; restarting it", self.name)
            asyncio.get_running_loop().call_later(1.0, self._on_failure, self.name)
        finally:
            if wake is not None:
                self.events.unwatch(self.name, wake)
            self.wake = None
            self._retire(loop_ended=True)

    async def _step(self, sub: Any, loop: asyncio.AbstractEventLoop) -> float | None:
        """Lease and POST what may go now; how long to wait for more (None: look again now)."""
        handed = await self.ownership.keep(self._handover)
        if handed is not None:
            self._take_over(handed)
        due_in = self.ownership.due_in()  # the next renewal, or the next try to acquire
        if not self.ownership.owned:
            return due_in  # another process pushes it
        now = loop.time()
        if now < self.backoff.not_before:
            return min(due_in, self.backoff.not_before - now)
        room = self.window - len(self.in_flight)
        timeout = 30.0
        if room > 0:
            lease_ms = sub.ack_deadline_seconds * 1000 + LEASE_MARGIN_MS
            received, _ = await self.engine.receive(sub, room, lease_ms)
            for rm in received:
                self._spawn(sub, rm)
            if received:
                return None
            due = await self.engine.next_due_ms(self.name)
            if due is not None:
                timeout = max(0.001, (due - time.time_ns() // 1_000_000) / 1000)
                timeout = min(timeout, 30.0)
        return min(timeout, due_in)

    def _handover(self) -> Handover:
        """The window and backoff as the next owner should continue them."""
        pause = self.backoff.not_before - asyncio.get_running_loop().time()
        return Handover(self.window, self.backoff.failures,
                        wall_ms() + round(pause * 1000) if pause > 0 else 0)

    def _take_over(self, handed: Handover) -> None:
        """Continue from the state the previous owner left (capped by this process's limit)."""
        self.window = min(self.max_window, max(INITIAL_WINDOW, handed.window))
        pause = (handed.not_before_ms - wall_ms()) / 1000
        self.backoff = BackoffState(failures=max(0, handed.failures), not_before=(
            asyncio.get_running_loop().time() + pause if pause > 0 else 0.0))
        self.epoch += 1

    def _spawn(self, sub: Any, received: Any) -> None:
        ack_id = received.ack_id
        task = asyncio.ensure_future(self._deliver(sub, received, self.epoch))
        self.in_flight[ack_id] = task

    def _retire(self, loop_ended: bool = False) -> None:
        """Close the connection pool once nothing uses it (a new loop opens another)."""
        idle = loop_ended or not self.running
        if not idle or self.in_flight:
            return
        if self.session is not None:
            session, self.session = self.session, None
            asyncio.ensure_future(session.close())
        # Nothing in flight: another process may take over (unless this loop started again).
        self.releasing = asyncio.ensure_future(
            self.ownership.release(self._handover(), unless=lambda: self.running))
        self._on_idle(self)

    def _session(self) -> aiohttp.ClientSession:
        if self.session is None or self.session.closed:
            # The resolver checks every address connected to (destinations.py); the session
            # ignores proxy variables (trust_env=False), which would route around that check.
            connector = aiohttp.TCPConnector(limit=self.max_window, force_close=False,
                                             resolver=self.destinations.resolver())
            self.session = aiohttp.ClientSession(connector=connector, auto_decompress=False,
                                                 skip_auto_headers=("Content-Type",),
                                                 trust_env=False)
        return self.session

    async def _deliver(self, sub: Any, received: Any, epoch: int) -> None:
        ack_id = received.ack_id
        status: int | None = None
        error = ""
        started = time.monotonic()
        acked = False
        try:
            try:
                status = await self._post(sub, received)
            except (PushRefused, SigningRefused) as exc:
                error = self._refused(str(exc))
            except asyncio.TimeoutError:
                error = f"no answer within the ack deadline ({sub.ack_deadline_seconds} s)"
            except aiohttp.ClientConnectorError as exc:
                # The resolver's refusal reaches us wrapped, as any failed name lookup does.
                refused = exc.os_error if isinstance(exc.os_error, PushRefused) else None
                error = (self._refused(str(refused)) if refused is not None
                         else redact_text(f"{type(exc).__name__}: {exc}"))
            except Exception as exc:  # refused, reset, TLS, bad URL...: all nacks
                # (an exception's text may quote the URL, query string and all)
                error = redact_text(f"{type(exc).__name__}: {exc}")
            acked = status in ACK_STATUSES
            await self._settle(ack_id, acked)
        except asyncio.CancelledError:
            await self._settle(ack_id, False)  # shutting down: the message goes out again later
            raise
        finally:
            self.in_flight.pop(ack_id, None)
            elapsed_ms = (time.monotonic() - started) * 1000
            self._account(acked, status, error, epoch)
            if status is not None or error:  # (not when cancelled: no attempt to count)
                self.engine.observer.pushed(self.name, *response_class(status, error),
                                            elapsed_ms / 1000)
            log.debug("push %s message %s attempt %s -> %s in %.1f ms (%s)", self.name,
                      received.message.message_id, received.delivery_attempt or "-",
                      status if status is not None else error or "cancelled", elapsed_ms,
                      "ack" if acked else "nack")
            self.poke()
            self._retire()

    async def _post(self, sub: Any, received: Any) -> int:
        """POST one message; its HTTP status. PushRefused or SigningRefused before any byte
        is sent if the destination or the token is refused."""
        config = sub.push_config
        url = config.push_endpoint
        refusal = self.destinations.refusal(url)
        if refusal:
            raise PushRefused(refusal)
        body, headers = push_request(sub, received)
        if config.HasField("oidc_token"):
            oidc = config.oidc_token
            token = await self.issuer.token(oidc.service_account_email, oidc.audience or url,
                                            require_key=self.auth_required)
            headers["Authorization"] = f"Bearer {token}"
        timeout = aiohttp.ClientTimeout(total=sub.ack_deadline_seconds)
        async with self._session().post(url, data=body, headers=headers, timeout=timeout,
                                        allow_redirects=False) as resp:
            return resp.status

    def _refused(self, reason: str) -> str:
        """A refusal is logged when it is news, not for each of the messages it nacks."""
        if reason != self.noted_refusal:
            self.noted_refusal = reason
            log.warning("%s: %s; its messages are nacked until that changes", self.name, reason)
        return reason

    async def _settle(self, ack_id: str, acked: bool) -> None:
        try:
            if acked:
                await self.engine.ack(self.name, [ack_id])
            else:
                await self.engine.modify(self.name, [ack_id], 0)
        except Exception as exc:  # the subscription went away meanwhile, or the store closed
            log.debug("%s: could not settle a push delivery: %s", self.name, exc)

    def _account(self, acked: bool, status: int | None, error: str, epoch: int) -> None:
        self.attempts += 1
        self.last_status = status
        self.last_error = error
        self.last_attempt = time.time()
        if acked:
            self.noted_refusal = ""  # delivering again: a later refusal is news
            self.delivered += 1
            self.backoff = record_ack(self.backoff)
            self.window = min(self.max_window, self.window + 1)
            return
        self.nacked += 1
        self.window = max(INITIAL_WINDOW, self.window // 2)
        if epoch == self.epoch:  # one backoff step per round, however many POSTs it had
            self.epoch += 1
            self.backoff = record_nack(self.backoff, BACKOFF,
                                       asyncio.get_running_loop().time())

    async def cancel(self) -> None:
        tasks = [t for t in [self.task, *self.in_flight.values()] if t is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self.session is not None:
            await self.session.close()
            self.session = None
        if self.releasing is not None:
            await asyncio.gather(self.releasing, return_exceptions=True)
        await self.ownership.release(self._handover())  # another process takes over now


async def _wait(event: asyncio.Event, timeout: float) -> None:
    try:
        await asyncio.wait_for(event.wait(), timeout)
    except TimeoutError:
        pass
