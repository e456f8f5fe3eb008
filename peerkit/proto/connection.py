"""One peerkit connection, sans-IO: preamble, Noise handshake with hellos, then transport messages.

Like h11 and aioquic, a :class:`Connection` takes bytes and the current time and gives events and
bytes to send. It never reads a clock, touches a socket or starts a task::

    conn = Connection.initiate(keys, hello, now=0.0)       # or Connection.respond(...)
    transport.write(conn.data_to_send())
    events = conn.receive_data(data, now=now)               # HandshakeComplete, MessageReceived, ...
    conn.send_message({"t": "ping"})

Every legal transition is in :data:`TRANSITIONS`; anything else is a bug in the caller and raises
``RuntimeError``. A peer that breaks the protocol makes :meth:`Connection.receive_data` raise
:class:`~peerkit.errors.ProtocolError` (or :class:`~peerkit.errors.HandshakeError`), after which the
connection is :attr:`State.CLOSED` and its transport must be closed.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from peerkit.errors import HandshakeError, ProtocolError
from peerkit.proto import crypto, messages
from peerkit.proto.framing import FrameDecoder, encode_frame
from peerkit.proto.messages import Hello
from peerkit.proto.noise import CipherState, HandshakeState

__all__ = (
    "CIPHERS",
    "HANDSHAKE_TIMEOUT",
    "PREAMBLE_PREFIX",
    "PROTOCOL_IK",
    "PROTOCOL_XX",
    "TRANSITIONS",
    "Connection",
    "Event",
    "HandshakeComplete",
    "MessageReceived",
    "State",
    "StaticKeys",
    "check_cipher",
)

PROTOCOL_XX: Final = "Noise_XX_25519_ChaChaPoly_BLAKE2b"
PROTOCOL_IK: Final = "Noise_IK_25519_ChaChaPoly_BLAKE2b"
#: The Noise cipher functions a connection may run: ChaChaPoly (every implementation's), and
#: AESGCM, which a responder takes too but an initiator names only to a peer whose hello asked
#: for it (extension ``"ciphers"``).
CIPHERS: Final = ("ChaChaPoly", "AESGCM")
PREAMBLE_PREFIX: Final = b"peerkit/1 "
#: Seconds a handshake may take, from the connection's creation, unless the caller says otherwise.
HANDSHAKE_TIMEOUT: Final = 10.0


def check_cipher(cipher: str) -> None:
    """Check that ``cipher`` is one a connection may run.

    :raises ValueError: when it is not one of :data:`CIPHERS`.
    """
    if cipher not in CIPHERS:
        raise ValueError(f"cipher must be one of {', '.join(CIPHERS)}, not {cipher!r}")


def _protocol_name(pattern: str, cipher: str) -> str:
    return f"Noise_{pattern}_25519_{cipher}_BLAKE2b"


_SUPPORTED: Final = {
    PREAMBLE_PREFIX + name.encode("ascii"): name
    for name in (_protocol_name(pattern, cipher) for cipher in CIPHERS for pattern in ("XX", "IK"))
}


class State(enum.Enum):
    """Where a connection is."""

    #: Responder waiting for the initiator's preamble frame.
    AWAIT_PREAMBLE = "await-preamble"
    #: Noise handshake messages are being exchanged.
    HANDSHAKE = "handshake"
    #: The handshake is complete; transport messages flow both ways.
    OPEN = "open"
    #: Closed by the caller, or failed; nothing more is sent or accepted.
    CLOSED = "closed"


#: Every legal transition, with what causes it.
TRANSITIONS: Final[dict[tuple[State, State], str]] = {
    (State.AWAIT_PREAMBLE, State.HANDSHAKE): "responder read a supported preamble",
    (State.HANDSHAKE, State.OPEN): "last handshake message written or read, hello verified",
    (State.AWAIT_PREAMBLE, State.CLOSED): "close(), timeout, or bad preamble",
    (State.HANDSHAKE, State.CLOSED): "close(), timeout, or bad handshake message / hello",
    (State.OPEN, State.CLOSED): "close(), or a bad transport message",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class StaticKeys:
    """This node's Noise static key pair (the X25519 form of its Ed25519 identity)."""

    #: X25519 private key.
    private: bytes
    #: X25519 public key.
    public: bytes


class Event:
    """Base class of what :meth:`Connection.receive_data` reports."""

    __slots__ = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class HandshakeComplete(Event):
    """The handshake finished and the peer proved its identity."""

    #: The peer's hello: its verified id, nickname and endpoint name.
    peer: Hello
    #: The Noise protocol name that ran.
    protocol: str
    #: The Noise handshake hash, unique to this session.
    handshake_hash: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class MessageReceived(Event):
    """A transport message arrived."""

    #: The decoded message: a map with a text ``"t"``.
    message: dict[str, Any]


def _check_length(length: int) -> None:
    # A transport message's plaintext fits one frame, and is not empty.
    if not 1 <= length <= MAX_PLAINTEXT:
        raise ValueError(f"encoded message is {length} bytes; a message holds 1 to {MAX_PLAINTEXT}")


class Connection:
    """The sans-IO state machine of one connection; see the module docstring.

    Use :meth:`initiate` or :meth:`respond` to make one.
    """

    __slots__ = (
        "_buffer",
        "_deadline",
        "_decoder",
        "_ephemeral",
        "_expected_id",
        "_handshake",
        "_hello",
        "_initiator",
        "_keys",
        "_peer",
        "_recv",
        "_scratch",
        "_send",
        "_state",
        "handshake_hash",
        "protocol",
    )

    def __init__(
        self,
        keys: StaticKeys,
        hello: Hello,
        *,
        initiator: bool,
        now: float,
        expected_id: bytes | None = None,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
        ephemeral: bytes | None = None,
        scratch: bytearray | None = None,
    ) -> None:
        if scratch is not None and len(scratch) < MAX_PLAINTEXT:
            raise ValueError(f"scratch is {len(scratch)} bytes; it must hold {MAX_PLAINTEXT}")
        self._keys: StaticKeys | None = keys  # (the handshake's: let go once it is done)
        self._hello: Hello | None = hello
        self._initiator = initiator
        self._expected_id = expected_id
        self._ephemeral = ephemeral
        self._deadline = now + handshake_timeout
        self._decoder = FrameDecoder()
        self._buffer: list[bytes | bytearray] = []
        self._handshake: HandshakeState | None = None
        self._send: CipherState | None = None
        self._recv: CipherState | None = None
        self._peer: Hello | None = None
        self._scratch = scratch
        #: The Noise protocol name, once chosen.
        self.protocol: str | None = None
        #: The handshake hash, once the connection is open.
        self.handshake_hash: bytes | None = None
        self._state = State.HANDSHAKE if initiator else State.AWAIT_PREAMBLE

    @classmethod
    def initiate(
        cls,
        keys: StaticKeys,
        hello: Hello,
        *,
        now: float,
        expected_id: bytes | None = None,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
        ephemeral: bytes | None = None,
        scratch: bytearray | None = None,
        cipher: str = "ChaChaPoly",
    ) -> Connection:
        """Start a connection as the dialling side.

        With ``expected_id`` (the Ed25519 key of the peer we mean to reach) the handshake is IK and
        the peer must prove that id; without it, XX, and any id is accepted. ``cipher`` is the
        Noise cipher function, one of :data:`CIPHERS` (name AESGCM only to a peer that asked for
        it: an implementation of the fixed protocol alone closes the connection).

        ``scratch`` is where messages larger than 4 KiB are decrypted (at least 65,519 bytes):
        connections used from one thread may share one, since every value is copied out of it
        before :meth:`receive_data` returns. Without it, a connection makes its own when it first
        needs it, and keeps it.

        :raises ValueError: when ``expected_id`` is not a valid Ed25519 public key, ``scratch``
            is too small, or ``cipher`` is not one of :data:`CIPHERS`.
        """
        check_cipher(cipher)
        conn = cls(
            keys,
            hello,
            initiator=True,
            now=now,
            expected_id=expected_id,
            handshake_timeout=handshake_timeout,
            ephemeral=ephemeral,
            scratch=scratch,
        )
        if expected_id is None:
            conn.protocol = _protocol_name("XX", cipher)
            rs = None
        else:
            conn.protocol = _protocol_name("IK", cipher)
            rs = crypto.ed25519_pk_to_x25519(expected_id)
        preamble = PREAMBLE_PREFIX + conn.protocol.encode("ascii")
        conn._handshake = HandshakeState(
            conn.protocol,
            initiator=True,
            prologue=preamble,
            s=keys.private,
            s_public=keys.public,
            rs=rs,
            e=ephemeral,
        )
        conn._buffer.append(encode_frame(preamble))
        payload = messages.encode_hello(hello) if rs is not None else b""
        conn._buffer.append(encode_frame(conn._handshake.write_message(payload)))
        return conn

    @classmethod
    def respond(
        cls,
        keys: StaticKeys,
        hello: Hello,
        *,
        now: float,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
        ephemeral: bytes | None = None,
        scratch: bytearray | None = None,
    ) -> Connection:
        """Start a connection as the accepting side; it waits for the preamble. ``scratch`` as
        for :meth:`initiate`."""
        return cls(
            keys,
            hello,
            initiator=False,
            now=now,
            handshake_timeout=handshake_timeout,
            ephemeral=ephemeral,
            scratch=scratch,
        )

    # -- state -----------------------------------------------------------------------------
    @property
    def state(self) -> State:
        """Where the connection is."""
        return self._state

    @property
    def initiator(self) -> bool:
        """Whether this side dialled."""
        return self._initiator

    @property
    def peer(self) -> Hello | None:
        """The peer's verified hello, once the connection is open."""
        return self._peer

    def _to(self, state: State) -> None:
        if (self._state, state) not in TRANSITIONS:
            raise RuntimeError(f"illegal connection transition {self._state.value} -> {state.value}")
        self._state = state

    def _fail(self, exc: ProtocolError) -> ProtocolError:
        self.close()
        self._buffer.clear()
        return exc

    # -- output ----------------------------------------------------------------------------
    def data_to_send(self) -> bytes | bytearray:
        """Bytes waiting to be written to the transport (and forget them)."""
        buffer = self._buffer
        if not buffer:
            return b""
        data = buffer[0] if len(buffer) == 1 else b"".join(buffer)
        buffer.clear()
        return data

    def send_message(self, message: Mapping[str, Any]) -> None:
        """Queue a transport message.

        :raises RuntimeError: when the connection is not open.
        :raises ValueError: when the encoded message is larger than one frame can carry.
        :raises TypeError: when the message cannot be encoded.
        """
        parts = messages.message_parts(message)
        if len(parts) == 1:
            self.send_plaintext(parts[0])
            return
        self.send_parts(parts)

    def send_parts(self, parts: Sequence[bytes | memoryview]) -> None:
        """Queue one already-encoded transport message given as pieces to be joined.

        The pieces are written straight into the frame and encrypted where they lie, so large
        values are copied once on their way out.

        :raises RuntimeError: when the connection is not open.
        :raises ValueError: when the message is empty or larger than one frame can carry.
        """
        self.send_many((parts,))

    def send_many(self, batch: Sequence[Sequence[bytes | memoryview]]) -> None:
        """Queue several already-encoded transport messages, each given as pieces, as frames in
        one buffer: :meth:`data_to_send` hands them to the transport in one write.

        :raises RuntimeError: when the connection is not open.
        :raises ValueError: when a message is empty or larger than one frame can carry (checked
            before any is queued: none is then).
        """
        cipher = self._sending_cipher()
        lengths = [sum(len(part) for part in parts) for parts in batch]
        for length in lengths:
            _check_length(length)
        buffer = bytearray(sum(lengths) + len(lengths) * (2 + crypto.TAGLEN))
        start = 0
        for parts, length in zip(batch, lengths, strict=True):
            size = length + crypto.TAGLEN
            buffer[start] = size >> 8
            buffer[start + 1] = size & 0xFF
            pos = start + 2
            for part in parts:
                end = pos + len(part)
                buffer[pos:end] = part
                pos = end
            cipher.encrypt_with_ad_in_place(b"", buffer, start + 2, length)
            start += 2 + size
        self._buffer.append(buffer)

    def send_plaintext(self, plaintext: bytes) -> None:
        """Queue one already-encoded transport message.

        :raises RuntimeError: when the connection is not open.
        :raises ValueError: when ``plaintext`` is empty or larger than one frame can carry.
        """
        cipher, frame = self._new_frame(len(plaintext))
        cipher.encrypt_with_ad_into(b"", plaintext, frame, 2)
        self._buffer.append(frame)

    def _new_frame(self, length: int) -> tuple[CipherState, bytearray]:
        # The sending cipher and a frame with its length prefix and room for ``length`` bytes of
        # plaintext and the tag: prefix and ciphertext share one buffer, so nothing is copied again.
        cipher = self._sending_cipher()
        _check_length(length)
        size = length + crypto.TAGLEN
        frame = bytearray(2 + size)
        frame[0] = size >> 8
        frame[1] = size & 0xFF
        return cipher, frame

    def _sending_cipher(self) -> CipherState:
        # The cipher that seals transport messages, once the connection is open.
        if self._state is not State.OPEN:
            raise RuntimeError(f"cannot send a message on a connection in state {self._state.value}")
        assert self._send is not None
        return self._send

    def close(self) -> None:
        """Stop the connection; later input is ignored and nothing more is sent."""
        if self._state is not State.CLOSED:
            self._to(State.CLOSED)
        self._handshake = None
        for cipher in (self._send, self._recv):  # (their OpenSSL state: a few KB)
            if cipher is not None:
                cipher.release()

    # -- timers ----------------------------------------------------------------------------
    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` must be called next, or ``None``."""
        if self._state in (State.AWAIT_PREAMBLE, State.HANDSHAKE):
            return self._deadline
        return None

    def handle_timer(self, now: float) -> None:
        """Check the handshake deadline.

        :raises HandshakeError: when the handshake is not complete by its deadline.
        """
        deadline = self.get_timer()
        if deadline is not None and now >= deadline:
            raise self._fail(HandshakeError("the handshake did not complete in time"))

    # -- input -----------------------------------------------------------------------------
    def receive_data(self, data: bytes, now: float, limit: int | None = None) -> list[Event]:
        """Process bytes from the peer; return the events they complete: every one, or those of
        at most ``limit`` frames (the other frames wait undecoded, see :attr:`frames_waiting`; a
        call with ``b""`` takes the next of them).

        :raises ProtocolError: when the peer broke the protocol; the connection is then closed.
        :raises HandshakeError: when the handshake failed or its deadline passed.
        """
        if self._state is State.CLOSED:
            return []
        self.handle_timer(now)
        try:
            frames = self._decoder.feed(data, limit)
        except ProtocolError as exc:
            raise self._fail(exc) from None
        if not frames and self._state is not State.OPEN and self._decoder.pending:
            # A line of text where a handshake message belongs (an SSH or mail server greeting, a
            # web request): no Noise message starts so, as its length is small and the rest
            # random. Fail now, not at the handshake's deadline.
            text = self._decoder.leftover_text(whole_line=True)
            if text is not None:
                raise self._fail(HandshakeError(f"{self._other} sent text, not a Noise handshake: {text!r}"))
        events: list[Event] = []
        for frame in frames:
            try:
                event = self._frame(frame)
            except ProtocolError as exc:
                raise self._fail(exc) from None
            if event is not None:
                events.append(event)
        return events

    @property
    def frames_waiting(self) -> bool:
        """Whether frames received wait to be processed (a ``limit`` of :meth:`receive_data`)."""
        return self._decoder.waiting and self._state is not State.CLOSED

    def receive_eof(self) -> None:
        """The peer closed its side (call once no frames wait).

        :raises ProtocolError: when it did so inside a frame or before the handshake completed.
        """
        state = self._state
        if state is State.CLOSED:
            return
        try:
            self._decoder.check_eof()
        except ProtocolError as exc:
            text = self._decoder.leftover_text() if state is not State.OPEN else None
            failure = exc
            if text is not None:  # (a web server's error page, say: no peerkit node is there)
                failure = HandshakeError(f"{self._other} sent text, not a Noise handshake: {text!r}")
            raise self._fail(failure) from None
        if state is not State.OPEN:
            hint = ""
            if self._initiator and self.protocol is not None and self.protocol.startswith("Noise_IK_"):
                # (a peer may also refuse a cipher other than every peer's ChaChaPoly)
                also = "" if self.protocol == PROTOCOL_IK else ", or when it does not take the cipher"
                hint = f" (with IK this is what a peer does when it is not the peer that was dialled{also})"
            elif self._initiator:
                hint = (
                    " (a peer does so when it refuses a connection: too many from one address, or too fast)"
                )
            raise self._fail(HandshakeError(f"the peer closed the connection during the handshake{hint}"))
        self._to(State.CLOSED)

    @property
    def _other(self) -> str:
        # The other side, before its handshake says who it is.
        return "what answered" if self._initiator else "what connected"

    def _frame(self, frame: bytes | memoryview) -> Event | None:
        state = self._state
        if state is State.OPEN:
            assert self._recv is not None
            if len(frame) <= _SMALL:
                plaintext = self._recv.decrypt_with_ad(b"", bytes(frame))
                return MessageReceived(message=messages.decode_message(plaintext))
            # Large messages are decrypted into a buffer kept for the purpose (maybe shared with other
            # connections of this thread): the decoder copies every value out, so nothing refers to
            # the buffer afterwards.
            scratch = self._scratch
            if scratch is None:
                scratch = self._scratch = bytearray(MAX_PLAINTEXT)
            with self._recv.decrypt_with_ad_into(b"", frame, scratch) as view:
                return MessageReceived(message=messages.decode_message(view))
        frame = bytes(frame)
        if state is State.AWAIT_PREAMBLE:
            protocol = _SUPPORTED.get(frame)
            if protocol is None:
                shown = frame[:80].decode("ascii", "replace")
                raise HandshakeError(f"unsupported preamble {shown!r}; this node speaks {sorted(_SUPPORTED)}")
            self.protocol = protocol
            keys = self._keys
            assert keys is not None
            self._handshake = HandshakeState(
                protocol,
                initiator=False,
                prologue=frame,
                s=keys.private,
                s_public=keys.public,
                e=self._ephemeral,
            )
            self._to(State.HANDSHAKE)
            return None
        return self._handshake_frame(frame)

    def _handshake_frame(self, frame: bytes) -> Event | None:
        hs = self._handshake
        assert hs is not None
        if hs.is_my_turn:
            raise HandshakeError("the peer sent a handshake message out of turn")
        payload = hs.read_message(frame)
        # In XX and IK, a message's payload is the sender's hello exactly when its static key is
        # known to the reader by then (XX messages 2 and 3, IK messages 1 and 2); else it is empty.
        if hs.remote_static is not None:
            self._peer = self._check_hello(payload, hs.remote_static)
        if not hs.is_complete:
            # Every message after XX's first sends or proves this side's static key: it carries our hello.
            assert self._hello is not None
            self._buffer.append(encode_frame(hs.write_message(messages.encode_hello(self._hello))))
        if hs.is_complete:
            return self._open(hs)
        return None

    def _check_hello(self, payload: bytes, remote_static: bytes) -> Hello:
        try:
            hello = messages.decode_hello(payload)
        except ProtocolError as exc:
            raise HandshakeError(f"the peer's hello is malformed: {exc}") from None
        try:
            converted = crypto.ed25519_pk_to_x25519(hello.id)
        except ValueError:
            raise HandshakeError("the peer's hello carries an id that is not an Ed25519 key") from None
        if converted != remote_static:
            raise HandshakeError("the peer's hello claims an id that does not match its Noise static key")
        if self._expected_id is not None and hello.id != self._expected_id:
            raise HandshakeError("the peer proved a different id than the one dialled")
        return hello

    def _open(self, hs: HandshakeState) -> HandshakeComplete:
        if self._peer is None:
            raise HandshakeError("the handshake completed without the peer's hello")
        c1, c2 = hs.split()
        self._send, self._recv = (c1, c2) if self._initiator else (c2, c1)
        self.handshake_hash = hs.handshake_hash
        # What only the handshake needed goes with it (an open connection holds its ciphers).
        self._handshake = self._keys = self._hello = self._ephemeral = self._expected_id = None
        self._to(State.OPEN)
        assert self.protocol is not None
        return HandshakeComplete(peer=self._peer, protocol=self.protocol, handshake_hash=self.handshake_hash)


#: The largest transport plaintext: a 65535-byte frame less the 16-byte tag.
MAX_PLAINTEXT: Final = 65535 - crypto.TAGLEN
# Frames up to this size are decrypted into a new object; larger ones into the connection's buffer.
_SMALL: Final = 4096
