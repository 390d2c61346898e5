"""Wake-ups are per topic: a publish wakes the streams, pulls and pushers of the subscriptions
attached to its topic and no others (waking every one on every publish made fan-out cost grow
with the square of the number of subscriptions)."""

from __future__ import annotations

from pubsub_emulator.core.events import Events


def test_a_publish_wakes_only_the_subscriptions_of_its_topic() -> None:
    events = Events()
    here = [events.watch(f"projects/p/subscriptions/a{i}", "projects/p/topics/a")
            for i in range(3)]
    elsewhere = [events.watch(f"projects/p/subscriptions/b{i}", "projects/p/topics/b")
                 for i in range(300)]
    events.published("projects/p/topics/a")  # (the store's listener: another process published)
    assert all(event.is_set() for event in here)
    assert not any(event.is_set() for event in elsewhere)
    events.wake_topic("projects/p/topics/b")
    assert all(event.is_set() for event in elsewhere)


def test_a_subscription_stays_woken_by_its_topic_until_its_last_watcher_leaves() -> None:
    events = Events()
    sub, topic = "projects/p/subscriptions/s", "projects/p/topics/t"
    first, second = events.watch(sub, topic), events.watch(sub, topic)
    events.unwatch(sub, first)
    events.wake_topic(topic)
    assert second.is_set() and not first.is_set()
    events.unwatch(sub, second)
    assert not events.watched(sub)
    third = events.watch(sub, "projects/p/topics/other")  # watched again, under another topic
    events.wake_topic(topic)
    assert not third.is_set()
    events.wake_topic("projects/p/topics/other")
    assert third.is_set()


def test_a_subscription_rewatched_under_a_new_topic_leaves_the_old_one() -> None:
    # A subscription whose topic was deleted is attached to `_deleted-topic_` from then on.
    events = Events()
    sub = "projects/p/subscriptions/s"
    old = events.watch(sub, "projects/p/topics/t")
    new = events.watch(sub, "_deleted-topic_")
    events.wake_topic("projects/p/topics/t")
    assert not old.is_set() and not new.is_set()
    events.wake(sub)  # a change of the subscription still wakes every watcher of it
    assert old.is_set() and new.is_set()



def test_reports_lost_by_the_store_wake_everything_waiting() -> None:
    """A store that lost its connection (NATS) may have missed other processes' wake-ups."""
    events = Events()
    waiting = [events.watch(f"projects/p/subscriptions/s{i}", f"projects/p/topics/t{i % 7}")
               for i in range(50)]
    left = events.watch("projects/p/subscriptions/gone", "projects/p/topics/t0")
    events.unwatch("projects/p/subscriptions/gone", left)
    events.missed()
    assert all(event.is_set() for event in waiting)
    assert not left.is_set()
