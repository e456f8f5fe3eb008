"""examples/whiteboard in a real browser: two participants (alice hosts, bob joins), each with a
page in headless Chromium. A stroke drawn with the mouse in alice's page appears in bob's, drawn
on his canvas; bob's stroke appears in alice's; a page opened late gets the board so far. A
screenshot of each page is saved under the test's temp dir."""

from __future__ import annotations

import importlib.util
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import needed

WHITEBOARD = Path(__file__).resolve().parents[2] / "examples" / "whiteboard" / "whiteboard.py"


def port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def chromium() -> str | None:
    return next((p for p in map(shutil.which, ("chromium", "chromium-browser")) if p), None)


@pytest.fixture
def browser() -> Iterator[Any]:
    missing = [m for m in ("playwright", "aiohttp") if importlib.util.find_spec(m) is None]
    needed("browser test", f"{', '.join(missing)} not installed" if missing else None)
    executable = chromium()
    needed("browser test", None if executable else "no chromium (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()


def participant(nickname: str, *args: str) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, str(WHITEBOARD), nickname, *args], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    assert "page at" in process.stdout.readline()
    return process


def stroke(page: Any, points: list[tuple[int, int]]) -> None:
    box = page.locator("#board").bounding_box()
    page.mouse.move(box["x"] + points[0][0], box["y"] + points[0][1])
    page.mouse.down()
    for x, y in points[1:]:
        page.mouse.move(box["x"] + x, box["y"] + y, steps=4)
    page.mouse.up()


def painted(page: Any, x: int, y: int) -> bool:
    """Whether the canvas pixel at (x, y) is painted (not transparent)."""
    alpha = page.evaluate(
        f"document.getElementById('board').getContext('2d').getImageData({x}, {y}, 1, 1).data[3]"
    )
    return int(alpha) > 0


@pytest.mark.timeout(120)
def test_a_stroke_drawn_in_one_browser_appears_in_the_other(browser: Any, tmp_path: Path) -> None:
    alice_listen, alice_web, bob_web = port(), port(), port()
    alice = participant(
        "alice", "--host", "--listen", f"127.0.0.1:{alice_listen}", "--web", f"127.0.0.1:{alice_web}"
    )
    bob = None
    try:
        bob = participant("bob", "--join", f"127.0.0.1:{alice_listen}", "--web", f"127.0.0.1:{bob_web}")
        alice_page, bob_page = browser.new_page(), browser.new_page()
        alice_page.goto(f"http://127.0.0.1:{alice_web}/")
        bob_page.goto(f"http://127.0.0.1:{bob_web}/")
        alice_page.wait_for_selector("text=alice's whiteboard")
        bob_page.wait_for_selector("text=bob's whiteboard")
        assert not painted(bob_page, 150, 100)
        stroke(alice_page, [(100, 100), (150, 100), (200, 100), (250, 120)])
        bob_page.wait_for_function("window.strokesDrawn >= 1", timeout=10_000)
        assert painted(bob_page, 150, 100)  # alice's stroke, on bob's canvas
        assert not painted(bob_page, 300, 300)
        stroke(bob_page, [(300, 300), (320, 310), (340, 330)])
        alice_page.wait_for_function("window.strokesDrawn >= 2", timeout=10_000)  # hers (echoed), and bob's
        assert painted(alice_page, 320, 310)
        late = browser.new_page()  # a page opened now gets the board so far
        late.goto(f"http://127.0.0.1:{bob_web}/")
        late.wait_for_function("window.strokesDrawn >= 2", timeout=10_000)
        assert painted(late, 150, 100)
        assert painted(late, 320, 310)
        for name, page in (("alice", alice_page), ("bob", bob_page)):
            page.screenshot(path=str(tmp_path / f"{name}.png"))
            assert (tmp_path / f"{name}.png").stat().st_size > 1000
    finally:
        for process in (bob, alice):
            if process is not None:
                process.terminate()
                process.communicate(timeout=10)  # (and its pipe closed)


def test_a_participant_is_told_what_went_wrong_without_a_traceback() -> None:
    if importlib.util.find_spec("aiohttp") is None:
        needed("whiteboard", "aiohttp not installed")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, str(WHITEBOARD), "bob", "--listen", "127.0.0.1:0", *args]
        return subprocess.run(command, check=False, capture_output=True, text=True, timeout=30)

    wrong = run("--join", "nowhere")
    assert wrong.returncode == 2
    assert "argument --join: 'nowhere' is not HOST:PORT" in wrong.stderr
    closed = run("--join", f"127.0.0.1:{port()}", "--web", f"127.0.0.1:{port()}")
    assert closed.returncode == 1
    assert closed.stderr.startswith("whiteboard: could not connect to 127.0.0.1:")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = run("--host", "--web", f"127.0.0.1:{taken.getsockname()[1]}")
    assert busy.returncode == 1
    assert busy.stderr.startswith("whiteboard: ")
    assert "address already in use" in busy.stderr
    assert "Traceback" not in wrong.stderr + closed.stderr + busy.stderr
