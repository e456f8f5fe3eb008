"""The terminal of an interactive command (``peerkit chat``, ``peerkit receive``): lines typed by
the user, with messages printed above the line being typed, and whether the user is typing.

On a terminal the keys are read one by one (cbreak mode, restored on exit): the line is edited
here (backspace, Ctrl-U; Ctrl-D on an empty line ends the input), which is how the user is seen
typing. Otherwise (a pipe, a file) whole lines are read and nobody is seen typing.
"""

from __future__ import annotations

import codecs
import contextlib
import os
import stat
import sys
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, TextIO

import anyio
from rich.console import Console
from rich.text import Text

from peerkit.model import printable

__all__ = ("IDLE_AFTER", "Line", "SafeConsole", "Terminal", "TypingChanged")

#: Seconds without a key after which a user who typed part of a line counts as no longer typing.
IDLE_AFTER: Final = 5.0
#: Characters of one typed line kept, at most (more are dropped, with a bell).
MAX_TYPED: Final = 8192


@dataclass(frozen=True, slots=True)
class Line:
    """A line the user entered (without its line end)."""

    text: str


@dataclass(frozen=True, slots=True)
class TypingChanged:
    """The user started (``on``) or stopped typing."""

    on: bool


class Terminal:
    """Input from ``stdin`` and output to ``stdout`` for an interactive command.

    Use it with ``async with``; iterate :meth:`input` for :class:`Line` and :class:`TypingChanged`;
    :meth:`show` prints a message above the line being typed. With ``keys=False`` whole lines are
    read even from a terminal (which then echoes and edits them itself).
    """

    def __init__(
        self, stdin: TextIO | None = None, stdout: TextIO | None = None, *, keys: bool = True
    ) -> None:
        self._stdin = stdin or sys.stdin
        self._stdout = stdout or sys.stdout
        self._fd = self._stdin.fileno()
        #: Whether keys are read one by one (``keys``, and both ends are a terminal).
        self.interactive = keys and self._stdin.isatty() and self._stdout.isatty()
        self._saved: list[Any] | None = None
        self._typed: list[str] = []
        self._prompt = "> "
        self._status = ""
        # Read but not yet taken, when whole lines are read: a pipe gives several at once.
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending = ""
        self._ended = False

    async def __aenter__(self) -> Terminal:
        if self.interactive:
            import termios
            import tty

            self._saved = termios.tcgetattr(self._fd)
            tty.setcbreak(self._fd)  # keys one by one, no echo; Ctrl-C still interrupts
            self._redraw()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._saved is not None:
            import termios

            self._write("\r\x1b[K")
            termios.tcsetattr(self._fd, termios.TCSADRAIN, self._saved)
            self._saved = None

    def show(self, text: str) -> None:
        """Print ``text`` as a line of its own, above the line being typed; its control characters
        but line feeds are shown escaped (see :func:`peerkit.printable`)."""
        text = printable(text, newlines=True)
        if self.interactive:
            self._write(f"\r\x1b[K{text}\n")
            self._redraw()
        else:
            self._write(f"{text}\n")

    def set_status(self, status: str) -> None:
        """Show ``status`` (e.g. who is typing) before the prompt, on a terminal; '' clears it."""
        status = printable(status)
        if status != self._status:
            self._status = status
            if self.interactive:
                self._redraw()

    async def ask(self, question: str) -> str | None:
        """Print ``question`` and return the line answered (None at the end of the input).

        On a terminal, what was typed before the question is shown is discarded: the answer is
        to this question, never a line typed for an earlier one. From a pipe or a file, lines are
        taken in order (a script's answers, given ahead).
        """
        if self._stdin.isatty():
            import termios

            termios.tcflush(self._fd, termios.TCIFLUSH)
            self._typed.clear()
        self.show(question)
        async with contextlib.aclosing(self.input()) as items:  # (closed here, not by the GC)
            async for item in items:
                if isinstance(item, Line):
                    return item.text
        return None

    async def input(self) -> AsyncGenerator[Line | TypingChanged, None]:
        """The lines the user enters and, on a terminal, when they start and stop typing; it ends
        at the end of the input (Ctrl-D on an empty line)."""
        regular = stat.S_ISREG(os.fstat(self._fd).st_mode)  # (a file is always readable)
        typing = False
        while True:
            if not self.interactive:  # (lines already read first, one at a time: each is taken)
                if "\n" in self._pending:
                    line, self._pending = self._pending.split("\n", 1)
                    yield Line(line.rstrip("\r"))
                    continue
                if self._ended:
                    if self._pending:
                        line, self._pending = self._pending, ""
                        yield Line(line)
                    return
            if not regular:
                if typing:
                    with anyio.move_on_after(IDLE_AFTER) as idle:
                        await anyio.wait_readable(self._fd)
                    if idle.cancelled_caught:
                        typing = False
                        yield TypingChanged(False)
                        continue
                else:
                    try:
                        await anyio.wait_readable(self._fd)
                    except PermissionError:  # (what cannot be polled, /dev/null: read as a file)
                        regular = True
            data = os.read(self._fd, 4096)
            text = self._decoder.decode(data, final=not data)
            if not self.interactive:
                self._pending += text
                if not data and self._stdin.isatty():  # (Ctrl-D ends this input, not the terminal's)
                    line, self._pending = self._pending, ""
                    if line:
                        yield Line(line)
                    return
                self._ended = not data
                continue
            if not data:
                return
            for item in self._keys(text):
                if item is None:
                    return
                if isinstance(item, Line) and typing:
                    typing = False
                    yield TypingChanged(False)
                yield item
            now_typing = bool(self._typed)
            if now_typing != typing:
                typing = now_typing
                yield TypingChanged(typing)

    def _keys(self, text: str) -> list[Line | None]:
        # Edit the typed line with ``text``'s keys: the lines finished, None for the end of input.
        out: list[Line | None] = []
        escape = False
        for char in text:
            if escape:  # an escape sequence (arrow keys and such): skipped up to its final letter
                escape = not (char.isalpha() or char == "~")
                continue
            if char in "\r\n":
                line = "".join(self._typed)
                self._typed.clear()
                self._write(f"\r\x1b[K{self._prompt}{line}\n")
                out.append(Line(line))
            elif char in "\x7f\x08":
                if self._typed:
                    self._typed.pop()
            elif char == "\x15":  # Ctrl-U
                self._typed.clear()
            elif char == "\x04":  # Ctrl-D
                if not self._typed:
                    out.append(None)
                    return out
            elif char == "\x1b":
                escape = True
            elif char >= " ":
                if len(self._typed) < MAX_TYPED:
                    self._typed.append(char)
                else:
                    self._write("\a")
        self._redraw()
        return out

    def _redraw(self) -> None:
        status = f"\x1b[2m{self._status}\x1b[0m " if self._status else ""
        self._write(f"\r\x1b[K{status}{self._prompt}{''.join(self._typed)}")

    def _write(self, text: str) -> None:
        self._stdout.write(text)
        self._stdout.flush()


class SafeConsole(Console):
    """A rich console for text that may come from peers: markup and emoji codes are off unless a
    call turns them on (a nickname "[/b]" is shown as such, not read as a closing tag), and in
    every string it renders, control characters but line feeds are shown escaped (see
    :func:`peerkit.printable`): no escape sequence from a peer reaches the terminal."""

    def __init__(self, **options: Any) -> None:
        options.setdefault("markup", False)
        options.setdefault("emoji", False)
        super().__init__(**options)

    def render_str(self, text: str, **options: Any) -> Text:
        """What rich renders a string as, once its control characters but line feeds are shown
        escaped, and the characters the output's encoding cannot hold (an ASCII or Latin-1
        locale) too, so that a table is measured as it is written; the options are rich's."""
        text = printable(text, newlines=True)
        encoding = self.encoding
        if not encoding.startswith("utf"):
            with contextlib.suppress(LookupError):  # (an encoding Python does not know: as it is)
                text = text.encode(encoding, "backslashreplace").decode(encoding)
        return super().render_str(text, **options)
