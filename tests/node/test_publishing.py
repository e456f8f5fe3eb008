"""The publisher side of subscriptions, on its own: what each subscriber is sent, and when."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, cast

import anyio
import pytest

from peerkit.bus import Bus
from peerkit.events import NameChanged, PresenceChanged
from peerkit.identity import Identity, PeerId
from peerkit.model import Presence, PresenceStatus, Scope, SubscribePermission
from peerkit.net.control import Answer, ControlChannel
from peerkit.node.publishing import Published, Publishing
from peerkit.proto import messages
from peerkit.sync import Flag

pytestmark = pytest.mark.anyio


class FakeChannel:
    """Takes every message at once (each costing ``cost`` seconds of CPU), and keeps it; while
    ``congested``, takes none at once."""

    def __init__(self, cost: float) -> None:
        self.sent: list[dict[str, Any]] = []
        self.cost = cost
        self.congested = False
        self.on_send: Callable[[], None] | None = None

    def try_send_encoded(self, plaintext: bytes) -> bool:
        if self.on_send is not None:
            self.on_send()
        if self.congested:
            return False
        if self.cost:
            time.sleep(self.cost)
        self.sent.append(messages.decode_message(plaintext))
        return True


class FakeControl:
    def __init__(self, cost: float = 0.0) -> None:
        self.peer_id = Identity.generate().id
        self.channel = FakeChannel(cost)
        self.pins = 0
        self.drains = Flag()  # a congested channel takes messages once this is set

    async def notify_encoded(self, plaintext: bytes) -> None:
        await self.drains.wait()
        self.channel.sent.append(messages.decode_message(plaintext))


class Contacts:
    def __init__(self) -> None:
        self.allowed: set[PeerId] = set()

    def has(self, peer_id: PeerId) -> bool:
        return peer_id in self.allowed

    def permission(self, peer_id: PeerId) -> SubscribePermission | None:
        return SubscribePermission.ALLOWED if peer_id in self.allowed else None


class Publisher:
    def __init__(self, tg: anyio.abc.TaskGroup) -> None:
        self.bus: Bus[Any] = Bus(tg.start_soon)
        self.contacts = Contacts()
        self.presence = Presence(PresenceStatus.ONLINE)
        self.name = ""
        self.me = Identity.generate().id
        self.part = Publishing(
            bus=self.bus,
            contacts=self.contacts,
            published=lambda: Published(presence=self.presence, name=self.name, apps=(), objects=()),
            scope=lambda: Scope.INTERNET,
            near=lambda peer_id: False,
            spawn=tg.start_soon,
            instance=b"i" * 16,
        )

    async def subscribed(self, n: int, cost: float = 0.0) -> list[FakeControl]:
        controls = [FakeControl(cost) for _ in range(n)]
        for control in controls:
            self.contacts.allowed.add(control.peer_id)
            answer = self.part.subscribe(cast(ControlChannel, control))
            assert isinstance(answer, Answer)
            assert answer.message["state"]["presence"] == [int(PresenceStatus.ONLINE), ""]
            await answer.sent(True)
        return controls

    def set_presence(self, text: str) -> None:
        self.presence = Presence(PresenceStatus.BUSY, text)
        self.bus.publish(
            PresenceChanged(peer_id=self.me, contact=None, endpoint=None, presence=self.presence, local=True)
        )  # type: ignore[arg-type]

    def set_name(self, name: str) -> None:
        self.name = name
        self.bus.publish(NameChanged(peer_id=self.me, contact=None, endpoint=None, name=name, local=True))  # type: ignore[arg-type]


@asynccontextmanager
async def publisher() -> AsyncIterator[Publisher]:
    async with anyio.create_task_group() as tg:
        made = Publisher(tg)
        tg.start_soon(made.part.fanout)
        yield made
        tg.cancel_scope.cancel()


def texts(control: FakeControl) -> list[str]:
    return [m["v"][1] for m in control.channel.sent if m["k"] == "presence"]


async def test_a_change_reaches_every_subscriber_once_and_farewell_waits_for_a_whole_pass() -> None:
    async with publisher() as p:
        # More than a pass sends before it lets others run, slow enough that farewell looks in the
        # meantime.
        controls = await p.subscribed(400, cost=0.0002)
        p.set_presence("away for lunch")
        with anyio.fail_after(5):
            await p.part.farewell()
        assert [texts(c) for c in controls] == [["away for lunch"]] * 400


async def test_changes_merge_for_a_subscriber_whose_state_is_not_sent_yet() -> None:
    async with publisher() as p:
        (early,) = await p.subscribed(1)
        late = FakeControl()
        p.contacts.allowed.add(late.peer_id)
        answer = p.part.subscribe(cast(ControlChannel, late))
        assert isinstance(answer, Answer)
        for i in range(50):
            p.set_presence(f"change {i}")
        await anyio.sleep(0.05)
        assert late.channel.sent == []  # its state is not out yet: nothing may come before it
        await answer.sent(True)
        assert texts(late) == ["change 49"]  # the latest, once
        with anyio.fail_after(5):
            await p.part.farewell()
        assert texts(early)[-1] == "change 49"


async def test_a_subscriber_that_is_no_longer_a_contact_is_told_offline_and_dropped() -> None:
    async with publisher() as p:
        (gone, kept) = await p.subscribed(2)
        p.contacts.allowed.discard(gone.peer_id)
        p.set_presence("still here")
        with anyio.fail_after(5):
            await p.part.farewell()
        assert gone.channel.sent[-1]["v"] == [int(PresenceStatus.OFFLINE), ""]
        assert texts(kept) == ["still here"]
        assert p.part.subscribers() == [kept.peer_id]


async def test_a_subscriber_congested_in_a_pass_still_gets_what_changed_during_that_pass() -> None:
    async with publisher() as p:
        controls = await p.subscribed(200)
        # While the pass of the presence change is under way, the name changes too (the next
        # pass's news); further on in that pass, one subscriber's connection is found congested.
        controls[100].channel.on_send = lambda: p.set_name("laptop") if not p.name else None
        stuck = controls[150]
        stuck.channel.congested = True
        p.set_presence("in a call")
        with anyio.fail_after(5):
            while not all(len(c.channel.sent) == 2 for c in controls if c is not stuck):
                await anyio.sleep(0.01)  # (two passes: the presence, then the name)
        assert [m["k"] for m in controls[199].channel.sent] == ["presence", "name"]
        assert stuck.channel.sent == []
        stuck.channel.congested = False
        stuck.drains.set()  # it reads at last
        with anyio.fail_after(5):
            await p.part.farewell()
        assert [(m["k"], m["v"]) for m in stuck.channel.sent] == [
            ("presence", [int(PresenceStatus.BUSY), "in a call"]),
            ("name", "laptop"),
        ]
