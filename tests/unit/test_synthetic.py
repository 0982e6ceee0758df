"""The synthetic pretraining corpus: seeded, well-formed, and the same through `corpus_table`."""

from __future__ import annotations

import numpy as np

from streamlstm.synthetic import STEP_SECONDS, corpus, corpus_table


def assert_same_corpus(first: dict, second: dict) -> None:
    assert list(first) == list(second)
    for name in first:
        np.testing.assert_array_equal(first[name].timestamps, second[name].timestamps)
        np.testing.assert_array_equal(first[name].values, second[name].values)


def test_the_same_seed_gives_the_same_corpus() -> None:
    assert_same_corpus(corpus(8, 400, seed=3), corpus(8, 400, seed=3))


def test_another_seed_gives_other_series() -> None:
    first, second = corpus(8, 400, seed=3), corpus(8, 400, seed=4)
    assert list(first) == list(second)  # the names do not depend on the seed ...
    differ = [not np.array_equal(first[name].values, second[name].values) for name in first]
    assert all(differ)  # ... the values do


def test_more_series_extend_the_corpus_without_changing_the_first_ones() -> None:
    small, large = corpus(4, 300, seed=9), corpus(7, 300, seed=9)
    assert_same_corpus(small, {name: large[name] for name in list(large)[:4]})


def test_series_are_well_formed() -> None:
    n_series, length = 12, 500
    history = corpus(n_series, length, seed=1)
    assert list(history) == [f"synthetic-{k:04d}" for k in range(n_series)]
    for name, series in history.items():
        assert series.timestamps.shape == (length,), name
        assert series.values.shape == (length, 1), name
        assert series.timestamps.dtype == np.float64 and series.values.dtype == np.float64
        assert np.isfinite(series.values).all(), name
        np.testing.assert_array_equal(np.diff(series.timestamps), STEP_SECONDS)
    # Ordinary metric series move: most of them are not constant.
    moving = sum(float(np.std(s.values)) > 0 for s in history.values())
    assert moving >= n_series - 1


def test_corpus_table_round_trips_to_the_corpus() -> None:
    n_series, length = 5, 350
    table = corpus_table(n_series, length, seed=2)
    assert table.feature_names == ["value"]
    assert len(table.series) == n_series * length
    assert table.timestamps.shape == (n_series * length,)
    assert table.values.shape == (n_series * length, 1)
    assert_same_corpus(table.history(), corpus(n_series, length, seed=2))
    # Points carry the same rows, in table order.
    points = table.points()
    assert len(points) == n_series * length
    assert points[length].series == "synthetic-0001" and points[length].timestamp == 0.0
