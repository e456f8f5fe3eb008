"""Text from peers shown as text: :func:`peerkit.printable`, :func:`peerkit.model.quoted`, the
commands' console and terminal."""

from __future__ import annotations

import io
import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st
from rich.table import Table

import peerkit
from peerkit.model import quoted
from peerkit.terminal import SafeConsole, Terminal

BIDI = "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
INVISIBLE = "\u00ad\u115f\u1160\u180e\u200b\u2060\u3164\ufeff\uffa0"


def hidden(char: str) -> bool:
    return char in BIDI + INVISIBLE or unicodedata.category(char) in ("Cc", "Zl", "Zp", "Cs")


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("alice", "alice"),
        ("Zoë 👩‍👩‍👧 日本", "Zoë 👩‍👩‍👧 日本"),  # (a zero-width joiner is no control)
        ("\x1b[2Jhi", r"\x1b[2Jhi"),
        ("a\rb\tc\nd", r"a\rb\tc\nd"),
        ("bell\x07\x7f\x85", r"bell\x07\x7f\x85"),
        ("\u202eevil\u2066", r"\u202eevil\u2066"),
        ("line\u2028sep", r"line\u2028sep"),
        ("lone \ud800", r"lone \ud800"),
        ("ali\u200bce", r"ali\u200bce"),  # (would pass for "alice")
        ("\u3164\u3164", r"\u3164\u3164"),  # (a name of Hangul fillers: shows as none)
        ("soft\u00adhy", r"soft\xadhy"),
        ("\u0646\u0627\u0645\u0647\u200c\u0647\u0627",) * 2,  # (Persian: its zero-width non-joiner is kept)
        ("[/b] [red]", "[/b] [red]"),  # (markup is text; the console does not read it)
    ],
)
def test_printable_escapes_what_would_control_the_terminal(text: str, shown: str) -> None:
    assert peerkit.printable(text) == shown


def test_printable_keeps_line_feeds_when_asked_and_cuts_at_a_limit() -> None:
    assert peerkit.printable("a\nb\r", newlines=True) == "a\nb\\r"
    with pytest.raises(TypeError, match="takes a str, not bytes"):
        peerkit.printable(b"bytes")  # type: ignore[arg-type]
    assert peerkit.printable("x" * 300, 255) == "x" * 255 + "…"
    assert peerkit.printable("short", 255) == "short"


@given(st.text() | st.text(st.sampled_from(BIDI + INVISIBLE + "a\u200d\u200c\x1b")))
def test_printable_leaves_no_control_and_changes_nothing_else(text: str) -> None:
    shown = peerkit.printable(text)
    assert not any(hidden(c) for c in shown)
    if not any(hidden(c) for c in text):
        assert shown == text
    shown.encode("utf-8")  # (no lone surrogate left, which no terminal takes: this would raise)


_VALUES = st.recursive(st.text() | st.binary() | st.integers(), lambda item: st.lists(item) | st.tuples(item))


@given(_VALUES)
def test_quoted_is_short_and_printable(value: object) -> None:
    text = quoted(value)
    assert len(text) <= 201
    assert not any(hidden(c) for c in text)


def test_quoted_names_a_value_briefly() -> None:
    assert quoted("t") == "'t'"
    assert len(quoted("x" * 60_000)) < 80
    assert quoted(["\x1b"] * 50).startswith(r"['\x1b', '\x1b'")


def test_the_console_shows_markup_and_escape_sequences_from_peers_as_text() -> None:
    out = io.StringIO()
    console = SafeConsole(file=out, force_terminal=True, width=200)
    table = Table("nickname")
    table.add_row("[/b]\x1b]0;title\x07")  # (rich alone: a MarkupError, and the title set)
    console.print(table)
    console.print("two\nlines \x1b[2J", highlight=False)
    console.print("[green]ours[/green]", markup=True)  # (the commands' own markup, when asked)
    text = out.getvalue()
    assert r"[/b]\x1b]0;title\x07" in text
    assert "two\nlines \\x1b[2J" in text
    for raw in ("\x1b]0;", "\x07", "\x1b[2J"):
        assert raw not in text
    assert "\x1b[32mours" in text


@pytest.mark.parametrize("encoding", ["ascii", "latin-1"])
def test_a_table_written_where_the_encoding_lacks_a_letter_is_escaped_and_still_lines_up(
    encoding: str,
) -> None:
    raw = io.BytesIO()
    out = io.TextIOWrapper(raw, encoding=encoding, errors="strict")
    console = SafeConsole(file=out, width=60, color_system=None)
    table = Table("nickname", "fingerprint")
    table.add_row("Zo\u00eb \U0001f600", "abcd-efgh")
    table.add_row("bob", "ijkl-mnop")
    console.print(table)
    out.flush()
    lines = raw.getvalue().decode(encoding).splitlines()
    shown = {"ascii": r"Zo\xeb \U0001f600", "latin-1": "Zo\u00eb \\U0001f600"}[encoding]
    assert any(shown in line for line in lines)
    assert len({len(line) for line in lines}) == 1  # every row as wide as the borders


def test_the_terminal_shows_a_line_from_a_peer_as_text() -> None:
    out = io.StringIO()
    with open("/dev/null") as stdin:
        terminal = Terminal(stdin=stdin, stdout=out)
        terminal.show("bob: \x1b[2Jhi\rthere\nnext")
        terminal.set_status("bob\x1b[5m is typing")
    assert out.getvalue() == "bob: \\x1b[2Jhi\\rthere\nnext\n"
    assert terminal._status == "bob\\x1b[5m is typing"


@pytest.mark.anyio
async def test_the_reprs_of_peers_and_contacts_show_their_names_as_text() -> None:
    from peerkit.testing import node_pair

    async with node_pair() as (alice, bob):
        peer = alice.peer(bob.id, bob.endpoint, nickname="bob\x1b[2J\nroot")
        assert repr(peer).startswith(r"<Peer bob\x1b[2J\nroot ")
        contact = await alice.contacts.add(bob.id)
        contact = await alice.contacts.update(contact.replace(display_name="\u202eevil"))
        assert repr(contact).startswith(r"<Contact \u202eevil ")


@given(st.text(max_size=40) | st.text(st.sampled_from("[]/\x1b\x07\r\n\t\x9b\u202e\u200bab"), max_size=40))
def test_no_text_from_a_peer_reaches_the_console_as_a_control_character(text: str) -> None:
    out = io.StringIO()
    console = SafeConsole(file=out, width=80, color_system=None)  # (no styles: no escapes of its own)
    table = Table("nickname")
    table.add_row(text)
    console.print(table)
    console.print(f"said: {text}")
    shown = out.getvalue()
    assert not any(hidden(c) for c in shown if c != "\n")
