"""Figures of the gradient flow: the heat map over training from the probes of a run."""

from __future__ import annotations

import numpy as np

from rnnscope.figures import flow
from rnnscope.figures.canvas import plt
from rnnscope.report.data import load_run
from support import metrics_lines


def test_heat_map_shows_log10_of_the_recorded_flow_norms(run_dir):
    probes = [line for line in metrics_lines(run_dir) if "flow" in line]
    assert [line["step"] for line in probes] == [1, 5, 10, 15, 20]
    figure = flow.flow_heatmap_figure(load_run(run_dir).probes)
    ax = figure.axes[0]
    shown = ax.images[0].get_array()
    # rows: training steps; columns: steps back, so column 0 is the last time step
    expected = np.log10([line["flow"]["norms"][0][::-1] for line in probes])
    assert shown.shape == (5, 20) and not np.ma.getmaskarray(shown).any()
    np.testing.assert_allclose(shown.filled(np.nan), expected, rtol=1e-12)
    assert [t.get_text() for t in ax.get_yticklabels()] == ["1", "5", "10", "15", "20"]
    assert ax.get_xlabel() == "steps back from the loss"
    plt.close(figure)


def test_heat_map_colours_underflow_and_nonfinite_apart_from_the_scale():
    probes = [{"step": 1, "flow": {"layers": ["l0", "l1"], "norms": [[1e-3, 0.0, 1.0],
                                                                      [None, 1e-2, 0.1]]}},
              {"step": 2, "flow": {"layers": ["l0", "l1"], "norms": [[1e-2, 1e-1, 1.0],
                                                                      [0.0, 0.0, 1.0]]}}]
    figure = flow.flow_heatmap_figure(probes)
    first, second = figure.axes[0], figure.axes[1]
    logged = first.images[0].get_array()
    np.testing.assert_allclose(logged[1], [0.0, -1.0, -2.0])
    assert np.ma.getmaskarray(logged)[0].tolist() == [False, True, False]
    assert first.images[1].get_array()[0].tolist()[1] == 0  # underflow code
    special = second.images[1].get_array()
    assert special[0, 2] == 1 and special[1, 1] == 0 and special[1, 2] == 0  # NaN, zeros
    assert first.images[0].get_clim() == second.images[0].get_clim() == (-3.0, 0.0)
    labels = [text.get_text() for text in figure.legends[0].get_texts()]
    assert labels == ["0 (underflow): 3", "NaN/inf: 1"]
    plt.close(figure)
