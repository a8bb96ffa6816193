"""The common result format of the benchmarks, which ``bench/run.py`` gathers into the docs.

A benchmark's ``main`` returns a list of :class:`Row`; each row is one figure
measured over interleaved rounds: its name, min / median / max of what was
measured, the unit, and what it is compared with (the baseline, measured in the
same run, or a bound). A row that is a ratio has ``unit="x"``. ``run.py``
prints every row again at the end, and as the reStructuredText table that
``docs/benchmarks.rst`` holds.

Interleave rounds (ours, baseline, ours, baseline, ...) and take the ratio
per round, then min / median / max of the ratios: a noisy, shared machine
shifts both sides of one round alike.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Row", "print_rows", "rst_table"]


@dataclass(frozen=True)
class Row:
    """One figure over rounds.

    Attributes:
        name: What was measured.
        low: The smallest value over the rounds.
        median: The median.
        high: The largest.
        unit: ``x`` for a ratio, else the unit (``s``, ``tx/s``, ``B``).
        baseline: What the value is compared with (``one EVALSHA``, ``floor at
            batch 1000``, ``bound 1.5 s``).
        rounds: How many rounds.
        ratio: min / median / max of the value divided by the baseline, for
            a row whose value is not itself a ratio (``None``: not given).
    """

    name: str
    low: float
    median: float
    high: float
    unit: str
    baseline: str = ""
    rounds: int = 1
    ratio: tuple[float, float, float] | None = None

    @classmethod
    def of(
        cls,
        name: str,
        values: Sequence[float],
        *,
        unit: str,
        baseline: str = "",
        ratio: Sequence[float] | None = None,
    ) -> Row:
        """A row from the values of each round (and, if given, each round's ratio)."""
        spread = None if not ratio else (min(ratio), statistics.median(ratio), max(ratio))
        return cls(
            name,
            min(values),
            statistics.median(values),
            max(values),
            unit,
            baseline,
            len(values),
            spread,
        )

    def figure(self) -> str:
        """``min / median / max unit``."""
        return f"{_num(self.low)} / {_num(self.median)} / {_num(self.high)} {self.unit}".strip()

    def ratio_text(self) -> str:
        """The ratio's min / median / max, or ``-``."""
        if self.ratio is None:
            return self.figure() if self.unit == "x" else "-"
        return " / ".join(f"{r:.2f}" for r in self.ratio) + " x"


def _num(value: float) -> str:
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def print_rows(rows: Sequence[Row], title: str | None = None) -> None:
    """Print rows as an aligned text table."""
    if title:
        print(title)
    header = ("benchmark", "min / median / max", "vs", "ratio", "rounds")
    cells = [
        (r.name, r.figure(), r.baseline, r.ratio_text() if r.unit != "x" else "", str(r.rounds))
        for r in rows
    ]
    widths = [max(len(c[i]) for c in [header, *cells]) for i in range(len(header))]
    for cell in [header, *cells]:
        print("  ".join(c.ljust(w) for c, w in zip(cell, widths, strict=True)).rstrip())


def rst_table(rows: Sequence[Row], title: str) -> str:
    """Rows as a reStructuredText ``list-table`` for ``docs/benchmarks.rst``."""
    lines = [
        f".. list-table:: {title}",
        "   :header-rows: 1",
        "",
        "   * - benchmark",
        "     - min / median / max",
        "     - compared with",
        "     - ratio",
    ]
    for r in rows:
        lines += [
            f"   * - {r.name}",
            f"     - {r.figure()}",
            f"     - {r.baseline or '-'}",
            f"     - {r.ratio_text() if r.unit != 'x' else '-'}",
        ]
    return "\n".join(lines)
