"""``python -m bench.gil_handover`` runs and reports every neighbour and draw (no figure asserted)."""

from __future__ import annotations

from bench.gil_handover import DRAWS, NEIGHBOURS, measure, report


def test_every_neighbour_and_draw_is_timed_and_reported() -> None:
    figures = measure(rounds=1, draws=5)
    assert set(figures) == set(NEIGHBOURS) and all(set(row) == set(DRAWS) for row in figures.values())
    assert all(value > 0 for row in figures.values() for value in row.values())
    table = report(figures).splitlines()
    assert len(table) == 2 + len(NEIGHBOURS) and all(name in table[0] for name in DRAWS)
