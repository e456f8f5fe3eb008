"""``python -m benchmarks --plot DIR`` (or ``--plot-from FILE --plot DIR``): the results as PNGs.

- ``FAMILY.png`` for each benchmark: one panel per figure, peerkit's bar beside its reference's
  (a baseline, or a peer library), in the figure's unit, with the ratio over the pair.
- ``latency.png``: the latency figures (the p50 and p99 rows of the invitation and fan-out
  benchmarks), peerkit beside its reference for each percentile.

Needs matplotlib (``pip install -e '.[plot]'``).
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any

__all__ = ("LATENCY_FAMILIES", "plot")

#: The benchmarks whose p50 and p99 rows make ``latency.png``.
LATENCY_FAMILIES = ("invite_cold", "fanout")
PEERKIT_COLOUR, REFERENCE_COLOUR = "#2b6cb0", "#a0aec0"


def _number(value: float) -> str:
    # A bar's label: whole numbers with separators from 100 on (3,502, not 3.5e+03), else 3 digits.
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def _short(text: str, width: int = 38) -> str:
    words, lines, line = text.split(), [], ""
    for word in words:
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    lines.append(line)
    return "\n".join(lines[:4])


def _latency_rows(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # The p50 and p99 rows of the latency families, beside a reference (a stated target is not).
    return [
        r
        for r in results
        if r["benchmark"] in LATENCY_FAMILIES
        and ("p50" in r["figure"] or "p99" in r["figure"])
        and "target" not in r["reference"]
    ]


def _latency_label(row: dict[str, Any]) -> str:
    # "fanout\nN=1000 coroutine\np50": the family, what tells its rows apart, the percentile.
    figure = row["figure"]
    words = [w.rstrip(":,") for w in figure.split() if w.startswith("N=")]
    if "plain-function" in figure:
        words.append("plain")
    elif "coroutine" in figure:
        words.append("coroutine")
    which = "p99" if "p99" in figure else "p50"
    return "\n".join([row["benchmark"], " ".join(words), which] if words else [row["benchmark"], which])


def plot(results: list[dict[str, Any]], directory: Path) -> list[Path]:
    """Write the PNGs of ``results`` (rows as the JSON holds them) into ``directory``; returns
    their paths.

    :raises ModuleNotFoundError: when matplotlib is not installed.
    """
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    from matplotlib import pyplot

    directory.mkdir(parents=True, exist_ok=True)
    families: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in results:
        families[row["benchmark"]].append(row)
    written = []
    for family, rows in families.items():
        columns = min(3, len(rows))
        lines = math.ceil(len(rows) / columns)
        figure, axes = pyplot.subplots(lines, columns, figsize=(5.2 * columns, 3.6 * lines), squeeze=False)
        for axis in axes.flat[len(rows) :]:
            axis.set_visible(False)
        for axis, row in zip(axes.flat, rows, strict=False):
            values = [row["value"], row["reference_value"]]
            bars = axis.bar(
                ["peerkit", _short(row["reference"], 24)], values, color=[PEERKIT_COLOUR, REFERENCE_COLOUR]
            )
            axis.bar_label(bars, labels=[_number(v) for v in values], fontsize=8)
            axis.set_ylabel(row["unit"])
            axis.set_title(f"{_short(row['figure'])}\nratio {row['ratio']:.2f}x", fontsize=8)
            axis.tick_params(axis="x", labelsize=7)
            axis.margins(y=0.15)
        figure.suptitle(f"{family}: peerkit beside its reference", fontsize=11)
        figure.tight_layout(rect=(0, 0, 1, 1 - 0.45 / figure.get_figheight()))  # (room for the title)
        path = directory / f"{family}.png"
        figure.savefig(path, dpi=90)
        pyplot.close(figure)
        written.append(path)
    latency = _latency_rows(results)
    if latency:
        figure, axis = pyplot.subplots(figsize=(max(8, 1.15 * len(latency)), 4.4))
        labels = [_latency_label(r) for r in latency]
        positions = range(len(latency))
        ours = [r["value"] for r in latency]
        theirs = [r["reference_value"] for r in latency]
        axis.bar([p - 0.2 for p in positions], ours, 0.4, label="peerkit", color=PEERKIT_COLOUR)
        axis.bar([p + 0.2 for p in positions], theirs, 0.4, label="reference", color=REFERENCE_COLOUR)
        axis.set_xticks(list(positions), labels, fontsize=7)
        axis.set_yscale("log")  # (figures from under a millisecond to tens of them)
        axis.set_ylabel(f"{latency[0]['unit']}, log scale")
        axis.set_title("latency: p50 and p99 beside the reference", fontsize=11)
        axis.legend()
        figure.tight_layout()
        path = directory / "latency.png"
        figure.savefig(path, dpi=90)
        pyplot.close(figure)
        written.append(path)
    return written
