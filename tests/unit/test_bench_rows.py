"""The scale table's rows: a ratio against the limit measured in the same run, or an absolute
figure, checked against its aim in the right direction."""

from __future__ import annotations

from bench.rows import Row, format_rows


def test_a_cost_meets_its_aim_as_a_ratio_of_its_limit() -> None:
    assert Row("delete", 200_000, 26.0, "s", limit=20.0, aim=1.3).met is True
    assert Row("delete", 200_000, 27.0, "s", limit=20.0, aim=1.3).met is False


def test_a_rate_meets_its_aim_from_above() -> None:
    row = Row("uploads", None, 400.0, "/s", limit=600.0, aim=0.6, higher_is_better=True)
    assert row.met is True
    assert (
        Row("uploads", None, 300.0, "/s", limit=600.0, aim=0.6, higher_is_better=True).met is False
    )


def test_an_absolute_aim_is_checked_on_the_value_even_with_a_limit_shown_for_scale() -> None:
    # 0.25 s is 5x the interpreter's 0.05 s, but the aim is 0.3 s of wall clock.
    row = Row("help", None, 0.25, "s", limit=0.05, limit_name="python", aim=0.3, aim_on_value=True)
    assert row.met is True
    assert row.ratio == 5.0
    slow = Row("help", None, 0.35, "s", limit=0.05, limit_name="python", aim=0.3, aim_on_value=True)
    assert slow.met is False
    table = format_rows([row, slow])
    assert "<= 300.0 ms" in table
    assert "MISSED" in table.splitlines()[2]


def test_a_row_without_an_aim_is_neither_met_nor_missed() -> None:
    row = Row("population", 2_000, 3000.0, "files/s", limit=4000.0, higher_is_better=True)
    assert row.met is None
    assert "MISSED" not in format_rows([row])
