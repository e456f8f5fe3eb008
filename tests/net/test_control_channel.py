"""ControlChannel directly: two of them over an in-memory secure channel pair."""

from __future__ import annotations

import asyncio
import gc
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import anyio
import pytest
from conftest import channel_pair, stuck

from peerkit import Identity, PeerUnreachable
from peerkit.net import control as control_module
from peerkit.net.channel import SecureChannel
from peerkit.net.control import (
    PING_BURST,
    PING_RATE,
    STALL_AFTER,
    Answer,
    ControlChannel,
    KeepaliveClock,
    KeepalivePolicy,
    Reply,
)
from peerkit.proto.control import MAX_CONCURRENT

pytestmark = pytest.mark.anyio

Handler = Callable[[ControlChannel, dict[str, Any]], Awaitable[Reply]]
QUIET = KeepalivePolicy(interval=30, timeout=30, idle=300)


@asynccontextmanager
async def timed_by(kind: str) -> AsyncIterator[KeepaliveClock | None]:
    # A channel's keepalive runs in a task of its own, or is timed by a clock shared by channels.
    if kind == "own task":
        yield None
        return
    clock = KeepaliveClock()
    async with anyio.create_task_group() as tg:
        tg.start_soon(clock.run)
        yield clock
        tg.cancel_scope.cancel()


TIMED_BY = pytest.mark.parametrize("timing", ["own task", "shared clock"])


def dialler(
    channel: SecureChannel, me: Identity, policy: KeepalivePolicy, clock: KeepaliveClock | None
) -> ControlChannel:
    """The dialling side's control channel over ``channel``, answering requests with echo."""
    return ControlChannel(
        channel, initiator=True, local_id=me.id, endpoint=None, handler=echo, keepalive=policy, clock=clock
    )


async def echo(control: ControlChannel, message: dict[str, Any]) -> Reply:
    return {"t": f"{message['t']}_reply", "echo": message.get("x")}


@asynccontextmanager
async def pair(
    alice: Identity,
    bob: Identity,
    *,
    a_handler: Handler = echo,
    b_handler: Handler = echo,
    keepalive: KeepalivePolicy = QUIET,
    b_keepalive: KeepalivePolicy | None = None,
    **options: Any,
) -> AsyncIterator[tuple[ControlChannel, ControlChannel]]:
    a_channel, b_channel = await channel_pair(alice, bob)
    a = ControlChannel(
        a_channel,
        initiator=True,
        local_id=alice.id,
        endpoint=None,
        handler=a_handler,
        keepalive=keepalive,
    )
    b = ControlChannel(
        b_channel,
        initiator=False,
        local_id=bob.id,
        endpoint=None,
        handler=b_handler,
        keepalive=b_keepalive or keepalive,
        **options,
    )
    async with anyio.create_task_group() as tg:
        tg.start_soon(a.run)
        tg.start_soon(b.run)
        try:
            yield a, b
        finally:
            await a.aclose()
            await b.aclose()


def holding(started: anyio.Event, events: list[str]) -> Handler:
    """A handler that holds its request until cancelled, then notes "handler done"."""

    async def hold(control: ControlChannel, message: dict[str, Any]) -> Reply:
        await stuck(started, events, "handler done", cleanup=0.05)
        return None

    return hold


async def ask(control: ControlChannel, message: dict[str, Any]) -> dict[str, Any]:
    request = await control.start_request(message)
    with anyio.fail_after(5):
        return await request.wait()


async def test_an_idle_channel_holds_no_error_and_no_notice_table_of_its_own(
    alice: Identity, bob: Identity
) -> None:
    # Thousands of idle channels: each one's error is made when it ends (if a request waits), and
    # the node's notice handlers are shared, not copied.
    notices = {"notify": lambda control, message: None}
    async with pair(alice, bob, notices=notices) as (a, b):
        assert (await ask(a, {"t": "invite"}))["t"] == "invite_reply"
        gc.collect()
        assert not [o for o in gc.get_objects() if isinstance(o, PeerUnreachable)]
        assert b._notices is notices


async def test_a_channels_dict_shares_its_keys_with_the_other_channels(
    alice: Identity, bob: Identity
) -> None:
    # CPython shares the keys of a class's instance dicts only while the class has few enough
    # attribute names (about 30, the ones set later included): past that, every instance's dict
    # holds its own keys, 1.3 KB more on each of thousands of channels (the idle subscription's
    # memory rose 2.7 KB when a change added two attributes).
    async with pair(alice, bob) as (a, b):
        assert (await ask(a, {"t": "ping"}))["t"] == "pong"
        for side in (a, b, a.channel, b.channel):
            size = sys.getsizeof(vars(side))
            assert size < 1000, f"{type(side).__name__}'s dict takes {size} bytes: its keys are not shared"


def control(
    channel: SecureChannel, me: Identity, *, initiator: bool, handler: Handler = echo, **options: Any
) -> ControlChannel:
    return ControlChannel(
        channel,
        initiator=initiator,
        local_id=me.id,
        endpoint=None,
        handler=handler,
        keepalive=QUIET,
        **options,
    )


async def test_a_channel_given_a_task_group_holds_no_group_of_its_own(alice: Identity, bob: Identity) -> None:
    # A node gives its channels its own group (and its keepalive clock): an idle channel holds
    # no task group (with its cancel scope, about 1 KB an end) and no set of running tasks once
    # its requests are answered and the watch after a request is over.
    group_type = type(anyio.create_task_group())
    a_channel, b_channel = await channel_pair(alice, bob)
    async with timed_by("shared clock") as clock, anyio.create_task_group() as tasks:
        gc.collect()
        groups = sum(isinstance(o, group_type) for o in gc.get_objects())
        a = control(a_channel, alice, initiator=True, tasks=tasks, clock=clock)
        b = control(b_channel, bob, initiator=False, tasks=tasks, clock=clock)
        tasks.start_soon(a.run)
        tasks.start_soon(b.run)
        assert (await ask(a, {"t": "invite"}))["t"] == "invite_reply"
        assert (await ask(b, {"t": "get"}))["t"] == "get_reply"
        with anyio.fail_after(5):
            while a.handling or b.handling or a._watching or b._watching:
                await anyio.sleep(0.05)
        gc.collect()
        assert sum(isinstance(o, group_type) for o in gc.get_objects()) == groups
        assert a._children is None
        assert b._children is None
        # Nor a table of the requests it waited for (an emptied dict is 160 bytes larger).
        assert sys.getsizeof(a._waiting) == sys.getsizeof(b._waiting) == sys.getsizeof({})
        await a.aclose()
        await b.aclose()


async def test_an_idle_channel_keeps_no_message_it_has_dealt_with(alice: Identity, bob: Identity) -> None:
    # The reading loop lets go of each message once it is dispatched (the last one would stay
    # otherwise, about 0.4 KB on each of thousands of idle channels).
    seen: list[dict[str, Any]] = []

    async def keep(control: ControlChannel, message: dict[str, Any]) -> Reply:
        seen.append(message)
        return {"t": "get_reply"}

    async with pair(alice, bob, b_handler=keep) as (a, b):
        assert (await ask(a, {"t": "get", "x": "a text"}))["t"] == "get_reply"
        with anyio.fail_after(5):
            while b.handling:
                await anyio.sleep(0.01)
        gc.collect()
        assert [holder for holder in gc.get_referrers(seen[0]) if holder is not seen] == []


@pytest.mark.parametrize("group", ["given", "its own"])
async def test_a_handler_is_cancelled_when_the_channel_ends_and_run_returns_after_it(
    alice: Identity, bob: Identity, group: str
) -> None:
    events: list[str] = []
    started = anyio.Event()

    a_channel, b_channel = await channel_pair(alice, bob)
    async with anyio.create_task_group() as tasks:
        a = control(a_channel, alice, initiator=True)
        b = control(
            b_channel,
            bob,
            initiator=False,
            handler=holding(started, events),
            tasks=tasks if group == "given" else None,
        )

        async def run_b() -> None:
            await b.run()
            events.append("run returned")

        tasks.start_soon(a.run)
        tasks.start_soon(run_b)
        request = await a.start_request({"t": "get"})
        with anyio.fail_after(5):
            await started.wait()
            await a.aclose()  # the peer closes
            with pytest.raises(PeerUnreachable):
                await request.wait()
            await b.wait_closed()
            while len(events) < 2:
                await anyio.sleep(0.01)
    assert events == ["handler done", "run returned"]


async def test_cancel_ends_a_channel_from_another_task_even_before_it_runs(
    alice: Identity, bob: Identity
) -> None:
    cancelled = anyio.Event()

    async def waits(control: ControlChannel, message: dict[str, Any]) -> Reply:
        try:
            await anyio.sleep_forever()
        finally:
            cancelled.set()
        return None

    # Cancelled before it runs: run returns at once, and the channel is closed.
    a_channel, b_channel = await channel_pair(alice, bob)
    early = control(a_channel, alice, initiator=True)
    early.cancel("evicted")
    assert early.closed
    assert not early.usable
    with anyio.fail_after(5):
        await early.run()
    assert a_channel.closed
    await b_channel.aclose()

    # Cancelled while a request waits and one is handled: the request fails, naming why, and the
    # handler on the other side is cancelled as the channel closes.
    a_channel, b_channel = await channel_pair(alice, bob)
    async with anyio.create_task_group() as tasks:
        a = control(a_channel, alice, initiator=True, tasks=tasks)
        b = control(b_channel, bob, initiator=False, handler=waits, tasks=tasks)
        tasks.start_soon(a.run)
        tasks.start_soon(b.run)
        request = await a.start_request({"t": "get"})
        with anyio.fail_after(5):
            while not b.handling:
                await anyio.sleep(0.01)
            a.cancel("evicted")
            with pytest.raises(PeerUnreachable, match="was evicted"):
                await request.wait()
            await cancelled.wait()
            await b.wait_closed()
        assert a_channel.closed


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_on_asyncio_a_channel_ends_its_tasks_reading_without_a_cancel_scope(
    alice: Identity, bob: Identity
) -> None:
    # (a node runs each channel in a task of its own, in no cancel scope: anyio's scope and its
    # bookkeeping of the task would be 0.8 KB more on each end of an idle channel)
    events: list[str] = []
    started = anyio.Event()

    a_channel, b_channel = await channel_pair(alice, bob)
    async with anyio.create_task_group() as tasks:
        a = control(a_channel, alice, initiator=True, tasks=tasks)
        b = control(b_channel, bob, initiator=False, handler=holding(started, events), tasks=tasks)

        async def run_b() -> None:
            try:
                await b.run()
            finally:
                events.append("run ended")
            await anyio.sleep(0.01)  # (nothing of the channel's cancellation is left to hit the task)
            current = asyncio.current_task()
            assert current is not None
            events.append(f"went on, cancelling {current.cancelling()}")

        task = asyncio.get_running_loop().create_task(run_b())  # (as a node's: asyncio's own)
        tasks.start_soon(a.run)
        request = await a.start_request({"t": "get"})
        with anyio.fail_after(5):
            await started.wait()
            attributes = gc.get_referents(b)
            attributes += [v for d in attributes if isinstance(d, dict) for v in d.values()]
            assert not [o for o in attributes if isinstance(o, anyio.CancelScope)]
            b.cancel("evicted")
            with pytest.raises(PeerUnreachable, match="closed the channel"):
                await request.wait()
            await task
        assert b_channel.closed
        await a.aclose()
    assert events == ["handler done", "run ended", "went on, cancelling 0"]


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.parametrize("also_ended", [False, True])
async def test_run_passes_on_a_cancellation_of_its_task_from_elsewhere(
    alice: Identity, bob: Identity, also_ended: bool
) -> None:
    # The channel's own ending of its reading stops at run; a cancellation of the task from
    # elsewhere (alone, or as the channel ends too) reaches the task's owner.
    a_channel, b_channel = await channel_pair(alice, bob)
    b = control(b_channel, bob, initiator=False)
    async with anyio.create_task_group() as tasks:
        a = control(a_channel, alice, initiator=True, tasks=tasks)
        tasks.start_soon(a.run)
        task = asyncio.get_running_loop().create_task(b.run())
        await anyio.sleep(0.05)  # (reading)
        if also_ended:
            b.cancel()
        task.cancel()
        with anyio.fail_after(5):
            await asyncio.wait([task])
        assert task.cancelled()
        assert b.closed
        assert b_channel.closed
        await a.aclose()


class BigReplies:
    """A handler answering every request with 8 KB, counting the requests it handled."""

    def __init__(self) -> None:
        self.handled = 0

    async def __call__(self, control: ControlChannel, message: dict[str, Any]) -> Reply:
        self.handled += 1
        return {"t": "x_reply", "blob": bytes(8000)}


async def test_cancel_ends_a_channel_whose_reading_waits_for_a_peer_that_does_not_read(
    alice: Identity, bob: Identity
) -> None:
    # Bob's reading task waits for his replies to drain (alice sends and never reads): ending the
    # channel ends that wait too.
    a_channel, b_channel = await channel_pair(alice, bob)
    big = BigReplies()
    b = control(b_channel, bob, initiator=False, handler=big)
    ended = anyio.Event()

    async def run_b() -> None:
        await b.run()
        ended.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(run_b)

        async def flood() -> None:
            for rid in range(1, MAX_CONCURRENT + 1):
                await a_channel.send({"t": "x", "rid": rid})

        tg.start_soon(flood)
        with anyio.fail_after(5):
            while not b.channel.congested:
                await anyio.sleep(0.01)
            before = -1
            while big.handled != before:  # (until bob has stopped reading)
                before = big.handled
                await anyio.sleep(0.2)
            assert big.handled < MAX_CONCURRENT
            b.cancel("evicted")
            await ended.wait()
        assert b_channel.closed
        tg.cancel_scope.cancel()
    await a_channel.aclose()


async def test_requests_both_ways_are_matched_to_their_replies(alice: Identity, bob: Identity) -> None:
    async with pair(alice, bob) as (a, b):
        replies: dict[int, dict[str, Any]] = {}

        async def one(control: ControlChannel, n: int) -> None:
            replies[n] = await ask(control, {"t": "get", "x": n})

        async with anyio.create_task_group() as tg:
            for n in range(20):
                tg.start_soon(one, a if n % 2 else b, n)
        assert {n: r["echo"] for n, r in replies.items()} == {n: n for n in range(20)}
        assert all(r["t"] == "get_reply" for r in replies.values())
        assert a.dialler == b.dialler == alice.id
        assert a.preference() == b.preference()


async def test_a_reply_over_one_message_arrives_whole(alice: Identity, bob: Identity) -> None:
    objects = [{"id": bytes([i]) * 16, "data": bytes(16384)} for i in range(20)]

    async def big(control: ControlChannel, message: dict[str, Any]) -> Reply:
        return {"t": "get_reply", "objects": objects}

    async with pair(alice, bob, b_handler=big) as (a, _):
        reply = await ask(a, {"t": "get", "what": "objects"})
        assert reply["objects"] == objects
        assert "more" not in reply


async def test_a_request_in_flight_while_both_retire_is_answered_before_the_close(
    alice: Identity, bob: Identity
) -> None:
    # The simultaneous-dial race: one side retires the channel just as the other sends a request
    # on it. The request is answered, and the channel closes only then.
    release = anyio.Event()
    started = anyio.Event()

    async def slow(control: ControlChannel, message: dict[str, Any]) -> Reply:
        started.set()
        await release.wait()
        return {"t": "invite_reply", "r": "accepted"}

    async with pair(alice, bob, b_handler=slow) as (a, b):
        request = await a.start_request({"t": "invite"})
        await b.retire()
        with anyio.fail_after(5):
            await started.wait()
            while a.usable:  # a hears the retire and answers it
                await anyio.sleep(0.01)
        await anyio.sleep(0.05)
        assert not a.closed
        assert not b.closed
        release.set()
        with anyio.fail_after(5):
            assert (await request.wait())["r"] == "accepted"
            await a.wait_closed()
            await b.wait_closed()


async def test_a_retired_channel_takes_no_new_request(alice: Identity, bob: Identity) -> None:
    async with pair(alice, bob) as (a, b):
        await a.retire()
        with pytest.raises(PeerUnreachable, match="is closing"):
            await a.start_request({"t": "get"})
        with anyio.fail_after(5):
            await a.wait_closed()
            await b.wait_closed()
        with pytest.raises(PeerUnreachable):
            await b.start_request({"t": "get"})


async def test_closing_fails_waiting_requests_and_cancels_handlers(alice: Identity, bob: Identity) -> None:
    cancelled = anyio.Event()

    async def forever(control: ControlChannel, message: dict[str, Any]) -> Reply:
        try:
            await anyio.sleep_forever()
        finally:
            cancelled.set()
        return None

    async with pair(alice, bob, b_handler=forever) as (a, b):
        request = await a.start_request({"t": "invite"})
        with anyio.fail_after(5):
            while not b.handling:
                await anyio.sleep(0.01)
        await b.aclose()
        with anyio.fail_after(5):
            await cancelled.wait()
            with pytest.raises(PeerUnreachable, match="closed the channel"):
                await request.wait()
            await a.wait_closed()


@asynccontextmanager
async def two_held(alice: Identity, bob: Identity) -> AsyncIterator[tuple[ControlChannel, anyio.Event]]:
    """A pair whose second side handles 2 requests at once, both held (a ``card`` each) until the
    event is set; both answered by the end."""
    release = anyio.Event()

    async def held(control: ControlChannel, message: dict[str, Any]) -> Reply:
        await release.wait()
        return {"t": "card_reply"}

    async with pair(alice, bob, b_handler=held, max_concurrent=2) as (a, b):
        held_requests = [await a.start_request({"t": "card"}) for _ in range(2)]
        with anyio.fail_after(5):
            while b.handling < 2:
                await anyio.sleep(0.01)
        yield a, release
        release.set()
        with anyio.fail_after(5):
            for request in held_requests:
                assert (await request.wait())["t"] == "card_reply"


async def test_requests_over_the_limit_are_refused_at_once(alice: Identity, bob: Identity) -> None:
    async with two_held(alice, bob) as (a, _):
        refused = await ask(a, {"t": "card"})
        assert refused["t"] == "error"
        assert refused["code"] == "limit"
        assert "the limit is 2" in refused["msg"]


async def test_pings_over_their_budget_are_refused(
    alice: Identity, bob: Identity, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Pings are answered in the reading task and charged to no request budget: a peer sending
    # them as fast as it can gets a pong for the first PING_BURST, then "limit".
    assert (PING_RATE, PING_BURST) == (2.0, 10)
    monkeypatch.setattr(control_module, "PING_RATE", 1e-6)  # (none earned back, however slow the test)
    async with pair(alice, bob) as (a, _b):
        answers = [await ask(a, {"t": "ping"}) for _ in range(PING_BURST + 5)]
        assert [answer["t"] for answer in answers] == ["pong"] * PING_BURST + ["error"] * 5
        assert (answers[-1]["code"], answers[-1]["msg"]) == ("limit", "over 1e-06 pings a second")
        monkeypatch.setattr(control_module, "PING_RATE", 1000.0)
        await anyio.sleep(0.01)  # tokens earned again
        assert (await ask(a, {"t": "ping"}))["t"] == "pong"


async def test_after_a_refusal_at_once_the_channel_is_not_read_for_a_while(
    alice: Identity, bob: Identity, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A refusal costs about what an answer does: a peer over its requests at once is refused and
    # then not read for REFUSE_PAUSE, so it cannot make the node refuse at full speed.
    monkeypatch.setattr(control_module, "REFUSE_PAUSE", 0.2)
    async with two_held(alice, bob) as (a, _):
        over = [await a.start_request({"t": "card"}) for _ in range(3)]
        times = []
        with anyio.fail_after(5):
            for request in over:
                assert (await request.wait())["code"] == "limit"
                times.append(anyio.current_time())
        assert times[-1] - times[0] >= 2 * 0.2 * 0.9  # (one pause after each refusal)


@pytest.mark.logs_errors
async def test_a_failing_handler_answers_unavailable_and_the_channel_lives(
    alice: Identity, bob: Identity, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(control: ControlChannel, message: dict[str, Any]) -> Reply:
        if message.get("x") == "boom":
            raise RuntimeError("boom")
        return {"t": "get_reply"}

    async with pair(alice, bob, b_handler=broken) as (a, _):
        reply = await ask(a, {"t": "get", "x": "boom"})
        assert reply["t"] == "error"
        assert reply["code"] == "unavailable"
        assert "handling 'get'" in caplog.text
        assert "boom" in caplog.text
        assert (await ask(a, {"t": "get"}))["t"] == "get_reply"


async def test_an_answer_hears_that_its_reply_went_out(alice: Identity, bob: Identity) -> None:
    told: list[bool] = []

    async def answer(control: ControlChannel, message: dict[str, Any]) -> Reply:
        async def sent(ok: bool) -> None:
            told.append(ok)

        return Answer({"t": "subscribe_reply"}, sent)

    async with pair(alice, bob, b_handler=answer) as (a, b):
        assert (await ask(a, {"t": "subscribe"}))["t"] == "subscribe_reply"
        with anyio.fail_after(5):
            while not told:
                await anyio.sleep(0.01)
        assert told == [True]
        assert not b.handling


async def test_a_withdrawn_request_gets_no_reply(alice: Identity, bob: Identity) -> None:
    async def silent(control: ControlChannel, message: dict[str, Any]) -> Reply:
        return None if message["t"] == "invite" else {"t": "card_reply"}

    async with pair(alice, bob, b_handler=silent) as (a, b):
        request = await a.start_request({"t": "invite"})
        assert (await ask(a, {"t": "card"}))["t"] == "card_reply"  # sent after: the invite was handled
        assert not b.handling
        with anyio.move_on_after(0.2) as scope:
            await request.wait()
        assert scope.cancelled_caught
        a.forget(request)


async def test_notices_are_taken_in_order_in_the_reading_task(alice: Identity, bob: Identity) -> None:
    seen: list[int] = []
    a_channel, b_channel = await channel_pair(alice, bob)
    b = ControlChannel(
        b_channel,
        initiator=False,
        local_id=bob.id,
        endpoint=None,
        handler=echo,
        notices={"notify": lambda _, message: seen.append(message["n"])},
        keepalive=QUIET,
    )
    async with anyio.create_task_group() as tg:
        tg.start_soon(b.run)
        for n in range(50):
            await a_channel.send({"t": "notify", "n": n})
        await a_channel.send({"t": "invite_cancel", "rid": 3})  # no taker: ignored
        with anyio.fail_after(5):
            while len(seen) < 50:
                await anyio.sleep(0.01)
        assert seen == list(range(50))
        await a_channel.aclose()
        with anyio.fail_after(5):
            await b.wait_closed()


@TIMED_BY
async def test_a_peer_that_stops_answering_pings_is_dropped(
    alice: Identity, bob: Identity, timing: str
) -> None:
    # b never runs its reading loop, so it never answers a's pings.
    a_channel, b_channel = await channel_pair(alice, bob)
    policy = KeepalivePolicy(interval=0.05, timeout=0.2, idle=60)
    async with timed_by(timing) as clock, b_channel:
        a = dialler(a_channel, alice, policy, clock)
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(a.run)
                request = await a.start_request({"t": "get"})
                with pytest.raises(PeerUnreachable, match="stopped answering"):
                    await request.wait()
        assert a.closed


@TIMED_BY
async def test_an_idle_channel_is_retired_by_both(alice: Identity, bob: Identity, timing: str) -> None:
    policy = KeepalivePolicy(interval=0.05, timeout=0.5, idle=0.2)
    async with timed_by(timing) as clock, pair(alice, bob, keepalive=policy, clock=clock) as (a, b):
        assert (await ask(a, {"t": "get"}))["t"] == "get_reply"
        with anyio.fail_after(5):
            await a.wait_closed()
            await b.wait_closed()


@TIMED_BY
async def test_a_pinned_channel_is_never_idle(alice: Identity, bob: Identity, timing: str) -> None:
    policy = KeepalivePolicy(interval=0.05, timeout=0.5, idle=0.1)
    async with timed_by(timing) as clock, pair(alice, bob, keepalive=policy, clock=clock) as (a, b):
        a.pins = b.pins = 1
        await anyio.sleep(0.5)
        assert a.usable
        assert b.usable


async def test_one_clock_times_the_keepalives_of_many_channels(alice: Identity, bob: Identity) -> None:
    # Ten channels whose peers never answer pings, on one clock: each is dropped, with no task of
    # its own waiting between its checks.
    policy = KeepalivePolicy(interval=0.05, timeout=0.2, idle=60)
    async with timed_by("shared clock") as clock, AsyncExitStack() as stack:
        controls = []
        for _ in range(10):
            a_channel, b_channel = await channel_pair(alice, bob)
            await stack.enter_async_context(b_channel)  # (never read: no pong)
            controls.append(dialler(a_channel, alice, policy, clock))
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                for control in controls:
                    tg.start_soon(control.run)
                await anyio.sleep(0.02)
                names = [getattr(task, "name", "") or "" for task in anyio.get_running_tasks()]
                assert not [name for name in names if name.endswith("._keep_alive")]
        assert all(control.closed for control in controls)


async def test_a_peer_that_does_not_read_its_replies_is_not_read_from(alice: Identity, bob: Identity) -> None:
    # Alice sends requests on a bare channel and never reads: bob's replies back up, and bob stops
    # reading her requests once STALL_AFTER of them wait, instead of taking all MAX_CONCURRENT.
    a_channel, b_channel = await channel_pair(alice, bob)
    big = BigReplies()
    b = ControlChannel(
        b_channel, initiator=False, local_id=bob.id, endpoint=None, handler=big, keepalive=QUIET
    )
    async with anyio.create_task_group() as tg:
        tg.start_soon(b.run)

        async def flood() -> None:
            for rid in range(1, MAX_CONCURRENT + 1):
                await a_channel.send({"t": "x", "rid": rid})

        tg.start_soon(flood)
        await anyio.sleep(0.5)
        assert 1 <= b._state.handling <= STALL_AFTER + 2
        assert big.handled < MAX_CONCURRENT  # what the connection buffers, and STALL_AFTER more
        # Once alice reads, bob answers everything.
        replies = 0
        with anyio.fail_after(5):
            while replies < MAX_CONCURRENT:
                message = await a_channel.receive()
                replies += message["t"] == "x_reply"
        assert big.handled == MAX_CONCURRENT
        await b.aclose()
        await a_channel.aclose()
        tg.cancel_scope.cancel()


def test_a_pong_says_where_the_peer_sees_this_side_and_nonsense_is_ignored() -> None:
    from peerkit.net.control import seen_address

    assert seen_address(["203.0.113.7", 40001]) == ("203.0.113.7", 40001)
    assert seen_address(["2001:db8::1", 7]) == ("2001:db8::1", 7)
    host = "203.0.113.7"
    nonsense = (None, [], [host], ["nowhere", 1], [host, 0], [host, 70000], [host, True], [b"x", 1])
    for value in (*nonsense, ["1" * 100, 1], f"{host}:1"):
        assert seen_address(value) is None


async def test_each_side_learns_where_the_other_sees_it_from_the_pongs() -> None:
    from peerkit.testing import MemoryNetwork, nodes

    net = MemoryNetwork()
    policy = KeepalivePolicy(interval=0.05, timeout=1, idle=60)
    async with nodes(network=net, keepalive=policy) as (alice, bob):
        await alice.peer_at(bob.endpoint.host, bob.endpoint.port)  # a control channel
        with anyio.fail_after(5):
            while True:
                to_bob, to_alice = alice._connections.controls(bob.id), bob._connections.controls(alice.id)
                if to_bob and to_alice and to_bob[0].seen and to_alice[0].seen:
                    break
                await anyio.sleep(0.02)
        (to_bob,), (to_alice,) = to_bob, to_alice
        assert to_bob.seen == to_alice.channel.peer.address  # alice's end, as bob sees it
        assert to_alice.seen == (bob.endpoint.host, bob.endpoint.port)  # bob's, as alice dialled it


@TIMED_BY
async def test_an_idle_channel_carries_one_ping_per_interval_from_the_dialler(
    alice: Identity, bob: Identity, timing: str
) -> None:
    # After one ping each (each side learns where the other sees it), only the dialler pings; the
    # side that accepted hears those pings and stays quiet. (The accepting side pings after 1.5
    # intervals of silence: an interval of 0.2 s lets the dialler's pings run 0.1 s late, as they
    # may on a busy machine, before it would.)
    policy = KeepalivePolicy(interval=0.2, timeout=1, idle=60)
    pings = {"a": 0, "b": 0}
    async with timed_by(timing) as clock, pair(alice, bob, keepalive=policy, clock=clock) as (a, b):
        a.pins = b.pins = 1
        for name, control in (("a", a), ("b", b)):
            send = control.channel.send

            async def counting(message: dict[str, Any], name: str = name, send: Any = send) -> None:
                pings[name] += message.get("t") == "ping"
                await send(message)

            control.channel.send = counting  # type: ignore[method-assign]
        await anyio.sleep(2.4)
        assert a.usable
        assert b.usable
    assert pings["a"] >= 5
    assert pings["b"] <= 1


async def test_a_channel_heard_from_lately_starts_no_task_at_its_check(
    alice: Identity, bob: Identity
) -> None:
    # The accepting side (on the clock) hears the dialler's pings before each of its checks:
    # after its own first ping, a check only books the next one, in the clock's task.
    policy = KeepalivePolicy(interval=0.05, timeout=0.5, idle=60)
    async with timed_by("shared clock") as clock, pair(alice, bob, keepalive=policy, clock=clock) as (a, b):
        a.pins = b.pins = 1
        checks, turns = 0, 0
        due, turn = b._keepalive_due, b._keepalive_turn

        def counting_due() -> None:
            nonlocal checks
            checks += 1
            due()

        async def counting_turn() -> None:
            nonlocal turns
            turns += 1
            await turn()

        b._keepalive_due = counting_due  # type: ignore[method-assign]
        b._keepalive_turn = counting_turn  # type: ignore[method-assign]
        await anyio.sleep(0.6)
        assert a.usable
        assert b.usable
    assert checks >= 5
    assert turns <= 1  # (its first ping)


async def test_a_channel_whose_task_is_cancelled_is_closed_before_its_tasks_end(
    alice: Identity, bob: Identity
) -> None:
    # Cancelled from outside, the channel was closed only once its task group had waited for
    # its tasks; meanwhile a request went out and handed a watch to that group. Trio closes a
    # group to new tasks once its tasks end: that request met a RuntimeError, and the watch
    # was never awaited. Now the channel is closed first, and such a request is refused.
    outcome: list[str] = []

    async def last_word(control: ControlChannel, message: dict[str, Any]) -> Reply:
        try:
            await anyio.sleep_forever()
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.sleep(0.01)  # the channel's own task has been cancelled meanwhile
                try:
                    await control.start_request({"t": "get"})
                    outcome.append("sent")
                except PeerUnreachable:
                    outcome.append("refused")
        return None

    a_channel, b_channel = await channel_pair(alice, bob)
    a = ControlChannel(
        a_channel, initiator=True, local_id=alice.id, endpoint=None, handler=last_word, keepalive=QUIET
    )
    b = ControlChannel(
        b_channel, initiator=False, local_id=bob.id, endpoint=None, handler=echo, keepalive=QUIET
    )
    with anyio.fail_after(5):
        async with anyio.create_task_group() as outside:
            outside.start_soon(b.run)
            async with anyio.create_task_group() as inside:
                inside.start_soon(a.run)
                await b.start_request({"t": "invite"})
                while not a.handling:
                    await anyio.sleep(0.01)
                inside.cancel_scope.cancel()
            assert a.closed
            await b.aclose()
    assert outcome == ["refused"]
