"""Synchronization primitives that cost next to nothing until a task waits on them.

A node holds a few events and locks per connection, and most are never waited on: a connection's
"closed" event, a watch's "wake up" event, a channel's send lock that is never contended. On
asyncio, every ``anyio.Event`` and ``anyio.Lock`` allocates a queue of waiters when it is made
(about 0.8 KB each); with thousands of idle connections that is most of what an idle connection
costs. :class:`Flag` and :class:`Lock` make the queue only when a task has to wait. They work on
every backend anyio runs on.

Tasks are the same: a node keeps a task for each connection, and on asyncio an anyio task also
makes a handle with a cancel scope and an event (about 1.3 KB more than the task it runs in).
:class:`TaskSet` starts such long-lived tasks as asyncio's own, each in a cancel scope of its own
or ended by what it runs (a channel), and cancels and waits for them with the task group they
belong to.

Like ``anyio.Event.set``, :meth:`Flag.set` is called from the event loop's thread only.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from types import TracebackType
from typing import Any, Protocol, cast

import anyio
import anyio.abc
import anyio.lowlevel

__all__ = ("Cancellable", "Flag", "Lock", "TaskSet")

log = logging.getLogger(__name__)


class Flag:
    """An event that is set once (like ``anyio.Event``) and makes its waiters' queue only when
    one waits.

    On asyncio a waiter awaits a future of its own (a wake-up costs half what ``anyio.Event``'s
    does: no event, queue or backend lookup); on trio a waiter parks its task, and ``set`` puts it
    back on the run queue (trio's own low-level calls, which its ``Event`` is made of).
    """

    __slots__ = ("_set", "_waiters")

    def __init__(self) -> None:
        self._set = False
        # None, or the one waiter or a list of them: on asyncio its future, on trio its task.
        self._waiters: object = None

    def set(self) -> None:
        """Set the flag: every task waiting for it wakes."""
        self._set = True
        waiters, self._waiters = self._waiters, None  # (a set flag keeps none)
        if waiters is None:
            return
        for waiter in waiters if isinstance(waiters, list) else (waiters,):
            if isinstance(waiter, asyncio.Future):
                if not waiter.done():
                    waiter.set_result(None)
            else:  # a parked trio task (a cancelled one has left the queue)
                from trio.lowlevel import Task, reschedule

                assert isinstance(waiter, Task)
                reschedule(waiter)

    def is_set(self) -> bool:
        """Whether the flag is set."""
        return self._set

    async def wait(self) -> None:
        """Wait until the flag is set (a checkpoint if it is set already)."""
        if self._set:
            await anyio.lowlevel.checkpoint()
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # (not asyncio: trio)
            await self._park()
            return
        waiter: asyncio.Future[None] = loop.create_future()
        self._join(waiter)
        try:
            await waiter  # (a cancelled task's wait ends here: its cancel scope cancels the future)
        finally:
            if not self._set:  # cancelled: this waiter leaves the queue
                self._leave(waiter)

    async def _park(self) -> None:
        # On trio: the task parks itself until set() reschedules it; cancelled, it leaves the queue.
        import trio.lowlevel

        task = trio.lowlevel.current_task()
        self._join(task)

        def abort(_: object) -> trio.lowlevel.Abort:
            self._leave(task)
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)

    def _join(self, waiter: object) -> None:
        waiters = self._waiters
        if waiters is None:
            self._waiters = waiter
        elif isinstance(waiters, list):
            waiters.append(waiter)
        else:
            self._waiters = [waiters, waiter]

    def _leave(self, waiter: object) -> None:
        waiters = self._waiters
        if waiters is waiter:
            self._waiters = None
        elif isinstance(waiters, list) and waiter in waiters:
            waiters.remove(waiter)


class Lock:
    """A lock for ``async with``, taken without a checkpoint when it is free (like
    ``anyio.Lock(fast_acquire=True)``); its queue of waiters is made when one has to wait, and
    they take it in the order they came. Cancelling a waiter gives up its turn."""

    __slots__ = ("_locked", "_waiters")

    def __init__(self) -> None:
        self._locked = False
        self._waiters: deque[anyio.Event] | None = None

    def locked(self) -> bool:
        """Whether a task holds the lock."""
        return self._locked

    async def __aenter__(self) -> None:
        if not self._locked:
            self._locked = True
            return
        turn = anyio.Event()
        if self._waiters is None:
            self._waiters = deque()
        self._waiters.append(turn)
        try:
            await turn.wait()
        except BaseException:
            if turn.is_set():  # the lock was handed to this task as it was cancelled: pass it on
                self._release()
            else:
                self._waiters.remove(turn)
            raise
        # (handed over by the holder: still locked, now by this task)

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._release()

    def _release(self) -> None:
        if self._waiters:
            self._waiters.popleft().set()  # the next waiter holds it now
        else:
            self._locked = False


class Cancellable(Protocol):
    """What ends a task of a :class:`TaskSet` that has no cancel scope of the set's: an
    ``anyio.CancelScope`` the task runs in, or an object that ends the task when cancelled (a
    :class:`peerkit.net.control.ControlChannel` ends its :meth:`run`, say)."""

    def cancel(self) -> None:
        """End the task, soon, from any task of the event loop's thread."""


class TaskSet:
    """Long-lived tasks (one per connection, say) that belong to a task group but cost less than
    its own: on asyncio, asyncio's tasks, each in a cancel scope of its own; elsewhere (trio,
    whose tasks are light), tasks of ``group``.

    Run :meth:`keep` in ``group``. It returns once :meth:`close` was called and every task has
    ended; cancelled before (the group is), it cancels the tasks and waits for them, so that the
    group ends after them, as it would with tasks of its own. A task's exception is logged and
    ends that task only. A task may also come with what ends it (see :meth:`start_soon`): on
    asyncio it is then its coroutine alone, in no cancel scope of the set's.
    """

    def __init__(self, group: anyio.abc.TaskGroup) -> None:
        self._group = group
        try:
            asyncio.get_running_loop()
            self._native = True
        except RuntimeError:  # (not asyncio: trio)
            self._native = False
        self._handles: dict[asyncio.Task[None], Cancellable] = {}  # (asyncio keeps no task)
        self._live = 0
        self._closed = False
        self._kept = False  # (keep has ended: a task started now starts cancelled)
        self._changed: Flag | None = None  # set when a task ends, or on close
        # What each task's done callback is: one bound method and one context for all (a task's
        # own would be 0.1 KB more on each).
        self._on_done = self._done
        self._context = contextvars.copy_context()

    def __len__(self) -> int:
        return self._live

    def start_soon(
        self, func: Callable[..., Awaitable[Any]], *args: Any, handle: Cancellable | None = None
    ) -> None:
        """Start ``func(*args)`` in a task of the set.

        With a ``handle``, ``func`` ends soon once ``handle.cancel()`` is called, and the set
        calls it when the group is cancelled: ``handle`` is a new cancel scope that ``func`` runs
        all its work in (``with scope:``), or an object that ends ``func``'s work when cancelled
        (a control channel ends its ``run``). On asyncio the task is then ``func``'s coroutine
        alone (a coroutine frame less, 0.25 KB, on each of thousands of connections; with an
        object of the kind, no cancel scope either: 0.8 KB less). Without one, on asyncio, the
        task runs in a cancel scope of the set's. (Elsewhere the group cancels its tasks itself.)
        """
        # (counted once started: a start that fails leaves nothing for keep to wait for)
        if not self._native:
            self._group.start_soon(self._run, None, func, args)
            self._live += 1
            return
        loop = asyncio.get_running_loop()
        if handle is None:
            handle = scope = anyio.CancelScope()
            task = loop.create_task(self._run(scope, func, args))
        else:
            task = loop.create_task(cast("Coroutine[Any, Any, None]", func(*args)))
            task.add_done_callback(self._on_done, context=self._context)
        if self._kept:
            handle.cancel()
        self._handles[task] = handle
        self._live += 1

    def _done(self, task: asyncio.Task[None]) -> None:
        # A task given its handle has ended (it ran no _run of the set's).
        if not task.cancelled():
            error = task.exception()
            if error is not None:
                name = getattr(task.get_coro(), "__qualname__", task)
                log.error("a task of %s failed", name, exc_info=error)
        self._forget(task)

    def _forget(self, task: asyncio.Task[None] | None) -> None:
        # A task has ended (on asyncio, ``task``): keep stops waiting for it.
        self._live -= 1
        if task is not None:
            del self._handles[task]
        self._wake()

    def close(self) -> None:
        """No more tasks come: :meth:`keep` returns once those running have ended."""
        self._closed = True
        self._wake()

    async def keep(self) -> None:
        """Wait until the set is closed and its tasks have ended; cancelled first, cancel the
        tasks and wait for them."""
        try:
            while not self._closed or self._live:
                self._changed = Flag()
                await self._changed.wait()
        finally:
            self._kept = True
            for handle in list(self._handles.values()):  # (a task may end as it is cancelled)
                handle.cancel()
            with anyio.CancelScope(shield=True):
                while self._handles:  # (elsewhere the group waits for its own tasks)
                    self._changed = Flag()
                    await self._changed.wait()

    def _wake(self) -> None:
        if self._changed is not None:
            self._changed.set()

    async def _run(
        self, scope: anyio.CancelScope | None, func: Callable[..., Awaitable[Any]], args: tuple[Any, ...]
    ) -> None:
        name = getattr(func, "__qualname__", func)  # (for the log)
        try:
            # (the coroutine holds what it needs of the function and its arguments, for as long
            # as it needs them: this frame keeps neither for the task's life)
            coro = func(*args)
            del func, args
            if scope is None:
                await coro
            else:
                with scope:
                    await coro
        except Exception:
            log.exception("a task of %s failed", name)
        finally:
            self._forget(asyncio.current_task() if self._native else None)
