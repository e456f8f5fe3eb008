"""The event bus: merging per key, the hard limit, handlers that fail."""

from __future__ import annotations

import functools
import uuid
from dataclasses import dataclass

import anyio
import anyio.lowlevel
import pytest

from peerkit import ChangeType
from peerkit.bus import Bus, EventWatch, is_coroutine_callable, merge_change


@dataclass(frozen=True, slots=True, kw_only=True)
class Thing:
    name: str
    change: ChangeType
    value: int = 0

    @property
    def key(self) -> str:
        return self.name


def test_merge_rules() -> None:
    added, deleted, updated = ChangeType.ADDED, ChangeType.DELETED, ChangeType.UPDATED
    assert merge_change(added, updated) is added
    assert merge_change(added, deleted) is None
    assert merge_change(deleted, added) is updated
    assert merge_change(updated, deleted) is deleted
    assert merge_change(updated, updated) is updated


@pytest.mark.asyncio
async def test_a_watch_merges_per_key_and_drops_the_oldest_over_its_limit() -> None:
    watch: EventWatch[Thing] = EventWatch(lambda e: e.name != "ignored", lambda w: None, limit=3)
    watch.put(Thing(name="a", change=ChangeType.ADDED, value=1))
    watch.put(Thing(name="a", change=ChangeType.UPDATED, value=2))
    watch.put(Thing(name="b", change=ChangeType.ADDED))
    watch.put(Thing(name="b", change=ChangeType.DELETED))  # never seen: nothing happened
    watch.put(Thing(name="ignored", change=ChangeType.ADDED))
    assert watch.pending == 1
    assert watch.pop_nowait() == Thing(name="a", change=ChangeType.ADDED, value=2)
    for name in "cdefg":
        watch.put(Thing(name=name, change=ChangeType.UPDATED))
    assert (watch.pending, watch.dropped) == (3, 2)
    assert [watch.pop_nowait().name for _ in range(3)] == ["e", "f", "g"]
    with pytest.raises(anyio.WouldBlock):
        watch.pop_nowait()


@pytest.mark.asyncio
@pytest.mark.logs_errors
async def test_a_failing_handler_is_logged_and_gets_the_next_event(caplog: pytest.LogCaptureFixture) -> None:
    seen: list[str] = []
    async with anyio.create_task_group() as tg:
        bus: Bus[Thing] = Bus(tg.start_soon)

        async def handler(event: Thing) -> None:
            if event.name == "bad":
                raise RuntimeError("handler failed")
            seen.append(event.name)

        handle = bus.add_handler(lambda e: True, handler)
        bus.publish(Thing(name="bad", change=ChangeType.ADDED))
        await anyio.sleep(0.01)
        bus.publish(Thing(name=str(uuid.uuid4()), change=ChangeType.ADDED))
        await anyio.sleep(0.01)
        handle.remove()
        bus.publish(Thing(name="after removal", change=ChangeType.ADDED))
        await anyio.sleep(0.01)
        bus.close()
    assert len(seen) == 1
    assert "handler failed" in caplog.text


def test_a_plain_handler_is_called_as_the_event_is_published() -> None:
    spawned: list[object] = []
    bus: Bus[Thing] = Bus(spawned.append)
    seen: list[str] = []
    handle = bus.add_handler(lambda e: e.name != "ignored", lambda e: seen.append(e.name))
    bus.publish(Thing(name="a", change=ChangeType.ADDED))
    bus.publish(Thing(name="ignored", change=ChangeType.ADDED))
    bus.publish(Thing(name="a", change=ChangeType.UPDATED))  # nothing merges: every event comes
    assert seen == ["a", "a"]
    assert spawned == []  # no task
    handle.remove()
    handle.remove()
    bus.publish(Thing(name="b", change=ChangeType.ADDED))
    assert seen == ["a", "a"]


@pytest.mark.logs_errors
def test_a_failing_plain_handler_is_logged_and_the_others_still_run(caplog: pytest.LogCaptureFixture) -> None:
    bus: Bus[Thing] = Bus(lambda run: None)
    seen: list[str] = []

    def broken(event: Thing) -> None:
        raise RuntimeError("plain handler failed")

    bus.add_handler(lambda e: True, broken)
    bus.add_handler(lambda e: True, lambda e: seen.append(e.name))
    bus.publish(Thing(name="a", change=ChangeType.ADDED))
    bus.publish(Thing(name="b", change=ChangeType.ADDED))
    assert seen == ["a", "b"]
    failures = [r for r in caplog.records if r.exc_info and "plain handler failed" in str(r.exc_info[1])]
    assert len(failures) == 2


def test_a_plain_handler_may_remove_handlers_while_an_event_is_delivered() -> None:
    bus: Bus[Thing] = Bus(lambda run: None)
    seen: list[str] = []
    handles = {}

    def first(event: Thing) -> None:
        seen.append("first")
        handles["first"].remove()
        handles["second"].remove()

    handles["first"] = bus.add_handler(lambda e: True, first)
    handles["second"] = bus.add_handler(lambda e: True, lambda e: seen.append("second"))
    handles["third"] = bus.add_handler(lambda e: True, lambda e: seen.append("third"))
    bus.publish(Thing(name="a", change=ChangeType.ADDED))
    bus.publish(Thing(name="b", change=ChangeType.ADDED))
    assert seen == ["first", "third", "third"]
    bus.close()
    bus.publish(Thing(name="c", change=ChangeType.ADDED))
    assert seen == ["first", "third", "third"]


@pytest.mark.asyncio
async def test_a_plain_callable_that_returns_a_coroutine_moves_to_a_task() -> None:
    seen: list[str] = []

    async def record(event: Thing) -> None:
        await anyio.lowlevel.checkpoint()
        seen.append(event.name)

    async with anyio.create_task_group() as tg:
        bus: Bus[Thing] = Bus(tg.start_soon)
        handle = bus.add_handler(lambda e: True, lambda e: record(e))  # noqa: PLW0108 (the point)
        for name in "abc":
            bus.publish(Thing(name=name, change=ChangeType.ADDED))
        with anyio.fail_after(5):
            while len(seen) < 3:
                await anyio.sleep(0.01)
        assert seen == ["a", "b", "c"]  # the first one too, in order, each awaited
        handle.remove()
        bus.publish(Thing(name="d", change=ChangeType.ADDED))
        await anyio.sleep(0.02)
        assert seen == ["a", "b", "c"]
        bus.close()


def test_coroutine_callables_are_told_from_plain_ones() -> None:
    async def coroutine(event: object) -> None:
        pass

    class Plain:
        def __call__(self, event: object) -> None:
            pass

    class Async:
        async def __call__(self, event: object) -> None:
            pass

        async def method(self, event: object) -> None:
            pass

    assert is_coroutine_callable(coroutine)
    assert is_coroutine_callable(functools.partial(functools.partial(coroutine)))
    assert is_coroutine_callable(Async())
    assert is_coroutine_callable(Async().method)
    assert not is_coroutine_callable(Plain())
    assert not is_coroutine_callable(print)
    assert not is_coroutine_callable(lambda e: coroutine(e))  # noqa: PLW0108 (the point)
    with pytest.raises(TypeError, match="a function or a coroutine function, not str"):
        Bus(lambda run: None).add_handler(lambda e: True, "handler")  # type: ignore[arg-type]
