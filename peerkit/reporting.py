"""Text for people about what a running node is doing (``peerkit dht status``, ``peerkit reach``)."""

from __future__ import annotations

import time
from typing import Any

__all__ = ("address_text", "dht_status_text")


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
