"""Line charts drawn on the server, as inline SVG: no chart library, no script, nothing a
strict CSP would block (the template writes only attributes and text, styled by classes).

A chart is the numbers a template needs (the polyline's points, the axes' labels) and a text
alternative saying what it shows, for readers who cannot see it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from ephemera.console.templating import when

# The drawing's own coordinates; CSS scales it to the width it gets.
WIDTH = 400
HEIGHT = 160
LEFT = 62  # room for the value labels
RIGHT = 10
TOP = 10
BOTTOM = 22  # room for the time labels
# More points than pixels draw nothing more: beyond this many samples, each point stands
# for a run of consecutive ones (their latest time, their highest value, so no peak is lost).
MAX_POINTS = 400


@dataclass(frozen=True)
class Chart:
    key: str  # unique on the page: the ids of its title and description
    title: str
    count: int  # samples charted
    points: str  # the polyline's, "x,y x,y ..."
    last_x: float  # where the latest sample is marked
    last_y: float
    top_label: str  # the value at the top of the drawing (the bottom is zero)
    start_label: str
    end_label: str
    description: str

    width: int = WIDTH
    height: int = HEIGHT
    left: int = LEFT
    right: int = WIDTH - RIGHT
    top: int = TOP
    bottom: int = HEIGHT - BOTTOM


def nice_ceiling(value: float) -> float:
    """The smallest of 1, 2, 2.5, 5 times a power of ten at or above ``value`` (1 for 0)."""
    if value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if step * power >= value:
            return float(step * power)
    raise AssertionError("unreachable")


def binary_ceiling(value: float) -> float:
    """:func:`nice_ceiling` in the binary unit of ``value`` (bytes: 2 MiB, not 2.1 MB)."""
    unit = 1.0
    while value >= unit * 1024:
        unit *= 1024
    return nice_ceiling(value / unit) * unit


def thin(series: Sequence[tuple[datetime, float]], limit: int) -> list[tuple[datetime, float]]:
    """At most ``limit`` points: runs of consecutive samples, each by its latest time and
    highest value."""
    if len(series) <= limit:
        return list(series)
    run = math.ceil(len(series) / limit)
    return [
        (series[min(i + run, len(series)) - 1][0], max(v for _, v in series[i : i + run]))
        for i in range(0, len(series), run)
    ]


def line_chart(
    key: str,
    title: str,
    series: Sequence[tuple[datetime, float]],
    show: Callable[[float], str],
    *,
    binary: bool = False,
) -> Chart | None:
    """The chart of ``series`` (oldest first); None without samples. ``show`` writes a value
    for people (a size, a count); ``binary`` rounds the scale in powers of 1024."""
    if not series:
        return None
    points = thin(series, MAX_POINTS)
    first, last = points[0][0], points[-1][0]
    span = (last - first).total_seconds()
    top = (binary_ceiling if binary else nice_ceiling)(max(v for _, v in points))
    inner_w = WIDTH - LEFT - RIGHT
    inner_h = HEIGHT - TOP - BOTTOM

    def x(at: datetime) -> float:
        # A single sample sits at the right edge: it is the latest.
        offset = (at - first).total_seconds() / span if span > 0 else 1.0
        return round(LEFT + offset * inner_w, 1)

    def y(value: float) -> float:
        return round(TOP + inner_h - value / top * inner_h, 1)

    values = [v for _, v in series]
    description = (
        f"{len(series)} samples from {when(series[0][0])} to {when(series[-1][0])}: "
        f"lowest {show(min(values))}, highest {show(max(values))}, "
        f"latest {show(values[-1])}."
    )
    return Chart(
        key=key,
        title=title,
        count=len(points),
        points=" ".join(f"{x(at)},{y(v)}" for at, v in points),
        last_x=x(last),
        last_y=y(points[-1][1]),
        top_label=show(top),
        start_label=_axis_time(first),
        end_label=_axis_time(last),
        description=description,
    )


def _axis_time(at: datetime) -> str:
    # Short enough for a phone's width; the description gives the seconds.
    return at.astimezone(UTC).strftime("%b %d %H:%M UTC")
