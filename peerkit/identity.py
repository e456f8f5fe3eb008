"""Who a node is: its Ed25519 key pair, peer id and fingerprint.

The **peer id** is the 32-byte Ed25519 public key; its text form is lowercase RFC 4648 base32
without padding (52 characters). The **fingerprint**, shown to people, is the first 16 characters of
that text in groups of four. The Noise static key is the X25519 form of the same key pair.

The private key lives in ``<data dir>/identity.key`` (mode 0600, written atomically). A key file
that is corrupt, or that other users can read, is refused with :class:`~peerkit.errors.IdentityError`.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
import stat
import tempfile
from pathlib import Path
from typing import Final

import nacl.exceptions
import nacl.signing
import platformdirs

from peerkit.errors import IdentityError
from peerkit.proto import crypto

__all__ = ("KEY_FILE_NAME", "Identity", "PeerId", "check_identity", "check_peer_id", "default_data_dir")

#: The name of the key file inside a data dir.
KEY_FILE_NAME: Final = "identity.key"
_KEY_HEADER: Final = b"peerkit-ed25519-seed-v1\n"
_ID_LINE: Final = b"id "
_ID_TEXT_LEN: Final = 52


class PeerId:
    """A peer's id: its Ed25519 public key. Hashable, comparable, printed as base32.

    :param key: the 32-byte Ed25519 public key.
    :raises TypeError: when ``key`` is not bytes.
    :raises ValueError: when ``key`` is not a valid Ed25519 public key.
    """

    __slots__ = ("_key", "_text", "_x25519")

    def __init__(self, key: bytes) -> None:
        if not isinstance(key, (bytes, bytearray, memoryview)):
            raise TypeError(f"peer id must be bytes, not {type(key).__name__}")
        key = bytes(key)
        if len(key) != 32:
            raise ValueError(f"peer id is {len(key)} bytes; an Ed25519 public key is 32 bytes")
        try:
            self._x25519: bytes | None = crypto.ed25519_pk_to_x25519(key)
        except ValueError:
            raise ValueError("peer id is not a valid Ed25519 public key") from None
        self._key = key
        self._text: str | None = None

    @classmethod
    def parse(cls, text: str) -> PeerId:
        """Read a peer id from its 52-character base32 text form (any case).

        :raises ValueError: when ``text`` is not a peer id, with the reason.
        """
        if not isinstance(text, str):
            raise TypeError(f"peer id text must be str, not {type(text).__name__}")
        text = text.strip()
        if len(text) != _ID_TEXT_LEN:
            raise ValueError(f"peer id {text!r} is {len(text)} characters; a peer id is {_ID_TEXT_LEN}")
        try:
            key = base64.b32decode(text.upper() + "====")
        except (binascii.Error, ValueError):
            raise ValueError(f"peer id {text!r} is not base32") from None
        return cls(key)

    @classmethod
    def from_verified(cls, key: bytes) -> PeerId:
        """The id whose key is ``key``, taken from a signature that verified (libsodium checked the
        point then): the X25519 conversion, which would check it again, is left until needed."""
        peer_id = cls.__new__(cls)
        peer_id._key = bytes(key)
        peer_id._x25519 = None
        peer_id._text = None
        return peer_id

    @property
    def key(self) -> bytes:
        """The 32-byte Ed25519 public key (also ``bytes(peer_id)``)."""
        return self._key

    def __bytes__(self) -> bytes:
        return self._key

    @property
    def x25519(self) -> bytes:
        """The X25519 form of the key: the Noise static public key of this peer."""
        if self._x25519 is None:
            self._x25519 = crypto.ed25519_pk_to_x25519(self._key)
        return self._x25519

    @property
    def fingerprint(self) -> str:
        """The short form shown to people: ``abcd-efgh-ijkl-mnop``."""
        # The first 16 characters of the text form, from the key's first 10 bytes (base32 turns
        # each 5 bytes into 8 characters), without making the text form: it is kept once made,
        # and the ids of a node's contacts appear in its logs far more often than in full.
        t = base64.b32encode(self._key[:10]).decode("ascii").lower()
        return f"{t[:4]}-{t[4:8]}-{t[8:12]}-{t[12:]}"

    def verify_key(self) -> nacl.signing.VerifyKey:
        """A pynacl key that verifies this peer's signatures."""
        return nacl.signing.VerifyKey(self._key)

    def __str__(self) -> str:
        text = self._text
        if text is None:  # made when first needed: ids read in bulk (contacts) are rarely printed
            text = self._text = base64.b32encode(self._key).decode("ascii").rstrip("=").lower()
        return text

    def __repr__(self) -> str:
        return f"PeerId({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PeerId) and other._key == self._key

    def __hash__(self) -> int:
        return hash(self._key)

    def __lt__(self, other: PeerId) -> bool:
        return self._key < other._key


def check_peer_id(value: object, what: str = "peer_id") -> PeerId:
    """Return ``value`` if it is a :class:`PeerId`.

    :raises TypeError: when it is not; the message names ``what`` and the type given.
    """
    if not isinstance(value, PeerId):
        raise TypeError(f"{what} must be a PeerId, not {type(value).__name__}")
    return value


class Identity:
    """A node's Ed25519 key pair, with its peer id and Noise static key.

    Create one with :meth:`generate`, :meth:`load` or :meth:`load_or_create`.
    """

    __slots__ = ("_id", "_signing_key", "_x25519_private")

    def __init__(self, signing_key: nacl.signing.SigningKey) -> None:
        if not isinstance(signing_key, nacl.signing.SigningKey):
            raise TypeError(f"signing_key must be a nacl SigningKey, not {type(signing_key).__name__}")
        self._signing_key = signing_key
        self._id = PeerId(bytes(signing_key.verify_key))
        secret = bytes(signing_key) + bytes(signing_key.verify_key)
        self._x25519_private = crypto.ed25519_sk_to_x25519(secret)

    @classmethod
    def generate(cls) -> Identity:
        """A new random identity (libsodium's CSPRNG)."""
        return cls(nacl.signing.SigningKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> Identity:
        """The identity whose Ed25519 seed is ``seed`` (32 bytes)."""
        if not isinstance(seed, bytes) or len(seed) != 32:
            raise ValueError("an Ed25519 seed is 32 bytes")
        return cls(nacl.signing.SigningKey(seed))

    @property
    def id(self) -> PeerId:
        """This identity's peer id."""
        return self._id

    @property
    def fingerprint(self) -> str:
        """The short form of the id shown to people."""
        return self._id.fingerprint

    @property
    def x25519_private(self) -> bytes:
        """The Noise static private key (X25519 form of the Ed25519 key)."""
        return self._x25519_private

    @property
    def x25519_public(self) -> bytes:
        """The Noise static public key."""
        return self._id.x25519

    def sign(self, message: bytes) -> bytes:
        """The 64-byte Ed25519 signature of ``message``."""
        return self._signing_key.sign(message).signature

    # -- files ----------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the key to ``path`` atomically, readable by the owner only (mode 0600).

        The file appears complete or not at all, even if the process dies while writing.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        # The id beside the seed is its checksum: a changed character no longer matches it.
        content = _KEY_HEADER + base64.b64encode(bytes(self._signing_key)) + b"\n" + _ID_LINE
        content += str(self._id).encode("ascii") + b"\n"
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".identity-", suffix=".tmp")
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(content)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        _fsync_dir(path.parent)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Identity:
        """Read a key file written by :meth:`save`.

        :raises IdentityError: when the file is missing, readable by group or others, or corrupt.
        """
        path = Path(path)
        try:
            with open(path, "rb") as f:
                mode = os.fstat(f.fileno()).st_mode
                content = f.read(4096)
        except FileNotFoundError:
            raise IdentityError(f"no identity key file at {path}") from None
        except OSError as exc:
            raise IdentityError(f"cannot read identity key file {path}: {exc.strerror}") from exc
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise IdentityError(
                f"identity key file {path} is accessible by other users (mode {stat.S_IMODE(mode):o}); "
                f"refusing to use it. Run: chmod 600 {path}"
            )
        if not content.startswith(_KEY_HEADER):
            raise IdentityError(
                f"identity key file {path} is corrupt: it does not start with the peerkit header"
            )
        seed_text, _, rest = content[len(_KEY_HEADER) :].partition(b"\n")
        try:
            seed = base64.b64decode(seed_text.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise IdentityError(f"identity key file {path} is corrupt: the key is not base64") from None
        if len(seed) != 32:
            raise IdentityError(f"identity key file {path} is corrupt: the key is {len(seed)} bytes, not 32")
        try:
            identity = cls(nacl.signing.SigningKey(seed))
        except nacl.exceptions.CryptoError as exc:  # pragma: no cover - any 32 bytes are a seed
            raise IdentityError(f"identity key file {path} is corrupt: {exc}") from exc
        written = rest.strip()  # (older key files hold no id: they load as they are)
        if written and written != _ID_LINE + str(identity.id).encode():
            raise IdentityError(
                f"identity key file {path} is corrupt: its key does not match the id written beside "
                "it (was a character changed?); restore it from a backup"
            )
        return identity

    @classmethod
    def load_or_create(cls, data_dir: str | os.PathLike[str]) -> tuple[Identity, bool]:
        """The identity kept in ``data_dir``, creating and saving a new one if there is none.

        :returns: the identity and whether it was just created.
        :raises IdentityError: when a key file exists but cannot be used.
        """
        path = Path(data_dir) / KEY_FILE_NAME
        if path.exists():
            return cls.load(path), False
        identity = cls.generate()
        identity.save(path)
        return identity, True

    def __repr__(self) -> str:
        return f"Identity({self._id})"


def check_identity(value: object, what: str = "identity") -> Identity:
    """Return ``value`` if it is an :class:`Identity`.

    :raises TypeError: when it is not; the message names ``what`` and the type given.
    """
    if not isinstance(value, Identity):
        raise TypeError(f"{what} must be an Identity, not {type(value).__name__}")
    return value


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def default_data_dir() -> Path:
    """``$PEERKIT_DATA_DIR`` if set, else the per-user data dir of platformdirs."""
    env = os.environ.get("PEERKIT_DATA_DIR")
    return Path(env) if env else Path(platformdirs.user_data_dir("peerkit"))
