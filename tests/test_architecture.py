"""The package's shape: no import cycle, no private member used across modules, small files,
and a sans-IO ``proto`` layer. Checked on the source, so a change that breaks one fails here."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "peerkit"
MAX_LINES = 1000
#: Modules ``peerkit/proto`` may import: no sockets, event loops, threads or files.
IO_MODULES = {"anyio", "asyncio", "trio", "socket", "selectors", "threading", "sqlite3", "zeroconf", "os"}


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Every peerkit module ``name`` imports, anywhere in it (type-only imports count)."""
    tree = ast.parse(path.read_text("utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([*package.split(".")[: len(package.split(".")) - node.level + 1], base])
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for wanted in targets:
            target = wanted
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def test_no_import_cycle_counting_type_only_imports() -> None:
    table = modules()
    # The package's front door re-exports everything; nothing inside imports it.
    graph = {name: imports(name, path, set(table)) - {"peerkit"} for name, path in table.items()}
    assert "peerkit" not in {t for name, ts in graph.items() if name != "peerkit" for t in ts}
    cycles: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(name: str) -> None:
        state[name] = 1
        stack.append(name)
        for target in sorted(graph[name]):
            if state.get(target) == 1:
                cycles.append([*stack[stack.index(target) :], target])
            elif target not in state:
                visit(target)
        stack.pop()
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def _defined_privates(tree: ast.AST) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
    for node in ast.walk(tree):  # __slots__ and dataclass fields
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("_"):
            names.add(node.value)
    return {n for n in names if n.startswith("_")}


def test_no_module_uses_another_modules_private_members() -> None:
    offences = []
    for name, path in modules().items():
        tree = ast.parse(path.read_text("utf-8"))
        own = _defined_privates(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("peerkit"):
                offences += [
                    f"{name}:{node.lineno} imports {alias.name}"
                    for alias in node.names
                    if alias.name.startswith("_") and not alias.name.startswith("__")
                ]
            if (
                isinstance(node, ast.Attribute)
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
                and node.attr not in own
            ):
                offences.append(f"{name}:{node.lineno} uses .{node.attr}")
    assert not offences, "private members used across modules:\n" + "\n".join(offences)


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_file_over_the_limit(path: Path) -> None:
    lines = len(path.read_text("utf-8").splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(PACKAGE)} has {lines} lines; the limit is {MAX_LINES}"


#: The DHT's sans-IO modules: the codec, the KRPC state, the lookups.
DHT_SANS_IO = {
    f"peerkit.dht.{m}"
    for m in ("bencode", "bep44", "krpc", "routing", "storage", "server", "lookup", "external")
}


def test_proto_does_no_io() -> None:
    table = modules()
    for name, path in table.items():
        if not name.startswith("peerkit.proto") and name not in DHT_SANS_IO and name != "peerkit.nat.natpmp":
            continue
        tree = ast.parse(path.read_text("utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                roots = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and not node.level:
                roots = {(node.module or "").split(".")[0]}
            else:
                continue
            assert not roots & IO_MODULES, f"{name}:{node.lineno} imports {roots & IO_MODULES}"
        for target in imports(name, path, set(table)):
            assert (
                target.startswith(("peerkit.proto", "peerkit.errors", "peerkit.model"))
                or target in DHT_SANS_IO
            ), f"{name} imports {target}, outside the sans-IO layer"
