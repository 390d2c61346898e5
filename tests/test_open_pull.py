"""An open StreamingPull's leases (core/streaming.py OpenPull): which ran out, and when to look
next, kept without scanning every lease on every turn of the call's loop."""

from __future__ import annotations

import asyncio

from google.pubsub_v1 import types as t

from pubsub_emulator.core.streaming import OpenPull


def _call() -> OpenPull:
    sub = t.Subscription.pb()(name="projects/p/subscriptions/s", topic="projects/p/topics/t")
    return OpenPull(sub, 10_000, 100, 0, asyncio.Event())


def test_leases_run_out_at_their_time_and_the_next_look_follows_them() -> None:
    call = _call()
    assert call.soonest_expiry() is None and call.expire(10**12) == 0
    call.hold([("a", 1), ("b", 1)], 1_000)
    call.hold([("c", 1)], 3_000)
    assert call.soonest_expiry() == 1_000
    assert call.expire(999) == 0 and len(call.outstanding) == 3
    call.extend(["a"], 5_000)  # a modack: a now runs out last
    assert call.expire(1_000) == 1 and set(call.outstanding) == {"a", "c"}  # b ran out
    assert call.soonest_expiry() == 3_000
    call.extend(["a"], 2_000)  # a shorter deadline: looked at sooner
    assert call.soonest_expiry() == 2_000
    assert call.expire(2_500) == 1 and set(call.outstanding) == {"c"}
    call.release(["c"])  # acked
    assert call.soonest_expiry() is None and call.outstanding_bytes == 0


def test_a_look_after_acks_moves_the_next_look_to_the_first_lease_still_held() -> None:
    call = _call()
    call.hold([("a", 1)], 1_000)
    call.hold([("b", 1)], 4_000)
    call.release(["a"])  # acked before it ran out: the next look may come early, finds nothing
    assert call.soonest_expiry() <= 1_000
    assert call.expire(1_500) == 0 and set(call.outstanding) == {"b"}
    assert call.soonest_expiry() == 4_000


def test_an_idle_stream_looks_without_turning_and_still_finds_what_no_wake_up_told(
        tmp_path, monkeypatch) -> None:
    """An open stream with nothing due looks at its subscription every IDLE_LOOK_S: a look
    that finds nothing due costs one store read, not a turn of the call's loop (no receive);
    one that finds a message nothing woke it for (written to the store behind the core's
    back here; another process's nack on NATS in life) delivers it."""
    from pubsub_emulator.core import streaming
    from pubsub_emulator.core.service import PubSubService
    from pubsub_emulator.store.sqlite import SqliteStore

    monkeypatch.setattr(streaming, "IDLE_LOOK_S", 0.01)
    topic, sub = "projects/p/topics/topic", "projects/p/subscriptions/sub"

    async def scenario() -> tuple[int, int, bytes]:
        store = SqliteStore(tmp_path / "store.sqlite3")
        service = PubSubService(store)
        receives, looks = 0, 0
        real_receive, real_due = service.engine.receive_encoded, service.engine.next_due_ms

        async def counted_receive(*args, **kwargs):
            nonlocal receives
            receives += 1
            return await real_receive(*args, **kwargs)

        async def counted_due(*args, **kwargs):
            nonlocal looks
            looks += 1
            return await real_due(*args, **kwargs)

        service.engine.receive_encoded, service.engine.next_due_ms = counted_receive, counted_due
        await service.topics.create_topic(t.Topic.pb()(name=topic))
        await service.subscriptions.create_subscription(t.Subscription.pb()(name=sub,
                                                                            topic=topic))
        requests: asyncio.Queue = asyncio.Queue()
        await requests.put(t.StreamingPullRequest.pb()(subscription=sub,
                                                       stream_ack_deadline_seconds=60))

        async def request_stream():
            while True:
                yield await requests.get()

        responses = service.streaming(request_stream())
        first = asyncio.ensure_future(anext(responses))
        deadline = asyncio.get_running_loop().time() + 30
        while looks < 50:  # fifty idle looks
            assert asyncio.get_running_loop().time() < deadline, "the stream stopped looking"
            await asyncio.sleep(0.005)
        idle_receives = receives
        message = t.PubsubMessage.pb()(data=b"unannounced").SerializeToString()
        await store.messages.publish(topic, [message], 0)  # no wake-up: only a look finds it
        response = await asyncio.wait_for(first, 30)
        await responses.aclose()
        await store.close()
        received = t.StreamingPullResponse.pb().FromString(response).received_messages
        return idle_receives, receives, received[0].message.data

    idle_receives, receives, data = asyncio.run(scenario())
    assert idle_receives == 1  # the call's first turn; idle looks did not turn the loop
    assert receives == 2 and data == b"unannounced"
