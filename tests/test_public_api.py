"""The public surface: exports, the error tree, and the layering rules of DESIGN.md."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import peerkit
import peerkit.errors

PACKAGE = Path(peerkit.__file__).parent


def test_everything_exported_exists_and_everything_public_is_exported() -> None:
    for name in peerkit.__all__:
        assert hasattr(peerkit, name), name
    public = {
        name
        for name, value in vars(peerkit).items()
        if not name.startswith("_") and not inspect.ismodule(value) and name not in {"annotations"}
    }
    assert public <= set(peerkit.__all__) | {"__version__"}


def test_the_error_tree_is_drawn_in_the_errors_docstring() -> None:
    doc = peerkit.errors.__doc__ or ""
    for name in peerkit.errors.__all__:
        cls = getattr(peerkit.errors, name)
        assert issubclass(cls, peerkit.PeerkitError)
        assert name in doc, f"{name} is missing from the tree in peerkit/errors.py"
    assert issubclass(peerkit.HandshakeError, peerkit.ProtocolError)
    assert issubclass(peerkit.InvalidRecord, ValueError)


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_the_protocol_core_does_no_io_and_reads_no_clock() -> None:
    forbidden = {"anyio", "asyncio", "socket", "time", "random", "trio", "selectors", "threading", "os"}
    for path in (PACKAGE / "proto").glob("*.py"):
        for name in _imports(path):
            assert name.split(".")[0] not in forbidden, f"{path.name} imports {name}"
            assert not name.startswith("peerkit.net"), f"{path.name} imports {name}"


def test_only_the_crypto_module_calls_the_low_level_bindings() -> None:
    for path in PACKAGE.rglob("*.py"):
        low_level = {n for n in _imports(path) if n.startswith(("nacl.bindings", "nacl._sodium"))}
        if path.name == "crypto.py" and path.parent.name == "proto":
            assert low_level
        else:
            assert not low_level, f"{path.relative_to(PACKAGE)} imports {low_level}"


def test_every_public_module_class_function_and_method_is_documented() -> None:
    import importlib
    import pkgutil

    missing = []
    for info in pkgutil.walk_packages(peerkit.__path__, "peerkit."):
        module = importlib.import_module(info.name)
        if not module.__doc__:
            missing.append(info.name)
        for name in getattr(module, "__all__", ()):
            obj = getattr(module, name)
            if (inspect.isclass(obj) or inspect.isfunction(obj)) and not obj.__doc__:
                missing.append(f"{info.name}.{name}")
            if inspect.isclass(obj):
                for attr, value in vars(obj).items():
                    if attr.startswith("_"):
                        continue
                    func = value.fget if isinstance(value, property) else getattr(value, "__func__", value)
                    if inspect.isfunction(func) and not func.__doc__:
                        missing.append(f"{info.name}.{name}.{attr}")
    assert missing == []


def test_every_coroutine_of_the_main_classes_says_what_cancelling_it_does() -> None:
    # In its own docstring, or (for the contact store, whose methods share one rule) its class's.
    missing = []
    for cls in (peerkit.Node, peerkit.Peer, peerkit.NearbyPeer, peerkit.Contact, peerkit.ContactManager):
        for name, method in inspect.getmembers(cls, inspect.iscoroutinefunction):
            if name.startswith("_"):
                continue
            said = "cancel" in (method.__doc__ or "").lower() or "Cancellation:" in (cls.__doc__ or "")
            if not said:
                missing.append(f"{cls.__name__}.{name}")
    assert missing == []
