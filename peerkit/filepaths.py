"""What is offered of the paths given to :func:`peerkit.files.prepare`: the files of each folder
under the folder's name, what a folder holds that is not sent (and why), and the names checked
before any file is hashed."""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from pathlib import Path

from peerkit.model import printable
from peerkit.proto.files import MAX_FILES, check_offer, check_path

__all__ = ("check_names", "kind", "walk")


def walk(paths: Sequence[Path | str]) -> tuple[list[tuple[Path, str]], list[tuple[Path, str]]]:
    """Each file ``paths`` name, and its name in the offer; and what is not sent, and why (run in a
    worker thread: it reads the file system).

    :raises ValueError: when a path does not exist or is not a file or folder, or there are more
        than 10,000 files.
    """
    found: list[tuple[Path, str]] = []
    omitted: list[tuple[Path, str]] = []

    def unreadable(exc: OSError) -> None:
        omitted.append((Path(exc.filename or ""), f"cannot be read: {(exc.strerror or str(exc)).lower()}"))

    for given in paths:
        path = Path(given)
        shown = printable(str(given))
        if path.is_dir():
            base = path.resolve().name or "files"
            for root, dirs, names in os.walk(path, onerror=unreadable):
                dirs.sort()
                if not dirs and not names and root != str(path):
                    omitted.append((Path(root), "an empty folder"))
                for name in dirs:
                    if Path(root, name).is_symlink():
                        omitted.append((Path(root, name), "a link to a folder, not followed"))
                for name in sorted(names):
                    full = Path(root, name)
                    if not full.is_file():
                        omitted.append((full, kind(full)))
                    elif not os.access(full, os.R_OK):  # (one file of a folder: not the whole send)
                        omitted.append((full, "cannot be read: permission denied"))
                    else:
                        found.append((full, "/".join((base, *full.relative_to(path).parts))))
        elif path.is_file():
            found.append((path, path.name))
        elif path.exists():
            raise ValueError(f"{shown}: {kind(path)}, not a file or folder")
        else:
            raise ValueError(
                f"{shown}: {'a link to nothing' if path.is_symlink() else 'no such file or folder'}"
            )
        if len(found) > MAX_FILES:
            raise ValueError(f"more than {MAX_FILES} files: send fewer at a time, or an archive")
    return found, omitted


def kind(path: Path) -> str:
    """What a path that is neither a file nor a folder is, in words ("a named pipe", ...)."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return "a link to nothing" if path.is_symlink() else "gone"
    if stat.S_ISFIFO(mode):
        what = "a named pipe"
    elif stat.S_ISSOCK(mode):
        what = "a socket"
    elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        what = "a device"
    else:
        what = "neither a file nor a folder"
    return f"a link to {what}" if path.is_symlink() else what


def check_names(found: list[tuple[Path, str]]) -> None:
    """Refuse what cannot be offered (before any file is hashed): nothing, a name twice, a name
    that is no safe path in an offer.

    :raises ValueError: naming the file and what is wrong.
    """
    if not found:
        raise ValueError("there is no file to send (empty folders are not sent)")
    for source, name in found:
        try:
            check_path(name)
        except ValueError as exc:
            raise ValueError(f"{printable(str(source))} cannot be sent under its name: {exc}") from None
    names = [name for _, name in found]
    if len(set(names)) != len(names):
        twice = next(n for n in names if names.count(n) > 1)
        raise ValueError(f"two files would be called {twice!r}: send them apart")
    try:
        check_offer(names)
    except ValueError as exc:
        raise ValueError(f"these cannot be sent together: {exc}") from None
