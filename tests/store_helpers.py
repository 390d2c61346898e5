"""Helpers of the store-level tests: a store driven from synchronous code, messages, listeners."""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from google.pubsub_v1 import types

from pubsub_emulator.store import Kind
from support import wait_for

T = TypeVar("T")
PubsubMessage = types.PubsubMessage.pb()


def now() -> int:
    return time.time_ns() // 1_000_000


def msg(data: bytes) -> bytes:
    return PubsubMessage(data=data).SerializeToString()


def data_of(delivery) -> bytes:
    return PubsubMessage.FromString(delivery.message).data


class _Synchronous:
    """Calls an object's coroutine methods on a SyncStore's loop and waits for them."""

    def __init__(self, target: Any, owner: SyncStore) -> None:
        self._target = target
        self._owner = owner

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._target, name)
        if not inspect.iscoroutinefunction(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            return self._owner.run(attr(*args, **kwargs))

        return call


class SyncStore:
    """A store driven from synchronous test code, standing for one emulator process.

    Stores are asynchronous and a NATS store lives on the loop that opened it, so each
    SyncStore runs its own event loop on a thread of its own, for as long as it is open (its
    connection keeps reading and writing between calls, as a process's would); every call is
    run there and waited for: `store.resources.create(...)`, `store.messages.pull(...)`.
    """

    def __init__(self, opener: Callable[[], Awaitable[Any]], timeout: float = 60.0) -> None:
        self.timeout = timeout
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="store-loop",
                                        daemon=True)
        self._thread.start()
        try:
            self.store = self.run(opener())
        except BaseException:
            self._stop()
            raise
        self.resources = _Synchronous(self.store.resources, self)
        self.messages = _Synchronous(self.store.messages, self)

    def run(self, awaitable: Awaitable[T]) -> T:
        async def wrapped() -> T:
            return await awaitable

        future = asyncio.run_coroutine_threadsafe(wrapped(), self.loop)
        return future.result(self.timeout)

    def set_listener(self, listener: Any) -> None:
        self.store.set_listener(listener)

    def _stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()

    def close(self) -> None:
        if not self.loop.is_closed():
            try:
                self.run(self.store.close())
            finally:
                self._stop()


class RecordingListener:
    """A StoreListener that notes what other processes report."""

    def __init__(self) -> None:
        self.published_topics: list[str] = []
        self.changes: list[tuple[Kind, str]] = []
        self.missed_reports = 0

    def published(self, topic: str) -> None:
        self.published_topics.append(topic)

    def changed(self, kind: Kind, name: str) -> None:
        self.changes.append((kind, name))

    def missed(self) -> None:
        self.missed_reports += 1


def pull_until(store: SyncStore, subscription: str, count: int, lease_ms: int,
               timeout: float = 15.0, interval: float = 0.02, **kwargs: Any) -> list:
    """Pull (real time) until `count` deliveries came back; fail after `timeout` seconds."""
    got: list = []

    def enough() -> bool:
        got.extend(store.messages.pull(subscription, 10, lease_ms, now(), **kwargs))
        return len(got) >= count

    wait_for(enough, timeout=timeout, interval=interval,
             message=f"{count} deliveries on {subscription}")
    return got
