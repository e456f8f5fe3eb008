"""An iterative lookup toward a target (sans-IO): which nodes to ask next, and when it is done.

Kademlia's lookup with three refinements for a network of strangers and dead nodes:

- at most ``alpha`` queries count as in flight, but one unanswered for ``soft_timeout`` seconds
  stops counting (its answer is still taken if it comes), so a dead node does not hold the lookup;
  the soft timeout follows the round trips seen (:class:`RoundTrips`, at most
  :data:`SOFT_TIMEOUT`), so a lost datagram costs a few round trips rather than half a second;
- the lookup is done when the ``width`` nearest nodes heard of have each answered, failed or stayed
  silent past the soft timeout;
- a node is asked at most once, and only nodes that answered count among the nearest (with the
  write tokens they gave, for a put);
- one node per network is a candidate (:func:`~peerkit.dht.routing.network_of`: a public /24 or
  /64, a private address): ids cost nothing, and an answer may name dozens of made-up nodes near
  the target at its own address. A network's first candidate keeps its place until it fails.

The owner sends what :meth:`Lookup.due` returns, reports each answer (:meth:`answered`) or
failure (:meth:`failed`), and stops when :meth:`done` (or at its own hard timeout).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from peerkit.dht.krpc import Node, Response
from peerkit.dht.routing import distance, network_of

__all__ = ("ALPHA", "MIN_SOFT_TIMEOUT", "SOFT_TIMEOUT", "Lookup", "RoundTrips")

#: Queries in flight at once.
ALPHA: Final = 4
#: Seconds after which an unanswered query stops counting as in flight, at most and at least.
SOFT_TIMEOUT: Final = 0.5
MIN_SOFT_TIMEOUT: Final = 0.1


@dataclass(slots=True)
class RoundTrips:
    """A smoothed round trip and its variation (RFC 6298's estimator), for the soft timeout."""

    smoothed: float | None = None
    variation: float = 0.0

    def seen(self, seconds: float) -> None:
        """A query was answered ``seconds`` after it was sent."""
        if self.smoothed is None:
            self.smoothed, self.variation = seconds, seconds / 2
        else:
            self.variation = 0.75 * self.variation + 0.25 * abs(self.smoothed - seconds)
            self.smoothed = 0.875 * self.smoothed + 0.125 * seconds

    @property
    def soft_timeout(self) -> float:
        """When an unanswered query stops holding a lookup: the smoothed round trip plus four
        times its variation, between :data:`MIN_SOFT_TIMEOUT` and :data:`SOFT_TIMEOUT`."""
        if self.smoothed is None:
            return SOFT_TIMEOUT
        return min(SOFT_TIMEOUT, max(MIN_SOFT_TIMEOUT, self.smoothed + 4 * self.variation))


@dataclass(slots=True)
class _Candidate:
    node: Node
    distance: int
    asked_at: float | None = None
    response: Response | None = None
    failed: bool = False


@dataclass(slots=True)
class Lookup:
    """A lookup of ``target`` (see the module docstring)."""

    target: bytes
    width: int = 8
    alpha: int = ALPHA
    soft_timeout: float = SOFT_TIMEOUT
    #: Most candidates remembered (the farthest are forgotten).
    max_candidates: int = 256
    _candidates: dict[bytes, _Candidate] = field(default_factory=dict)
    _networks: dict[str, bytes] = field(default_factory=dict)  # each network's candidate

    def add(self, nodes: list[Node]) -> None:
        """Nodes heard of (from the routing table, or named in an answer)."""
        for node in nodes:
            if node.id in self._candidates:
                continue
            network = network_of(node.address)
            holder = self._candidates.get(self._networks.get(network, b""))
            if holder is not None and not holder.failed:
                continue  # its network has a candidate
            self._candidates[node.id] = _Candidate(node, distance(node.id, self.target))
            self._networks[network] = node.id
        if len(self._candidates) > self.max_candidates:
            keep = sorted(self._candidates.values(), key=lambda c: (c.asked_at is None, c.distance))
            self._candidates = {c.node.id: c for c in keep[: self.max_candidates]}

    def _ordered(self) -> list[_Candidate]:
        return sorted(self._candidates.values(), key=lambda c: c.distance)

    def _gone(self, c: _Candidate, now: float) -> bool:
        # Failed, or silent past the soft timeout (for the ranking only: a late answer counts).
        if c.failed:
            return True
        return c.response is None and c.asked_at is not None and now - c.asked_at >= self.soft_timeout

    def _nearest_open(self, now: float) -> list[_Candidate]:
        # The ``width`` nearest that may still answer in time, or did.
        return [c for c in self._ordered() if not self._gone(c, now)][: self.width]

    def due(self, now: float) -> list[Node]:
        """Nodes to ask now (each is marked asked)."""
        flying = sum(
            1
            for c in self._candidates.values()
            if c.asked_at is not None
            and c.response is None
            and not c.failed
            and now - c.asked_at < self.soft_timeout
        )
        out = []
        for candidate in self._nearest_open(now):
            if flying >= self.alpha:
                break
            if candidate.asked_at is None:
                candidate.asked_at = now
                out.append(candidate.node)
                flying += 1
        return out

    def answered(self, node: Node, response: Response) -> None:
        """``node`` answered: remember it and the nodes it names."""
        candidate = self._candidates.get(node.id)
        if candidate is None or candidate.node.address != node.address:
            return
        candidate.response = response
        self.add([n for n in response.nodes() if n.id != node.id])

    def failed(self, node: Node) -> None:
        """``node`` will not answer (its hard timeout passed, or it answered with an error)."""
        candidate = self._candidates.get(node.id)
        if candidate is not None and candidate.node.address == node.address:
            candidate.failed = True

    def done(self, now: float) -> bool:
        """Whether each of the ``width`` nearest nodes heard of has answered, failed, or stayed
        silent past the soft timeout."""
        return all(c.response is not None for c in self._nearest_open(now))

    def answers(self) -> list[tuple[Node, Response]]:
        """The nodes that answered, nearest first, with their answers."""
        return [(c.node, c.response) for c in self._ordered() if c.response is not None]
