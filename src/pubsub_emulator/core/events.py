"""Wake-ups and change notices inside one emulator process.

Deliveries that wait for messages (a Pull with nothing to return, an open StreamingPull, a push
loop) `watch` their subscription and sleep on the event; whatever may have made messages
available (a publish, a nack, a seek, a change of the subscription) wakes them. Components that
cache resources (filters, schemas, push configs) subscribe to `on_change` and hear of every
change, made here or, through the store's listener, by another process sharing the store.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Container

from ..store import Kind

ChangeListener = Callable[[Kind, str], None]


class Events:
    """This process's wake-ups and change notices; also the store's listener."""

    def __init__(self) -> None:
        self._waiters: dict[str, set[asyncio.Event]] = {}
        # Watched subscriptions by topic, so that a publish wakes only the subscriptions its
        # messages reach: waking every open stream and waiting pull on every publish made
        # fan-out cost grow with the square of the number of subscriptions.
        self._watched_by_topic: dict[str, set[str]] = {}
        self._topic_of: dict[str, str] = {}
        self._listeners: list[ChangeListener] = []
        # Bumped by every wake-up and change notice: the sweeper skips rounds while it stays
        # put (nothing happened here, and nothing was heard of from other processes).
        self.stirred = 0

    # --- wake-ups ------------------------------------------------------------------------------
    def watch(self, subscription: str, topic: str, event: asyncio.Event | None = None
              ) -> asyncio.Event:
        """An event (`event`, or a new one) set whenever the subscription (attached to
        `topic`) may have messages to deliver."""
        event = event or asyncio.Event()
        self._waiters.setdefault(subscription, set()).add(event)
        previous = self._topic_of.get(subscription)
        if previous != topic:  # (a subscription whose topic was deleted is re-watched)
            if previous is not None:
                self._forget_topic(subscription, previous)
            self._topic_of[subscription] = topic
            self._watched_by_topic.setdefault(topic, set()).add(subscription)
        return event

    def unwatch(self, subscription: str, event: asyncio.Event) -> None:
        waiters = self._waiters.get(subscription)
        if waiters is not None:
            waiters.discard(event)
            if not waiters:
                self._waiters.pop(subscription, None)
                topic = self._topic_of.pop(subscription, None)
                if topic is not None:
                    self._forget_topic(subscription, topic)

    def _forget_topic(self, subscription: str, topic: str) -> None:
        watched = self._watched_by_topic.get(topic)
        if watched is not None:
            watched.discard(subscription)
            if not watched:
                self._watched_by_topic.pop(topic, None)

    def wake(self, subscription: str) -> None:
        self.stirred += 1
        for event in self._waiters.get(subscription, ()):
            event.set()

    def wake_topic(self, topic: str, served: Container[str] = ()) -> None:
        """Messages were published to `topic`: wake the subscriptions attached to it, but
        those `served` already (their copies were handed to a stream of theirs)."""
        self.stirred += 1
        for subscription in self._watched_by_topic.get(topic, ()):
            if subscription not in served:
                self.wake(subscription)

    def watched(self, subscription: str) -> bool:
        """Whether anything here waits on the subscription (an open stream, a pull, a pusher)."""
        return bool(self._waiters.get(subscription))

    # --- change notices ------------------------------------------------------------------------
    def on_change(self, listener: ChangeListener) -> None:
        self._listeners.append(listener)

    def remove_listener(self, listener: ChangeListener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def resource_changed(self, kind: Kind, name: str) -> None:
        """A resource was created, changed or deleted (here or elsewhere)."""
        self.stirred += 1
        for listener in list(self._listeners):
            listener(kind, name)

    # --- the store's listener: what other processes sharing the store did ----------------------
    def published(self, topic: str) -> None:
        self.wake_topic(topic)

    def changed(self, kind: Kind, name: str) -> None:
        self.resource_changed(kind, name)
        if kind is Kind.SUBSCRIPTION:
            self.wake(name)  # its streams and waiting pulls look at it again

    def missed(self) -> None:
        """Wake-ups from other processes may have been lost: everything waiting looks again."""
        for subscription in list(self._waiters):
            self.wake(subscription)
