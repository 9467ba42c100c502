"""Shared helpers for the benchmarks: percentiles, markdown tables, report sections.

Not a test module: ``tests/benchmarks`` is excluded from the default pytest run
(``norecursedirs`` in pyproject.toml) and nothing here is named ``test_*``.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent.parent
E2E_DIR = REPO_ROOT / "tests" / "e2e"


def ensure_paths() -> None:
    """Make ``proxy`` (repo root) and the e2e helpers (``clients``, ``servers.*``) importable."""
    for p in (str(REPO_ROOT), str(E2E_DIR)):
        if p not in sys.path:
            sys.path.insert(0, p)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted, non-empty sequence (q in 0..100)."""
    if not sorted_values:
        raise ValueError("no samples")
    rank = max(1, math.ceil(q / 100.0 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def fmt(value: float, digits: int = 2) -> str:
    return f"{value:,.{digits}f}"


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def md_table(headers: Sequence[str], rows: Sequence[Sequence[object]],
             align: Sequence[str] | None = None) -> str:
    """A GitHub-flavoured markdown table, padded so it also reads well on a terminal."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    align = align or ["l"] + ["r"] * (len(headers) - 1)

    def line(row: Sequence[str]) -> str:
        out = []
        for i, c in enumerate(row):
            out.append(c.ljust(widths[i]) if align[i] == "l" else c.rjust(widths[i]))
        return "| " + " | ".join(out) + " |"

    sep = []
    for i, w in enumerate(widths):
        dash = "-" * max(3, w)
        sep.append(dash[:-1] + ":" if align[i] == "r" else dash)
    return "\n".join([line(cells[0]), "| " + " | ".join(sep) + " |",
                      *(line(r) for r in cells[1:])])


@dataclass
class Section:
    """One benchmark's report: markdown blocks (tables, notes), printed and saved as is."""

    title: str
    blocks: list[str] = field(default_factory=list)
    missed: list[str] = field(default_factory=list)   # human-readable missed targets
    data: dict[str, Any] = field(default_factory=dict)  # figures for plots and other sections

    def add(self, text: str) -> None:
        self.blocks.append(text.rstrip())

    def markdown(self) -> str:
        return "\n\n".join([f"## {self.title}", *self.blocks]) + "\n"
