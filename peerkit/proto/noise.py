"""The Noise Protocol Framework, revision 34, sans-IO.

``CipherState``, ``SymmetricState`` and ``HandshakeState`` follow sections 5.1 to 5.3 of the
specification name for name. The handshake is driven by the pattern table below (sections 7.4 and
7.5: every one-way and interactive base pattern); the functions are DH ``25519``, cipher
``ChaChaPoly`` or ``AESGCM``, and hash ``BLAKE2b`` or ``SHA256``.

    >>> hs = HandshakeState("Noise_XX_25519_ChaChaPoly_BLAKE2b", initiator=True)
    >>> message = hs.write_message(b"")

Private keys (``s``, ``e``) and public keys (``rs``, ``re``) are 32-byte strings. When ``e`` is
given it is used as the first ephemeral key instead of a random one (for test vectors). Every
misuse or bad input raises :class:`~peerkit.errors.HandshakeError` (during the handshake) or
:class:`~peerkit.errors.ProtocolError` (transport), never another exception type.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Final, NamedTuple

from peerkit.errors import HandshakeError, ProtocolError
from peerkit.proto import crypto
from peerkit.proto.crypto import DHLEN, TAGLEN, CipherFunction, HashFunction, InvalidTag

__all__ = (
    "MAX_MESSAGE_LEN",
    "MAX_NONCE",
    "PATTERNS",
    "CipherState",
    "HandshakeState",
    "SymmetricState",
    "parse_protocol_name",
)

#: The largest Noise message, in bytes (section 3).
MAX_MESSAGE_LEN: Final = 65535
#: The nonce value reserved by the spec; a CipherState refuses to use it.
MAX_NONCE: Final = 2**64 - 1

# name: (initiator pre-message, responder pre-message, messages). Message i is sent by the
# initiator when i is even. Taken from sections 7.4 (one-way) and 7.5 (interactive).
PATTERNS: Final[dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[tuple[str, ...], ...]]]] = {
    "N": ((), ("s",), (("e", "es"),)),
    "K": (("s",), ("s",), (("e", "es", "ss"),)),
    "X": ((), ("s",), (("e", "es", "s", "ss"),)),
    "NN": ((), (), (("e",), ("e", "ee"))),
    "NK": ((), ("s",), (("e", "es"), ("e", "ee"))),
    "NX": ((), (), (("e",), ("e", "ee", "s", "es"))),
    "XN": ((), (), (("e",), ("e", "ee"), ("s", "se"))),
    "XK": ((), ("s",), (("e", "es"), ("e", "ee"), ("s", "se"))),
    "XX": ((), (), (("e",), ("e", "ee", "s", "es"), ("s", "se"))),
    "KN": (("s",), (), (("e",), ("e", "ee", "se"))),
    "KK": (("s",), ("s",), (("e", "es", "ss"), ("e", "ee", "se"))),
    "KX": (("s",), (), (("e",), ("e", "ee", "se", "s", "es"))),
    "IN": ((), (), (("e", "s"), ("e", "ee", "se"))),
    "IK": ((), ("s",), (("e", "es", "s", "ss"), ("e", "ee", "se"))),
    "IX": ((), (), (("e", "s"), ("e", "ee", "se", "s", "es"))),
}


def parse_protocol_name(name: str) -> tuple[str, CipherFunction, HashFunction]:
    """Split a protocol name into its handshake pattern, cipher function and hash function.

    :raises ValueError: when the name is malformed or names something peerkit does not implement.
    :raises TypeError: when ``name`` is not a string.
    """
    if not isinstance(name, str):
        raise TypeError(f"protocol name must be str, not {type(name).__name__}")
    parts = name.split("_")
    if len(parts) != 5 or parts[0] != "Noise":
        raise ValueError(f"malformed Noise protocol name {name!r}; expected Noise_PATTERN_DH_CIPHER_HASH")
    _, pattern, dh_name, cipher_name, hash_name = parts
    if pattern not in PATTERNS:
        raise ValueError(f"unsupported handshake pattern {pattern!r} in {name!r}")
    if dh_name != "25519":
        raise ValueError(f"unsupported DH function {dh_name!r} in {name!r}; supported: 25519")
    return pattern, crypto.cipher_function(cipher_name), crypto.hash_function(hash_name)


class _Protocol(NamedTuple):
    """A parsed protocol name, with what each role must hold before the handshake."""

    cipher: CipherFunction
    hash: HashFunction
    initiator_pre: tuple[str, ...]
    responder_pre: tuple[str, ...]
    messages: tuple[tuple[str, ...], ...]
    initiator_sends_static: bool
    responder_sends_static: bool


@lru_cache(maxsize=64)
def _protocol(name: str) -> _Protocol:
    pattern, cipher, hash_function = parse_protocol_name(name)
    init_pre, resp_pre, messages = PATTERNS[pattern]
    sends = [any("s" in m for m in messages[side::2]) for side in (0, 1)]
    return _Protocol(cipher, hash_function, init_pre, resp_pre, messages, sends[0], sends[1])


_CACHED_PROLOGUE: Final = 256
# The most a handshake message adds to its payload: e (32), s with its tag (48), the payload's tag.
_MAX_OVERHEAD: Final = DHLEN + DHLEN + TAGLEN + TAGLEN


@lru_cache(maxsize=64)
def _start(protocol_name: str, prologue: bytes) -> tuple[bytes, bytes]:
    """``ck`` and ``h`` after ``InitializeSymmetric(protocol_name)`` and ``MixHash(prologue)``."""
    ss = SymmetricState(protocol_name.encode("ascii"), _protocol(protocol_name).hash)
    ss.mix_hash(prologue)  # (the cipher plays no part before the first key)
    return ss.ck, ss.h


def _check_key(value: bytes | None, what: str) -> bytes | None:
    if value is None or (type(value) is bytes and len(value) == DHLEN):
        return value
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise TypeError(f"{what} must be bytes, not {type(value).__name__}")
    value = bytes(value)
    if len(value) != DHLEN:
        raise ValueError(f"{what} is {len(value)} bytes; X25519 keys are {DHLEN} bytes")
    return value


class CipherState:
    """A key ``k`` (or none) and a 64-bit nonce ``n`` (section 5.1), for the cipher function
    ``cipher`` (ChaChaPoly unless given)."""

    __slots__ = ("_cipher", "cipher", "k", "n")

    def __init__(
        self, k: bytes | None = None, n: int = 0, cipher: CipherFunction = crypto.CHACHAPOLY
    ) -> None:
        self.k = k
        self.n = n
        #: The cipher function.
        self.cipher = cipher
        self._cipher: crypto.TransportCipher | None = None

    def _keyed(self) -> crypto.TransportCipher:
        # The cipher object for the current key (``k`` may be replaced by rekey or by the owner).
        cipher = self._cipher
        k = self.k
        if cipher is None or cipher.key is not k:
            assert k is not None
            if cipher is not None:
                cipher.release()
            cipher = self._cipher = self.cipher.transport(k)
        return cipher

    def release(self) -> None:
        """Let go of the cipher's OpenSSL state now (kept while the key is in use, a few KB): the
        key stays, and the next message makes it again."""
        if self._cipher is not None:
            self._cipher.release()

    def initialize_key(self, key: bytes | None) -> None:
        """``InitializeKey(key)``: set ``k`` and reset ``n`` to zero."""
        self.release()
        self.k = key
        self.n = 0

    def has_key(self) -> bool:
        """``HasKey()``."""
        return self.k is not None

    def set_nonce(self, nonce: int) -> None:
        """``SetNonce(nonce)``."""
        if not 0 <= nonce <= MAX_NONCE:
            raise ValueError(f"nonce {nonce} is outside 0..2**64-1")
        self.n = nonce

    def _check_send(self, size: int) -> int:
        n = self.n
        if n == MAX_NONCE:
            raise ProtocolError("nonce exhausted: this cipher state has sent 2**64-1 messages")
        if size > MAX_MESSAGE_LEN - TAGLEN:
            raise ProtocolError(
                f"plaintext is {size} bytes; a Noise message holds at most "
                f"{MAX_MESSAGE_LEN - TAGLEN} bytes of plaintext"
            )
        return n

    def _check_receive(self, size: int) -> int:
        n = self.n
        if n == MAX_NONCE:
            raise ProtocolError("nonce exhausted: this cipher state has received 2**64-1 messages")
        if size > MAX_MESSAGE_LEN:
            raise ProtocolError(f"message is {size} bytes; the Noise limit is {MAX_MESSAGE_LEN}")
        return n

    def encrypt_with_ad(self, ad: bytes, plaintext: bytes) -> bytes:
        """``EncryptWithAd(ad, plaintext)``; the plaintext itself when there is no key.

        :raises ProtocolError: when the nonce is exhausted or the result would exceed 65535 bytes.
        """
        if self.k is None:
            return plaintext
        n = self._check_send(len(plaintext))
        ciphertext = self._keyed().encrypt(n, ad, plaintext)
        self.n = n + 1
        return ciphertext

    def decrypt_with_ad(self, ad: bytes, ciphertext: bytes) -> bytes:
        """``DecryptWithAd(ad, ciphertext)``; the ciphertext itself when there is no key.

        On failure the nonce is not advanced, as the spec requires.

        :raises ProtocolError: when authentication fails, the nonce is exhausted or the message is
            longer than 65535 bytes.
        """
        if self.k is None:
            return ciphertext
        n = self._check_receive(len(ciphertext))
        plaintext = self._keyed().decrypt(n, ad, ciphertext)
        self.n = n + 1
        return plaintext

    def encrypt_with_ad_into(self, ad: bytes, plaintext: bytes, out: bytearray, offset: int) -> None:
        """:meth:`encrypt_with_ad` writing into ``out[offset:]``, which must have room for the tag.

        Saves a copy on the transport's hot path. Requires a key.

        :raises ProtocolError: as :meth:`encrypt_with_ad`, or when there is no key.
        """
        if self.k is None:
            raise ProtocolError("this cipher state has no key")
        n = self._check_send(len(plaintext))
        self._keyed().encrypt_into(n, ad, plaintext, out, offset)
        self.n = n + 1

    def encrypt_with_ad_in_place(self, ad: bytes, buf: bytearray, offset: int, length: int) -> None:
        """:meth:`encrypt_with_ad` of ``buf[offset:offset + length]``, in place; the tag follows it.

        Requires a key, and room for the 16-byte tag after the plaintext.

        :raises ProtocolError: as :meth:`encrypt_with_ad`, or when there is no key.
        """
        if self.k is None:
            raise ProtocolError("this cipher state has no key")
        if offset < 0 or len(buf) < offset + length + TAGLEN:
            raise ValueError("buffer has no room for the plaintext and its tag")
        n = self._check_send(length)
        self._keyed().encrypt_in_place(n, ad, buf, offset, length)
        self.n = n + 1

    def decrypt_with_ad_into(self, ad: bytes, ciphertext: bytes | memoryview, out: bytearray) -> memoryview:
        """:meth:`decrypt_with_ad` writing the plaintext into the start of ``out``.

        Saves an allocation and a copy on the transport's hot path. Returns a view of the plaintext
        in ``out``, valid until ``out`` is written again. Requires a key.

        :raises ProtocolError: as :meth:`decrypt_with_ad`, when there is no key, or when ``out`` is
            too small.
        """
        if self.k is None:
            raise ProtocolError("this cipher state has no key")
        n = self._check_receive(len(ciphertext))
        size = len(ciphertext) - TAGLEN
        if size > len(out):
            raise ProtocolError(f"plaintext of {size} bytes does not fit the {len(out)}-byte buffer")
        view = memoryview(out)[: max(size, 0)]
        self._keyed().decrypt_into(n, ad, ciphertext, view)
        self.n = n + 1
        return view

    def rekey(self) -> None:
        """``Rekey()``: replace ``k`` with the first 32 bytes of ENCRYPT(k, maxnonce, zerolen, zeros)."""
        if self.k is None:
            raise ProtocolError("cannot rekey a cipher state that has no key")
        self.k = self.cipher.encrypt(self.k, MAX_NONCE, b"", bytes(32))[:32]


class SymmetricState:
    """A CipherState plus the chaining key ``ck`` and handshake hash ``h`` (section 5.2)."""

    __slots__ = ("_new", "cipher_state", "ck", "h", "hash")

    def __init__(
        self, protocol_name: bytes, hash_function: HashFunction, cipher: CipherFunction = crypto.CHACHAPOLY
    ) -> None:
        """``InitializeSymmetric(protocol_name)``; ``cipher`` is the protocol's cipher function."""
        self.hash = hash_function
        self._new = hash_function.new
        if len(protocol_name) <= hash_function.hashlen:
            h = protocol_name.ljust(hash_function.hashlen, b"\0")
        else:
            h = hash_function.digest(protocol_name)
        self.h = h
        self.ck = h
        self.cipher_state = CipherState(cipher=cipher)

    def mix_key(self, input_key_material: bytes) -> None:
        """``MixKey(input_key_material)``."""
        self.ck, temp_k = self.hash.hkdf(self.ck, input_key_material, 2)
        self.cipher_state.initialize_key(temp_k[:32])

    def mix_hash(self, data: bytes) -> None:
        """``MixHash(data)``."""
        self.h = self._new(self.h + data).digest()

    def mix_key_and_hash(self, input_key_material: bytes) -> None:
        """``MixKeyAndHash(input_key_material)`` (used by PSK patterns)."""
        self.ck, temp_h, temp_k = self.hash.hkdf(self.ck, input_key_material, 3)
        self.mix_hash(temp_h)
        self.cipher_state.initialize_key(temp_k[:32])

    def get_handshake_hash(self) -> bytes:
        """``GetHandshakeHash()``."""
        return self.h

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        """``EncryptAndHash(plaintext)``."""
        ciphertext = self.cipher_state.encrypt_with_ad(self.h, plaintext)
        self.h = self._new(self.h + ciphertext).digest()
        return ciphertext

    def decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        """``DecryptAndHash(ciphertext)``."""
        plaintext = self.cipher_state.decrypt_with_ad(self.h, ciphertext)
        self.h = self._new(self.h + ciphertext).digest()
        return plaintext

    def split(self) -> tuple[CipherState, CipherState]:
        """``Split()``: the initiator-to-responder and responder-to-initiator CipherStates."""
        temp_k1, temp_k2 = self.hash.hkdf(self.ck, b"", 2)
        cipher = self.cipher_state.cipher
        return CipherState(temp_k1[:32], cipher=cipher), CipherState(temp_k2[:32], cipher=cipher)


class HandshakeState:
    """One side of a Noise handshake (section 5.3).

    :param protocol_name: e.g. ``"Noise_XX_25519_ChaChaPoly_BLAKE2b"``.
    :param initiator: whether this side sends the first message.
    :param prologue: data both sides must agree on; it is hashed in but never sent.
    :param s: this side's static private key, when the pattern uses one.
    :param e: this side's ephemeral private key; only for replaying test vectors.
    :param rs: the remote static public key, when the pattern has it known in advance.
    :param re: the remote ephemeral public key, when a pre-message names it.
    :param s_public: the public key of ``s``, when the caller already has it (saves computing it).
    :raises ValueError: when the protocol is unsupported or a key the pattern needs is missing.
    """

    __slots__ = (
        "_e",
        "_e_pub",
        "_failed",
        "_index",
        "_initiator",
        "_messages",
        "_protocol_name",
        "_re",
        "_rs",
        "_s",
        "_s_pub",
        "_ss",
    )

    def __init__(
        self,
        protocol_name: str,
        initiator: bool,
        prologue: bytes = b"",
        s: bytes | None = None,
        e: bytes | None = None,
        rs: bytes | None = None,
        re: bytes | None = None,
        *,
        s_public: bytes | None = None,
    ) -> None:
        if not isinstance(protocol_name, str):
            raise TypeError(f"protocol name must be str, not {type(protocol_name).__name__}")
        proto = _protocol(protocol_name)
        if not isinstance(prologue, (bytes, bytearray, memoryview)):
            raise TypeError(f"prologue must be bytes, not {type(prologue).__name__}")
        initiator = bool(initiator)
        self._protocol_name = protocol_name
        self._initiator = initiator
        # Keys are usually exactly 32 bytes already: check the others the slow way.
        if not (s is None or (type(s) is bytes and len(s) == DHLEN)):
            s = _check_key(s, "static private key s")
        if not (e is None or (type(e) is bytes and len(e) == DHLEN)):
            e = _check_key(e, "ephemeral private key e")
        if not (rs is None or (type(rs) is bytes and len(rs) == DHLEN)):
            rs = _check_key(rs, "remote static public key rs")
        if not (re is None or (type(re) is bytes and len(re) == DHLEN)):
            re = _check_key(re, "remote ephemeral public key re")
        self._s = s
        self._e = e
        self._rs = rs
        self._re = re
        init_pre = proto.initiator_pre
        resp_pre = proto.responder_pre
        self._messages = proto.messages
        self._index = 0
        self._failed = False

        mine, theirs = (init_pre, resp_pre) if initiator else (resp_pre, init_pre)
        sends_static = proto.initiator_sends_static if initiator else proto.responder_sends_static
        if ("s" in mine or sends_static) and self._s is None:
            raise ValueError(f"{protocol_name} needs this side's static key: pass s=")
        if "s" in theirs and self._rs is None:
            raise ValueError(f"{protocol_name} needs the remote static key in advance: pass rs=")
        if "e" in mine and self._e is None:
            raise ValueError(f"{protocol_name} needs this side's ephemeral key in advance: pass e=")
        if "e" in theirs and self._re is None:
            raise ValueError(f"{protocol_name} needs the remote ephemeral key in advance: pass re=")
        if self._s is None:
            self._s_pub = None
        elif s_public is not None:
            self._s_pub = (
                s_public
                if type(s_public) is bytes and len(s_public) == DHLEN
                else _check_key(s_public, "static public key s_public")
            )
        else:
            self._s_pub = crypto.public_key(self._s)
        self._e_pub = crypto.public_key(self._e) if self._e is not None else None

        prologue = prologue if type(prologue) is bytes else bytes(prologue)
        if len(prologue) <= _CACHED_PROLOGUE:
            # InitializeSymmetric and MixHash(prologue) depend on nothing else: reuse them.
            ss = SymmetricState.__new__(SymmetricState)
            ss.hash = proto.hash
            ss._new = proto.hash.new
            ss.ck, ss.h = _start(protocol_name, prologue)
            ss.cipher_state = CipherState(cipher=proto.cipher)
        else:
            ss = SymmetricState(protocol_name.encode("ascii"), proto.hash, proto.cipher)
            ss.mix_hash(prologue)
        if init_pre or resp_pre:
            for pre, local in ((init_pre, initiator), (resp_pre, not initiator)):
                for token in pre:
                    if token == "e":
                        key = self._e_pub if local else self._re
                    else:
                        key = self._s_pub if local else self._rs
                    assert key is not None
                    ss.mix_hash(key)
        self._ss = ss

    # -- public state ----------------------------------------------------------------------
    @property
    def protocol_name(self) -> str:
        """The Noise protocol name this handshake runs."""
        return self._protocol_name

    @property
    def initiator(self) -> bool:
        """Whether this side sent (or will send) the first message."""
        return self._initiator

    @property
    def is_complete(self) -> bool:
        """Whether every handshake message has been written or read."""
        return self._index == len(self._messages)

    @property
    def is_my_turn(self) -> bool:
        """Whether the next handshake message is this side's to write."""
        return not self.is_complete and (self._index % 2 == 0) == self._initiator

    @property
    def handshake_hash(self) -> bytes:
        """``h``: after completion, a unique identifier of this session (channel binding)."""
        return self._ss.h

    @property
    def remote_static(self) -> bytes | None:
        """The remote side's static public key, once known."""
        return self._rs

    @property
    def remote_ephemeral(self) -> bytes | None:
        """The remote side's ephemeral public key, once known."""
        return self._re

    @property
    def local_static_public(self) -> bytes | None:
        """This side's static public key."""
        return self._s_pub

    # -- the handshake ---------------------------------------------------------------------
    def _check_turn(self, writing: bool) -> tuple[str, ...]:
        if self._failed:
            raise HandshakeError("this handshake already failed; start a new one")
        if self._index >= len(self._messages):
            raise HandshakeError("the handshake is already complete; use the cipher states from split()")
        if ((self._index % 2 == 0) == self._initiator) != writing:
            side = "initiator" if self._index % 2 == 0 else "responder"
            verb = "write" if writing else "read"
            raise HandshakeError(
                f"cannot {verb} handshake message {self._index + 1} now: it is the {side}'s to write"
            )
        return self._messages[self._index]

    def _dh(self, token: str) -> bytes:
        initiator = self._initiator
        if token == "ee":
            local, remote = self._e, self._re
        elif token == "ss":
            local, remote = self._s, self._rs
        elif (token == "es") == initiator:  # es as initiator, se as responder
            local, remote = self._e, self._rs
        else:
            local, remote = self._s, self._re
        if local is None or remote is None:
            raise HandshakeError(f"token {token!r} needs a key this handshake does not have")
        return crypto.dh(local, remote)

    def write_message(self, payload: bytes = b"") -> bytes:
        """``WriteMessage(payload)``: the next handshake message, with ``payload`` in it.

        :raises HandshakeError: when it is not this side's turn, the handshake is complete or
            failed, or the message would exceed 65535 bytes (nothing is changed then).
        """
        tokens = self._check_turn(writing=True)
        if type(payload) is not bytes:
            if not isinstance(payload, (bytearray, memoryview)):
                raise TypeError(f"payload must be bytes, not {type(payload).__name__}")
            payload = bytes(payload)
        ss = self._ss
        cs = ss.cipher_state
        k = cs.k
        if len(payload) > MAX_MESSAGE_LEN - _MAX_OVERHEAD:
            # Compute the message length first, so that an oversized payload changes nothing.
            keyed = k is not None
            size = 0
            for token in tokens:
                if token == "e":
                    size += DHLEN
                elif token == "s":
                    size += DHLEN + TAGLEN if keyed else DHLEN
                else:
                    keyed = True
            size += len(payload) + (TAGLEN if keyed else 0)
            if size > MAX_MESSAGE_LEN:
                raise HandshakeError(
                    f"handshake message would be {size} bytes; the Noise limit is {MAX_MESSAGE_LEN}"
                )
        # The spec's MixHash, MixKey and EncryptAndHash, inlined on local copies of h, ck, k and n:
        # this is the hot path of every connection. Nonces cannot run out within a handshake.
        new = ss._new
        hkdf = ss.hash.hkdf
        encrypt = cs.cipher.encrypt
        h = ss.h
        n = cs.n
        parts = []
        try:
            for token in tokens:
                if token == "e":
                    if self._e is None:
                        self._e, self._e_pub = crypto.generate_keypair()
                    e_pub = self._e_pub
                    assert e_pub is not None
                    parts.append(e_pub)
                    h = new(h + e_pub).digest()
                elif token == "s":
                    s_pub = self._s_pub
                    assert s_pub is not None
                    if k is None:
                        ciphertext = s_pub
                    else:
                        ciphertext = encrypt(k, n, h, s_pub)
                        n += 1
                    h = new(h + ciphertext).digest()
                    parts.append(ciphertext)
                else:
                    ss.ck, temp_k = hkdf(ss.ck, self._dh(token), 2)
                    k = temp_k[:32]
                    n = 0
            if k is None:
                ciphertext = payload
            else:
                ciphertext = encrypt(k, n, h, payload)
                n += 1
            parts.append(ciphertext)
            ss.h = new(h + ciphertext).digest()
            cs.k = k
            cs.n = n
        except HandshakeError:
            self._failed = True
            raise
        self._index += 1
        return b"".join(parts)

    def read_message(self, message: bytes) -> bytes:
        """``ReadMessage(message)``: process the peer's next handshake message; return its payload.

        :raises HandshakeError: when it is not the peer's turn, the handshake is complete or
            failed, or the message is malformed, too long, altered, or uses a low-order key.
            After a failure the handshake is dead: start a new one.
        """
        tokens = self._check_turn(writing=False)
        if type(message) is not bytes:
            if not isinstance(message, (bytearray, memoryview)):
                raise TypeError(f"message must be bytes, not {type(message).__name__}")
            message = bytes(message)
        if len(message) > MAX_MESSAGE_LEN:
            self._failed = True
            raise HandshakeError(
                f"handshake message is {len(message)} bytes; the Noise limit is {MAX_MESSAGE_LEN}"
            )
        ss = self._ss
        cs = ss.cipher_state
        new = ss._new
        hkdf = ss.hash.hkdf
        decrypt = cs.cipher.decrypt
        h = ss.h
        k = cs.k
        n = cs.n
        pos = 0
        try:
            for token in tokens:
                if token == "e":
                    re = message[pos : pos + DHLEN]
                    if len(re) != DHLEN:
                        raise HandshakeError(
                            "handshake message is truncated: it ends inside an ephemeral key"
                        )
                    pos += DHLEN
                    self._re = re
                    h = new(h + re).digest()
                elif token == "s":
                    size = DHLEN if k is None else DHLEN + TAGLEN
                    temp = message[pos : pos + size]
                    if len(temp) != size:
                        raise HandshakeError("handshake message is truncated: it ends inside a static key")
                    pos += size
                    if k is None:
                        self._rs = temp
                    else:
                        self._rs = decrypt(k, n, h, temp)
                        n += 1
                    h = new(h + temp).digest()
                else:
                    ss.ck, temp_k = hkdf(ss.ck, self._dh(token), 2)
                    k = temp_k[:32]
                    n = 0
            ciphertext = message[pos:] if pos else message
            if k is None:
                payload = ciphertext
            else:
                if len(ciphertext) < TAGLEN:
                    raise HandshakeError("handshake message is truncated: it has no room for its tag")
                payload = decrypt(k, n, h, ciphertext)
                n += 1
            ss.h = new(h + ciphertext).digest()
            cs.k = k
            cs.n = n
        except InvalidTag as exc:
            self._failed = True
            raise HandshakeError(
                "handshake message failed authentication: altered, truncated, or from a peer with other keys"
            ) from exc
        except HandshakeError:
            self._failed = True
            raise
        self._index += 1
        return payload

    def split(self) -> tuple[CipherState, CipherState]:
        """``Split()``: ``(c1, c2)``; c1 encrypts initiator to responder, c2 the other way.

        :raises HandshakeError: when the handshake is not complete.
        """
        if self._failed or not self.is_complete:
            raise HandshakeError("cannot split: the handshake is not complete")
        return self._ss.split()
