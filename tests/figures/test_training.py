"""Figures of training (and the flow slices) drawn from a real tiny run."""

from __future__ import annotations

import pytest
from matplotlib.figure import Figure

from rnnscope.figures import canvas, flow, training
from rnnscope.report.data import load_run


def test_other_figures_draw_the_run_data(run_dir):
    run = load_run(run_dir)
    slices = flow.flow_slices_figure(run.probes)
    assert [line.get_label() for line in slices.axes[0].get_lines()] == [
        "rnn.l0, step 1", "rnn.l0, step 10", "rnn.l0, step 20"]
    curves = training.curves_figure(run.train, run.evals, baseline=run.summary["baseline"],
                                 threshold=run.summary["threshold"], metric_name="mse")
    metric_axes = curves.axes[1]
    levels = {line.get_label(): line.get_ydata()[0] for line in metric_axes.get_lines()}
    assert levels["chance 0.167"] == pytest.approx(run.summary["baseline"])
    assert levels["solved below 0.01"] == pytest.approx(0.01)
    assert metric_axes.get_lines()[0].get_ydata().tolist() == [e["metric"] for e in run.evals]
    clipping = training.clipping_figure(run.train)
    clipped = sum(line["clipped"] for line in run.train)
    labels = [line.get_label() for line in clipping.axes[0].get_lines()]
    assert f"clipped ({clipped})" in labels and clipped > 0  # norm:0.5 clips this run
    lyapunov = training.lyapunov_figure(run.summary["lyapunov"])
    heights = [bar.get_height() for bar in lyapunov.axes[0].patches]
    assert heights == pytest.approx(run.summary["lyapunov"]) and len(heights) == 8
    for figure in (slices, curves, clipping, lyapunov):
        assert isinstance(figure, Figure)
        assert canvas.figure_png(figure)[:8] == b"\x89PNG\r\n\x1a\n"
