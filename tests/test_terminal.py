"""``peerkit.terminal.Terminal.ask``: answers from a pipe taken in order, and on a terminal an
answer typed before its question is shown discarded."""

from __future__ import annotations

import io
import os

import anyio
import pytest
from anyio.lowlevel import checkpoint

from peerkit.terminal import Terminal


@pytest.mark.anyio
async def test_answers_given_ahead_in_a_pipe_answer_the_questions_in_order() -> None:
    read_end, write_end = os.pipe()
    os.write(write_end, b"y\r\no\n")  # (one read takes both lines)
    os.close(write_end)
    with os.fdopen(read_end) as stdin:
        out = io.StringIO()
        async with Terminal(stdin=stdin, stdout=out, keys=False) as terminal:
            assert await terminal.ask("Save? [y/N]") == "y"
            assert await terminal.ask("exists: [r]ename, [o]verwrite? [R/o]") == "o"
            assert await terminal.ask("again?") is None  # (the end of the input)
    assert out.getvalue() == "Save? [y/N]\nexists: [r]ename, [o]verwrite? [R/o]\nagain?\n"


@pytest.mark.anyio
@pytest.mark.parametrize("keys", [False, True], ids=["lines", "keys"])
async def test_on_a_terminal_what_was_typed_before_the_question_does_not_answer_it(keys: bool) -> None:
    controller, device = os.openpty()
    try:
        with os.fdopen(device, "r", closefd=False) as stdin, os.fdopen(device, "w", closefd=False) as out:
            async with Terminal(stdin=stdin, stdout=out, keys=keys) as terminal:
                os.write(controller, b"y\n")  # (typed for a question that was withdrawn)
                await _typed_reached(device)
                answers: list[str | None] = []
                async with anyio.create_task_group() as tg:

                    async def ask() -> None:
                        answers.append(await terminal.ask("carol offers a file. Save? [y/N]"))

                    tg.start_soon(ask)
                    await anyio.wait_all_tasks_blocked()  # (the question is shown: it waits for keys)
                    os.write(controller, b"n\n")
            assert answers == ["n"]
    finally:
        os.close(controller)
        os.close(device)


async def _typed_reached(device: int) -> None:
    # Until the pseudo-terminal has the bytes written to its controller (the kernel moves them).
    import fcntl
    import termios

    waiting = bytearray(4)
    with anyio.fail_after(5):
        while True:
            fcntl.ioctl(device, termios.FIONREAD, waiting)
            if int.from_bytes(waiting, "little"):
                return
            await checkpoint()
