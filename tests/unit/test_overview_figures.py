"""The overview's parts that need no browser: its charts' arithmetic, and how often it
computes the (expensive) cleanup stats."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from ephemera import Settings, Store
from ephemera.console.charts import MAX_POINTS, binary_ceiling, line_chart, nice_ceiling, thin
from ephemera.console.overview import STATS_TTL_S, OverviewStats, chosen_span
from ephemera.testing import ManualClock

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def show(value: float) -> str:
    return f"{value:g}"


def series(values: list[float]) -> list[tuple[datetime, float]]:
    return [(T0 + timedelta(minutes=i), v) for i, v in enumerate(values)]


def test_the_scale_tops_out_at_a_round_number_at_or_above_the_highest_value() -> None:
    assert [nice_ceiling(v) for v in (0, 1, 3, 12, 20, 21, 240, 999)] == [
        1,
        1,
        5,
        20,
        20,
        25,
        250,
        1000,
    ]
    # Bytes round in their binary unit: 1.5 MiB tops out at 2 MiB.
    assert binary_ceiling(1.5 * 1024**2) == 2 * 1024**2
    assert binary_ceiling(600) == 1000


def test_thinning_keeps_every_peak_and_the_latest_time() -> None:
    values = [0.0] * 1000
    values[1] = 50.0  # a spike between the points drawn
    thinned = thin(series(values), 100)
    assert len(thinned) == 100
    assert max(v for _, v in thinned) == 50.0
    assert thinned[-1][0] == series(values)[-1][0]
    assert thin(series([1, 2, 3]), 100) == series([1, 2, 3])


def test_a_chart_has_a_point_per_sample_and_says_what_it_shows() -> None:
    chart = line_chart("n", "Things", series([1, 4, 2]), show)
    assert chart is not None
    assert chart.count == len(chart.points.split()) == 3
    assert chart.top_label == "5"
    assert "3 samples from 2026-01-01 00:00:00 UTC to 2026-01-01 00:02:00 UTC" in (
        chart.description
    )
    assert "lowest 1, highest 4, latest 2" in chart.description
    # The latest sample is marked at the right edge; the first point at the left.
    assert chart.last_x == chart.right
    assert chart.points.split()[0].startswith(f"{chart.left:.1f},")
    assert line_chart("n", "Nothing", [], show) is None
    many = line_chart("n", "Many", series([1.0] * (3 * MAX_POINTS)), show)
    assert many is not None
    assert many.count == MAX_POINTS


def test_a_single_sample_is_drawn_at_the_right_edge() -> None:
    chart = line_chart("n", "One", series([7]), show)
    assert chart is not None
    assert chart.points == f"{chart.right:.1f},{chart.last_y}"


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def store(tmp_path: Path, clock: ManualClock) -> Iterator[Store]:
    settings = Settings(data_dir=tmp_path / "data", usage_retention_s=2 * 86400)
    with Store.open(settings, clock=clock) as opened:
        yield opened


def test_the_spans_offered_are_those_the_samples_are_kept_for(store: Store) -> None:
    assert chosen_span(store, None) == ("24h", ["1h", "24h"])
    assert chosen_span(store, "1h") == ("1h", ["1h", "24h"])
    assert chosen_span(store, "30d")[0] == "24h"  # not kept that long: the default


def test_the_stats_are_computed_once_for_a_few_seconds_and_afresh_after_an_audited_action(
    store: Store, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    computed: list[bool] = []
    real = store.cleanup_stats

    def counting(*, include_orphaned: bool = False) -> dict[str, Any]:
        computed.append(include_orphaned)
        return real(include_orphaned=include_orphaned)

    monkeypatch.setattr(store, "cleanup_stats", counting)
    stats = OverviewStats(store)

    first = stats.get()
    assert stats.get() is first
    assert computed == [False]  # the orphans' walk of the blob store is never asked for

    store.cleanup("expired", dry_run=True, actor="someone")  # audited
    assert stats.get() is not first
    assert len(computed) == 2

    clock.advance(STATS_TTL_S + 0.1)
    stats.get()
    assert len(computed) == 3
