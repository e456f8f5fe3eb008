"""This node's address as others see it, from what they report (sans-IO).

Every KRPC response says where the responder saw the query come from (``ip``, BEP 42). Behind a
NAT that is the router's public address and the port it mapped, not the node's own. One node's
word is not believed (it may lie, or be wrong): :class:`ExternalAddress` keeps the last report
of each of the most recent reporters and believes an address once :data:`MIN_VOTES` of them
agree and no other address has as many.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Final

from peerkit.dht.krpc import Address

__all__ = ("MIN_VOTES", "REPORTERS", "ExternalAddress")

#: Reporters that must agree on an address before it is believed.
MIN_VOTES: Final = 3
#: Reporters remembered (the least recent forgotten first).
REPORTERS: Final = 32


@dataclass(slots=True)
class ExternalAddress:
    """Votes on this node's external address (see the module docstring)."""

    _reports: OrderedDict[str, Address] = field(default_factory=OrderedDict)

    def seen(self, reporter: str, address: Address) -> None:
        """``reporter`` (one per remote host) saw this node at ``address``."""
        self._reports[reporter] = address
        self._reports.move_to_end(reporter)
        while len(self._reports) > REPORTERS:
            self._reports.popitem(last=False)

    @property
    def address(self) -> Address | None:
        """The address most reporters agree on, if :data:`MIN_VOTES` do and no other address
        has as many; None otherwise."""
        ranked = Counter(self._reports.values()).most_common(2)
        if not ranked or ranked[0][1] < MIN_VOTES:
            return None
        if len(ranked) > 1 and ranked[1][1] == ranked[0][1]:
            return None  # a tie: nothing is believed
        return ranked[0][0]
