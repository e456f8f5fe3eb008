"""peerkit.clock: one task runs many timers' callbacks."""

from __future__ import annotations

import anyio
import pytest

from peerkit.clock import Clock, loop_clock

pytestmark = pytest.mark.anyio


async def test_callbacks_run_at_their_times_in_order() -> None:
    clock = Clock()
    ran: list[tuple[str, float]] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(clock.run)
        start = anyio.current_time()
        for name, after in (("late", 0.15), ("early", 0.05), ("tie-a", 0.1), ("tie-b", 0.1)):
            clock.call_at(start + after, lambda name=name: ran.append((name, anyio.current_time() - start)))
        with anyio.fail_after(5):
            while len(ran) < 4:
                await anyio.sleep(0.01)
        tg.cancel_scope.cancel()
    assert [name for name, _ in ran] == ["early", "tie-a", "tie-b", "late"]
    assert all(at >= after - 0.005 for (_, at), after in zip(ran, (0.05, 0.1, 0.1, 0.15), strict=True))
    assert len(clock) == 0


async def test_a_callback_due_sooner_than_the_one_waited_for_wakes_the_clock() -> None:
    clock = Clock()
    ran: list[str] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(clock.run)
        clock.call_at(anyio.current_time() + 60, lambda: ran.append("later"))
        await anyio.sleep(0.02)  # (the clock sleeps until the one a minute away)
        clock.call_at(anyio.current_time() + 0.01, lambda: ran.append("soon"))
        with anyio.fail_after(5):
            while not ran:
                await anyio.sleep(0.01)
        tg.cancel_scope.cancel()
    assert ran == ["soon"]
    assert len(clock) == 1


async def test_callbacks_due_within_the_slack_run_together() -> None:
    clock = Clock(slack=0.3)
    ran: list[float] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(clock.run)
        first = anyio.current_time() + 0.05
        for i in range(5):
            clock.call_at(first + i * 0.05, lambda: ran.append(anyio.current_time()))
        with anyio.fail_after(5):
            while len(ran) < 5:
                await anyio.sleep(0.01)
        tg.cancel_scope.cancel()
    assert min(ran) >= first + 0.3 - 0.01  # (late by the slack at most)
    assert max(ran) - min(ran) < 0.01  # (one wake-up for the five)


async def test_the_loop_clock_reads_the_time_anyio_reads() -> None:
    now = loop_clock()
    before = anyio.current_time()
    read = now()
    after = anyio.current_time()
    assert before <= read <= after
    await anyio.sleep(0.02)
    assert now() - read >= 0.015  # a clock, not a stored time


def test_the_loop_clock_outside_a_loop_is_anyios() -> None:
    assert loop_clock() is anyio.current_time
