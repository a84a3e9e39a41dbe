"""A study's comparison grid: seeds averaged, the sequence length in the columns, and
one row per variant where the study is a list of variants."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rnnscope.figures.grid import study_grid


def test_grid_averages_seeds_and_puts_the_sequence_length_in_columns():
    points = [({"model.cell": cell, "task.seq_len": T, "run.seed": seed},
               {"metric": metric, "reach": reach})
              for cell, T, seed, metric, reach in [
                  ("lstm", 100, 0, 0.1, 90), ("lstm", 100, 1, 0.3, 70),
                  ("rnn_tanh", 9, 0, 0.5, 5), ("rnn_tanh", 100, 0, math.nan, 10)]]
    grid = study_grid(points, ("metric", "reach"))
    assert grid.column_key == "task.seq_len" and grid.columns == ["9", "100"]
    assert grid.rows == ["model.cell=lstm", "model.cell=rnn_tanh"]
    np.testing.assert_allclose(grid.means["metric"], [[np.nan, 0.2], [0.5, np.nan]])
    np.testing.assert_allclose(grid.means["reach"], [[np.nan, 80], [5, 10]])
    assert grid.counts.tolist() == [[0, 2], [1, 1]]


def test_a_study_of_variants_gets_one_row_per_configuration_not_a_sparse_table():
    # Three named variants that each change a different setting, two seeds each.
    variants = [("tanh", {"model.cell": "rnn_tanh", "init": "torch_default"}),
                ("irnn", {"model.cell": "rnn_relu", "init": "identity:1.0"}),
                ("lstm", {"model.cell": "lstm", "init": "chrono:50"})]
    points, labels = [], []
    for index, (name, params) in enumerate(variants):
        for seed in (0, 1):
            points.append(({**params, "run.seed": seed},
                           {"metric": 0.1 * (index + 1) + seed, "reach": 10 * index + seed}))
            labels.append(name)
    grid = study_grid(points, ("metric", "reach"), labels)
    assert grid.rows == ["tanh", "irnn", "lstm"] and grid.columns == [""]
    assert grid.means["metric"][:, 0] == pytest.approx([0.6, 0.7, 0.8])  # seeds averaged
    assert grid.means["reach"][:, 0] == pytest.approx([0.5, 10.5, 20.5])
    assert grid.counts[:, 0].tolist() == [2, 2, 2]
    # A full grid (cell x seq_len) stays a table over its parameters.
    full = [({"model.cell": cell, "task.seq_len": length}, {"metric": 1.0, "reach": 1})
            for cell in ("rnn_tanh", "lstm") for length in (50, 100)]
    table = study_grid(full, ("metric", "reach"), [f"c{i}" for i in range(4)])
    assert table.column_key == "task.seq_len" and table.columns == ["50", "100"]
    assert table.rows == ["model.cell=lstm", "model.cell=rnn_tanh"]
