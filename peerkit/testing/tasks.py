"""Counting the tasks that run, on asyncio or trio: nothing may be left running."""

from __future__ import annotations

__all__ = ("running_tasks",)


def running_tasks() -> int:
    """How many tasks the running event loop has now, on asyncio or on trio.

    Compare it before and after a node runs to check that nothing was left running.
    """
    import asyncio

    try:
        return len(asyncio.all_tasks())
    except RuntimeError:  # not asyncio: trio
        import trio

        def count(task: trio.lowlevel.Task) -> int:
            return 1 + sum(count(child) for nursery in task.child_nurseries for child in nursery.child_tasks)

        return count(trio.lowlevel.current_root_task())  # type: ignore[arg-type, unused-ignore]
