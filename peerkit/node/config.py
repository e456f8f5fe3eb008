"""A node's options as one frozen, validated object (the shape of h2's ``H2Configuration``)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from peerkit.discovery.base import DiscoveryProvider
from peerkit.discovery.registry import create_provider
from peerkit.identity import Identity, check_identity, default_data_dir
from peerkit.invitations import InvitationPolicy
from peerkit.model import EndPoint, check_seconds, check_text, host_and_port
from peerkit.net.control import KeepalivePolicy
from peerkit.net.transport import TcpTransport, Transport
from peerkit.node.mapping import default_on
from peerkit.proto.admission import AdmissionPolicy, RequestPolicy
from peerkit.proto.connection import HANDSHAKE_TIMEOUT
from peerkit.proto.holdings import HoldingsPolicy
from peerkit.proto.relay import RelayPolicy

__all__ = ("NodeConfig",)


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeConfig:
    """Everything a :class:`~peerkit.Node` is built with, checked once (see ``Node`` for each one).

    :meth:`create` takes the forms ``Node(...)`` accepts (provider names, a path as text, defaults)
    and returns the checked configuration.
    """

    #: The nickname other peers see (at most 255 characters).
    nickname: str = ""
    #: Where the identity, settings and contact database live; None: nothing is persisted.
    data_dir: Path | None = None
    #: The identity to use instead of the one in ``data_dir``.
    identity: Identity | None = None
    #: The address and port to listen on (the empty host: every address, IPv4 and IPv6).
    listen: tuple[str, int] = ("", 0)
    #: The discovery providers.
    providers: tuple[DiscoveryProvider, ...] = ()
    #: How to listen and dial.
    network: Transport = field(default_factory=TcpTransport)
    #: Who may invite this node at first.
    invitation_policy: InvitationPolicy = InvitationPolicy.ANYONE
    #: Pings and idle timeouts of control channels.
    keepalive: KeepalivePolicy = field(default_factory=KeepalivePolicy)
    #: Seconds a dial (connect and handshake) may take.
    handshake_timeout: float = HANDSHAKE_TIMEOUT
    #: Invitations or streams that may wait for an async iterator to take them.
    queue_size: int = 16
    #: Seconds between checks of this host's addresses.
    address_check: float = 10.0
    #: Seconds between checks of the contact database for changes made by another process.
    store_check: float = 1.0
    #: How many requests each peer may make.
    request_budget: RequestPolicy = field(default_factory=RequestPolicy)
    #: How many handshakes the listener takes, and how fast from one source (None: the defaults).
    admission: AdmissionPolicy | None = None
    #: How many channels and streams peers may make it hold (None: the defaults).
    holdings: HoldingsPolicy | None = None
    #: What this node grants as a relay (None: it is not one).
    relay: RelayPolicy | None = None
    #: The relays this node keeps reservations on (endpoints with ``relay`` set).
    relays: tuple[EndPoint, ...] = ()
    #: Whether the node maps its port through the home router.
    port_mapping: bool = False
    #: Whether the node, while it cannot be reached directly, keeps reservations on contacts
    #: whose records say they relay.
    auto_relay: bool = True

    @classmethod
    def create(
        cls,
        *,
        nickname: str = "",
        data_dir: str | os.PathLike[str] | None = None,
        identity: Identity | None = None,
        listen: tuple[str, int] | str = ("", 0),
        discovery: Iterable[str | DiscoveryProvider] = (),
        network: Transport | None = None,
        invitation_policy: InvitationPolicy = InvitationPolicy.ANYONE,
        keepalive: KeepalivePolicy | None = None,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
        queue_size: int = 16,
        address_check: float = 10.0,
        store_check: float = 1.0,
        request_budget: RequestPolicy | None = None,
        admission: AdmissionPolicy | None = None,
        holdings: HoldingsPolicy | None = None,
        dht_bootstrap: Iterable[tuple[str, int]] | None = None,
        relay: bool | RelayPolicy = False,
        relays: Iterable[EndPoint] = (),
        port_mapping: bool | None = None,
        auto_relay: bool = True,
    ) -> NodeConfig:
        """The checked configuration of ``Node(**options)``.

        :raises TypeError: for a value of the wrong type.
        :raises ValueError: for a value out of range (it names the limit).
        """
        if identity is not None:
            check_identity(identity)
        if data_dir is not None and not isinstance(data_dir, str | os.PathLike):
            raise TypeError(f"data_dir must be a str or a Path, not {type(data_dir).__name__}")
        if data_dir is None and identity is None:
            data_dir = default_data_dir()
        if isinstance(listen, str):
            try:
                listen = host_and_port(listen, default_host="")
            except ValueError as exc:
                raise ValueError(f"listen: {exc}") from None
        if not (isinstance(listen, tuple) and len(listen) == 2):
            raise TypeError(f"listen must be a (host, port) tuple or 'HOST:PORT', not {listen!r}")
        host, port = listen
        if not isinstance(host, str) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise ValueError(f"listen must be (host, port) with a port in 0..65535, not {listen!r}")
        if isinstance(discovery, str):
            discovery = [discovery]
        providers: list[DiscoveryProvider] = []
        for item in discovery:
            if isinstance(item, str):
                providers.append(create_provider(item))
            elif isinstance(item, DiscoveryProvider):
                providers.append(item)
            else:
                raise TypeError(
                    f"discovery providers are names or DiscoveryProvider objects, not {type(item).__name__}"
                )
        if dht_bootstrap is not None:
            _use_dht_bootstrap(providers, dht_bootstrap)
        if not isinstance(invitation_policy, InvitationPolicy):
            raise TypeError(
                f"invitation_policy must be an InvitationPolicy, not {type(invitation_policy).__name__}"
            )
        if keepalive is not None and not isinstance(keepalive, KeepalivePolicy):
            raise TypeError(f"keepalive must be a KeepalivePolicy, not {type(keepalive).__name__}")
        if request_budget is not None and not isinstance(request_budget, RequestPolicy):
            raise TypeError(f"request_budget must be a RequestPolicy, not {type(request_budget).__name__}")
        if admission is not None and not isinstance(admission, AdmissionPolicy):
            raise TypeError(f"admission must be an AdmissionPolicy, not {type(admission).__name__}")
        if holdings is not None and not isinstance(holdings, HoldingsPolicy):
            raise TypeError(f"holdings must be a HoldingsPolicy, not {type(holdings).__name__}")
        if isinstance(queue_size, bool) or not isinstance(queue_size, int):
            raise TypeError(f"queue_size must be an int, not {type(queue_size).__name__}")
        if queue_size < 1:
            raise ValueError(f"queue_size must be at least 1, not {queue_size}")
        if not isinstance(relay, (bool, RelayPolicy)):
            raise TypeError(f"relay must be a bool or a RelayPolicy, not {type(relay).__name__}")
        through = tuple(relays)
        for endpoint in through:
            if not isinstance(endpoint, EndPoint) or endpoint.relay is None:
                raise TypeError(f"relays are EndPoints with the relay's id (relay=PeerId), not {endpoint!r}")
        return cls(
            nickname=check_text(nickname, "nickname"),
            data_dir=Path(data_dir) if data_dir is not None else None,
            identity=identity,
            listen=(host, port),
            providers=tuple(providers),
            network=network if network is not None else TcpTransport(),
            invitation_policy=invitation_policy,
            keepalive=keepalive or KeepalivePolicy(),
            handshake_timeout=check_seconds(handshake_timeout, "handshake_timeout"),
            queue_size=queue_size,
            address_check=check_seconds(address_check, "address_check"),
            store_check=check_seconds(store_check, "store_check"),
            request_budget=request_budget or RequestPolicy(),
            admission=admission,
            holdings=holdings,
            relay=(RelayPolicy() if relay is True else relay) or None,
            relays=tuple(dict.fromkeys(through)),
            # A network of the caller's own (in memory, say) has no home router to ask.
            port_mapping=(network is None and default_on()) if port_mapping is None else bool(port_mapping),
            auto_relay=bool(auto_relay),
        )


def _use_dht_bootstrap(providers: list[DiscoveryProvider], bootstrap: Iterable[tuple[str, int]]) -> None:
    # The dht providers that would join through the public routers join through ``bootstrap``;
    # a dht provider is added when there is none.
    from peerkit.dht.provider import DEFAULT_BOOTSTRAP, DhtDiscovery

    addresses = []
    for entry in bootstrap:
        if not (
            isinstance(entry, tuple)
            and len(entry) == 2
            and isinstance(entry[0], str)
            and isinstance(entry[1], int)
            and 0 < entry[1] < 65536
        ):
            raise ValueError(f"a DHT bootstrap address is a (host, port) tuple, not {entry!r}")
        addresses.append(entry)
    dhts = [p for p in providers if isinstance(p, DhtDiscovery)]
    if not dhts:
        providers.append(DhtDiscovery(bootstrap=addresses))
    for provider in dhts:
        if provider.bootstrap == DEFAULT_BOOTSTRAP:
            provider.bootstrap = tuple(addresses)
