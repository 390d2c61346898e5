"""A store on NATS JetStream (nats-server >= 2.9): several emulator processes share one state.

Layout (everything under a namespace, "pubsub" unless told otherwise):
- resources: one stream `<NS>_RES` used as a key-value store (one message per subject, subject
  `<ns>.res.<kind>.<b64url(name)>`, JSON value {"t": topic link, "p": b64 proto}); creation uses
  `Nats-Expected-Last-Subject-Sequence: 0`, so it is atomic across processes. Topic links have an
  index subject `<ns>.link.<kind>.<b64(topic)>.<b64(name)>` for list_by_topic.
- a topic is a stream `<NS>_T_<hash>` (limits retention, bounded by max age; the sweeper purges
  what no consumer and no snapshot needs), subject `<ns>.msg.<hash>`; its description carries a
  random id prefix, so message ids (prefix * 10^12 + stream sequence) are unique across topics,
  processes and restarts.
- a subscription is a durable pull consumer `C_<hash>` (deliver new, explicit ack, max_deliver -1);
  the lease of a delivery is set with `-NAK {"delay": ...}` (see docs: engines.md).
- an ack id is the delivery's reply subject (without `$JS.ACK.`): any process can ack it.
- per-key ordering (not native on 2.9): a record per ordered subscription in stream
  `<NS>_OKEY`, changed by compare-and-set (see `_order`; docs/nats.md).
- every publish also sends a core-NATS notification `<ns>.wake.<hash>` that other processes turn
  into wake-ups of their waiting pulls (set_listener).

JetStream's redelivery timers run on the server's clock: the `now_ms` arguments are used for
publish times and exactly-once checks only.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import random
import re
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from google.protobuf import timestamp_pb2
from google.pubsub_v1 import types as pubsub_types

from ._filter import compile_filter
from ._store import (
    DEFAULT_POLICY,
    Delivery,
    DeliveryPolicy,
    InvalidAckId,
    Page,
    RetentionRules,
    Store,
    decode_page_token,
    encode_page_token,
)

log = logging.getLogger("pubsub_emulator.nats")

_PubsubMessage = pubsub_types.PubsubMessage.pb()
_Subscription = pubsub_types.Subscription.pb()
_SUBSCRIPTIONS = "subscriptions"
_SNAPSHOT_STATE = "_snapshot-state"  # internal kind: a snapshot's recorded position
_SUB_START = "_subscription-start"  # internal kind: a subscription's first stream sequence
_REDELIVERED = "_redelivered"  # internal kind: a consumer's redelivered messages (see _current)
_DETACHED = ("", "_deleted-topic_")
_SHARED_KINDS = ("topics", "subscriptions", "snapshots", "schemas")  # changes announced
_CACHE_S = 5.0  # the longest a resource read is reused (changes normally drop it at once)
_ACK_WAIT_MS = 10_000
_PARK_MS = 30_000  # how long a message held back behind its ordering key waits at most
_MAX_AGE_S = 31 * 24 * 3600  # the longest retention Pub/Sub allows
_ID_SCALE = 10**12
_TOKEN = re.compile(r"^[A-Za-z0-9_-]+$")
_ACK_TOKEN = re.compile(r"^[A-Za-z0-9_-]+$")
_H_SKIP, _H_KEY, _H_TIME, _H_SIZE = "Ps-Skip", "Ps-Key", "Ps-Time", "Ps-Size"
# JetStream API error codes (err_code)
_STREAM_NOT_FOUND, _CONSUMER_NOT_FOUND, _NO_MESSAGE, _WRONG_LAST_SEQ = 10059, 10014, 10037, 10071


class NatsError(RuntimeError):
    def __init__(self, err: Mapping[str, Any]) -> None:
        super().__init__(f"JetStream: {err.get('description')} ({err.get('err_code')})")
        self.code = int(err.get("code", 0))
        self.err_code = int(err.get("err_code", 0))


class _NoStream(RuntimeError):
    """A JetStream publish that no stream took."""


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def _unb64(token: str) -> str:
    return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _page(items: list[tuple[str, bytes]], page_size: int) -> Page:
    if page_size and len(items) > page_size:
        items = items[:page_size]
        return Page(items, encode_page_token(items[-1][0]))
    return Page(items, "")


def _needed_from(info: Mapping[str, Any]) -> int:
    """The first stream sequence a consumer may still deliver (everything below is acked)."""
    if info.get("num_ack_pending", 0) == 0:
        return int(info["delivered"]["stream_seq"]) + 1
    return int(info["ack_floor"]["stream_seq"]) + 1


def _parse_headers(raw: bytes) -> dict[str, str]:
    headers = {}
    for line in raw.decode(errors="replace").split("\r\n")[1:]:
        key, sep, value = line.partition(":")
        if sep:
            headers[key.strip()] = value.strip()
    return headers


class _Ack:
    """A parsed ack id: a `$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>...` subject's tail."""

    __slots__ = ("subject", "stream", "consumer", "delivered", "sseq")

    def __init__(self, ack_id: str) -> None:
        tokens = ack_id.split(".")
        if not all(_ACK_TOKEN.match(t) for t in tokens):
            raise InvalidAckId(ack_id)
        if len(tokens) == 7:  # v1: stream.consumer.delivered.sseq.cseq.ts.pending
            base = 0
        elif len(tokens) >= 10:  # v2: domain.account.stream.consumer.delivered.sseq...
            base = 2
        else:
            raise InvalidAckId(ack_id)
        try:
            self.delivered = int(tokens[base + 2])
            self.sseq = int(tokens[base + 3])
        except ValueError:
            raise InvalidAckId(ack_id) from None
        self.stream, self.consumer = tokens[base], tokens[base + 1]
        self.subject = "$JS.ACK." + ack_id


def _accept_all(attributes: Any) -> bool:
    return True


def _entry(entries: list[list[Any]], seq: int, create: bool = True) -> list[Any] | None:
    """The ordering entry of `seq` in a key's entries (sorted by sseq), added if `create`."""
    at = 0
    for at, entry in enumerate(entries):  # noqa: B007 - `at` is used after the loop
        if entry[0] == seq:
            return entry
        if entry[0] > seq:
            break
    else:
        at = len(entries)
    if not create:
        return None
    entry = [seq, "", 0, "G", 0]
    entries.insert(at, entry)
    return entry


class NatsStore(Store):
    """All state in NATS JetStream, shared by every emulator process using the same servers."""

    ordered_delivery = True  # not native on JetStream 2.9: a record per subscription

    def __init__(self, servers: Sequence[str], replicas: int = 1, namespace: str = "pubsub"
                 ) -> None:
        """Use `await NatsStore.open(...)`: the store lives on the event loop that opened it."""
        if not _TOKEN.match(namespace):
            raise ValueError(f"invalid NATS namespace {namespace!r}")
        self._servers = list(servers)
        self._replicas = replicas
        self._ns = namespace
        self._NS = namespace.upper().replace("-", "_")
        self._origin = uuid.uuid4().hex
        self._streams: dict[str, int] = {}  # stream name -> message id prefix
        self._subs: dict[str, str] = {}  # subscription -> topic link (cache)
        self._waiting: dict[str, asyncio.Queue[Any]] = {}
        self._seq = 0
        self._listener: Callable[[str], None] | None = None
        self._change_listener: Callable[[str, str], None] | None = None
        self._filters: dict[str, Callable[[Any], bool]] = {}  # filter text -> predicate
        # Topics, subscriptions, snapshots and schemas read recently, by (kind, name): every
        # RPC reads one or two, so they are reused until changed here, announced changed by
        # another process, the connection was lost (announcements may be missed) or _CACHE_S
        # passed. `_generation` counts drops: a read that overlapped one is not kept.
        self._cache: dict[tuple[str, str], tuple[bytes, float]] = {}
        self._generation = 0
        self._last_error = ""
        self._logged_error, self._logged_at = "", 0.0
        self._closed = False

    @classmethod
    async def open(cls, servers: Sequence[str], replicas: int = 1, namespace: str = "pubsub",
                   connect_timeout: float = 10.0) -> NatsStore:
        """Connect to the servers and make sure the shared streams exist."""
        store = cls(servers, replicas, namespace)
        try:
            await asyncio.wait_for(store._connect(connect_timeout), connect_timeout)
        except TimeoutError:
            raise ConnectionError(
                f"no NATS server with JetStream answered within {connect_timeout:g} s (last "
                f"error: {store._last_error or 'none'})") from None
        return store

    # --- plumbing ---------------------------------------------------------------------------
    async def _connect(self, timeout: float) -> None:
        import nats  # imported here: the default (SQLite) store does not need nats-py

        self._nc = await nats.connect(
            servers=self._servers, connect_timeout=timeout, allow_reconnect=True,
            max_reconnect_attempts=-1, reconnect_time_wait=0.25, name="pubsub-emulator",
            error_cb=self._on_error, disconnected_cb=self._on_disconnect,
            reconnected_cb=self._on_reconnect)
        self._inbox = f"_INBOX.{uuid.uuid4().hex}"
        await self._nc.subscribe(self._inbox + ".*", cb=self._on_reply)
        await self._nc.subscribe(f"{self._ns}.wake.*", cb=self._on_wake)
        await self._nc.subscribe(f"{self._ns}.changed", cb=self._on_change)
        await self._ensure_stream(f"{self._NS}_RES", [f"{self._ns}.res.>", f"{self._ns}.link.>",
                                                       f"{self._ns}.lease.>"],
                                  max_msgs_per_subject=1)
        await self._ensure_stream(f"{self._NS}_OKEY", [f"{self._ns}.okey.>"],
                                  max_msgs_per_subject=1)

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

    async def _api(self, subject: str, body: Mapping[str, Any] | None = None,
                   timeout: float = 10.0) -> dict[str, Any]:
        payload = json.dumps(body).encode() if body is not None else b""
        msg = await self._nc.request(f"$JS.API.{subject}", payload, timeout=timeout)
        resp = json.loads(msg.data)
        if "error" in resp:
            raise NatsError(resp["error"])
        return resp

    async def _publish_many(self, items: list[tuple[str, bytes, dict[str, str] | None]]
                            ) -> list[dict[str, Any]]:
        """Publish to JetStream, all before awaiting any PubAck (one round trip)."""
        tokens = []
        try:
            for subject, payload, headers in items:
                token, queue = self._reply_queue()
                tokens.append((token, queue))
                await self._nc.publish(subject, payload, reply=f"{self._inbox}.{token}",
                                       headers=headers)
            acks = []
            for _, queue in tokens:
                msg = await asyncio.wait_for(queue.get(), 10.0)
                resp = json.loads(msg.data) if msg.data else {}
                if not msg.data:
                    raise _NoStream("no JetStream stream answered a publish")
                acks.append(resp)
            return acks
        finally:
            for token, _ in tokens:
                self._waiting.pop(token, None)

    async def _ensure_stream(self, name: str, subjects: list[str], description: str = "",
                             **extra: Any) -> dict[str, Any]:
        config = {"name": name, "subjects": subjects, "retention": "limits", "storage": "file",
                  "num_replicas": self._replicas, "discard": "old", "max_msgs": -1,
                  "max_bytes": -1, "max_consumers": -1, "max_msg_size": -1,
                  "max_msgs_per_subject": -1, "duplicate_window": 120 * 10**9, **extra}
        if description:
            config["description"] = description
        try:
            return await self._api(f"STREAM.INFO.{name}")
        except NatsError as exc:
            if exc.err_code != _STREAM_NOT_FOUND:
                raise
        try:
            return await self._api(f"STREAM.CREATE.{name}", config)
        except NatsError:  # created meanwhile by another process
            return await self._api(f"STREAM.INFO.{name}")

    # --- the resource table -----------------------------------------------------------------
    def _key(self, kind: str, name: str) -> str:
        kind_token = kind if _TOKEN.match(kind) else "_" + _b64(kind)
        return f"{self._ns}.res.{kind_token}.{_b64(name)}"

    def _link(self, kind: str, topic: str, name: str = "") -> str:
        base = f"{self._ns}.link.{_b64(kind)}.{_b64(topic)}"
        return f"{base}.{_b64(name)}" if name else base

    async def _kv_get(self, subject: str, table: str = "RES") -> tuple[dict[str, Any], int] | None:
        try:
            resp = await self._api(f"STREAM.MSG.GET.{self._NS}_{table}",
                                   {"last_by_subj": subject})
        except NatsError as exc:
            if exc.err_code == _NO_MESSAGE or exc.code == 404:
                return None
            raise
        message = resp["message"]
        return json.loads(base64.b64decode(message.get("data") or b"")), message["seq"]

    async def _kv_put(self, subject: str, value: Mapping[str, Any], last: int | None
                      ) -> bool:
        headers = None if last is None else {"Nats-Expected-Last-Subject-Sequence": str(last)}
        [ack] = await self._publish_many([(subject, json.dumps(value).encode(), headers)])
        if "error" in ack:
            if ack["error"].get("err_code") == _WRONG_LAST_SEQ:
                return False
            raise NatsError(ack["error"])
        return True

    async def _kv_delete(self, subject: str, table: str = "RES") -> bool:
        resp = await self._api(f"STREAM.PURGE.{self._NS}_{table}", {"filter": subject})
        return resp.get("purged", 0) > 0

    async def _subjects(self, pattern: str) -> list[str]:
        resp = await self._api(f"STREAM.INFO.{self._NS}_RES", {"subjects_filter": pattern})
        return list((resp.get("state", {}).get("subjects") or {}).keys())

    async def create_resource(self, kind: str, name: str, proto: bytes, topic: str = "") -> bool:
        return await self._announce(kind, name, await self._create(kind, name, proto, topic))

    async def _announce(self, kind: str, name: str, changed: bool) -> bool:
        """Tell the other processes of a change (they drop what they cached of it)."""
        self._forget(kind, name)
        if changed and kind in _SHARED_KINDS:
            await self._nc.publish(f"{self._ns}.changed",
                                   f"{self._origin}\n{kind}\n{name}".encode())
        return changed

    async def _create(self, kind: str, name: str, proto: bytes, topic: str) -> bool:
        value = {"t": topic, "p": base64.b64encode(proto).decode()}
        if not await self._kv_put(self._key(kind, name), value, 0):
            return False
        if topic:
            await self._kv_put(self._link(kind, topic, name), {}, None)
        if kind == _SUBSCRIPTIONS:
            self._subs.pop(name, None)
            if topic not in _DETACHED:
                await self._create_consumer(topic, name, {"deliver_policy": "new"})
        return True

    async def update_resource(self, kind: str, name: str, proto: bytes,
                              topic: str | None = None, expected: bytes | None = None) -> bool:
        return await self._announce(kind, name,
                                    await self._update(kind, name, proto, topic, expected))

    async def _update(self, kind: str, name: str, proto: bytes, topic: str | None,
                      expected: bytes | None) -> bool:
        key = self._key(kind, name)
        while True:
            current = await self._kv_get(key)
            if current is None:
                return False
            if expected is not None and base64.b64decode(current[0]["p"]) != expected:
                return False  # changed meanwhile (the caller reads it again)
            old_topic = current[0].get("t", "")
            new_topic = old_topic if topic is None else topic
            value = {"t": new_topic, "p": base64.b64encode(proto).decode()}
            if await self._kv_put(key, value, current[1]):
                break
        if new_topic != old_topic:
            if old_topic:
                await self._kv_delete(self._link(kind, old_topic, name))
            if new_topic:
                await self._kv_put(self._link(kind, new_topic, name), {}, None)
            if kind == _SUBSCRIPTIONS:
                self._subs.pop(name, None)
                if old_topic not in _DETACHED:
                    await self._delete_consumer(old_topic, name)
                if new_topic not in _DETACHED:
                    await self._create_consumer(new_topic, name, {"deliver_policy": "new"})
        return True

    async def get_resource(self, kind: str, name: str) -> bytes | None:
        cacheable = kind in _SHARED_KINDS
        if cacheable:
            cached = self._cache.get((kind, name))
            if cached is not None and cached[1] > time.monotonic():
                return cached[0]
        generation = self._generation
        found = await self._kv_get(self._key(kind, name))
        if found is None:
            return None  # (not kept: another process may create it any moment)
        raw = base64.b64decode(found[0]["p"])
        if cacheable and generation == self._generation:
            self._cache[(kind, name)] = (raw, time.monotonic() + _CACHE_S)
        return raw

    def _forget(self, kind: str, name: str) -> None:
        self._generation += 1
        self._cache.pop((kind, name), None)

    async def _on_error(self, exc: Exception) -> None:
        # One line per new problem, at most one every 10 s while it lasts (the client retries
        # four times a second).
        self._last_error = str(exc) or type(exc).__name__
        now = time.monotonic()
        if self._last_error != self._logged_error or now - self._logged_at > 10:
            self._logged_error, self._logged_at = self._last_error, now
            log.warning("NATS: %s", self._last_error)

    async def _on_disconnect(self) -> None:
        if not self._closed:
            log.warning("lost the connection to NATS; reconnecting")

    async def _on_reconnect(self) -> None:
        self._generation += 1
        self._cache.clear()  # (changes announced meanwhile were missed)
        log.info("reconnected to NATS at %s", self._nc.connected_url.netloc
                 if self._nc.connected_url else "?")

    async def delete_resource(self, kind: str, name: str) -> bool:
        return await self._announce(kind, name, await self._delete(kind, name))

    async def _delete(self, kind: str, name: str) -> bool:
        key = self._key(kind, name)
        current = await self._kv_get(key)
        if current is None:
            return False
        if not await self._kv_delete(key):
            return False
        topic = current[0].get("t", "")
        if topic:
            await self._kv_delete(self._link(kind, topic, name))
        if kind == _SUBSCRIPTIONS:
            self._subs.pop(name, None)
            if topic not in _DETACHED:
                await self._delete_consumer(topic, name)
            await self._kv_delete(self._key(_SUB_START, name))
        elif kind == "snapshots":
            await self._kv_delete(self._key(_SNAPSHOT_STATE, name))
        return True

    async def _values(self, kind: str, names: list[str]) -> list[tuple[str, bytes]]:
        found = await asyncio.gather(*(self._kv_get(self._key(kind, n)) for n in names))
        return [(n, base64.b64decode(f[0]["p"])) for n, f in zip(names, found, strict=True)
                if f is not None]

    async def list_resources(self, kind: str, prefix: str, page_size: int, page_token: str) -> Page:
        after = decode_page_token(page_token) if page_token else ""
        return await self._list(self._key(kind, "x").rpartition(".")[0] + ".*", prefix,
                                after, kind, page_size)

    async def list_by_topic(self, kind: str, topic: str, page_size: int, page_token: str) -> Page:
        after = decode_page_token(page_token) if page_token else ""
        return await self._list(self._link(kind, topic) + ".*", "", after, kind, page_size)

    async def _list(self, pattern: str, prefix: str, after: str, kind: str,
                    page_size: int) -> Page:
        names = sorted(n for n in (_unb64(s.rpartition(".")[2])
                                   for s in await self._subjects(pattern))
                       if n.startswith(prefix) and n > after)
        items: list[tuple[str, bytes]] = []
        want = page_size + 1 if page_size else len(names)
        while names and len(items) < want:  # a name may vanish between listing and reading
            chunk, names = names[:want - len(items)], names[want - len(items):]
            items.extend(await self._values(kind, chunk))
        return _page(items, page_size)

    # --- topics and subscriptions ------------------------------------------------------------
    def _stream(self, topic: str) -> str:
        return f"{self._NS}_T_{_hash(topic)}"

    def _subject(self, topic: str) -> str:
        return f"{self._ns}.msg.{_hash(topic)}"

    def _consumer(self, subscription: str) -> str:
        return f"C_{_hash(subscription)}"

    async def _topic_stream(self, topic: str) -> str:
        stream = self._stream(topic)
        if stream not in self._streams:
            info = await self._ensure_stream(
                stream, [self._subject(topic)],
                description=f"pubsub topic {topic}; id-prefix {random.randrange(1, 1 << 23)}",
                max_age=_MAX_AGE_S * 10**9)
            self._remember(stream, info)
        return stream

    def _remember(self, stream: str, info: Mapping[str, Any]) -> None:
        description = info.get("config", {}).get("description", "")
        self._streams[stream] = int(description.rpartition(" ")[2] or 0)

    async def _prefix(self, stream: str) -> int:
        if stream not in self._streams:
            self._remember(stream, await self._api(f"STREAM.INFO.{stream}"))
        return self._streams[stream]

    async def _create_consumer(self, topic: str, subscription: str,
                               start: Mapping[str, Any]) -> None:
        stream = await self._topic_stream(topic)
        consumer = self._consumer(subscription)
        config = {"durable_name": consumer, "ack_policy": "explicit",
                  "ack_wait": _ACK_WAIT_MS * 10**6, "max_deliver": -1,
                  "max_ack_pending": 1_000_000, "max_waiting": 512, "replay_policy": "instant",
                  "filter_subject": self._subject(topic),
                  **{k: v for k, v in start.items() if k != "keep_origin"}}
        info = await self._api(f"CONSUMER.DURABLE.CREATE.{stream}.{consumer}",
                               {"stream_name": stream, "config": config})
        if start.get("deliver_policy") == "new" and not start.get("keep_origin"):
            # Where the subscription began: a seek never goes back beyond it (unless the topic
            # retains messages), and retained acked messages are kept from there on.
            await self._kv_put(self._key(_SUB_START, subscription),
                               {"t": topic, "seq": info["delivered"]["stream_seq"] + 1, "p": ""},
                               None)

    async def _delete_consumer(self, topic: str, subscription: str) -> None:
        await self._kv_delete(self._order_key(self._consumer(subscription)), "OKEY")
        await self._kv_delete(self._key(_REDELIVERED, self._consumer(subscription)))
        try:
            await self._api(f"CONSUMER.DELETE.{self._stream(topic)}.{self._consumer(subscription)}")
        except NatsError as exc:
            if exc.err_code not in (_STREAM_NOT_FOUND, _CONSUMER_NOT_FOUND):
                raise

    async def _sub_topic(self, subscription: str, fresh: bool = False) -> str:
        """The subscription's topic link ("" when detached); KeyError if it does not exist."""
        if fresh or subscription not in self._subs:
            found = await self._kv_get(self._key(_SUBSCRIPTIONS, subscription))
            if found is None:
                self._subs.pop(subscription, None)
                raise KeyError(subscription)
            topic = found[0].get("t", "")
            self._subs[subscription] = "" if topic in _DETACHED else topic
        return self._subs[subscription]

    async def _consumer_call(self, subscription: str,
                             call: Callable[[str, str], Any], default: Any) -> Any:
        """Run `call(stream, consumer)`; refresh the cached topic link once if it is gone."""
        for fresh in (False, True):
            topic = await self._sub_topic(subscription, fresh)
            if not topic:
                return default
            try:
                return await call(self._stream(topic), self._consumer(subscription))
            except NatsError as exc:
                if exc.err_code not in (_STREAM_NOT_FOUND, _CONSUMER_NOT_FOUND):
                    raise
        return default

    # --- messages ---------------------------------------------------------------------------
    async def publish(self, topic: str, messages: Sequence[bytes], now_ms: int,
                      skip: Mapping[str, set[int]] | None = None,
                      ordering_keys: Sequence[str] | None = None,
                      retain: bool = False) -> list[str]:
        return await self._publish(topic, messages, now_ms, skip or {}, ordering_keys)

    async def _publish(self, topic: str, messages: Sequence[bytes], now_ms: int,
                       skip: Mapping[str, set[int]], ordering_keys: Sequence[str] | None
                       ) -> list[str]:
        try:
            return await self._publish_once(topic, messages, now_ms, skip, ordering_keys)
        except _NoStream:  # the stream went away (deleted by hand): create it again
            self._streams.pop(self._stream(topic), None)
            return await self._publish_once(topic, messages, now_ms, skip, ordering_keys)

    async def _publish_once(self, topic: str, messages: Sequence[bytes], now_ms: int,
                            skip: Mapping[str, set[int]], ordering_keys: Sequence[str] | None
                            ) -> list[str]:
        stream = await self._topic_stream(topic)
        subject = self._subject(topic)
        stamp = timestamp_pb2.Timestamp(seconds=now_ms // 1000, nanos=(now_ms % 1000) * 1_000_000)
        tail = _PubsubMessage(publish_time=stamp).SerializeToString()
        skipped: dict[int, list[str]] = {}
        for name, indexes in skip.items():
            for index in indexes:
                skipped.setdefault(index, []).append(self._consumer(name))
        items = []
        for index, raw in enumerate(messages):
            headers = {_H_TIME: str(now_ms), _H_SIZE: str(len(raw))}
            if ordering_keys and ordering_keys[index]:
                headers[_H_KEY] = ordering_keys[index]
            if index in skipped:
                headers[_H_SKIP] = ",".join(skipped[index])
            items.append((subject, raw + tail, headers))
        acks = await self._publish_many(items)
        if any("error" in a for a in acks):
            raise NatsError(next(a["error"] for a in acks if "error" in a))
        prefix = await self._prefix(stream)
        await self._nc.publish(f"{self._ns}.wake.{_hash(topic)}",
                               f"{self._origin}\n{topic}".encode())
        return [str(prefix * _ID_SCALE + a["seq"]) for a in acks]

    async def pull(self, subscription: str, max_messages: int, lease_ms: int, now_ms: int,
                   max_bytes: int = 0, policy: DeliveryPolicy = DEFAULT_POLICY) -> list[Delivery]:
        return await self._consumer_call(
            subscription, lambda s, c: self._pull(s, c, max_messages, lease_ms, now_ms,
                                                  max_bytes, policy), [])

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
                msg = await asyncio.wait_for(queue.get(), 5.0)
                status = (msg.headers or {}).get("Status")
                if status == "100":
                    continue  # flow control / heartbeat
                if status:
                    if status == "409" and "consumer deleted" in str(msg.headers).lower():
                        raise NatsError({"err_code": _CONSUMER_NOT_FOUND, "description":
                                         "consumer deleted"})
                    if not got and status not in ("404", "408"):
                        # 409 (no such consumer, ...) or 503 (no leader yet): ask, so the
                        # right error is raised
                        await self._api(f"CONSUMER.INFO.{stream}.{consumer}")
                    break  # 404/408: nothing more now
                got.append(msg)
            return got
        except TimeoutError:
            await self._api(f"CONSUMER.INFO.{stream}.{consumer}")  # raises if it is gone
            return []
        finally:
            await sub.unsubscribe()

    async def _pull(self, stream: str, consumer: str, max_messages: int, lease_ms: int,
                    now_ms: int, max_bytes: int, policy: DeliveryPolicy) -> list[Delivery]:
        msgs = await self._fetch(stream, consumer, max_messages)
        prefix = await self._prefix(stream)
        deliveries: list[Delivery] = []
        total = 0
        retry = policy.retry
        accepts = self._accepts(policy.filter)
        chosen, over = [], []
        for msg in msgs:
            headers = msg.headers or {}
            ack = _Ack(msg.reply[len("$JS.ACK."):])
            if (consumer in headers.get(_H_SKIP, "").split(",")
                    or (accepts is not _accept_all
                        and not accepts(_PubsubMessage.FromString(msg.data).attributes))):
                await self._nc.publish(msg.reply, b"+TERM")  # its filter rejects it
                continue
            size = int(headers.get(_H_SIZE, len(msg.data)))
            if max_bytes and chosen and total + size > max_bytes:
                if policy.ordered:
                    over.append((msg, ack, size))  # (sent back once recorded)
                else:
                    await self._nc.publish(msg.reply, b"-NAK")  # over the byte budget: back now
                continue
            total += size
            chosen.append((msg, ack, size))
        attempts: dict[int, int] = {}  # stream sequence -> delivery attempt, when not `delivered`
        if policy.ordered and (chosen or over):
            chosen = await self._order(stream, consumer, chosen, over, attempts, accepts)
        if policy.exactly_once and chosen:
            chosen = await self._lease_current(chosen, now_ms + lease_ms)
        elif any(ack.delivered > 1 for _, ack, _ in chosen):
            await self._note_redelivered(consumer, [ack for _, ack, _ in chosen
                                                    if ack.delivered > 1])
        for msg, ack, size in chosen:
            attempt = attempts.get(ack.sseq, ack.delivered)
            delay = lease_ms + (retry.delay_ms(attempt) if retry else 0)
            if delay != _ACK_WAIT_MS:
                await self._nc.publish(msg.reply, f'-NAK {{"delay": {delay * 10**6}}}'.encode())
            message = msg.data + _PubsubMessage(
                message_id=str(prefix * _ID_SCALE + ack.sseq)).SerializeToString()
            deliveries.append(Delivery(msg.reply[len("$JS.ACK."):], message, attempt, size))
        return deliveries

    # Per-key ordering: one record per ordered subscription, `<ns>.okey.<consumer>` in the
    # OKEY stream, changed only by compare-and-set (so every process sees one history):
    #   {"c": the consumer's creation time (a record of an older consumer is void),
    #    "hi": every keyed message up to this stream sequence that is not acked has an entry,
    #    "k": {ordering key: [[sseq, reply subject, holds, state, delivered], ...] by sseq}}
    # An entry is a fetched (or seen) message of the key that is not acked; state is
    # L leased, W waiting for its redelivery (nacked, over a byte budget), P parked (held back
    # behind an earlier message of its key, sent back with a long delay), G seen by another
    # process's pull that has not recorded it yet. A keyed message is delivered only when every
    # earlier entry of its key is delivered in the same pull, else it is parked; an ack of a
    # key's message sends the parked ones at the front of the key back at once, a nack sends the
    # key's later leased and parked messages back with it, in order. A park is not a delivery
    # attempt: `holds` counts them and the attempt reported is delivered - holds.
    def _order_key(self, consumer: str) -> str:
        return f"{self._ns}.okey.{consumer}"

    async def _key_of(self, stream: str, consumer: str, seq: int,
                      accepts: Callable[[Any], bool]) -> str:
        """The ordering key of a stored message ("" if none, gone, or not for the consumer)."""
        try:
            resp = await self._api(f"STREAM.MSG.GET.{stream}", {"seq": seq})
        except NatsError:
            return ""
        headers = _parse_headers(base64.b64decode(resp["message"].get("hdrs") or b""))
        key = headers.get(_H_KEY, "")
        if not key or consumer in headers.get(_H_SKIP, "").split(","):
            return ""
        if accepts is not _accept_all:
            message = _PubsubMessage.FromString(base64.b64decode(resp["message"].get("data")
                                                                 or b""))
            if not accepts(message.attributes):
                return ""
        return key

    def _accepts(self, text: str) -> Callable[[Any], bool]:
        """A subscription filter's predicate over attributes (compiled once per text)."""
        if not text:
            return _accept_all
        predicate = self._filters.get(text)
        if predicate is None:
            predicate = self._filters[text] = compile_filter(text)
        return predicate

    async def _order(self, stream: str, consumer: str, chosen: list[Any], over: list[Any],
                     attempts: dict[int, int], accepts: Callable[[Any], bool]) -> list[Any]:
        """Of a pull's messages, those per-key ordering lets out now (the rest go back)."""
        subject = self._order_key(consumer)
        batch = {ack.sseq: (msg, ack, size, (msg.headers or {}).get(_H_KEY, ""), False)
                 for msg, ack, size in chosen}
        batch.update({ack.sseq: (msg, ack, size, (msg.headers or {}).get(_H_KEY, ""), True)
                      for msg, ack, size in over})
        top = max(batch)
        looked: dict[int, str] = {}
        park = f'-NAK {{"delay": {_PARK_MS * 10**6}}}'.encode()
        while True:
            found, info = await asyncio.gather(self._kv_get(subject, "OKEY"),
                                               self._info(stream, consumer))
            created = str(info.get("created", ""))
            if found is None or found[0].get("c") != created:
                record: dict[str, Any] = {"c": created, "k": {},
                                          "hi": int(info["ack_floor"]["stream_seq"])}
                last = found[1] if found else 0
            else:
                record, last = found
            hi = record["hi"]
            keys: dict[str, list[list[Any]]] = record["k"]
            # Messages between what the record covers and this pull's went to other pulls
            # (maybe not recorded yet): their keys are read from the stream.
            gap = [seq for seq in range(hi + 1, top) if seq not in batch and seq not in looked]
            for start in range(0, len(gap), 256):
                chunk = gap[start:start + 256]
                found_keys = await asyncio.gather(*(self._key_of(stream, consumer, seq,
                                                                 accepts)
                                                    for seq in chunk))
                looked.update(zip(chunk, found_keys, strict=True))
            for seq in range(hi + 1, top):
                if seq not in batch and looked.get(seq):
                    _entry(keys.setdefault(looked[seq], []), seq)
            deliver, sends, delivering = [], [], set()
            for seq in sorted(batch):
                msg, ack, size, key, is_over = batch[seq]
                if not key:
                    if is_over:
                        sends.append((msg.reply, b"-NAK"))
                    else:
                        deliver.append((msg, ack, size))
                    continue
                entries = keys.setdefault(key, [])
                entry = _entry(entries, seq, create=seq > hi)
                if entry is None:  # covered by the record and without entry: acked
                    sends.append((msg.reply, b"+ACK"))
                    continue
                previous = entry[3]
                entry[1], entry[4] = msg.reply, ack.delivered
                if is_over or any(e[0] not in delivering for e in entries if e[0] < seq):
                    entry[2] += 1  # fetched, not delivered: not an attempt
                    entry[3] = "W" if is_over else "P"
                    sends.append((msg.reply, b"-NAK" if is_over else park))
                    continue
                entry[3] = "L"
                delivering.add(seq)
                attempts[seq] = max(1, ack.delivered - entry[2])
                deliver.append((msg, ack, size))
                if previous == "L":
                    # Its lease ran out: the key's later leased messages come again after it.
                    for later in entries:
                        if later[0] > seq and later[3] == "L" and later[0] not in batch:
                            later[3] = "P"
                            sends.append((later[1], park))
            record["hi"] = max(hi, top)
            record["k"] = {k: v for k, v in keys.items() if v}
            if await self._kv_put(subject, record, last):
                await self._send(sends)
                parked = {(r, body) for r, body in sends if body == park}
                if parked:
                    await self._unpark_released(subject, {r for r, _ in parked})
                return deliver
            attempts.clear()

    async def _unpark_released(self, subject: str, replies: set[str]) -> None:
        """Send back at once what was released while this process was parking it.

        A release (after the earlier message's ack) may reach the server before the park it
        undoes; the park was processed before this read, so what the read shows released (state
        W, not fetched again since) is sent back once more, after the park.
        """
        found = await self._kv_get(subject, "OKEY")
        if found is None:
            return
        again = [(e[1], b"-NAK") for entries in found[0]["k"].values() for e in entries
                 if e[3] == "W" and e[1] in replies]
        await self._send(again)

    async def _order_settle(self, parsed: list[_Ack], nack: Callable[[_Ack, int], bytes] | None
                            ) -> dict[int, list[tuple[str, bytes]]]:
        """Record acks (nack None) or nacks of ordered messages; returns the sends by sseq.

        An ack drops the message's entry and sends back the parked messages at the front of its
        key; a nack (`nack(ack, attempt)` gives its body) marks it waiting and sends the key's
        later leased or parked messages back with the same body, to come again after it.
        """
        by_consumer: dict[str, list[_Ack]] = {}
        for ack in parsed:
            by_consumer.setdefault(ack.consumer, []).append(ack)
        result: dict[int, list[tuple[str, bytes]]] = {}
        for consumer, acks in by_consumer.items():
            subject = self._order_key(consumer)
            while True:
                found = await self._kv_get(subject, "OKEY")
                sends: dict[int, list[tuple[str, bytes]]] = {}
                changed = False
                keys: dict[str, list[list[Any]]] = found[0]["k"] if found else {}
                where = {e[0]: (k, e) for k, entries in keys.items() for e in entries}
                for ack in acks:
                    key, entry = where.get(ack.sseq, ("", None))
                    if nack is None:
                        sends.setdefault(ack.sseq, []).append((ack.subject, b"+ACK"))
                        if entry is None:
                            continue
                        entries = keys[key]
                        entries.remove(entry)
                        changed = True
                        for later in entries:
                            if later[3] != "P":
                                break
                            later[3] = "W"
                            sends.setdefault(later[0], [(later[1], b"-NAK")])
                        continue
                    attempt = ack.delivered - (entry[2] if entry else 0)
                    body = nack(ack, attempt)
                    sends[ack.sseq] = [(ack.subject, body)]
                    if entry is None:
                        continue
                    entry[3] = "W"
                    changed = True
                    for later in keys[key]:
                        if later[0] > ack.sseq and later[3] in ("L", "P"):
                            later[3] = "W"
                            sends.setdefault(later[0], [(later[1], body)])
                if not changed or await self._kv_put(
                        subject, {**found[0], "k": {k: v for k, v in keys.items() if v}},
                        found[1]):
                    for seq, items in sends.items():
                        result.setdefault(seq, []).extend(items)
                    break
        return result

    def _parse(self, subscription: str, ack_ids: Sequence[str]) -> list[_Ack]:
        consumer = self._consumer(subscription)
        parsed = []
        for ack_id in ack_ids:
            ack = _Ack(ack_id)
            if ack.consumer != consumer:
                raise InvalidAckId(ack_id)
            parsed.append(ack)
        return parsed

    # Stale ack ids: JetStream applies a NAK (our modack) to a message's current delivery
    # whatever delivery its reply subject names, so a modack with the ack id of an earlier
    # delivery would move the current lease. Each consumer keeps a record of its redelivered
    # messages ({"d": {sseq: delivery count}}, written before a redelivery is handed out, by
    # compare-and-set, pruned below the ack floor by the sweeper); a modack whose delivery
    # count is below the recorded one changes nothing, as on the embedded store. First
    # deliveries write nothing: a message delivered once has no stale ack id.
    async def _note_redelivered(self, consumer: str, acks: list[_Ack]) -> None:
        key = self._key(_REDELIVERED, consumer)
        while True:
            found = await self._kv_get(key)
            counts: dict[str, int] = found[0]["d"] if found else {}
            for ack in acks:
                counts[str(ack.sseq)] = max(counts.get(str(ack.sseq), 0), ack.delivered)
            if await self._kv_put(key, {"d": counts}, found[1] if found else 0):
                return

    async def _current(self, parsed: list[_Ack]) -> list[_Ack]:
        """The ack ids that name their message's latest delivery."""
        consumers = sorted({ack.consumer for ack in parsed})
        records = await asyncio.gather(*(self._kv_get(self._key(_REDELIVERED, c))
                                         for c in consumers))
        latest = {c: (r[0]["d"] if r else {}) for c, r in zip(consumers, records, strict=True)}
        return [ack for ack in parsed
                if ack.delivered >= latest[ack.consumer].get(str(ack.sseq), 0)]

    async def _prune_redelivered(self, needed: Mapping[str, int]) -> None:
        """Forget redeliveries below each consumer's ack floor (and of consumers gone)."""
        for subject in await self._subjects(self._key(_REDELIVERED, "x").rpartition(".")[0]
                                            + ".*"):
            consumer = _unb64(subject.rpartition(".")[2])
            found = await self._kv_get(subject)
            if found is None:
                continue
            if consumer not in needed:
                await self._kv_delete(subject)
                continue
            counts = {seq: n for seq, n in found[0]["d"].items()
                      if int(seq) >= needed[consumer]}
            if len(counts) < len(found[0]["d"]):
                await self._kv_put(subject, {"d": counts}, found[1])  # (lost race: next time)

    # Exactly-once: each delivery's lease is a record `<ns>.lease.<consumer>.<sseq>` in the
    # resource stream ({"d": delivery count, "until": ms} or {"acked": true}), changed only
    # with compare-and-set on its subject sequence, so of two processes racing on a message
    # (an ack at the deadline, a redelivery elsewhere) exactly one wins.
    def _lease_key(self, ack: _Ack) -> str:
        return f"{self._ns}.lease.{ack.consumer}.{ack.sseq}"

    async def _lease_current(self, chosen: list[Any], until: int) -> list[Any]:
        """Record the leases of fresh deliveries; drop those acked meanwhile."""
        records = await asyncio.gather(*(self._kv_get(self._lease_key(a)) for _, a, _ in chosen))
        writes, kept = [], []
        for (msg, ack, size), record in zip(chosen, records, strict=True):
            if record is not None and record[0].get("acked"):
                await self._nc.publish(msg.reply, b"+ACK")  # acked by the previous lease
                continue
            writes.append((self._lease_key(ack),
                           json.dumps({"d": ack.delivered, "until": until}).encode(),
                           {"Nats-Expected-Last-Subject-Sequence":
                            str(record[1] if record else 0)}))
            kept.append((msg, ack, size))
        results = await self._publish_many(writes)
        # A failed compare-and-set: another process acked or leased it first; JetStream
        # redelivers it later if it still needs to.
        return [item for item, result in zip(kept, results, strict=True) if "error" not in result]

    async def _settle(self, parsed: list[_Ack], ack_ids: Sequence[str], now_ms: int,
                      value: Callable[[_Ack], dict[str, Any]]) -> tuple[list[_Ack], list[str]]:
        """Under exactly-once: move current leases to `value`; the rest are stale."""
        records = await asyncio.gather(*(self._kv_get(self._lease_key(a)) for a in parsed))
        writes, candidates, stale = [], [], []
        for ack_id, ack, record in zip(ack_ids, parsed, records, strict=True):
            if (record is None or record[0].get("acked") or record[0].get("d") != ack.delivered
                    or now_ms >= record[0].get("until", 0)):
                stale.append(ack_id)
                continue
            writes.append((self._lease_key(ack), json.dumps(value(ack)).encode(),
                           {"Nats-Expected-Last-Subject-Sequence": str(record[1])}))
            candidates.append((ack_id, ack))
        current = []
        for (ack_id, ack), result in zip(candidates, await self._publish_many(writes),
                                         strict=True):
            if "error" in result:
                stale.append(ack_id)
            else:
                current.append(ack)
        return current, stale

    def _targets(self, subscription: str, ack_ids: Sequence[str], policy: DeliveryPolicy
                 ) -> tuple[list[_Ack], list[str], list[str]]:
        """(parsed, their ids, refused ids): exactly-once refuses malformed ids, else raises."""
        if not policy.exactly_once:
            return self._parse(subscription, ack_ids), list(ack_ids), []
        parsed, ids, bad = [], [], []
        for ack_id in ack_ids:
            try:
                parsed += self._parse(subscription, [ack_id])
                ids.append(ack_id)
            except InvalidAckId:
                bad.append(ack_id)
        return parsed, ids, bad

    async def acknowledge(self, subscription: str, ack_ids: Sequence[str],
                          policy: DeliveryPolicy = DEFAULT_POLICY, now_ms: int = 0) -> list[str]:
        parsed, ids, bad = self._targets(subscription, ack_ids, policy)
        return bad + await self._acknowledge(parsed, ids, policy, now_ms)

    async def _acknowledge(self, parsed: list[_Ack], ack_ids: Sequence[str],
                           policy: DeliveryPolicy, now_ms: int) -> list[str]:
        stale: list[str] = []
        if policy.exactly_once:
            parsed, stale = await self._settle(parsed, ack_ids, now_ms, lambda a: {"acked": True})
        if policy.ordered:
            sends = await self._order_settle(parsed, None)
            await self._send([item for seq in sorted(sends) for item in sends[seq]])
        else:
            await self._send([(ack.subject, b"+ACK") for ack in parsed])
        return stale

    async def modify_deadline(self, subscription: str, ack_ids: Sequence[str], deadline_ms: int,
                              now_ms: int, policy: DeliveryPolicy = DEFAULT_POLICY) -> list[str]:
        parsed, ids, bad = self._targets(subscription, ack_ids, policy)
        return bad + await self._modify(parsed, ids, deadline_ms, now_ms, policy)

    async def _modify(self, parsed: list[_Ack], ack_ids: Sequence[str], deadline_ms: int,
                      now_ms: int, policy: DeliveryPolicy) -> list[str]:
        stale: list[str] = []
        if policy.exactly_once:
            # a nack ends the lease (until = now); an extension moves it
            parsed, stale = await self._settle(
                parsed, ack_ids, now_ms,
                lambda a: {"d": a.delivered, "until": now_ms + deadline_ms})
        else:
            parsed = await self._current(parsed)
        retry = policy.retry
        if deadline_ms == 0:  # a nack: through the ordering record (if any), as an ack
            def body(ack: _Ack, attempt: int) -> bytes:
                delay = retry.delay_ms(attempt) if retry else 0
                return f'-NAK {{"delay": {delay * 10**6}}}'.encode() if delay else b"-NAK"

            if policy.ordered:
                by_seq = await self._order_settle(parsed, body)
                await self._send([item for seq in sorted(by_seq) for item in by_seq[seq]])
            else:
                await self._send([(ack.subject, body(ack, ack.delivered)) for ack in parsed])
            return stale
        sends = []
        for ack in parsed:
            delay = deadline_ms + (retry.delay_ms(ack.delivered) if retry else 0)
            body = f'-NAK {{"delay": {delay * 10**6}}}' if delay else "-NAK"
            sends.append((ack.subject, body.encode()))
        await self._send(sends)
        return stale

    async def _send(self, sends: list[tuple[str, bytes]]) -> None:
        """Send acks and nacks of one consumer in order; return once the server applied all.

        An acknowledgement the caller is told succeeded must not be lost with a NATS node, and
        a nacked message must be available to the very next pull; JetStream queues acks and
        nacks to their consumer (a flush does not mean applied) and answers one sent with a
        reply subject once the consumer applied it. A consumer applies what one connection
        sends it in order, so only the last send asks for an answer: one round trip, and one
        answer, for the batch. (Every caller sends for one subscription: ack ids of another
        are refused by _parse.)
        """
        if not sends:
            return
        token, queue = self._reply_queue()
        try:
            for subject, body in sends[:-1]:
                await self._nc.publish(subject, body)
            subject, body = sends[-1]
            await self._nc.publish(subject, body, reply=f"{self._inbox}.{token}")
            await asyncio.wait_for(queue.get(), 10.0)
        finally:
            self._waiting.pop(token, None)

    async def _info(self, stream: str, consumer: str) -> dict[str, Any]:
        return await self._api(f"CONSUMER.INFO.{stream}.{consumer}")

    async def next_due_ms(self, subscription: str) -> int | None:
        info = await self._consumer_call(subscription, self._info, None)
        if not info:
            return None
        now = int(time.time() * 1000)
        if info.get("num_pending", 0) > 0:
            return now
        if info.get("num_ack_pending", 0) > 0:
            return now + 1000  # leased or backing off: JetStream does not say until when
        return None  # nothing stored: a publish (from any process) wakes the waiters

    async def backlog(self, subscription: str) -> int:
        info = await self._consumer_call(subscription, self._info, None)
        return (info.get("num_pending", 0) + info.get("num_ack_pending", 0)) if info else 0

    async def purge(self, subscription: str) -> None:
        await self._restart(subscription, {"deliver_policy": "new", "keep_origin": True})

    async def _restart(self, subscription: str, start: Mapping[str, Any]) -> None:
        topic = await self._sub_topic(subscription, fresh=True)
        if not topic:
            return
        await self._delete_consumer(topic, subscription)
        await self._create_consumer(topic, subscription, start)

    async def _seq_at(self, stream: str, time_ms: int) -> int:
        """The first stream sequence published at or after time_ms (last + 1 if none)."""
        state = (await self._api(f"STREAM.INFO.{stream}"))["state"]
        low, high = state["first_seq"], state["last_seq"] + 1
        while low < high:
            mid = (low + high) // 2
            try:
                resp = await self._api(f"STREAM.MSG.GET.{stream}", {"seq": mid})
                message = resp["message"]
                seq = message["seq"]
                published = int(_parse_headers(base64.b64decode(message.get("hdrs") or b""))
                                .get(_H_TIME, 0))
            except NatsError:  # deleted: treat as early
                seq, published = mid, -1
            if published >= time_ms:
                high = seq
            else:
                low = seq + 1
        return low

    async def seek_to_time(self, subscription: str, time_ms: int, now_ms: int,
                           policy: DeliveryPolicy = DEFAULT_POLICY,
                           from_topic: bool = False) -> None:
        await self._seek_time(subscription, time_ms, policy, from_topic)

    async def _seek_time(self, subscription: str, time_ms: int, policy: DeliveryPolicy,
                         from_topic: bool) -> None:
        topic = await self._sub_topic(subscription, fresh=True)
        if not topic:
            return
        stream = await self._topic_stream(topic)
        start = await self._seq_at(stream, time_ms)
        if not from_topic:
            start = max(start, await self._origin_seq(subscription))
        if not (from_topic or policy.retain_acked):
            # Without kept acks, what the subscription acknowledged below its ack floor stays
            # acknowledged (acks above the floor are not known: those come again).
            try:
                info = await self._info(stream, self._consumer(subscription))
                start = max(start, _needed_from(info))
            except NatsError:
                pass
        await self._restart(subscription, {"deliver_policy": "by_start_sequence",
                                           "opt_start_seq": start})

    async def _origin_seq(self, subscription: str) -> int:
        found = await self._kv_get(self._key(_SUB_START, subscription))
        return int(found[0]["seq"]) if found else 0

    async def save_snapshot(self, snapshot: str, subscription: str) -> None:
        await self._save_snapshot(snapshot, subscription)

    async def _save_snapshot(self, snapshot: str, subscription: str) -> None:
        topic = await self._sub_topic(subscription, fresh=True)
        floor = 0
        if topic:
            stream = await self._topic_stream(topic)
            info = await self._info(stream, self._consumer(subscription))
            floor = _needed_from(info) - 1
        await self._kv_put(self._key(_SNAPSHOT_STATE, snapshot),
                           {"t": topic, "floor": floor, "p": ""}, None)

    async def seek_to_snapshot(self, subscription: str, snapshot: str, now_ms: int) -> None:
        await self._seek_snapshot(subscription, snapshot)

    async def _seek_snapshot(self, subscription: str, snapshot: str) -> None:
        found = await self._kv_get(self._key(_SNAPSHOT_STATE, snapshot))
        if found is None:
            raise KeyError(snapshot)
        await self._restart(subscription, {"deliver_policy": "by_start_sequence",
                                           "opt_start_seq": found[0]["floor"] + 1})

    async def sweep(self, now_ms: int, rules: RetentionRules | None = None) -> int:
        return await self._sweep(now_ms, rules or RetentionRules())

    async def _sweep(self, now_ms: int, rules: RetentionRules) -> int:
        floors: dict[str, int] = {}
        gone = 0
        for subject in await self._subjects(self._key(_SNAPSHOT_STATE, "x").rpartition(".")[0]
                                            + ".*"):
            found = await self._kv_get(subject)
            if found and found[0].get("t"):
                stream = self._stream(found[0]["t"])
                floors[stream] = min(floors.get(stream, 1 << 62), found[0]["floor"] + 1)
        for name, retention_ms in rules.subscription_ms.items():
            # retain_acked_messages: acked messages stay for the subscription's retention.
            found = await self._kv_get(self._key(_SUBSCRIPTIONS, name))
            if not found or found[0].get("t", "") in _DETACHED:
                continue
            try:
                sub = _Subscription.FromString(base64.b64decode(found[0]["p"]))
            except Exception:  # noqa: BLE001 - not a Subscription proto (contract tests)
                sub = _Subscription()
            if not sub.retain_acked_messages:
                gone += await self._expire_backlog(name, found[0]["t"], now_ms - retention_ms)
            else:
                stream = self._stream(found[0]["t"])
                try:
                    keep = max(await self._seq_at(stream, now_ms - retention_ms),
                               await self._origin_seq(name))
                except NatsError:
                    continue
                floors[stream] = min(floors.get(stream, 1 << 62), keep)
        retained = {self._stream(t): ms for t, ms in rules.topic_ms.items()}
        offset = 0
        needed: dict[str, int] = {}  # consumer -> first stream sequence it may deliver
        while True:
            resp = await self._api("STREAM.NAMES", {"offset": offset,
                                                    "subject": f"{self._ns}.msg.*"})
            names = resp.get("streams") or []
            for stream in names:
                gone += await self._sweep_stream(stream, floors.get(stream, 1 << 62),
                                                 retained.get(stream), now_ms, needed)
            offset += len(names)
            if not names or offset >= resp.get("total", 0):
                break
        await self._prune_redelivered(needed)
        # exactly-once lease records of messages no consumer can deliver again
        done = []
        for subject in await self._subjects(f"{self._ns}.lease.>"):
            _, _, consumer, sseq = subject.rsplit(".", 3)
            if int(sseq) < needed.get(consumer, 1 << 62):
                done.append(subject)
        for start in range(0, len(done), 256):
            await asyncio.gather(*(self._kv_delete(subject)
                                   for subject in done[start:start + 256]))
        return gone

    async def _expire_backlog(self, subscription: str, topic: str, cutoff_ms: int) -> int:
        """Drop the subscription's unacked messages published before the cutoff."""
        stream, consumer = self._stream(topic), self._consumer(subscription)
        try:
            info = await self._info(stream, consumer)
            if info.get("num_pending", 0) + info.get("num_ack_pending", 0) == 0:
                return 0
            oldest = _needed_from(info)
            resp = await self._api(f"STREAM.MSG.GET.{stream}",
                                   {"seq": oldest, "next_by_subj": self._subject(topic)})
            hdrs = _parse_headers(base64.b64decode(resp["message"].get("hdrs") or b""))
            if int(hdrs.get(_H_TIME, cutoff_ms)) >= cutoff_ms:
                return 0
            start = max(oldest, await self._seq_at(stream, cutoff_ms))
        except NatsError:
            return 0
        # Restart the consumer past them (acks above its ack floor are forgotten: those
        # messages come once more, as at-least-once allows).
        log.info("%s: dropping unacked messages older than its retention", subscription)
        await self._restart(subscription, {"deliver_policy": "by_start_sequence",
                                           "opt_start_seq": start})
        return 0

    async def _sweep_stream(self, stream: str, low: int, retention_ms: int | None,
                            now_ms: int, needed: dict[str, int]) -> int:
        info = await self._api(f"STREAM.INFO.{stream}")
        state = info["state"]
        low = min(low, state["last_seq"] + 1)
        offset = 0
        while True:
            resp = await self._api(f"CONSUMER.LIST.{stream}", {"offset": offset})
            consumers = resp.get("consumers") or []
            for consumer in consumers:
                needed[consumer["name"]] = _needed_from(consumer)
                low = min(low, _needed_from(consumer))
            offset += len(consumers)
            if not consumers or offset >= resp.get("total", 0):
                break
        if state.get("messages", 0) == 0:
            return 0
        if retention_ms is not None:  # the topic keeps what is younger than its retention
            low = min(low, await self._seq_at(stream, now_ms - retention_ms))
        if low <= state["first_seq"]:
            return 0
        resp = await self._api(f"STREAM.PURGE.{stream}", {"seq": low})
        return int(resp.get("purged", 0))

    # --- wake-ups across processes -----------------------------------------------------------
    def set_listener(self, callback: Callable[[str], None]) -> None:
        self._listener = callback

    def set_change_listener(self, callback: Callable[[str, str], None]) -> None:
        self._change_listener = callback

    async def _on_change(self, msg: Any) -> None:
        origin, kind, name = msg.data.decode().split("\n", 2)
        if origin == self._origin:
            return
        self._forget(kind, name)
        if kind == _SUBSCRIPTIONS:
            self._subs.pop(name, None)
        if self._change_listener is not None:
            self._change_listener(kind, name)

    async def _on_wake(self, msg: Any) -> None:
        origin, _, topic = msg.data.decode().partition("\n")
        if origin != self._origin and self._listener is not None:
            self._listener(topic)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            await asyncio.wait_for(self._nc.close(), 10)
        except Exception:  # noqa: BLE001 - closing anyway
            log.debug("closing the NATS connection failed", exc_info=True)
