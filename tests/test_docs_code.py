"""The code in the documentation runs and prints what the page says it prints.

Every ```python block of the site's pages and the README is one of three kinds:

- a program (it calls ``anyio.run(main)``): it runs in a process of its own, and when the page
  shows its output (the next block, a ```text block) its output must be exactly that;
- tests (``async def test_...``): each runs on asyncio and on trio;
- a file included whole (``--8<-- "examples/..."``): the example itself, which
  tests/real/test_examples.py (or, for mDNS, tests/real/test_lan.py) runs.

No other kind is allowed: a fragment that cannot run alone is a fragment no test checks.
"""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```\n", re.DOTALL | re.MULTILINE)
SNIPPET = re.compile(r'^--8<-- "([^"]+)"\s*$')


@dataclass(frozen=True)
class Block:
    page: str
    line: int
    code: str
    #: The output the page shows for it, if any.
    output: str | None
    #: Whether the page says its lines may come in any order.
    any_order: bool

    def __str__(self) -> str:
        return f"{self.page}:{self.line}"


def blocks() -> list[Block]:
    found = []
    for page in PAGES:
        text = page.read_text()
        fences = list(FENCE.finditer(text))
        for i, fence in enumerate(fences):
            if fence.group(1) != "python":
                continue
            output, any_order = None, False
            if i + 1 < len(fences) and fences[i + 1].group(1) == "text":
                between = text[fence.end() : fences[i + 1].start()]
                if "```" not in between and len(between) < 200:
                    output, any_order = fences[i + 1].group(2), "either order" in between
            line = text.count("\n", 0, fence.start()) + 1
            found.append(Block(str(page.relative_to(ROOT)), line, fence.group(2), output, any_order))
    return found


BLOCKS = blocks()
PROGRAMS = [b for b in BLOCKS if "anyio.run(main)" in b.code and not SNIPPET.match(b.code)]
TESTS = [b for b in BLOCKS if "async def test_" in b.code]
FRAGMENTS = [b for b in BLOCKS if b not in PROGRAMS and b not in TESTS and not SNIPPET.match(b.code)]
INCLUDED = [b for b in BLOCKS if SNIPPET.match(b.code)]


def test_every_block_is_a_program_tests_or_an_example() -> None:
    assert [str(b) for b in FRAGMENTS] == []
    assert len(PROGRAMS) >= 6
    assert TESTS
    assert sum(b.output is not None for b in PROGRAMS) >= 5


@pytest.mark.parametrize("block", PROGRAMS, ids=str)
def test_a_program_runs_and_prints_what_the_page_shows(block: Block, tmp_path: Path) -> None:
    program = tmp_path / "program.py"
    program.write_text(block.code)
    done = subprocess.run(
        [sys.executable, str(program)], capture_output=True, text=True, timeout=60, cwd=tmp_path, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    if block.output is not None:
        if block.any_order:
            assert sorted(done.stdout.splitlines()) == sorted(block.output.splitlines())
        else:
            assert done.stdout == block.output


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@pytest.mark.parametrize("block", TESTS, ids=str)
def test_the_tests_a_page_shows_pass(block: Block, backend: str) -> None:
    namespace: dict[str, object] = {}
    exec(compile(block.code, block.page, "exec"), namespace)
    tests = [value for name, value in namespace.items() if name.startswith("test_")]
    assert tests
    for test in tests:
        anyio.run(test, backend=backend)  # type: ignore[arg-type]


@pytest.mark.parametrize("block", INCLUDED, ids=str)
def test_an_included_example_is_one_the_tests_run(block: Block) -> None:
    match = SNIPPET.match(block.code)
    assert match is not None
    path = ROOT / match.group(1)
    assert path.is_file()
    runners = (ROOT / "tests" / "real" / "test_examples.py").read_text() + (
        ROOT / "tests" / "real" / "test_lan.py"
    ).read_text()
    assert path.name in runners, f"{block}: no test runs {path.name}"
