"""The HTML report of a run and of a study, from real tiny training runs: the diagnosis
in words, figures, notes where data is missing, and no markup from the data."""

from __future__ import annotations

import html
import json
import shutil
from html.parser import HTMLParser

from rnnscope.report.render import render_report, write_report
from support import EVIL, EVIL_MESSAGE, EVIL_PARAM, TRAINED

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
    assert html.escape(summary["explanation"]) in page  # "an Elman RNN's", escaped
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
    assert "skipped: needs losses in metrics.jsonl" in report.html
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


