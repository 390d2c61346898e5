"""The connection to NATS and the JetStream calls the store is made of.

Connecting and reconnecting (with error logging), the JetStream API request, publishing with
PubAcks, fetching from a pull consumer, sending acks and nacks, and a key-value table over a
stream with one message per subject (the resource and ordering streams).

Every error raised out of here is one of the store's declared errors (base.StoreError): what
NATS answers never reaches a client as UNKNOWN. A message is never sent larger than the
server's max_payload (headers included: the server closes the connection of a client that
does), it is refused with PayloadTooLarge before anything of the batch is sent.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

from nats import errors as nats_errors

from ..base import PayloadTooLarge, StoreError, StoreUnavailable

log = logging.getLogger("pubsub_emulator.nats")

_BULK_BATCH = 1000  # messages per fetch when reading many subjects' last messages

# JetStream API error codes (err_code)
STREAM_NOT_FOUND, CONSUMER_NOT_FOUND, NO_MESSAGE, WRONG_LAST_SEQ = 10059, 10014, 10037, 10071

Handler = Callable[[Any], Awaitable[None]]


class NatsError(StoreError):
    """An error JetStream answered (INTERNAL to clients, unless the store handles it)."""

    def __init__(self, err: Mapping[str, Any]) -> None:
        super().__init__(f"JetStream: {err.get('description')} ({err.get('err_code')})")
        self.code = int(err.get("code", 0))
        self.err_code = int(err.get("err_code", 0))


class NatsUnavailable(NatsError, StoreUnavailable):
    """JetStream answered 503 (no leader yet, JetStream not ready): clients retry."""


def nats_error(err: Mapping[str, Any]) -> NatsError:
    """The error of a JetStream answer."""
    return (NatsUnavailable if int(err.get("code", 0)) == 503 else NatsError)(err)


class NoStream(StoreError):
    """A JetStream publish that no stream took."""


def header_bytes(headers: Mapping[str, str] | None) -> int:
    """What headers add to a NATS message (its `NATS/1.0` block), as the server counts it."""
    if not headers:
        return 0
    return 12 + sum(len(k) + len(v.encode()) + 4 for k, v in headers.items())


class Record(NamedTuple):
    """A key-value entry: its JSON value and its subject's sequence (for compare-and-set)."""

    value: dict[str, Any]
    seq: int


def parse_headers(raw: bytes) -> dict[str, str]:
    """The headers of a stored message as the JetStream API returns them (NATS/1.0 block)."""
    headers = {}
    for line in raw.decode(errors="replace").split("\r\n")[1:]:
        key, sep, value = line.partition(":")
        if sep:
            headers[key.strip()] = value.strip()
    return headers


# What nats-py raises when the server cannot be reached or answered in time: the store's
# callers are told the store is unavailable (UNAVAILABLE to clients, which retry).
_UNREACHABLE = (nats_errors.ConnectionClosedError, nats_errors.NoServersError,
                nats_errors.StaleConnectionError, nats_errors.OutboundBufferLimitError,
                nats_errors.ConnectionDrainingError, nats_errors.TimeoutError,
                nats_errors.NoRespondersError, asyncio.TimeoutError)


async def _take(queue: asyncio.Queue[Any], timeout: float) -> Any:
    """The next item of a reply queue, waiting up to `timeout` (TimeoutError). One already
    there (most of a fetch's 1,000 deliveries, of a batch's PubAcks) is taken without waiting.
    asyncio.timeout, not wait_for: wait_for makes a task of every wait, and on 3.11 can swallow
    a cancellation that comes as the item does."""
    if not queue.empty():
        return queue.get_nowait()
    async with asyncio.timeout(timeout):
        return await queue.get()


@contextlib.contextmanager
def declared_errors() -> Iterator[None]:
    """nats-py's errors as the store's declared ones."""
    try:
        yield
    except nats_errors.MaxPayloadError as exc:
        raise PayloadTooLarge(f"the message is larger than the NATS server's max_payload "
                              f"({exc})") from exc
    except _UNREACHABLE as exc:
        raise StoreUnavailable(f"NATS did not answer: {type(exc).__name__}") from exc
    except nats_errors.Error as exc:  # anything else nats-py raises
        raise StoreError(f"NATS: {type(exc).__name__}: {exc}") from exc


class JetStream:
    """One connection to the NATS servers, shared by every part of the store."""

    def __init__(self, servers: Sequence[str], replicas: int, resource_stream: str) -> None:
        self._servers = list(servers)
        self._replicas = replicas
        self._resource_stream = resource_stream  # the key-value table's default stream
        self._waiting: dict[str, asyncio.Queue[Any]] = {}
        self._seq = 0
        # Called after a reconnection: notifications sent meanwhile were missed.
        self.reconnected: list[Callable[[], None]] = []
        self.last_error = ""
        self._logged_error, self._logged_at = "", 0.0
        self._closed = False

    # --- the connection ---------------------------------------------------------------------
    async def connect(self, timeout: float) -> None:
        import nats  # imported here: the default (SQLite) store does not need nats-py

        self._nc = await nats.connect(
            servers=self._servers, connect_timeout=timeout, allow_reconnect=True,
            max_reconnect_attempts=-1, reconnect_time_wait=0.25, name="pubsub-emulator",
            error_cb=self._on_error, disconnected_cb=self._on_disconnect,
            reconnected_cb=self._on_reconnect)
        self._inbox = f"_INBOX.{uuid.uuid4().hex}"
        await self._nc.subscribe(self._inbox + ".*", cb=self._on_reply)

    async def _on_error(self, exc: Exception) -> None:
        # One line per new problem, at most one every 10 s while it lasts (the client retries
        # four times a second).
        self.last_error = str(exc) or type(exc).__name__
        now = time.monotonic()
        if self.last_error != self._logged_error or now - self._logged_at > 10:
            self._logged_error, self._logged_at = self.last_error, now
            log.warning("NATS: %s", self.last_error)

    async def _on_disconnect(self) -> None:
        if not self._closed:
            log.warning("lost the connection to NATS; reconnecting")

    async def _on_reconnect(self) -> None:
        for callback in self.reconnected:
            callback()
        log.info("reconnected to NATS at %s", self._nc.connected_url.netloc
                 if self._nc.connected_url else "?")

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            await asyncio.wait_for(self._nc.close(), 10)
        except Exception:  # noqa: BLE001 - closing anyway
            log.debug("closing the NATS connection failed", exc_info=True)

    @property
    def max_payload(self) -> int:
        """The largest message (headers and payload) the connected server takes (its INFO)."""
        return int(self._nc.max_payload)

    # --- core NATS --------------------------------------------------------------------------
    async def subscribe(self, subject: str, handler: Handler) -> None:
        await self._nc.subscribe(subject, cb=handler)

    async def publish(self, subject: str, payload: bytes) -> None:
        """A core-NATS publish (notifications; acks that need no answer)."""
        with declared_errors():
            await self._nc.publish(subject, payload)

    async def _on_reply(self, msg: Any) -> None:
        queue = self._waiting.get(msg.subject.rpartition(".")[2])
        if queue is not None:
            queue.put_nowait(msg)

    def _reply_queue(self) -> tuple[str, asyncio.Queue[Any]]:
        self._seq += 1
        token = str(self._seq)
        queue: asyncio.Queue[Any] = asyncio.Queue()
        self._waiting[token] = queue
        return token, queue

    # --- JetStream --------------------------------------------------------------------------
    async def api(self, subject: str, body: Mapping[str, Any] | None = None,
                  timeout: float = 10.0) -> dict[str, Any]:
        """A JetStream API request (`$JS.API.<subject>`); NatsError if it answers one."""
        payload = json.dumps(body).encode() if body is not None else b""
        with declared_errors():
            msg = await self._nc.request(f"$JS.API.{subject}", payload, timeout=timeout)
        resp = json.loads(msg.data)
        if "error" in resp:
            raise nats_error(resp["error"])
        return resp

    async def direct_get(self, stream: str, seq: int, timeout: float = 10.0
                         ) -> tuple[dict[str, str], bytes] | None:
        """A stored message (its headers, with `Nats-Subject`, and its payload) read by any
        replica of a stream that allows direct gets; None if that replica has no such
        message."""
        with declared_errors():
            msg = await self._nc.request(f"$JS.API.DIRECT.GET.{stream}",
                                         json.dumps({"seq": seq}).encode(), timeout=timeout)
        headers = msg.headers or {}
        status = headers.get("Status")
        if status == "404":
            return None
        if status:
            raise nats_error({"code": int(status), "description": str(headers)})
        return headers, msg.data

    async def consumer_info(self, stream: str, consumer: str) -> dict[str, Any]:
        return await self.api(f"CONSUMER.INFO.{stream}.{consumer}")

    async def publish_many(self, items: Sequence[tuple[str, bytes, dict[str, str] | None]],
                           checked: bool = False) -> list[dict[str, Any]]:
        """Publish to JetStream, all before awaiting any PubAck (one round trip).

        PayloadTooLarge, before anything is sent, if an item is larger than the server takes
        (`checked`: the caller made sure none is).
        """
        if not checked:
            limit = self.max_payload
            for subject, payload, headers in items:
                if len(payload) + header_bytes(headers) > limit:
                    raise PayloadTooLarge(
                        f"a {len(payload) + header_bytes(headers)}-byte message for {subject} "
                        f"is larger than the NATS server's max_payload ({limit} bytes)")
        tokens = []
        try:
            with declared_errors():
                return await self._publish_and_wait(items, tokens)
        finally:
            for token, _ in tokens:
                self._waiting.pop(token, None)

    async def _publish_and_wait(self, items: Sequence[tuple[str, bytes, dict[str, str] | None]],
                                tokens: list[tuple[str, asyncio.Queue[Any]]]
                                ) -> list[dict[str, Any]]:
        for subject, payload, headers in items:
            token, queue = self._reply_queue()
            tokens.append((token, queue))
            await self._nc.publish(subject, payload, reply=f"{self._inbox}.{token}",
                                   headers=headers)
        acks = []
        for _, queue in tokens:
            msg = await _take(queue, 10.0)
            resp = json.loads(msg.data) if msg.data else {}
            if not msg.data:
                raise NoStream("no JetStream stream answered a publish")
            acks.append(resp)
        return acks

    async def ensure_stream(self, name: str, subjects: list[str], description: str = "",
                            **extra: Any) -> dict[str, Any]:
        """The stream's info, after creating it if it does not exist."""
        config = {"name": name, "subjects": subjects, "retention": "limits", "storage": "file",
                  "num_replicas": self._replicas, "discard": "old", "max_msgs": -1,
                  "max_bytes": -1, "max_consumers": -1, "max_msg_size": -1,
                  "max_msgs_per_subject": -1, "duplicate_window": 120 * 10**9, **extra}
        if description:
            config["description"] = description
        try:
            return await self.api(f"STREAM.INFO.{name}")
        except NatsError as exc:
            if exc.err_code != STREAM_NOT_FOUND:
                raise
        try:
            return await self.api(f"STREAM.CREATE.{name}", config)
        except NatsError:  # created meanwhile by another process
            return await self.api(f"STREAM.INFO.{name}")

    async def fetch(self, stream: str, consumer: str, batch: int) -> list[Any]:
        """Up to `batch` deliveries of a pull consumer, without waiting for more."""
        with declared_errors():
            return await self._fetch(stream, consumer, batch)

    async def _fetch(self, stream: str, consumer: str, batch: int) -> list[Any]:
        # A subscription per fetch: deliveries arrive under their own subject, not the inbox's.
        queue: asyncio.Queue[Any] = asyncio.Queue()

        async def put(msg: Any) -> None:
            queue.put_nowait(msg)

        inbox = self._nc.new_inbox()
        sub = await self._nc.subscribe(inbox, cb=put)
        try:
            await self._nc.publish(f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}",
                                   json.dumps({"batch": batch, "no_wait": True}).encode(),
                                   reply=inbox)
            got = []
            while len(got) < batch:
                msg = await _take(queue, 5.0)
                status = (msg.headers or {}).get("Status")
                if status == "100":
                    continue  # flow control / heartbeat
                if status:
                    if status == "409" and "consumer deleted" in str(msg.headers).lower():
                        raise nats_error({"err_code": CONSUMER_NOT_FOUND, "description":
                                         "consumer deleted"})
                    if not got and status not in ("404", "408"):
                        # 409 (no such consumer, ...) or 503 (no leader yet): ask, so the
                        # right error is raised
                        await self.consumer_info(stream, consumer)
                    break  # 404/408: nothing more now
                got.append(msg)
            return got
        except TimeoutError:
            await self.consumer_info(stream, consumer)  # raises if it is gone
            return []
        finally:
            await sub.unsubscribe()

    async def send(self, sends: Sequence[tuple[str, bytes]]) -> None:
        """Send acks and nacks of one consumer in order; return once the server applied all.

        An acknowledgement the caller is told succeeded must not be lost with a NATS node, and
        a nacked message must be available to the very next pull; JetStream queues acks and
        nacks to their consumer (a flush does not mean applied) and answers one sent with a
        reply subject once the consumer applied it. A consumer applies what one connection
        sends it in order, so only the last send asks for an answer: one round trip, and one
        answer, for the batch. (Every caller sends for one subscription: ack ids of another
        are refused when parsed.)
        """
        if not sends:
            return
        token, queue = self._reply_queue()
        try:
            with declared_errors():
                for subject, body in sends[:-1]:
                    await self._nc.publish(subject, body)
                subject, body = sends[-1]
                await self._nc.publish(subject, body, reply=f"{self._inbox}.{token}")
                await _take(queue, 10.0)
        finally:
            self._waiting.pop(token, None)

    async def last_per_subject(self, stream: str, pattern: str) -> dict[str, bytes]:
        """The last message of every subject of a stream that matches a pattern (subject ->
        payload), read through an ephemeral consumer: a few fetches where reading subject by
        subject costs a request each (thousands of resources, every sweep)."""
        resp = await self.api(f"CONSUMER.CREATE.{stream}", {"stream_name": stream, "config": {
            "deliver_policy": "last_per_subject", "ack_policy": "none",
            "filter_subject": pattern, "inactive_threshold": 60 * 10**9, "mem_storage": True,
            "replay_policy": "instant"}})
        name, count = resp["name"], int(resp.get("num_pending", 0))
        found: dict[str, bytes] = {}
        try:
            got = 0
            while got < count:
                msgs = await self.fetch(stream, name, min(_BULK_BATCH, count - got))
                if not msgs:
                    break
                got += len(msgs)
                found.update((msg.subject, msg.data) for msg in msgs)
        finally:
            try:
                await self.api(f"CONSUMER.DELETE.{stream}.{name}")
            except NatsError:
                pass  # (it goes by itself once inactive)
        return found

    # --- a key-value table over a stream (one message per subject) ---------------------------
    async def msg_get(self, stream: str, request: Mapping[str, Any]) -> dict[str, Any] | None:
        """A stored message through the stream's leader (`STREAM.MSG.GET`: by "seq", with
        "next_by_subj", or "last_by_subj"), as JetStream gives it (seq, subject, time, base64
        data and hdrs); None if there is no such message."""
        try:
            resp = await self.api(f"STREAM.MSG.GET.{stream}", request)
        except NatsError as exc:
            if exc.err_code == NO_MESSAGE or exc.code == 404:
                return None
            raise
        message: dict[str, Any] = resp["message"]
        return message

    async def kv_get(self, subject: str, stream: str = "") -> Record | None:
        """The entry of a subject (in the resource stream unless told), None if there is none."""
        message = await self.msg_get(stream or self._resource_stream, {"last_by_subj": subject})
        if message is None:
            return None
        return Record(json.loads(base64.b64decode(message.get("data") or b"")), message["seq"])

    async def kv_put(self, subject: str, value: Mapping[str, Any], last: int | None) -> bool:
        """Write an entry; with `last` (0: none yet), only if the subject's sequence is still
        that (False if not)."""
        headers = None if last is None else {"Nats-Expected-Last-Subject-Sequence": str(last)}
        [ack] = await self.publish_many([(subject, json.dumps(value).encode(), headers)])
        if "error" in ack:
            if ack["error"].get("err_code") == WRONG_LAST_SEQ:
                return False
            raise nats_error(ack["error"])
        return True

    async def kv_delete(self, subject: str, stream: str = "") -> bool:
        resp = await self.api(f"STREAM.PURGE.{stream or self._resource_stream}",
                              {"filter": subject})
        return resp.get("purged", 0) > 0

    async def subjects(self, pattern: str) -> list[str]:
        """The subjects of the resource stream that match a pattern."""
        resp = await self.api(f"STREAM.INFO.{self._resource_stream}",
                              {"subjects_filter": pattern})
        return list((resp.get("state", {}).get("subjects") or {}).keys())
