"""peerkit.sync: the flag and the lock that make their waiters' queue only when one waits, and
the set of long-lived tasks lighter than a task group's."""

from __future__ import annotations

import functools
import gc
import weakref

import anyio
import pytest
from conftest import stuck

from peerkit.sync import Flag, Lock, TaskSet

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


async def test_a_task_set_cancels_its_tasks_with_its_group_and_the_group_ends_after_them() -> None:
    events: list[str] = []
    started = anyio.Event()

    async with anyio.create_task_group() as tg:
        tasks = TaskSet(tg)
        tg.start_soon(tasks.keep)
        for name in ("a", "b"):
            tasks.start_soon(functools.partial(stuck, started, events, name, cleanup=0.02))
        with anyio.fail_after(5):
            await started.wait()
        assert len(tasks) == 2
        tg.cancel_scope.cancel()
    events.append("group done")
    assert sorted(events[:2]) == ["a", "b"]
    assert events[2:] == ["group done"]
    assert len(tasks) == 0


@pytest.mark.logs_errors
async def test_a_closed_task_set_ends_when_its_tasks_have_and_a_failure_ends_only_its_task(
    caplog: pytest.LogCaptureFixture,
) -> None:
    done: list[int] = []

    async def work(n: int) -> None:
        await anyio.sleep(0.01 * n)
        if n == 1:
            raise RuntimeError("task 1 fails")
        done.append(n)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tasks = TaskSet(tg)
            tg.start_soon(tasks.keep)
            for n in range(4):
                tasks.start_soon(work, n)
            tasks.close()  # (the group ends once they have)
    assert done == [0, 2, 3]
    assert "a task of test_a_closed_task_set_ends" in caplog.text
    assert "task 1 fails" in caplog.text


async def test_a_task_started_after_its_set_was_cancelled_starts_cancelled() -> None:
    reached: list[str] = []

    async def late() -> None:
        reached.append("started")
        await anyio.sleep(5)
        reached.append("slept")

    async with anyio.create_task_group() as tg:
        tasks = TaskSet(tg)
        tg.start_soon(tasks.keep)
        await anyio.sleep(0.01)
        tg.cancel_scope.cancel()
        with anyio.CancelScope(shield=True):
            await anyio.sleep(0.01)  # (the keeper has ended)
            tasks.start_soon(late)
            with anyio.fail_after(1):
                while len(tasks):
                    await anyio.sleep(0.01)
    assert reached in ([], ["started"])


@pytest.mark.logs_errors
async def test_a_task_given_a_scope_runs_in_it_and_the_set_cancels_it_with_the_group(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # (a node's connection tasks: the coroutine alone is the task, on asyncio)
    events: list[str] = []
    started = [anyio.Event() for _ in range(3)]

    async def work(scope: anyio.CancelScope, started: anyio.Event, name: str) -> None:
        with scope:
            await stuck(started, events, name)

    async def fails(scope: anyio.CancelScope) -> None:
        with scope:
            raise RuntimeError("broken")

    async with anyio.create_task_group() as tg:
        tasks = TaskSet(tg)
        tg.start_soon(tasks.keep)
        first, second = anyio.CancelScope(), anyio.CancelScope()
        tasks.start_soon(work, first, started[0], "first", handle=first)
        tasks.start_soon(work, second, started[1], "second", handle=second)
        with anyio.fail_after(5):
            await started[0].wait()
            await started[1].wait()
            first.cancel()  # the caller ends one task
            while len(tasks) != 1:
                await anyio.sleep(0.01)
            assert events == ["first"]
            broken = anyio.CancelScope()
            tasks.start_soon(fails, broken, handle=broken)  # a failure ends only its task, logged
            while len(tasks) != 1:
                await anyio.sleep(0.01)
        assert "a task of test_a_task_given_a_scope" in caplog.text
        assert "broken" in caplog.text
        tg.cancel_scope.cancel()  # the group's cancel reaches the other through its scope
    assert events == ["first", "second"]
    assert len(tasks) == 0


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_task_given_a_handle_is_ended_by_it_when_the_group_is_cancelled() -> None:
    # (a node's channel task: the channel ends it, and the task holds no cancel scope)
    events: list[str] = []

    class Ends:
        def __init__(self) -> None:
            self.asked = anyio.Event()
            self.cancels = 0

        def cancel(self) -> None:
            self.cancels += 1
            self.asked.set()

    async def work(ends: Ends) -> None:
        await ends.asked.wait()
        await anyio.sleep(0.01)  # (still waited for: the group ends after it)
        events.append("ended")

    async with anyio.create_task_group() as tg:
        tasks = TaskSet(tg)
        tg.start_soon(tasks.keep)
        ends = Ends()
        tasks.start_soon(work, ends, handle=ends)
        await anyio.sleep(0.01)
        assert len(tasks) == 1
        tg.cancel_scope.cancel()
    assert events == ["ended"]
    assert ends.cancels == 1
    assert len(tasks) == 0

    # Started once the set was cancelled: cancelled at once.
    late = Ends()
    tasks.start_soon(work, late, handle=late)
    assert late.cancels == 1
    with anyio.fail_after(5):
        while len(tasks):
            await anyio.sleep(0.01)


async def test_a_task_of_a_set_keeps_only_what_its_function_keeps() -> None:
    # (a node keeps a task per connection for the connection's life: the function's bound method
    # and the tuple of its arguments are 0.1 KB more each, if the task keeps them)
    class Big:
        pass

    started = anyio.Event()

    async def body(big: Big) -> None:
        del big  # (not needed past the start)
        started.set()
        await anyio.sleep_forever()

    async with anyio.create_task_group() as tg:
        tasks = TaskSet(tg)
        tg.start_soon(tasks.keep)
        big = Big()
        gone = weakref.ref(big)
        tasks.start_soon(body, big)
        del big
        await started.wait()
        gc.collect()
        assert gone() is None
        tg.cancel_scope.cancel()


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_task_that_fails_to_start_leaves_nothing_to_wait_for() -> None:
    def not_a_coroutine(scope: anyio.CancelScope) -> None:
        raise RuntimeError("no coroutine made")

    async with anyio.create_task_group() as tg:
        tasks = TaskSet(tg)
        tg.start_soon(tasks.keep)
        scope = anyio.CancelScope()
        with pytest.raises(RuntimeError, match="no coroutine made"):
            tasks.start_soon(not_a_coroutine, scope, handle=scope)
        assert len(tasks) == 0
        tasks.close()  # (keep returns: it waits for nothing)


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_on_asyncio_tasks_given_scopes_share_one_done_callback_and_its_context() -> None:
    # (a bound method and a context of its own would be 0.1 KB more on each connection's task)
    async def work(scope: anyio.CancelScope) -> None:
        with scope:
            await anyio.sleep_forever()

    async with anyio.create_task_group() as tg:
        tasks = TaskSet(tg)
        tg.start_soon(tasks.keep)
        for _ in range(3):
            scope = anyio.CancelScope()
            tasks.start_soon(work, scope, handle=scope)
        callbacks = [task._callbacks for task in tasks._handles]  # type: ignore[attr-defined]
        assert all(len(c) == 1 for c in callbacks)
        assert len({id(c[0][0]) for c in callbacks}) == 1  # one bound method
        assert len({id(c[0][1]) for c in callbacks}) == 1  # one context
        tg.cancel_scope.cancel()


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_on_asyncio_a_task_set_makes_no_anyio_task_handle() -> None:
    # A node keeps a task per connection: anyio's handle, cancel scope and event would be 1.3 KB
    # more each.
    release = anyio.Event()

    def handles() -> int:
        return sum(type(o).__name__ == "TaskHandle" for o in gc.get_objects())

    async with anyio.create_task_group() as tg:
        tasks = TaskSet(tg)
        tg.start_soon(tasks.keep)
        await anyio.sleep(0.01)
        before = handles()
        for _ in range(20):
            tasks.start_soon(release.wait)
        await anyio.sleep(0.01)
        assert len(tasks) == 20
        assert handles() == before
        release.set()
        tasks.close()
