"""One row of the scale table that ``make bench`` prints: a figure of ephemera's, the physical
limit it is compared with (measured in the same run), and the aim for their ratio.

Every benchmark module can give its results as rows; ``print_rows`` lays them out as one table,
so the figures of one run read side by side.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Row:
    """``value`` and ``limit`` are in ``unit``.

    ``higher_is_better``: a rate (MiB/s, uploads/s); otherwise a cost (seconds, requests), and
    the ratio reads as "times the limit". ``aim`` is the ratio aimed at: at most (costs) or at
    least (rates). A row with no limit (``limit=None``) is an absolute figure checked against
    ``aim`` in its own unit (e.g. a start-up time under 0.3 s); so is a row with
    ``aim_on_value``, whose limit is shown for scale only (the interpreter's own start-up next
    to the CLI's).
    """

    figure: str
    size: int | None
    value: float
    unit: str
    limit: float | None = None
    limit_name: str = ""
    aim: float | None = None
    higher_is_better: bool = False
    note: str = ""
    aim_on_value: bool = False

    @property
    def ratio(self) -> float | None:
        if self.limit is None or self.limit == 0:
            return None
        return self.value / self.limit

    @property
    def met(self) -> bool | None:
        if self.aim is None:
            return None
        measured = self.value if self.limit is None or self.aim_on_value else self.ratio
        if measured is None:
            return None
        return measured >= self.aim if self.higher_is_better else measured <= self.aim


def _number(value: float, unit: str) -> str:
    if unit in ("s",) and value < 1:
        return f"{value * 1000:.1f} ms"
    if abs(value) >= 100:
        return f"{value:,.0f} {unit}"
    return f"{value:.3g} {unit}"


def format_rows(rows: Sequence[Row]) -> str:
    header = ("figure", "size", "ephemera", "limit", "ratio", "aim", "")
    table = [header]
    for row in rows:
        limit = f"{_number(row.limit, row.unit)} ({row.limit_name})" if row.limit else "-"
        ratio = f"{row.ratio:.2f}x" if row.ratio is not None else "-"
        if row.aim is None:
            aim = "-"
        else:
            sign = ">=" if row.higher_is_better else "<="
            absolute = row.limit is None or row.aim_on_value
            aim = f"{sign} {_number(row.aim, row.unit)}" if absolute else f"{sign} {row.aim:g}x"
        met = {True: "ok", False: "MISSED", None: ""}[row.met]
        size = f"{row.size:,}" if row.size else "-"
        table.append((row.figure, size, _number(row.value, row.unit), limit, ratio, aim, met))
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)) for line in table
    ]
    notes = [f"  {row.figure}: {row.note}" for row in rows if row.note]
    return "\n".join([*lines, *(["notes:", *notes] if notes else [])])


def print_rows(rows: Sequence[Row], title: str = "scale table") -> None:
    print(f"\n== {title} ==")
    print(format_rows(rows))
