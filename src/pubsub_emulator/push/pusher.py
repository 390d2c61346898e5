"""Native push delivery: subscriptions with `pushConfig.pushEndpoint` get their messages POSTed.

One task per push subscription leases messages through the delivery engine (so dead-letter
forwarding, delivery attempts and the retry policy apply as for pull) and POSTs each one to the
endpoint with its own connection pool and its own limits (client.py: HTTP/1.1 keep-alive, at
most `max_window` connections), so a slow or dead endpoint never holds up another subscription.
Acks and nacks are written to the store in batches (settle.py).

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
import functools
import logging
import time
from collections.abc import Callable
from typing import Any

from push_contract import ACK_STATUSES, BackoffPolicy, BackoffState, record_ack, record_nack

from ..core.delivery import DeliveryEngine
from ..core.errors import ApiError
from ..core.events import Events
from ..core.push_config import redact_text, redact_url
from .client import PushClient
from .destinations import Destinations, PushRefused
from .oidc import SigningRefused, TokenIssuer
from .ownership import Handover, Ownership, wall_ms
from .request import push_request
from .settle import Outcome, Settlements

log = logging.getLogger("pubsub_emulator.push")

INITIAL_WINDOW = 1
MAX_WINDOW = 64
BACKOFF = BackoffPolicy(initial=0.1, multiplier=2.0, maximum=60.0)
# The lease outlives the POST's timeout (the ack deadline), so the outcome of a POST, ack or
# nack, always lands on a lease we still hold.
LEASE_MARGIN_MS = 5_000
STATUS_CLASSES: dict[int, tuple[str, str]] = {}  # response_class of each status seen


def response_class(status: int | None, error: str) -> tuple[str, str]:
    """A push attempt's response class and code, for metrics: `2xx`, `4xx`, `5xx`... and the
    HTTP status; or `error` and what went wrong when no HTTP answer came."""
    if status is not None:
        known = STATUS_CLASSES.get(status)
        if known is None:
            known = STATUS_CLASSES[status] = (f"{status // 100}xx", str(status))
        return known
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
        self.client: PushClient | None = None
        self.settlements = Settlements(engine, name, self._settled)
        # POSTs under way (or settling), by ack id: their task, or their answer when sent
        # without one (_post_now); cancelling either nacks the message (_answered).
        self.in_flight: dict[str, asyncio.Future[Any]] = {}
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
        self.judged = ("", "")  # an endpoint and Destinations.refusal's verdict on it
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
        """POST a message; its answer (a status, or why none came) is settled by _answered."""
        started = time.monotonic()
        answer = self._post_now(sub, received)
        if answer is None:
            answer = asyncio.ensure_future(self._post(sub, received))
        answer.add_done_callback(functools.partial(self._answered, sub, received, self.epoch,
                                                   started))
        self.in_flight[received.ack_id] = answer

    def _post_now(self, sub: Any, received: Any) -> asyncio.Future[int] | None:
        """POST without a task of its own when nothing needs waiting for (a connection is
        idle, no token to sign). A task per POST cost about as much as the POST's own
        Python. None: a task (_post) it is."""
        config = sub.push_config
        url = config.push_endpoint
        if (self.client is None or not self.client.has_idle(url)
                or config.HasField("oidc_token") or self._refusal(url)):
            return None
        try:
            body, headers = push_request(sub, received)
            return self.client.post_now(url, headers, body, sub.ack_deadline_seconds)
        except Exception:  # (a header with a line break...: _post says what went wrong)
            return None

    def _answered(self, sub: Any, received: Any, epoch: int, started: float,
                  answer: asyncio.Future[int]) -> None:
        # (a callback, not an await in the task: a task cancelled before it ran is settled too)
        if answer.cancelled():  # shutting down: nacked, the message goes out again later
            self.settlements.settle(Outcome(received, epoch, started, None, "", False))
            return
        failure = answer.exception()
        if failure is not None:
            self.settlements.settle(Outcome(received, epoch, started, None,
                                            self._failure(sub, failure), False))
            return
        status = answer.result()
        self.settlements.settle(Outcome(received, epoch, started, status, "",
                                        status in ACK_STATUSES))

    def _retire(self, loop_ended: bool = False) -> None:
        """Close the connection pool once nothing uses it (a new loop opens another)."""
        idle = loop_ended or not self.running
        if not idle or self.in_flight:
            return
        if self.client is not None:
            client, self.client = self.client, None
            asyncio.ensure_future(client.close())
        # Nothing in flight: another process may take over (unless this loop started again).
        self.releasing = asyncio.ensure_future(
            self.ownership.release(self._handover(), unless=lambda: self.running))
        self._on_idle(self)

    def _client(self) -> PushClient:
        if self.client is None or self.client.closed:
            # The resolver checks every address connected to (destinations.py); the client
            # uses no proxy, which would route around that check.
            self.client = PushClient(self.destinations.resolver(), self.max_window)
        return self.client

    def _settled(self, outcomes: list[Outcome]) -> None:
        """Acks or nacks written to the store: their POSTs leave the window, and count."""
        now, wall = time.monotonic(), time.time()
        for outcome in outcomes:
            received, _, started, status, error, acked = outcome
            self.in_flight.pop(received.ack_id, None)
            self._account(acked, status, error, outcome.epoch, wall)
            if status is not None or error:  # (not when abandoned: no attempt to count)
                self.engine.observer.pushed(self.name, *response_class(status, error),
                                            now - started)
            log.debug("push %s message %s attempt %s -> %s in %.1f ms (%s)", self.name,
                      received.message.message_id, received.delivery_attempt or "-",
                      status if status is not None else error or "cancelled",
                      (now - started) * 1000, "ack" if acked else "nack")
        self.poke()
        self._retire()

    def _failure(self, sub: Any, exc: BaseException) -> str:
        """Why a POST got no HTTP answer (refused, reset, TLS, bad URL...: all nacks), as
        `last_error` shows it."""
        if isinstance(exc, (PushRefused, SigningRefused)):
            return self._refused(str(exc))
        if isinstance(exc, asyncio.TimeoutError):
            return f"no answer within the ack deadline ({sub.ack_deadline_seconds} s)"
        # (an exception's text may quote the URL, query string and all)
        return redact_text(f"{type(exc).__name__}: {exc}")

    async def _post(self, sub: Any, received: Any) -> int:
        """POST one message; its HTTP status. PushRefused or SigningRefused before any byte
        is sent if the destination or the token is refused."""
        config = sub.push_config
        url = config.push_endpoint
        refusal = self._refusal(url)
        if refusal:
            raise PushRefused(refusal)
        body, headers = push_request(sub, received)
        if config.HasField("oidc_token"):
            oidc = config.oidc_token
            token = await self.issuer.token(oidc.service_account_email, oidc.audience or url,
                                            require_key=self.auth_required)
            headers["Authorization"] = f"Bearer {token}"
        return await self._client().post(url, headers, body, sub.ack_deadline_seconds)

    def _refusal(self, url: str) -> str:
        """Destinations.refusal(url), judged once per endpoint (it parses the URL)."""
        if url != self.judged[0]:
            self.judged = (url, self.destinations.refusal(url))
        return self.judged[1]

    def _refused(self, reason: str) -> str:
        """A refusal is logged when it is news, not for each of the messages it nacks."""
        if reason != self.noted_refusal:
            self.noted_refusal = reason
            log.warning("%s: %s; its messages are nacked until that changes", self.name, reason)
        return reason

    def _account(self, acked: bool, status: int | None, error: str, epoch: int,
                 wall: float) -> None:
        self.attempts += 1
        self.last_status = status
        self.last_error = error
        self.last_attempt = wall
        if acked:
            self.noted_refusal = ""  # delivering again: a later refusal is news
            self.delivered += 1
            if self.backoff.failures:  # (no failures: record_ack would change nothing)
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
        await self.settlements.drain()
        if self.client is not None:
            await self.client.close()
            self.client = None
        if self.releasing is not None:
            await asyncio.gather(self.releasing, return_exceptions=True)
        await self.ownership.release(self._handover())  # another process takes over now


async def _wait(event: asyncio.Event, timeout: float) -> None:
    # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a cancellation that
    # arrives as the event is set (an answer settled as the dispatcher stops), and the loop
    # then went on, holding up the stop for good.
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        pass
