"""Plots, the HTML report and `rnnscope report`, from real tiny training runs."""

from __future__ import annotations

import html
import json
import math
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure

import rnnscope
from rnnscope.cli.main import main
from rnnscope.experiment import ExperimentConfig
from rnnscope.report import plots
from rnnscope.report.data import load_run
from rnnscope.report.grid import study_grid
from rnnscope.report.html import render_report, write_report
from rnnscope.runlog import RunDirectory, StudyStore, read_records

EVIL = "x<script>alert(1)<"  # run.name may not hold "/", so the tag stays open
EVIL_PARAM = "<script>alert(2)</script>"
EVIL_MESSAGE = "<img src=x onerror=alert(3)>"
# (name, cell, seq_len): the lengths sort differently as text ("12" < "20" < "9")
TRAINED = [(EVIL, "rnn_tanh", 20), ("lstm-T9", "lstm", 9), ("tanh-T12", "rnn_tanh", 12)]


def tiny_config(out: Path, name: str, cell: str, seq_len: int) -> ExperimentConfig:
    return ExperimentConfig.from_dict({
        "task": {"name": "adding", "seq_len": seq_len},
        "model": {"cell": cell, "hidden": 8},
        "clip": "norm:0.5",
        "run": {"steps": 20, "batch": 16, "eval_every": 10, "eval_batches": 1,
                "checkpoint_every": 0, "quiet": True, "name": name, "out": str(out)},
        "probe": {"every": 5, "histograms": False}})


def make_study(directory: Path) -> Path:
    """A study directory made by hand: three trained runs (done), one pending run whose
    grid value is a script tag, one run that ended in an error."""
    runs = []
    for name, cell, seq_len in TRAINED:
        config = tiny_config(directory / "runs" / name, name, cell, seq_len)
        runs.append((name, {"model.cell": cell, "task.seq_len": seq_len}, config))
    pending = ("pending-run", {"model.cell": EVIL_PARAM, "task.seq_len": 100}, runs[0][2])
    broken = ("broken-run", {"model.cell": "gru", "task.seq_len": 5}, runs[0][2])
    store = StudyStore(directory / "study.db")
    try:
        store.add([(name, params, config.to_dict()) for name, params, config in
                   [*runs, pending, broken]])
        for name, _, config in runs:
            rnnscope.train(config)
            summary = json.loads((config.run_dir / "summary.json").read_text())
            assert store.claim(name, "test") and store.finish(name, "test", "done", summary)
        assert store.claim("broken-run", "test")
        store.finish("broken-run", "test", "error", {"message": EVIL_MESSAGE})
    finally:
        store.close()
    (directory / "study.yaml").write_text("name: tiny\ngrid: {cell: [rnn_tanh, lstm]}\n")
    return directory


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    return make_study(tmp_path_factory.mktemp("study"))


@pytest.fixture(scope="module")
def run_dir(study) -> Path:
    return study / "runs" / EVIL


def metrics_lines(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


# figures


def test_heat_map_shows_log10_of_the_recorded_flow_norms(run_dir):
    probes = [line for line in metrics_lines(run_dir) if "flow" in line]
    assert [line["step"] for line in probes] == [1, 5, 10, 15, 20]
    figure = plots.flow_heatmap_figure(load_run(run_dir).probes)
    ax = figure.axes[0]
    shown = ax.images[0].get_array()
    # rows: training steps; columns: steps back, so column 0 is the last time step
    expected = np.log10([line["flow"]["norms"][0][::-1] for line in probes])
    assert shown.shape == (5, 20) and not np.ma.getmaskarray(shown).any()
    np.testing.assert_allclose(shown.filled(np.nan), expected, rtol=1e-12)
    assert [t.get_text() for t in ax.get_yticklabels()] == ["1", "5", "10", "15", "20"]
    assert ax.get_xlabel() == "steps back from the loss"
    plots.plt.close(figure)


def test_heat_map_colours_underflow_and_nonfinite_apart_from_the_scale():
    probes = [{"step": 1, "flow": {"layers": ["l0", "l1"], "norms": [[1e-3, 0.0, 1.0],
                                                                      [None, 1e-2, 0.1]]}},
              {"step": 2, "flow": {"layers": ["l0", "l1"], "norms": [[1e-2, 1e-1, 1.0],
                                                                      [0.0, 0.0, 1.0]]}}]
    figure = plots.flow_heatmap_figure(probes)
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
    plots.plt.close(figure)


def test_other_figures_draw_the_run_data(run_dir):
    run = load_run(run_dir)
    slices = plots.flow_slices_figure(run.probes)
    assert [line.get_label() for line in slices.axes[0].get_lines()] == [
        "rnn.l0, step 1", "rnn.l0, step 10", "rnn.l0, step 20"]
    curves = plots.curves_figure(run.train, run.evals, baseline=run.summary["baseline"],
                                 threshold=run.summary["threshold"], metric_name="mse")
    metric_axes = curves.axes[1]
    levels = {line.get_label(): line.get_ydata()[0] for line in metric_axes.get_lines()}
    assert levels["chance 0.167"] == pytest.approx(run.summary["baseline"])
    assert levels["solved below 0.01"] == pytest.approx(0.01)
    assert metric_axes.get_lines()[0].get_ydata().tolist() == [e["metric"] for e in run.evals]
    clipping = plots.clipping_figure(run.train)
    clipped = sum(line["clipped"] for line in run.train)
    labels = [line.get_label() for line in clipping.axes[0].get_lines()]
    assert f"clipped ({clipped})" in labels and clipped > 0  # norm:0.5 clips this run
    lyapunov = plots.lyapunov_figure(run.summary["lyapunov"])
    heights = [bar.get_height() for bar in lyapunov.axes[0].patches]
    assert heights == pytest.approx(run.summary["lyapunov"]) and len(heights) == 8
    for figure in (slices, curves, clipping, lyapunov):
        assert isinstance(figure, Figure)
        assert plots.figure_png(figure)[:8] == b"\x89PNG\r\n\x1a\n"


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


# the HTML report


class Tables(HTMLParser):
    """The text of every table cell, by table class."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self._rows = self._cell = None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self._rows = self.tables.setdefault(dict(attrs).get("class", ""), [])
        elif tag == "tr" and self._rows is not None:
            self._rows.append([])
        elif tag in ("td", "th") and self._rows is not None:
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._rows[-1].append("".join(self._cell))
            self._cell = None
        elif tag == "table":
            self._rows = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


class Elements(HTMLParser):
    """Every start tag and its attributes, as a browser would parse them."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def assert_safe(page: str) -> None:
    """No tag or attribute from the data: one script (the report's), no event handlers,
    every src/href an embedded PNG or an anchor of the page, nothing on the network."""
    elements = Elements()
    elements.feed(page)
    assert [tag for tag, _ in elements.tags].count("script") == 1
    for tag, attrs in elements.tags:
        assert not [name for name in attrs if name.startswith("on")], (tag, attrs)
        for name in ("src", "href"):
            if name in attrs:
                assert attrs[name].startswith(("data:image/png;base64,", "#run-")), attrs
    assert "http://" not in page and "https://" not in page


def test_run_report_has_the_diagnosis_in_words_figures_and_config(run_dir, tmp_path):
    path = write_report(run_dir, tmp_path / "run.html")
    page = path.read_text()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert page.count("<img ") == 5 and 'data-figures="5"' in page
    assert f"<title>rnnscope run: {html.escape(EVIL)}</title>" in page
    assert f"verdict-{summary['diagnosis']['verdict']}" in page
    assert summary["explanation"] in page
    for fix in summary["fix_details"]:
        assert f"<code>{fix['cli']}</code>" in page and fix["remedy"] in page
    assert f"name: {html.escape(EVIL)}" in page  # the config, shown as YAML
    assert "skipped: needs" not in page
    assert_safe(page)


def test_run_with_missing_files_still_renders_with_notes(run_dir, tmp_path):
    damaged = tmp_path / "killed"
    shutil.copytree(run_dir, damaged)
    (damaged / "metrics.jsonl").unlink()
    report = render_report(damaged)
    assert report.figures == 1  # the Lyapunov spectrum, from summary.json
    assert 'Gradient flow over training: log10 ||dL/dh_t|| by steps back (x) and training ' \
           'step (y) skipped: needs gradient-flow lines' in report.html
    assert "skipped: needs metrics.jsonl" in report.html
    (damaged / "summary.json").unlink()
    bare = render_report(damaged)
    assert bare.figures == 0 and "The result skipped: needs summary.json" in bare.html
    assert "The diagnosis skipped" in bare.html and "task:" in bare.html


def test_study_report_compares_every_run(study):
    report = render_report(study)
    assert (report.kind, report.runs) == ("study", 5)
    tables = Tables()
    tables.feed(report.html)
    header, *rows = tables.tables["comparison sortable"]
    assert header == ["run", "model.cell", "task.seq_len", "status", "steps", "metric",
                      "baseline", "solved", "verdict", "reach", "rate", "seconds"]
    assert [row[0] for row in rows] == [EVIL, "lstm-T9", "tanh-T12", "pending-run",
                                        "broken-run"]
    for row, (name, cell, seq_len) in zip(rows, TRAINED, strict=False):
        summary = json.loads((study / "runs" / name / "summary.json").read_text())
        assert row[1:3] == [cell, str(seq_len)]
        assert row[3:10] == [summary["status"], "20", f"{summary['metric']['value']:.4g}",
                             f"{summary['baseline']:.4g}", "no",
                             summary["diagnosis"]["verdict"], str(summary["diagnosis"]["reach"])]
    assert rows[3][1:5] == [EVIL_PARAM, "100", "pending", "-"]
    assert rows[4][3] == "error" and html.escape(EVIL_MESSAGE) in report.html
    # one grid figure, a heat map and curves per trained run
    assert report.figures == 1 + 2 * len(TRAINED) == report.html.count("<img ")
    assert 'id="run-0"' in report.html and 'href="#run-4"' in report.html
    assert "runs/pending-run (none: the run is pending)" in report.html
    assert_safe(report.html)


# the command


def test_cli_json_and_summary(study, run_dir, tmp_path, capsys):
    out = tmp_path / "sub" / "study.html"
    assert main(["report", str(study), "--out", str(out), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == {"report": str(out), "kind": "study", "runs": 5, "figures": 7}
    assert out.read_text().count("<img ") == 7
    assert main(["report", str(run_dir)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == f"open {run_dir / 'report.html'} in a browser"
    assert (run_dir / "report.html").is_file()
    (run_dir / "report.html").unlink()


@pytest.mark.parametrize(("target", "out", "message"), [
    ("missing", None, "directory: {dir} does not exist; expected a run directory"),
    ("empty", None, "directory: {dir} holds neither config.yaml (a run directory) nor "
                    "study.db"),
    ("file", None, "directory: {dir} is not a directory"),
    ("run", "a-file/report.html", "out: cannot write"),
    ("run", ".", "out: {out} is a directory"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(run_dir, tmp_path, capsys, target,
                                                         out, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "file").write_text("x")
    (tmp_path / "a-file").write_text("x")
    directory = run_dir if target == "run" else tmp_path / target
    out_path = tmp_path / out if out else None
    before = sorted(p.name for p in run_dir.iterdir())
    code = main(["report", str(directory), *(["--out", str(out_path)] if out else [])])
    error = capsys.readouterr().err
    assert code == 2
    assert error.count("\n") == 1 and "Traceback" not in error
    assert message.format(dir=directory, out=out_path) in error, error
    assert sorted(p.name for p in run_dir.iterdir()) == before
    assert not list(tmp_path.rglob("*.html")) and not list(tmp_path.rglob("*.tmp"))


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


def test_a_metrics_file_cut_short_by_a_kill_is_read_up_to_the_cut(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"kind": "train", "step": 1}\n\n{"kind": "train", "step": 2}\n'
                    '{"kind": "train", "st', encoding="utf-8")
    assert read_records(path) == [{"kind": "train", "step": 1}, {"kind": "train", "step": 2}]
    assert read_records(tmp_path / "absent.jsonl") is None
    run = RunDirectory(tmp_path)
    assert [record["step"] for record in run.read_metrics()] == [1, 2]
