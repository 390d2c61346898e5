"""The resource table: one message per subject in the resource stream, with a short-lived cache.

A resource is `<ns>.res.<kind>.<b64url(name)>` with the JSON value {"t": topic link, "p": b64
bytes}; creation expects the subject to have no message yet, so it is atomic across processes.
A topic link also has an index subject `<ns>.link.<kind>.<b64(topic)>.<b64(name)>` for
list_by_topic. A change of an announced kind is told to the other processes (`<ns>.changed`).
"""

from __future__ import annotations

import asyncio
import base64
import json
import time

from ..base import ANNOUNCED_KINDS, Kind, Page, ResourceTable
from ..pages import decode_page_token, page_of
from .client import JetStream
from .layout import DETACHED, SNAPSHOT_STATE, SUB_START, Layout, unb64
from .topics import Topics

_CACHE_S = 5.0  # the longest a resource read is reused (changes normally drop it at once)


class NatsResourceTable(ResourceTable):
    """Resources in the resource stream; a subscription's consumer follows its topic link."""

    def __init__(self, js: JetStream, layout: Layout, topics: Topics, origin: str) -> None:
        self._js = js
        self._layout = layout
        self._topics = topics
        self._origin = origin  # this process, in its announcements
        # Topics, subscriptions, snapshots and schemas read recently, by (kind, name): every
        # RPC reads one or two, so they are reused until changed here, announced changed by
        # another process, the connection was lost (announcements may be missed) or _CACHE_S
        # passed. `_generation` counts drops: a read that overlapped one is not kept.
        self._cache: dict[tuple[Kind, str], tuple[bytes, float]] = {}
        self._generation = 0

    # --- the cache and the announcements --------------------------------------------------
    def forget(self, kind: Kind, name: str) -> None:
        """Drop what is cached of a resource (changed here or by another process)."""
        self._generation += 1
        self._cache.pop((kind, name), None)
        if kind is Kind.SUBSCRIPTION:
            self._topics.forget(name)

    def forget_all(self) -> None:
        """Drop the whole cache (after a lost connection changes announced meanwhile were
        missed)."""
        self._generation += 1
        self._cache.clear()

    async def _announce(self, kind: Kind, name: str, changed: bool) -> bool:
        """Tell the other processes of a change (they drop what they cached of it)."""
        self.forget(kind, name)
        if changed and kind in ANNOUNCED_KINDS:
            await self._js.publish(self._layout.changes,
                                   f"{self._origin}\n{kind.value}\n{name}".encode())
        return changed

    def heard(self, announcement: bytes) -> tuple[Kind, str] | None:
        """Another process's announcement: what changed (now dropped from the cache), or None
        for this process's own."""
        origin, kind_value, name = announcement.decode().split("\n", 2)
        if origin == self._origin:
            return None
        try:
            kind = Kind(kind_value)
        except ValueError:  # not a kind this version knows: nothing of it is cached
            return None
        self.forget(kind, name)
        return kind, name

    # --- the table ------------------------------------------------------------------------
    async def create(self, kind: Kind, name: str, data: bytes, topic: str = "") -> bool:
        return await self._announce(kind, name, await self._create(kind, name, data, topic))

    async def _create(self, kind: Kind, name: str, data: bytes, topic: str) -> bool:
        value = {"t": topic, "p": base64.b64encode(data).decode()}
        if not await self._js.kv_put(self._layout.key(kind.value, name), value, 0):
            return False
        if topic:
            await self._js.kv_put(self._layout.link(kind.value, topic, name), {}, None)
        if kind is Kind.SUBSCRIPTION:
            self._topics.forget(name)
            if topic not in DETACHED:
                await self._topics.create_consumer(topic, name, {"deliver_policy": "new"})
        return True

    async def update(self, kind: Kind, name: str, data: bytes, topic: str | None = None,
                     expected: bytes | None = None) -> bool:
        return await self._announce(kind, name,
                                    await self._update(kind, name, data, topic, expected))

    async def _update(self, kind: Kind, name: str, data: bytes, topic: str | None,
                      expected: bytes | None) -> bool:
        key = self._layout.key(kind.value, name)
        while True:
            current = await self._js.kv_get(key)
            if current is None:
                return False
            if expected is not None and base64.b64decode(current.value["p"]) != expected:
                return False  # changed meanwhile (the caller reads it again)
            old_topic = current.value.get("t", "")
            new_topic = old_topic if topic is None else topic
            value = {"t": new_topic, "p": base64.b64encode(data).decode()}
            if await self._js.kv_put(key, value, current.seq):
                break
        if new_topic != old_topic:
            await self._relink(kind, name, old_topic, new_topic)
        return True

    async def _relink(self, kind: Kind, name: str, old_topic: str, new_topic: str) -> None:
        """Move a resource's topic link (a subscription's consumer moves with it)."""
        if old_topic:
            await self._js.kv_delete(self._layout.link(kind.value, old_topic, name))
        if new_topic:
            await self._js.kv_put(self._layout.link(kind.value, new_topic, name), {}, None)
        if kind is Kind.SUBSCRIPTION:
            self._topics.forget(name)
            if old_topic not in DETACHED:
                await self._topics.delete_consumer(old_topic, name)
            if new_topic not in DETACHED:
                await self._topics.create_consumer(new_topic, name, {"deliver_policy": "new"})

    async def get(self, kind: Kind, name: str) -> bytes | None:
        cacheable = kind in ANNOUNCED_KINDS
        if cacheable:
            cached = self._cache.get((kind, name))
            if cached is not None and cached[1] > time.monotonic():
                return cached[0]
        generation = self._generation
        found = await self._js.kv_get(self._layout.key(kind.value, name))
        if found is None:
            return None  # (not kept: another process may create it any moment)
        raw = base64.b64decode(found.value["p"])
        if cacheable and generation == self._generation:
            self._cache[(kind, name)] = (raw, time.monotonic() + _CACHE_S)
            if kind is Kind.SUBSCRIPTION:
                # The same record holds its topic link: the subscription's pulls need not read
                # it again (opening thousands of streams read each twice).
                self._topics.learn(name, found.value.get("t", ""))
        return raw

    async def delete(self, kind: Kind, name: str) -> bool:
        return await self._announce(kind, name, await self._delete(kind, name))

    async def _delete(self, kind: Kind, name: str) -> bool:
        key = self._layout.key(kind.value, name)
        current = await self._js.kv_get(key)
        if current is None:
            return False
        if not await self._js.kv_delete(key):
            return False
        topic = current.value.get("t", "")
        if topic:
            await self._js.kv_delete(self._layout.link(kind.value, topic, name))
        if kind is Kind.SUBSCRIPTION:
            self._topics.forget(name)
            if topic not in DETACHED:
                await self._topics.delete_consumer(topic, name)
            await self._js.kv_delete(self._layout.key(SUB_START, name))
        elif kind is Kind.SNAPSHOT:
            await self._js.kv_delete(self._layout.key(SNAPSHOT_STATE, name))
        return True

    # --- listing --------------------------------------------------------------------------
    async def list_prefixed(self, kind: Kind, prefix: str, page_size: int,
                            page_token: str) -> Page:
        pattern = self._layout.keys(kind.value)
        if not page_size:
            # Every resource of the kind (the sweeper lists them all every round): read
            # through one consumer rather than one request each.
            return await self._list_all(pattern, prefix, decode_page_token(page_token))
        return await self._list(pattern, prefix, decode_page_token(page_token), kind, page_size)

    async def _list_all(self, pattern: str, prefix: str, after: str) -> Page:
        found = await self._js.last_per_subject(self._layout.resource_stream, pattern)
        items = sorted((name, base64.b64decode(json.loads(data)["p"]))
                       for name, data in ((unb64(subject.rpartition(".")[2]), data)
                                          for subject, data in found.items())
                       if name.startswith(prefix) and name > after)
        return page_of(items, 0)

    async def list_by_topic(self, kind: Kind, topic: str, page_size: int,
                            page_token: str) -> Page:
        return await self._list(self._layout.link(kind.value, topic) + ".*", "",
                                decode_page_token(page_token), kind, page_size)

    async def _list(self, pattern: str, prefix: str, after: str, kind: Kind,
                    page_size: int) -> Page:
        names = sorted(n for n in (unb64(s.rpartition(".")[2])
                                   for s in await self._js.subjects(pattern))
                       if n.startswith(prefix) and n > after)
        items: list[tuple[str, bytes]] = []
        want = page_size + 1 if page_size else len(names)
        while names and len(items) < want:  # a name may vanish between listing and reading
            chunk, names = names[:want - len(items)], names[want - len(items):]
            items.extend(await self._values(kind, chunk))
        return page_of(items, page_size)

    async def _values(self, kind: Kind, names: list[str]) -> list[tuple[str, bytes]]:
        found = await asyncio.gather(*(self._js.kv_get(self._layout.key(kind.value, n))
                                       for n in names))
        return [(n, base64.b64decode(f.value["p"])) for n, f in zip(names, found, strict=True)
                if f is not None]
