"""``python -m benchmarks [NAME ...] [--json FILE] [--quick]``: run benchmarks, print a table."""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from typing import Any

from rich.console import Console
from rich.progress import Progress as Bar
from rich.table import Table

from benchmarks import (
    bench_attacks,
    bench_channel,
    bench_contacts,
    bench_dht,
    bench_discovery,
    bench_fanout,
    bench_files,
    bench_handshake,
    bench_invite,
    bench_nat,
    bench_peers,
    bench_records,
    bench_relay,
    bench_scale,
    bench_stream,
    bench_transport,
    bench_wormhole,
)
from benchmarks.harness import Result, Skipped

# Each benchmark has NAME, STEPS (progress steps of a full run) and run(progress, quick).
BENCHMARKS: dict[str, Any] = {
    b.NAME: b
    for b in (
        bench_handshake,
        bench_transport,
        bench_channel,
        bench_invite.COLD,
        bench_invite.WARM,
        bench_stream,
        bench_relay,
        bench_files,
        bench_nat,
        bench_discovery,
        bench_records,
        bench_scale,
        bench_fanout,
        bench_contacts,
        bench_scale,
        bench_attacks.BENCHMARK,
        bench_dht,
        bench_peers,
        bench_wormhole,
    )
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument(
        "names", nargs="*", metavar="NAME", help=f"benchmarks to run: {', '.join(BENCHMARKS)}"
    )
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE")
    parser.add_argument("--quick", action="store_true", help="short runs (a smoke test, not a measurement)")
    parser.add_argument(
        "--plot", metavar="DIR", help="also draw the results as PNGs in DIR (needs matplotlib)"
    )
    parser.add_argument(
        "--plot-from", metavar="FILE", help="draw the results of an earlier --json FILE, run nothing"
    )
    args = parser.parse_args(argv)
    if args.plot_from:
        if not args.plot:
            parser.error("--plot-from needs --plot DIR")
        with open(args.plot_from) as f:
            _draw(json.load(f)["results"], args.plot)
        return 0
    unknown = [n for n in args.names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}")
    selected = [BENCHMARKS[n] for n in args.names or BENCHMARKS]

    console = Console(width=None if sys.stdout.isatty() else 150)
    results: list[Result] = []
    skipped: list[Skipped] = []
    seconds: dict[str, float] = {}  # each family's wall-clock time, setup included
    with Bar(console=console, transient=True, disable=not console.is_terminal) as bar:
        for module in selected:
            task = bar.add_task(
                module.NAME, total=module.STEPS // (5 if args.quick else 1) * (2 if args.quick else 1)
            )
            start = time.monotonic()
            for row in module.run(lambda task=task: bar.advance(task), quick=args.quick):
                (skipped if isinstance(row, Skipped) else results).append(row)
            seconds[module.NAME] = round(time.monotonic() - start, 1)

    table = Table(
        title="peerkit benchmarks (medians over interleaved rounds; ratio = median of per-round ratios)"
    )
    for column in ("benchmark", "figure", "peerkit", "reference", "reference value", "ratio", "target"):
        table.add_column(
            column, justify="right" if column in ("peerkit", "reference value", "ratio") else "left"
        )
    for r in results:
        mark = "" if r.met is None else (" ok" if r.met else " MISSED")
        table.add_row(
            r.benchmark,
            r.figure,
            f"{r.value:,.1f} {r.unit}",
            r.reference,
            f"{r.reference_value:,.1f} {r.unit}",
            f"{r.ratio:.2f}x",
            (f">= {r.target}x" + mark) if r.target is not None else "",
        )
    for s in skipped:
        table.add_row(s.benchmark, s.figure, "", s.reference, f"skipped: {s.reason}", "", "")
    console.print(table)
    slowest = sorted(seconds.items(), key=lambda item: -item[1])[:5]
    console.print(
        f"{sum(seconds.values()) / 60:.1f} min in all; the longest: "
        + ", ".join(f"{name} {value:.0f} s" for name, value in slowest)
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "python": sys.version,
                    "machine": platform.machine(),
                    "results": [r.as_dict() for r in results],
                    "skipped": [s.as_dict() for s in skipped],
                    "seconds": seconds,
                },
                f,
                indent=2,
            )
    if args.plot:
        _draw([r.as_dict() for r in results], args.plot)
    return 0


def _draw(results: list[dict[str, Any]], directory: str) -> None:
    from pathlib import Path

    from benchmarks.plots import plot

    try:
        written = plot(results, Path(directory))
    except ModuleNotFoundError as exc:
        raise SystemExit(f"--plot needs matplotlib ({exc}): pip install -e '.[plot]'") from None
    print(f"wrote {len(written)} plots into {directory}")


if __name__ == "__main__":
    sys.exit(main())
