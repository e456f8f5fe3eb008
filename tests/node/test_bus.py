"""The event bus: merging per key, the hard limit, handlers that fail."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import anyio
import pytest

from peerkit import ChangeType
from peerkit.bus import Bus, EventWatch, merge_change


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
