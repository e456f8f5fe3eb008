"""Registered applications: programs that ``peerkit serve`` launches for an invitation, and what a
program so launched learns about the invitation (:func:`launch_info`).

A registration names an application (its UUID, a short name, a description) and the program to
start for it: an executable ``path`` and its ``arguments`` (one string, split as a shell would, not
run by a shell). Each user has a registry in the data dir (``applications.json``); a system-wide one
(``applications.json`` in peerkit's site config dir, or the file ``$PEERKIT_SYSTEM_APPS`` names)
is read only. A user's registration of an application overrides the system's. Each registry holds
at most :data:`MAX_REGISTERED`.

When ``peerkit serve`` accepts an invitation to a registered application it starts the program
with ``PEERKIT_LAUNCH`` in its environment; :func:`launch_info` reads it. The program may answer
the invitation (:meth:`LaunchInfo.accept` or :meth:`LaunchInfo.decline`) within
:data:`ANSWER_WAIT` seconds; if it does not, the invitation is accepted (it was launched for it).
It then talks to the inviter from a :class:`~peerkit.Node` of its own on the same data dir.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shlex
import tempfile
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

import platformdirs

from peerkit.identity import PeerId
from peerkit.model import Application, EndPoint, check_text

__all__ = (
    "ANSWER_WAIT",
    "LAUNCH_ENV",
    "MAX_REGISTERED",
    "REGISTRY_FILE",
    "LaunchInfo",
    "Registered",
    "Registry",
    "launch_info",
    "system_registry_path",
)

#: The registry's file in a data dir.
REGISTRY_FILE: Final = "applications.json"
#: Registrations one registry holds, at most.
MAX_REGISTERED: Final = 64
#: The environment variable a launched program finds its invitation in.
LAUNCH_ENV: Final = "PEERKIT_LAUNCH"
#: The environment variable that holds the file descriptor a launched program answers on.
ANSWER_ENV: Final = "PEERKIT_LAUNCH_ANSWER_FD"
#: Seconds ``peerkit serve`` waits for a launched program's answer before it accepts.
ANSWER_WAIT: Final = 10.0
_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")


@dataclass(frozen=True, slots=True)
class Registered:
    """One registered application."""

    #: A short name for the command line (lowercase letters, digits, ``.``, ``_``, ``-``).
    name: str
    #: The application's UUID.
    id: uuid.UUID
    #: The program to start for an invitation.
    path: str
    #: Its arguments, split as a shell would (no shell runs them).
    arguments: str = ""
    #: A description for people.
    description: str = ""
    #: ``user`` or ``system``: which registry it comes from.
    source: str = "user"

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            raise ValueError(
                f"{self.name!r} is not an application name: 1 to 64 lowercase letters, digits, '.', '_', '-'"
            )
        if not isinstance(self.id, uuid.UUID):
            raise TypeError("an application's id is a UUID")
        if not isinstance(self.path, str) or not self.path:
            raise ValueError("a registered application needs the path of its program")
        check_text(self.description, "application description")
        if not isinstance(self.arguments, str):
            raise TypeError("arguments are one string")
        shlex.split(self.arguments)  # (raises ValueError for unbalanced quotes)

    @property
    def application(self) -> Application:
        """As an :class:`~peerkit.Application` to register on a node (with its path and arguments)."""
        return Application(
            id=self.id, description=self.description or self.name, path=self.path, arguments=self.arguments
        )

    def command(self) -> list[str]:
        """The program and its arguments."""
        return [self.path, *shlex.split(self.arguments)]

    def command_text(self) -> str:
        """:meth:`command` as a shell would read it: an argument with a space in it quoted."""
        return shlex.join(self.command())


def system_registry_path() -> Path:
    """Where the system-wide registry is: ``$PEERKIT_SYSTEM_APPS``, else ``applications.json`` in
    peerkit's site config dir (``/etc/xdg/peerkit`` on Linux)."""
    env = os.environ.get("PEERKIT_SYSTEM_APPS")
    return Path(env) if env else Path(platformdirs.site_config_dir("peerkit")) / REGISTRY_FILE


class Registry:
    """The applications registered for the user of ``data_dir`` (over the system's)."""

    def __init__(self, data_dir: Path) -> None:
        self._path = Path(data_dir) / REGISTRY_FILE

    def list(self) -> list[Registered]:
        """Every registered application: the user's, and the system's the user did not override.

        :raises ValueError: when a registry file is not one (its path is named).
        """
        mine = _read(self._path, "user")
        ids = {r.id for r in mine} | {r.name for r in mine}
        system = [r for r in _read(system_registry_path(), "system") if r.id not in ids and r.name not in ids]
        return mine + system

    def find(self, text: str) -> Registered | None:
        """The registered application ``text`` names (its name or UUID), or None."""
        wanted = text.strip().lower()
        for registered in self.list():
            if wanted in (registered.name, str(registered.id)):
                return registered
        return None

    def register(self, registered: Registered) -> None:
        """Add (or replace, by name or id) a registration in the user's registry.

        :raises ValueError: when the registry holds 64 already.
        """
        mine = [r for r in _read(self._path, "user") if r.name != registered.name and r.id != registered.id]
        if len(mine) >= MAX_REGISTERED:
            raise ValueError(f"{self._path} holds {MAX_REGISTERED} applications, the most it may")
        self._write([*mine, registered])

    def unregister(self, text: str) -> Registered:
        """Remove the user's registration that ``text`` names (name or UUID).

        :raises LookupError: when the user registered none so (system ones cannot be removed).
        """
        mine = _read(self._path, "user")
        wanted = text.strip().lower()
        gone = [r for r in mine if wanted in (r.name, str(r.id))]
        if not gone:
            system = [r for r in _read(system_registry_path(), "system") if wanted in (r.name, str(r.id))]
            if system:
                raise LookupError(
                    f"{text!r} is registered for all users ({system_registry_path()}): not yours to remove"
                )
            raise LookupError(f"no application registered as {text!r}; see 'peerkit apps list'")
        self._write([r for r in mine if r not in gone])
        return gone[0]

    def _write(self, registered: Sequence[Registered]) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        rows = [{k: v for k, v in asdict(r).items() if k != "source"} | {"id": str(r.id)} for r in registered]
        text = json.dumps({"version": 1, "applications": rows}, indent=2)
        fd, temporary = tempfile.mkstemp(dir=self._path.parent, prefix=".applications-")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
            os.replace(temporary, self._path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise


def _read(path: Path, source: str) -> list[Registered]:
    try:
        text = path.read_text("utf-8")
    except FileNotFoundError:
        return []
    try:
        rows = json.loads(text)["applications"]
        found = [
            Registered(
                name=row["name"],
                id=uuid.UUID(row["id"]),
                path=row["path"],
                arguments=row.get("arguments", ""),
                description=row.get("description", ""),
                source=source,
            )
            for row in rows[:MAX_REGISTERED]
        ]
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ValueError(f"{path} is not a registry of applications: {exc}") from None
    return found


@dataclass(frozen=True, slots=True)
class LaunchInfo:
    """The invitation a program was launched for (``PeerCollaboration.ApplicationLaunchInfo``)."""

    #: The inviter's verified id.
    sender_id: PeerId
    #: The nickname it gave.
    nickname: str
    #: Where the inviter can be reached (its address and listening port), or None.
    endpoint: EndPoint | None
    #: The application invited to.
    application_id: uuid.UUID
    #: The invitation's message.
    message: str
    #: The invitation's data.
    data: bytes
    #: The data dir of the node that received it (open a Node there: the same identity).
    data_dir: Path
    #: The file descriptor to answer on, or None.
    answer_fd: int | None = None

    def accept(self) -> None:
        """Answer the invitation ACCEPTED (also what happens without an answer)."""
        self._answer("accept")

    def decline(self) -> None:
        """Answer the invitation DECLINED."""
        self._answer("decline")

    def _answer(self, word: str) -> None:
        if self.answer_fd is None:
            raise RuntimeError("this invitation was answered already, or cannot be answered")
        try:
            os.write(self.answer_fd, word.encode() + b"\n")
        except OSError as exc:
            raise RuntimeError(f"the answer could not be given: {exc}") from None
        finally:
            os.close(self.answer_fd)
            object.__setattr__(self, "answer_fd", None)

    def to_environment(self) -> str:
        """The value of ``PEERKIT_LAUNCH`` that carries this invitation."""
        fields: dict[str, Any] = {
            "sender": str(self.sender_id),
            "nickname": self.nickname,
            "endpoint": [self.endpoint.host, self.endpoint.port] if self.endpoint else None,
            "application": str(self.application_id),
            "message": self.message,
            "data": base64.b64encode(self.data).decode(),
            "data_dir": str(self.data_dir),
        }
        return json.dumps(fields)


_launched: list[LaunchInfo | None] = []


def launch_info() -> LaunchInfo | None:
    """The invitation this program was launched for by ``peerkit serve``, or None when it was not
    launched by one. The same object every call."""
    if not _launched:
        _launched.append(_from_environment())
    return _launched[0]


def _from_environment() -> LaunchInfo | None:
    text = os.environ.get(LAUNCH_ENV)
    if not text:
        return None
    try:
        fields = json.loads(text)
        endpoint = fields["endpoint"]
        answer = os.environ.get(ANSWER_ENV)
        return LaunchInfo(
            sender_id=PeerId.parse(fields["sender"]),
            nickname=str(fields["nickname"]),
            endpoint=EndPoint(endpoint[0], int(endpoint[1])) if endpoint else None,
            application_id=uuid.UUID(fields["application"]),
            message=str(fields["message"]),
            data=base64.b64decode(fields["data"]),
            data_dir=Path(fields["data_dir"]),
            answer_fd=int(answer) if answer and answer.isdigit() else None,
        )
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise ValueError(f"${LAUNCH_ENV} does not hold an invitation: {exc}") from None
