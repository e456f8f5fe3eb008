"""``peerkit send`` and ``peerkit receive``: files and folders from one person to another, with a
progress bar, checked end to end, resumed after a cut, never overwriting without asking."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Final

import anyio
import typer
from rich.live import Live
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.spinner import Spinner

import peerkit
from peerkit.clikit import (
    EXIT_DECLINED,
    EXIT_EXPIRED,
    EXIT_STOPPED,
    DataDir,
    Discovery,
    Expected,
    ListenAt,
    Senders,
    accept_invitation,
    cancel_on_signal,
    console,
    count_text,
    err_console,
    existing_data_dir,
    inviting_node,
    parse_listen,
    peer_named,
    providers_for,
    providers_named,
    reached,
    reaching,
    senders_named,
    target_of,
)
from peerkit.discovery.base import DiscoveryProvider
from peerkit.errors import ProtocolError
from peerkit.files import (
    Decision,
    Outgoing,
    ReceiveReport,
    SendReport,
    check_destination,
    prepare,
    receive_files,
    send_files,
)
from peerkit.model import check_text, printable
from peerkit.proto.files import SUMMARY_NAMES, Entry, Summary, decode_summary, encode_summary
from peerkit.streams import AppStream
from peerkit.terminal import SafeConsole, Terminal
from peerkit.wellknown import FILES

__all__ = ("FilesDesk", "checked_into", "receive_command", "send_command", "size_text")

logger = logging.getLogger(__name__)

#: Offers ``serve --accept files`` receives at once, at most (each holds at most 12 MiB of buffers).
AT_ONCE: Final = 4
#: Things a folder holds that are not sent, named one by one by ``peerkit send`` at most (then
#: counted).
SHOWN_LEFT_OUT: Final = 20


def size_text(n: int) -> str:
    """Bytes as people read them: ``1.2 MB``."""
    size = float(n)
    for unit in ("bytes", "kB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            if unit == "bytes":
                return "1 byte" if n == 1 else f"{n} bytes"
            return f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")


def _bar(*, transient: bool = False, shown: SafeConsole = console) -> Progress:
    return Progress(
        TextColumn("{task.description}", markup=False),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=shown,
        transient=transient,
        # (A transient bar has nothing to leave where it cannot be redrawn: rich would print an
        # empty line there, into a pipe or a log.)
        disable=transient and not shown.is_terminal,
    )


def _looking(text: str, shown: SafeConsole = console) -> Live:
    # ``text`` beside a spinner, drawn at once and left without a trace once stopped (on a terminal
    # alone: a pipe or a log gets nothing).
    live = Live(Spinner("dots", text, style="dim"), console=shown, transient=True, refresh_per_second=8)
    if shown.is_terminal:
        live.start(refresh=True)
    return live


def _finish(bar: Progress, task: TaskID, total: int) -> None:
    # The bar full, with the mean speed of the bytes that moved where rich has none: a transfer
    # done in one piece (a file smaller than a read) leaves it one sample, and a speed of "?".
    (shown,) = (t for t in bar.tasks if t.id == task)
    moved = shown.completed
    bar.update(task, completed=total)
    if shown.finished_speed is None and moved and shown.finished_time:
        shown.finished_speed = moved / shown.finished_time


def send_command(
    peer: Annotated[
        str,
        typer.Argument(
            help="Who gets the files: a contact (its name, fingerprint or id), a peer near you by its "
            "nickname (with --discovery), or HOST:PORT."
        ),
    ],
    paths: Annotated[list[Path], typer.Argument(help="Files and folders to send.", show_default=False)],
    message: Annotated[str, typer.Option(help="A message with the offer (at most 255 characters).")] = "",
    discovery: Discovery = None,
    timeout: Annotated[
        float, typer.Option(min=0.001, max=300, help="Seconds to wait for an answer (at most 300).")
    ] = 300.0,
    data_dir: DataDir = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the outcome as JSON for scripts.")] = False,
) -> None:
    """Send files and folders to a peer: it is invited to the files application with the offer
    (names, sizes, BLAKE3 hashes), and once it accepts they are streamed, encrypted, with a progress bar.
    Sending the same files again after a cut resumes where the receiver stopped.

    Exits with 0 when everything arrived intact, 1 when a file failed or the receiver stopped,
    3 when the peer declined, 4 when it did not answer in time, 130 when stopped with Ctrl-C.
    """
    check_text(message, "invitation message")
    directory = existing_data_dir(data_dir)
    target = target_of(peer)
    providers = providers_for(target, discovery)
    code = anyio.run(_send, directory, target, paths, providers, message, timeout, as_json, bool(discovery))
    if code:
        raise typer.Exit(code)


async def _send(
    directory: Path,
    target: str | tuple[str, int],
    paths: list[Path],
    providers: list[DiscoveryProvider],
    message: str,
    timeout: float,
    as_json: bool,
    by_nickname: bool,
) -> int:
    shown = err_console if as_json else console  # (with --json, stdout holds the JSON alone)
    left_out: list[list[str]] = []

    def leaving_out(path: Path, why: str) -> None:
        left_out.append([str(path), why])
        if len(left_out) <= SHOWN_LEFT_OUT:
            shown.print(f"not sent: {printable(str(path))} ({why})", style="yellow", highlight=False)

    try:
        with _bar(transient=True, shown=shown) as bar:  # (gone once done, or when a path cannot be sent)
            task = bar.add_task("hashing", total=None)
            outgoing = await prepare(paths, lambda n: bar.advance(task, n), left_out=leaving_out)
    finally:
        if len(left_out) > SHOWN_LEFT_OUT:
            more = len(left_out) - SHOWN_LEFT_OUT
            shown.print(
                f"and {more:,} more not sent (--json lists them all)", style="yellow", highlight=False
            )
    total = sum(o.entry.size for o in outgoing)
    report: SendReport | None = None
    sent = [0]  # (bytes sent so far: what a stop says)
    who = cut = ""
    async with inviting_node(directory, providers) as node:
        named = await peer_named(node, target, providers, min(timeout, 10.0), by_nickname=by_nickname)
        await node.register_application(FILES)
        async with anyio.create_task_group() as tg:
            tg.start_soon(cancel_on_signal, tg.cancel_scope)
            peer = await reached(node, target, named)
            who = printable(peer.nickname) or peer.id.fingerprint
            what = f"{count_text(len(outgoing), 'file')} ({size_text(total)})"
            with shown.status(f"offering {what} to {who}", spinner="dots"), reaching(peer):
                answer = await peer.invite(
                    FILES, message, encode_summary([o.entry for o in outgoing]), timeout=timeout
                )
            if answer is not peerkit.InvitationResponse.ACCEPTED:
                declined = answer is peerkit.InvitationResponse.DECLINED
                _outcome(
                    as_json,
                    f"{who} {'declined' if declined else 'did not answer in time'}",
                    answer=answer.name.lower(),
                )
                tg.cancel_scope.cancel()
                return EXIT_DECLINED if declined else EXIT_EXPIRED
            try:
                async with await peer.open_stream(FILES) as stream:
                    report = await _send_with_bar(stream, outgoing, total, who, shown, sent)
            except (anyio.BrokenResourceError, ProtocolError) as exc:  # (the receiver gone, or stalled)
                cut = str(exc) or "the connection broke"
            tg.cancel_scope.cancel()
    if report is None:  # (Ctrl-C or SIGTERM first, or the connection broke)
        where = f": {size_text(sent[0])} of {size_text(total)} sent" if sent[0] else ""
        again = "; sending the same files again resumes" if sent[0] else ""
        said = f"{who} stopped receiving ({cut})" if cut else "stopped"
        _outcome(
            as_json,
            f"{said}{where}{again}",
            answer="stopped",
            sent_bytes=sent[0],
            reason=cut,
            left_out=left_out,
        )
        return 1 if cut else EXIT_STOPPED
    for path, reason in report.failed:
        shown.print(f"{path}: {reason}", style="red", highlight=False)
    _outcome(
        as_json,
        f"{who} has {report.received} of {len(outgoing)} files ({size_text(report.sent_bytes)} sent"
        + (f", {report.skipped} already there or skipped" if report.skipped else "")
        + ")",
        answer="accepted",
        received=report.received,
        sent_bytes=report.sent_bytes,
        skipped=report.skipped,
        failed=[list(f) for f in report.failed],
        left_out=left_out,
    )
    return 1 if report.failed else 0


async def _send_with_bar(
    stream: AppStream, outgoing: list[Outgoing], total: int, who: str, shown: SafeConsole, sent: list[int]
) -> SendReport:
    # Until the first byte goes, a line says the receiver is deciding (it compares the offer with
    # what it has, and may ask its user about names taken: minutes, maybe); then the bar.
    def progress(n: int) -> None:
        if not sent[0]:
            deciding.stop()
            bar.start()
        sent[0] += n
        bar.advance(task, n)

    def sizing(n: int) -> None:  # (what goes: not the files the receiver has, nor their parts)
        moving[0] = n
        bar.update(task, total=n)

    deciding = _looking(f"{who} is looking at the offer", shown)
    bar = _bar(shown=shown)
    task = bar.add_task(f"to {who}", total=total)
    moving = [total]
    try:
        report = await send_files(stream, outgoing, progress, total=sizing)
        if sent[0]:  # (no bar where no byte went: the receiver had every file, or skipped them)
            _finish(bar, task, moving[0])
    finally:
        deciding.stop()
        bar.stop()
    return report


def _outcome(as_json: bool, text: str, **fields: object) -> None:
    if as_json:
        print(json.dumps(fields), flush=True)
    else:
        console.print(text, highlight=False)


def checked_into(into: Path) -> Path:
    """The folder of ``--into``, absolute, once files can be saved there (before any is offered).

    :raises typer.BadParameter: naming what stands in the way.
    """
    try:
        check_destination(into)
    except OSError as exc:
        raise typer.BadParameter(str(exc), param_hint="--into") from None
    return into.resolve()


def receive_command(
    into: Annotated[
        Path,
        typer.Option(
            "--into", help="The folder the files go to [default: the current folder]", show_default=False
        ),
    ] = Path(),
    yes: Annotated[
        bool,
        typer.Option(
            "--yes", "-y", help="Accept the first offer without asking; a name taken is kept (a new name)."
        ),
    ] = False,
    senders: Senders = None,
    listen_at: ListenAt = ":0",
    discovery: Discovery = None,
    data_dir: DataDir = None,
) -> None:
    """Wait for an offer of files and accept it at a prompt, then receive the files into a folder
    with a progress bar. A file whose name is taken is renamed, overwritten or skipped as you
    answer (for it, or for every name taken); one already there is not sent again; an interrupted
    transfer resumes when the sender sends again. With --from, offers from anyone else are
    declined (``--yes --from alice`` takes alice's first offer, and hers alone).

    Exits with 0 when every file arrived intact (or none was offered before Ctrl-C), 1 when one
    failed or the sender stopped, 130 when stopped with Ctrl-C during a transfer.
    """
    directory = existing_data_dir(data_dir)
    host, port = parse_listen(listen_at)
    into = checked_into(into)
    code = anyio.run(_receive, directory, (host, port), providers_named(discovery), into, yes, senders)
    if code:
        raise typer.Exit(code)


async def _receive(
    directory: Path,
    listen: tuple[str, int],
    providers: list[DiscoveryProvider],
    into: Path,
    yes: bool,
    senders: list[str] | None,
) -> int:
    def question(invitation: peerkit.Invitation) -> str | None:
        who = printable(invitation.nickname) or invitation.sender_id.fingerprint
        try:
            summary = decode_summary(invitation.data)
        except ProtocolError as exc:
            terminal.show(f"{who} sent an offer that cannot be read ({exc}): declined")
            return None
        said = f": {invitation.message!r}" if invitation.message else ""
        offered = f"{who} ({invitation.sender_id.fingerprint}) offers {offer_text(summary)}{said}"
        return f"{offered}. Save into {into}? [y/N]"

    report: ReceiveReport | None = None
    summary: Summary | None = None
    received = [0]  # (bytes received so far: what a stop says)
    cut = ""  # (why the sender's stream broke, if it did)

    def progress(n: int) -> None:
        if not received[0]:
            looking.stop()
            bar.start()
        received[0] += n
        bar.advance(task, n)

    async with peerkit.Node(data_dir=directory, listen=listen, discovery=providers) as node:
        named = await senders_named(node, senders) if senders else None
        waiting_for = f"files from {', '.join(named.values())}" if named else "files"
        async with Terminal(keys=False) as terminal, anyio.create_task_group() as tg:
            tg.start_soon(cancel_on_signal, tg.cancel_scope)
            invitation, stream = await accept_invitation(
                node, FILES, terminal, waiting_for, question, yes, named
            )
            summary = decode_summary(invitation.data)
            who = printable(invitation.nickname) or invitation.sender_id.fingerprint
            decide = _rename if yes else _asking(terminal)

            async def asked(entry: Entry, existing: Path) -> Decision:
                looking.stop()
                return await decide(entry, existing)

            async with stream:
                # Until the first byte, a line says what is going on: the files already there with
                # the names and sizes offered are hashed to compare (minutes, for tens of GB). The
                # bar is drawn from the first byte on: a question about a taken name comes before,
                # and a bar redrawn on its line would wipe out the answer as it is typed.
                looking = _looking(f"comparing the offer with what {printable(into.name or str(into))} holds")
                bar = _bar()
                task = bar.add_task(f"from {who}", total=summary.size)
                coming = [summary.size]

                def sizing(n: int) -> None:  # (not the files there already, nor parts there)
                    coming[0] = n
                    bar.update(task, total=n)

                try:
                    report = await receive_files(stream, summary, into, asked, progress, total=sizing)
                except (anyio.BrokenResourceError, ProtocolError) as exc:  # (gone, or stalled)
                    cut = str(exc) or "the connection broke"
                else:
                    if received[0]:  # (no bar where no byte came: every file there, or skipped)
                        _finish(bar, task, coming[0])
                finally:
                    looking.stop()
                    bar.stop()
            tg.cancel_scope.cancel()
    if summary is None:  # (stopped while waiting for an offer: nothing under way)
        return 0
    if report is None:
        kept = f"{size_text(received[0])} of {size_text(summary.size)} received (what arrived is kept)"
        rest = f"the rest comes when {who} sends the same files again"
        said = f"{kept}; {rest}" if received[0] else "nothing arrived"
        if cut:
            err_console.print(f"{who} stopped sending ({cut}): {said}", style="red", highlight=False)
            return 1
        console.print(f"stopped: {said}", highlight=False)
        return EXIT_STOPPED
    for path in report.saved:
        console.print(f"saved {path}", highlight=False)
    for offered in report.already:
        console.print(f"already here: {offered}", highlight=False)
    for offered in report.skipped:
        console.print(f"skipped: {offered}", highlight=False)
    for offered, reason in report.failed:
        console.print(f"failed: {offered}: {reason}", style="red", highlight=False)
    resumed = f", {size_text(report.resumed_bytes)} resumed" if report.resumed_bytes else ""
    console.print(f"received {size_text(report.received_bytes)}{resumed}", highlight=False)
    return 1 if report.failed else 0


def offer_text(summary: Summary) -> str:
    """An offer as people read it: ``3 files (1.2 MB): a.txt, photos``."""
    files = count_text(summary.files, "file")
    more = ", ..." if len(summary.names) >= SUMMARY_NAMES else ""  # (a summary names 8 at most)
    return f"{files} ({size_text(summary.size)}): {', '.join(summary.names)}{more}"


async def _rename(entry: Entry, existing: Path) -> Decision:
    return "rename"


def _asking(terminal: Terminal) -> Callable[[Entry, Path], Awaitable[Decision]]:
    # Ask about each name taken: r, o or s for this file (Enter: rename), R, O or S for this one
    # and every other name taken in the offer (a folder sent again after changes takes many).
    for_all: list[Decision] = []

    async def decide(entry: Entry, existing: Path) -> Decision:
        if for_all:
            return for_all[0]
        answer = (
            await terminal.ask(
                f"{existing} exists: [r]ename the new one, [o]verwrite, or [s]kip "
                "(R, O, S: the same for every name taken)? [r]"
            )
            or ""
        ).strip()
        word = answer.lower().removesuffix(" all")
        decision: Decision = (
            "overwrite" if word in ("o", "overwrite") else "skip" if word in ("s", "skip") else "rename"
        )
        if answer in ("R", "O", "S") or answer.lower().endswith(" all"):
            for_all.append(decision)
        return decision

    return decide


class FilesDesk:
    """The files of ``peerkit serve --accept files``: every offer is accepted and received into a
    folder (a name taken is kept, the new file renamed), reported with ``say(text, **fields)``."""

    def __init__(self, into: Path, say: Callable[..., None]) -> None:
        self._into = into
        self._say = say
        self._offers: Expected[Summary] = Expected()
        self._turns = anyio.Semaphore(AT_ONCE)

    async def invited(self, invitation: peerkit.Invitation) -> peerkit.InvitationResponse:
        """The invitation handler: accept an offer that can be read."""
        try:
            summary = decode_summary(invitation.data)
        except ProtocolError:
            return peerkit.InvitationResponse.DECLINED
        if not self._offers.expect(invitation.sender_id, summary, trusted=invitation.trusted):
            return peerkit.InvitationResponse.DECLINED
        return peerkit.InvitationResponse.ACCEPTED

    async def receive(self, stream: AppStream) -> None:
        """The stream handler: the files of the offer accepted from the stream's peer."""
        peer_id = stream.peer.id
        summary = self._offers.take(peer_id)
        if summary is None:
            return  # (no offer accepted: the stream is closed)
        fields = {"peer": str(peer_id), "files": summary.files, "bytes": summary.size}
        self._say(
            f"receiving {offer_text(summary)} from {peer_id.fingerprint}", event="files_offered", **fields
        )
        try:
            async with self._turns:
                report = await receive_files(stream, summary, self._into)
        except (ProtocolError, anyio.BrokenResourceError, OSError) as exc:
            self._say(
                f"files from {peer_id.fingerprint} stopped: {exc}",
                event="files_stopped",
                reason=str(exc),
                **fields,
            )
            return
        self._say(
            f"received {count_text(len(report.saved), 'file')} from {peer_id.fingerprint} into {self._into}"
            + (f"; {len(report.failed)} failed" if report.failed else ""),
            event="files_received",
            saved=[str(p) for p in report.saved],
            already=report.already,
            failed=[list(f) for f in report.failed],
            resumed_bytes=report.resumed_bytes,
            **fields,
        )
