"""Pairing with a short code (docs/protocol.md, "Pairing"), sans-IO: the codes, the SPAKE2 key they
give, the key confirmations, and the messages.

A code is ``NUMBER-WORD-WORD``: the number (1 to 99; 100 to 9999 through the DHT) names the
rendezvous where the two find each other; the words, two of :data:`WORDS` (16 bits), are never
sent. SPAKE2 (symmetric, over Ed25519's group, from the ``spake2`` package) turns the whole code
into a key both sides share only if they typed the same code; a confirmation (HMAC-SHA256 of the
stream's handshake hash and the card) then proves it and binds each side's signed card to the
stream it came over. Whoever guesses learns only whether that one guess was right; the waiting
side takes one guess per code.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from typing import Any, Final

from peerkit.errors import ProtocolError
from peerkit.proto.framing import encode_frame
from peerkit.proto.messages import decode, encode

__all__ = (
    "MAX_LAN_NUMBER",
    "MAX_NUMBER",
    "WORDS",
    "Code",
    "Pake",
    "confirmation",
    "decode_pairing",
    "encode_pairing",
    "make_code",
    "parse_code",
    "rendezvous_name",
)

#: Rendezvous numbers run from 1 to this: 1 to 99 on a LAN, 100 up through the DHT (where a
#: rendezvous is shared with the whole Internet, so there are more of them).
MAX_NUMBER: Final = 9999
#: The largest number of a code announced on a LAN only.
MAX_LAN_NUMBER: Final = 99
#: Bytes of a card in a pairing message, at most.
MAX_CARD: Final = 4096

# 256 short, common words that are hard to mistake for one another when read aloud.
WORDS: Final = (
    "acorn",
    "adult",
    "agent",
    "alarm",
    "album",
    "alpha",
    "amber",
    "angle",
    "apple",
    "april",
    "arena",
    "armor",
    "arrow",
    "atlas",
    "attic",
    "autumn",
    "bacon",
    "badge",
    "baker",
    "bamboo",
    "banjo",
    "barrel",
    "basil",
    "beach",
    "beaver",
    "berry",
    "bicycle",
    "bishop",
    "blanket",
    "blossom",
    "bonus",
    "border",
    "bottle",
    "bounce",
    "bracket",
    "breeze",
    "bridge",
    "brother",
    "bucket",
    "buffalo",
    "bundle",
    "butter",
    "cabin",
    "cactus",
    "camel",
    "candle",
    "canyon",
    "captain",
    "carbon",
    "carpet",
    "castle",
    "cattle",
    "cedar",
    "cello",
    "cement",
    "census",
    "cherry",
    "chess",
    "circle",
    "citrus",
    "clover",
    "cobalt",
    "cocoa",
    "coffee",
    "comet",
    "copper",
    "coral",
    "cotton",
    "cowboy",
    "coyote",
    "crater",
    "cricket",
    "crystal",
    "custom",
    "dancer",
    "delta",
    "denim",
    "desert",
    "diamond",
    "dinner",
    "doctor",
    "dollar",
    "dolphin",
    "donkey",
    "dragon",
    "drawer",
    "dream",
    "drum",
    "eagle",
    "earth",
    "echo",
    "eclipse",
    "elbow",
    "elder",
    "ember",
    "engine",
    "falcon",
    "fabric",
    "fathom",
    "feather",
    "fiddle",
    "finger",
    "forest",
    "fossil",
    "fox",
    "galaxy",
    "garden",
    "garlic",
    "gazelle",
    "ginger",
    "giraffe",
    "glacier",
    "glider",
    "goblet",
    "gold",
    "gopher",
    "gravel",
    "guitar",
    "hammer",
    "harbor",
    "harvest",
    "hazel",
    "helmet",
    "hermit",
    "hockey",
    "honey",
    "horizon",
    "hunter",
    "igloo",
    "indigo",
    "island",
    "ivory",
    "jacket",
    "jaguar",
    "jasmine",
    "jelly",
    "jigsaw",
    "jockey",
    "judge",
    "jungle",
    "kettle",
    "kitten",
    "koala",
    "ladder",
    "lagoon",
    "lantern",
    "laptop",
    "lava",
    "lemon",
    "leopard",
    "lilac",
    "locket",
    "lotus",
    "magnet",
    "mango",
    "maple",
    "marble",
    "meadow",
    "melody",
    "meteor",
    "mirror",
    "mitten",
    "monkey",
    "mosaic",
    "muffin",
    "museum",
    "napkin",
    "nectar",
    "needle",
    "nickel",
    "noodle",
    "nugget",
    "oasis",
    "ocean",
    "olive",
    "onion",
    "opal",
    "orange",
    "orbit",
    "orchid",
    "otter",
    "oyster",
    "paddle",
    "palace",
    "panda",
    "paper",
    "parrot",
    "pebble",
    "pepper",
    "piano",
    "pickle",
    "pilot",
    "pirate",
    "planet",
    "pocket",
    "poetry",
    "polar",
    "potato",
    "prairie",
    "pretzel",
    "prism",
    "pumpkin",
    "puzzle",
    "quartz",
    "quiver",
    "rabbit",
    "radar",
    "radish",
    "rainbow",
    "raven",
    "record",
    "ribbon",
    "river",
    "robin",
    "rocket",
    "saddle",
    "salmon",
    "sandal",
    "saturn",
    "scarf",
    "shadow",
    "shelter",
    "silver",
    "sketch",
    "sparrow",
    "spider",
    "spiral",
    "sponge",
    "statue",
    "summer",
    "sunset",
    "swan",
    "tango",
    "teapot",
    "temple",
    "thunder",
    "tiger",
    "timber",
    "toast",
    "tomato",
    "topaz",
    "tractor",
    "trumpet",
    "tulip",
    "tundra",
    "turtle",
    "unicorn",
    "valley",
    "velvet",
    "violin",
    "volcano",
    "walnut",
    "walrus",
    "wizard",
    "yogurt",
    "zebra",
)
assert len(WORDS) == len(set(WORDS)) == 256, len(WORDS)
_INDEX: Final = {word: i for i, word in enumerate(WORDS)}
#: What SPAKE2 names both sides (a symmetric exchange).
_SPAKE2_ID: Final = b"peerkit pairing v1"


@dataclass(frozen=True, slots=True)
class Code:
    """A pairing code: its rendezvous number and its two words."""

    number: int
    words: tuple[str, str]

    def __str__(self) -> str:
        return f"{self.number}-{self.words[0]}-{self.words[1]}"


def make_code(number: int | None = None, *, internet: bool = False) -> Code:
    """A new random code (at rendezvous ``number``, or a random one: 1 to 99, or with
    ``internet`` 100 to 9999)."""
    low, high = (MAX_LAN_NUMBER + 1, MAX_NUMBER) if internet else (1, MAX_LAN_NUMBER)
    n = number if number is not None else low + secrets.randbelow(high - low + 1)
    if not 1 <= n <= MAX_NUMBER:
        raise ValueError(f"a rendezvous number is 1 to {MAX_NUMBER}, not {n}")
    return Code(n, (secrets.choice(WORDS), secrets.choice(WORDS)))


def parse_code(text: str) -> Code:
    """The code ``text`` spells, as people type it (any case, words joined by ``-`` or spaces).

    :raises ValueError: when it is not ``NUMBER-WORD-WORD`` with known words.
    """
    parts = [p for p in re.split(r"[\s-]+", text.strip().lower()) if p]
    if len(parts) != 3 or not parts[0].isdigit():
        raise ValueError(
            f"{text!r} is not a pairing code: it looks like 7-guitar-walrus (a number, two words)"
        )
    number = int(parts[0])
    if not 1 <= number <= MAX_NUMBER:
        raise ValueError(f"a pairing code starts with a number from 1 to {MAX_NUMBER}, not {parts[0]}")
    unknown = [w for w in parts[1:] if w not in _INDEX]
    if unknown:
        raise ValueError(f"{unknown[0]!r} is not a word of pairing codes: check the code")
    return Code(number, (parts[1], parts[2]))


def rendezvous_name(number: int) -> str:
    """The mDNS instance (and DHT key) name of rendezvous ``number``: from the number alone."""
    return f"peerkit-pair-{number}"


class Pake:
    """One side's SPAKE2 exchange for ``code``: send :attr:`message`, :meth:`finish` with the
    other side's to get the shared key (which matches the other's only when the codes match)."""

    def __init__(self, code: Code) -> None:
        from spake2 import SPAKE2_Symmetric  # (here: it takes 30 ms to import, and few runs pair)

        self._spake = SPAKE2_Symmetric(str(code).encode(), idSymmetric=_SPAKE2_ID)
        #: This side's SPAKE2 message.
        self.message: bytes = self._spake.start()

    def finish(self, other: bytes) -> bytes:
        """The 32-byte shared key.

        :raises ProtocolError: when ``other`` is not a SPAKE2 message.
        """
        try:
            return bytes(self._spake.finish(other))
        except Exception as exc:  # (the spake2 package's parsers raise several kinds, untrusted input)
            raise ProtocolError(f"malformed SPAKE2 message: {type(exc).__name__}") from None


def confirmation(key: bytes, role: str, handshake_hash: bytes, card: bytes) -> bytes:
    """Proof that ``role`` (``waiter`` or ``joiner``) holds ``key``, binding its ``card`` to the
    stream with ``handshake_hash``."""
    transcript = b"peerkit pairing " + role.encode() + b"\x00" + handshake_hash + card
    return hmac.digest(key, transcript, hashlib.sha256)


def encode_pairing(body: dict[str, Any]) -> bytes:
    """The frame of one pairing message."""
    return encode_frame(encode(body))


def decode_pairing(frame: bytes | memoryview) -> dict[str, Any]:
    """One pairing message, checked: ``pake`` (``n``, ``msg``), ``card`` (``card``, ``mac``) or
    ``result`` (``ok``, ``reason``).

    :raises ProtocolError: when it is none of them, or malformed.
    """
    body = decode(frame)
    kind = body.get("type") if isinstance(body, dict) else None
    if kind not in ("pake", "card", "result"):  # (a tuple: a list or a map is no kind, not an error)
        raise ProtocolError("a pairing message is a map whose 'type' is pake, card or result")
    assert isinstance(body, dict)
    if kind == "pake":
        if not isinstance(body.get("msg"), bytes) or len(body["msg"]) > 64:
            raise ProtocolError("a pake message holds 'msg', a SPAKE2 message")
        if "n" in body and (type(body["n"]) is not int or not 1 <= body["n"] <= MAX_NUMBER):
            raise ProtocolError(f"a pake message's 'n' is 1 to {MAX_NUMBER}")
    elif kind == "card":
        card, mac = body.get("card"), body.get("mac")
        if (
            not isinstance(card, bytes)
            or len(card) > MAX_CARD
            or not isinstance(mac, bytes)
            or len(mac) != 32
        ):
            raise ProtocolError(
                f"a card message holds a 'card' of at most {MAX_CARD} bytes and a 32-byte 'mac'"
            )
    elif not isinstance(body.get("ok"), bool) or not isinstance(body.get("reason", ""), str):
        raise ProtocolError("a result message holds 'ok', a boolean, and a text 'reason'")
    return body
