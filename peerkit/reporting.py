"""What a running node is doing, for people and scripts (``peerkit dht status``, ``peerkit reach``)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from peerkit import events
from peerkit.errors import PeerkitError
from peerkit.model import printable
from peerkit.statusfile import read_status_file, write_whole

if TYPE_CHECKING:
    from peerkit.model import EndPoint
    from peerkit.node.reaching import Reach, ReachStep

__all__ = (
    "REACH_FILE",
    "SERVE_LOCK",
    "address_text",
    "check_not_served",
    "describe_event",
    "dht_status_text",
    "reach_status",
    "reach_text",
    "read_reach",
    "relay_text",
    "serving",
    "trace_text",
    "write_reach",
)


def dht_status_text(status: dict[str, Any]) -> str:
    """The DHT status a running node writes (``peerkit dht status --json``), for people."""
    host, port = status["address"]
    updated = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(status["updated"]))
    state = f"running (pid {status['pid']})" if status["running"] else f"not running (last seen {updated})"
    reach = {True: "yes", False: "no", None: "not known yet"}[status["reachable"]]
    mode = "read-only (BEP 43)" if status["read_only"] else "serving queries"
    published = status["last_publish"]
    if published is None:
        last = "never"
    else:
        when = time.strftime("%H:%M:%S", time.localtime(published["at"]))
        what = "withdrawn" if published["withdrawn"] else f"stored on {published['stored']} nodes"
        last = f"{when}, seq {published['seq']}, {what}"
    others = [
        f"also at [{o['address'][0]}]:{o['address'][1]} (IPv6): {o['nodes']} nodes, "
        f"reachable: {'yes' if o['reachable'] else 'no' if o['reachable'] is False else 'not known yet'}"
        for o in status.get("others", [])
    ]
    return "\n".join(
        (
            f"DHT node at {host}:{port}: {state}",
            *others,
            f"routing table: {status['nodes']} nodes (joined through {', '.join(status['bootstrap'])})",
            f"reachable: {reach}; {mode}",
            f"seen by others at: {address_text(status.get('external_address'))}",
            f"last publish: {last}",
            f"items stored for others: {status['items']} ({status['item_bytes']} bytes)",
            f"queries answered: {status['queries_answered']}, sent: {status['queries_sent']}",
        )
    )


def address_text(address: Any) -> str:
    """An address from a status ([host, port]), or what to say when there is none yet."""
    if not address:
        return "not known yet (fewer than 3 nodes agree)"
    host, port = address
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


def reach_status(reach: Reach, *, listening: str) -> dict[str, Any]:
    """What ``peerkit serve`` writes to ``reach.json`` (read by ``peerkit reach``)."""
    stats = reach.stats
    return {
        "pid": os.getpid(),
        "updated": time.time(),
        "listening": listening,
        "mapped": str(reach.mapped) if reach.mapped else None,
        "mapping": reach.mapping,
        "mapping_problem": reach.mapping_problem,
        "reachable": reach.reachable,
        "relays": [relay_text(e) for e in reach.relays],
        "auto_relays": [relay_text(e) for e in reach.auto_relays],
        "reservations": [relay_text(e) for e in reach.reservations],
        "relaying": reach.relaying,
        "reserved_here": reach.reserved_here,
        "circuits_now": reach.circuits_now,
        "relay_stats": None if stats is None else dataclasses.asdict(stats),
    }


def relay_text(endpoint: EndPoint) -> str:
    """A relay endpoint as ``HOST:PORT#ID`` (what ``serve --via`` takes)."""
    host = f"[{endpoint.host}]" if ":" in endpoint.host else endpoint.host
    return f"{host}:{endpoint.port}#{endpoint.relay}"


def reach_text(status: dict[str, Any], dht: dict[str, Any] | None) -> str:
    """How the node of ``peerkit serve`` can be reached (its ``reach.json``, and the DHT status
    when it runs the DHT), for people."""
    lines = [f"listening at {status['listening']}"]
    if status["mapped"]:
        lines.append(f"port mapped through the router ({status['mapping']}): {status['mapped']}")
    else:
        lines.append(f"port not mapped: {status['mapping_problem'] or 'not tried yet'}")
    if dht is not None:
        lines.append(f"seen by DHT nodes at: {address_text(dht.get('external_address'))}")
        reachable = {True: "yes", False: "no (read-only)", None: "not known yet"}[dht.get("reachable")]
        lines.append(f"reachable from the DHT: {reachable}")
    dialled = status.get("reachable")
    if dialled is not None:
        lines.append(
            "can be dialled directly: "
            + ("yes" if dialled else "no (behind a NAT or firewall: peers elsewhere need a relay)")
        )
    held = set(status["reservations"])
    for relay in status["relays"]:
        lines.append(f"relay {relay}: {'reservation held' if relay in held else 'no reservation'}")
    for relay in status.get("auto_relays", ()):
        state = "reservation held" if relay in held else "reserving"
        lines.append(f"relay {relay} (a contact that relays): {state}")
    if not status["relays"] and not status.get("auto_relays"):
        lines.append("relays: none (serve --via HOST:PORT#ID, or a contact that relays)")
    if status["relaying"]:
        stats = status["relay_stats"] or {}
        lines.append(
            f"relaying: {status['reserved_here']} reservations, {status['circuits_now']} circuits open; "
            f"{stats.get('circuits', 0)} carried ({stats.get('carried', 0)} bytes), "
            f"{stats.get('refused', 0)} refused"
        )
    return "\n".join(lines)


#: The file ``peerkit serve`` keeps its reach in, in its data dir.
REACH_FILE: Final = "reach.json"
#: Seconds between writes of it (and at each change).
REACH_EVERY: Final = 5.0


def read_reach(data_dir: Path) -> dict[str, Any] | None:
    """The reach the ``peerkit serve`` on ``data_dir`` last wrote, or None when none ran there;
    ``running`` says whether it runs now (it wrote lately, and its process is alive).

    :raises ValueError: when the file is damaged.
    """
    return read_status_file(data_dir / REACH_FILE, "a reach status", REACH_EVERY)


def check_not_served(data_dir: Path) -> None:
    """Refuse to serve ``data_dir`` a second time: two nodes of one identity on one data dir
    would publish as one device and overwrite each other's reports.

    :raises PeerkitError: when a ``peerkit serve`` of another process runs there now (its
        ``reach.json`` is recent and its process alive).
    """
    try:
        status = read_reach(data_dir)
    except ValueError:  # (a damaged report tells nothing)
        return
    if status is None or not status["running"] or status.get("pid") == os.getpid():
        return
    pid = status.get("pid")
    raise PeerkitError(
        f"a node already serves {data_dir} ('peerkit serve', process {pid}, listening at "
        f"{status.get('listening')}): stop it first (Ctrl-C there, or kill {pid}), "
        "or give --data-dir another dir"
    )


#: The file ``peerkit serve`` holds locked while it runs, in its data dir (with its process id).
SERVE_LOCK: Final = "serve.lock"


@contextlib.contextmanager
def serving(data_dir: Path) -> Iterator[None]:
    """Hold ``data_dir`` for one ``peerkit serve`` while the block runs: a lock on its
    :data:`SERVE_LOCK` that the system lets go of when the process ends, however it ends (so a
    second one started at the same instant is refused too, and a crash leaves nothing to clean).
    Where there are no such locks (Windows), :func:`check_not_served` decides instead.

    :raises PeerkitError: when another ``peerkit serve`` holds it now, naming its process (and
        its address, once it wrote its reach).
    """
    try:
        import fcntl
    except ImportError:
        check_not_served(data_dir)
        yield
        return
    try:
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        file = open(data_dir / SERVE_LOCK, "a+", encoding="ascii", errors="replace")  # noqa: SIM115
    except OSError as exc:
        raise PeerkitError(f"cannot use {data_dir} as a data dir: {exc.strerror or exc}") from exc
    with file:
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            check_not_served(data_dir)  # (its words, when it wrote its reach: with its address)
            file.seek(0)
            pid = file.read(20).strip() or "?"
            raise PeerkitError(
                f"a node already serves {data_dir} ('peerkit serve', process {pid}, starting): stop it "
                f"first (Ctrl-C there, or kill {pid}), or give --data-dir another dir"
            ) from None
        except OSError:  # (a file system without locks, some network ones: the report decides)
            check_not_served(data_dir)
        file.truncate(0)
        file.write(f"{os.getpid()}\n")
        file.flush()
        yield


def write_reach(data_dir: Path, status: dict[str, Any]) -> None:
    """Write ``reach.json`` whole (a failure is ignored: it is a report)."""
    with contextlib.suppress(OSError):
        write_whole(data_dir / REACH_FILE, json.dumps(status))


def trace_text(who: str, steps: list[ReachStep]) -> str:
    """The ways :meth:`peerkit.Node.trace` tried to a peer, one line each, for people."""
    lines = [f"ways to {who}:"]
    for step in steps:
        where = f" {step.endpoint}" if step.endpoint is not None else ""
        result = "ok" if step.ok else "failed"
        lines.append(f"  {step.way}{where}: {result} in {step.seconds * 1000:.0f} ms ({step.detail})")
    return "\n".join(lines)


def describe_event(
    event: events.PresenceChanged | events.ApplicationChanged | events.ObjectChanged | events.NameChanged,
) -> tuple[str, dict[str, object]]:
    """What ``peerkit watch`` prints for a change a watched contact made: a line for people, and
    the fields of its ``--json`` line."""
    who = event.contact
    peer_id = event.peer_id
    name = (who.display_name or who.nickname) if who is not None else ""
    shown = printable(name)
    base: dict[str, object] = {"id": str(peer_id), "fingerprint": peer_id.fingerprint, "nickname": name}
    label = f"{shown or '?'} ({peer_id.fingerprint})"
    if isinstance(event, events.PresenceChanged):
        status = event.presence.status.name.lower().replace("_", " ")
        text = f"{label} is {status}" + (f": {printable(event.presence.text)}" if event.presence.text else "")
        return text, {
            **base,
            "event": "presence",
            "status": event.presence.status.name,
            "text": event.presence.text,
        }
    if isinstance(event, events.ApplicationChanged):
        app_ = event.application
        text = f"{label} application {printable(app_.description) or app_.id}: {event.change.name.lower()}"
        return text, {
            **base,
            "event": "application",
            "change": event.change.name,
            "application": str(app_.id),
        }
    if isinstance(event, events.ObjectChanged):
        obj = event.object
        text = f"{label} object {obj.id} ({len(obj.data)} bytes): {event.change.name.lower()}"
        return text, {
            **base,
            "event": "object",
            "change": event.change.name,
            "object": str(obj.id),
            "size": len(obj.data),
        }
    assert isinstance(event, events.NameChanged)
    return f"{label} endpoint name: {event.name!r}", {**base, "event": "name", "name": event.name}
