"""peerkit.sync: the flag and the lock that make their waiters' queue only when one waits."""

from __future__ import annotations

import anyio
import pytest

from peerkit.sync import Flag, Lock

pytestmark = pytest.mark.anyio


async def test_a_flag_wakes_its_waiters_and_stays_set() -> None:
    flag = Flag()
    woke: list[int] = []

    async def waiter(i: int) -> None:
        await flag.wait()
        woke.append(i)

    async with anyio.create_task_group() as tg:
        for i in range(3):
            tg.start_soon(waiter, i)
        await anyio.sleep(0.01)
        assert not flag.is_set()
        assert woke == []
        flag.set()
    assert sorted(woke) == [0, 1, 2]
    assert flag.is_set()
    with anyio.fail_after(1):
        await flag.wait()  # set already: returns (a checkpoint)


async def test_a_set_flag_keeps_no_queue_of_waiters() -> None:
    # A long-lived flag that was waited on once (a watch's "subscribed", a dial's "done" held by
    # the task that became the channel's reader) costs nothing more once set.
    flag = Flag()
    async with anyio.create_task_group() as tg:
        tg.start_soon(flag.wait)
        await anyio.sleep(0.01)
        assert flag._waiters is not None  # (a waiter: its queue exists)
        flag.set()
    assert flag._waiters is None


async def test_a_cancelled_waiter_leaves_the_queue_and_the_others_still_wake() -> None:
    flag = Flag()
    woke: list[str] = []

    async def waiter(name: str) -> None:
        await flag.wait()
        woke.append(name)

    async with anyio.create_task_group() as tg:
        with anyio.CancelScope() as gone:
            tg.start_soon(waiter, "first")
            async with anyio.create_task_group() as cancelled:
                cancelled.start_soon(waiter, "cancelled")
                tg.start_soon(waiter, "last")
                await anyio.sleep(0.01)
                cancelled.cancel_scope.cancel()
        assert not gone.cancelled_caught
        await anyio.sleep(0.01)
        assert woke == []  # cancelling one waiter woke nobody else
        flag.set()
    assert sorted(woke) == ["first", "last"]
    assert flag._waiters is None


async def test_a_lone_waiter_cancelled_leaves_nothing_behind() -> None:
    flag = Flag()
    for _ in range(3):
        with anyio.move_on_after(0.005):
            await flag.wait()
    assert flag._waiters is None  # (on every backend)
    flag.set()
    with anyio.fail_after(1):
        await flag.wait()


async def test_a_flag_waited_with_a_timeout_is_cancelled_cleanly() -> None:
    flag = Flag()
    with anyio.move_on_after(0.01) as timer:
        await flag.wait()
    assert timer.cancelled_caught
    flag.set()
    await flag.wait()


async def test_the_lock_is_taken_in_turn_in_the_order_waiters_came() -> None:
    lock = Lock()
    order: list[int] = []

    async def hold(i: int) -> None:
        async with lock:
            order.append(i)
            await anyio.sleep(0.005)

    async with anyio.create_task_group() as tg:
        for i in range(5):
            tg.start_soon(hold, i)
            await anyio.sleep(0.001)  # (they come in this order)
    assert order == [0, 1, 2, 3, 4]
    assert not lock.locked()


@pytest.mark.parametrize("when", ["waiting", "as the lock is handed to it"])
async def test_a_waiter_cancelled_gives_up_its_turn_and_the_lock_still_passes_on(when: str) -> None:
    lock = Lock()
    got: list[str] = []
    scopes: dict[str, anyio.CancelScope] = {}

    async def take(name: str) -> None:
        with anyio.CancelScope() as scope:
            scopes[name] = scope
            async with lock:
                got.append(name)

    async with anyio.create_task_group() as tg:
        await lock.__aenter__()  # the test holds it
        for name in ("first", "second"):
            tg.start_soon(take, name)
            await anyio.sleep(0.01)
        if when == "waiting":
            scopes["first"].cancel()
            await anyio.sleep(0.01)
            assert got == []
            assert lock.locked()
            await lock.__aexit__(None, None, None)
        else:
            await lock.__aexit__(None, None, None)  # handed to "first"...
            scopes["first"].cancel()  # ...cancelled before it runs (it may or may not get in)
    assert got == ["second"] if when == "waiting" else got in (["second"], ["first", "second"])
    assert not lock.locked()
