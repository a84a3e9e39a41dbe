"""The sections of a study in the report: counts, the sortable comparison table, the
grid figure and one section per run (its diagnosis, heat map and curves)."""

from __future__ import annotations

from collections import Counter

from rnnscope.figures.grid import study_grid, study_grid_figure
from rnnscope.report.data import StudyData, summary_value
from rnnscope.report.page import Page, esc, fmt, is_number, table
from rnnscope.report.run_page import run_page

RESULT_COLUMNS = ("status", "steps", "metric", "baseline", "solved", "verdict", "reach",
                  "rate", "seconds")
NUMERIC_RESULTS = {"steps", "metric", "baseline", "reach", "rate", "seconds"}


def study_page(study: StudyData, page: Page) -> None:
    rows = study.rows
    counts = Counter(row.status for row in rows)
    done = [row for row in rows if row.status == "done" and row.result]
    solved = sum(bool(row.result.get("solved")) for row in done)
    states = ", ".join(f"{counts[state]} {state}" for state in
                       ("done", "error", "running", "pending") if counts[state])
    page.add(f'<p class="status">{len(rows)} runs: {esc(states or "none yet")}; '
             f"{solved} of {len(done)} finished runs solved their task.</p>")
    page.add(f"<p>Study directory: <code>{esc(study.path)}</code></p>")
    if study.spec_text is not None:
        page.add(f"<details><summary>study.yaml</summary><pre>{esc(study.spec_text)}</pre>"
                 "</details>")
    page.heading(2, "Comparison")
    if rows:
        metric_names = {summary_value(row.result, "metric", "name") for row in done} - {None}
        page.add(f"<p>One row per run; click a column header to sort. metric: "
                 f"{esc(', '.join(sorted(metric_names)) or 'the task metric')} on held-out "
                 f"data (lower is better), baseline: chance level, reach: steps back the "
                 f"gradient gets before it falls below 1e-3 of its peak.</p>")
        page.add(f'<div class="wide">{comparison_table(study)}</div>')
    else:
        page.skip("The comparison table", "runs in study.db (none stored yet)")
    page.heading(2, "Grid")
    grid_figure(study, page)
    page.heading(2, "Runs")
    for index, row in enumerate(rows):
        run_section(study, row, index, page)


def comparison_table(study: StudyData) -> str:
    params = list(dict.fromkeys(key for row in study.rows for key in row.params))
    numeric = {i + 1 for i, key in enumerate(params)
               if all(is_number(row.params[key]) for row in study.rows if key in row.params)}
    numeric |= {1 + len(params) + i for i, column in enumerate(RESULT_COLUMNS)
                if column in NUMERIC_RESULTS}
    cells = []
    for index, row in enumerate(study.rows):
        values = result_values(row)
        link = (f'<a href="#run-{index}">{esc(row.name)}</a>', row.name)
        cells.append([link, *(row.params.get(key) for key in params),
                      *(values[column] for column in RESULT_COLUMNS)])
    return table(["run", *params, *RESULT_COLUMNS], cells, sortable=True, numeric=numeric,
                 cls="comparison")


def result_values(row) -> dict:
    """The comparison-table values of one store row: the run's own status once done."""
    result = row.result or {}
    done = row.status == "done"
    return {
        "status": result.get("status", row.status) if done else row.status,
        "steps": result.get("steps") if done else None,
        "metric": summary_value(result, "metric", "value") if done else None,
        "baseline": result.get("baseline") if done else None,
        "solved": result.get("solved") if done else None,
        "verdict": summary_value(result, "diagnosis", "verdict") if done else None,
        "reach": summary_value(result, "diagnosis", "reach") if done else None,
        "rate": summary_value(result, "diagnosis", "rate") if done else None,
        "seconds": result.get("seconds", row.seconds) if done else row.seconds,
    }


def grid_figure(study: StudyData, page: Page) -> None:
    done = [row for row in study.rows if row.status == "done" and row.result]
    points = [(row.params, {"metric": summary_value(row.result, "metric", "value"),
                            "reach": summary_value(row.result, "diagnosis", "reach")})
              for row in done]
    labels = [_without_seed(row.name) for row in done]
    names = {summary_value(row.result, "metric", "name") for row in study.rows
             if row.status == "done"} - {None}
    metric = ", ".join(sorted(names)) or "metric"
    titles = {"metric": f"held-out {metric} (lower is better)",
              "reach": "reach: steps back to 1e-3 of the peak gradient"}
    page.figure("Final metric and reach per configuration (seeds averaged)",
                "finished runs in study.db", bool(points),
                lambda: study_grid_figure(study_grid(points, tuple(titles), labels), titles))


def _without_seed(name: str) -> str:
    """A run's configuration: its name without the seed it was run with."""
    return ",".join(part for part in name.split(",") if not part.startswith("seed=")) \
        or name


def run_section(study: StudyData, row, index: int, page: Page) -> None:
    anchor = f"run-{index}"
    settings = ", ".join(f"{key}={fmt(value)}" for key, value in row.params.items())
    run = study.runs.get(row.name)
    if run is None:
        page.heading(3, row.name, anchor)
        page.add(f"<p>{esc(settings)}</p>")
        _store_status(row, page)
        page.skip("This run's sections", f"its run directory runs/{row.name} (none: the "
                  f"run is {row.status})")
        return
    run_page(run, page, level=3, anchor=anchor, figures=("heatmap", "curves"),
             config_open=False, lead=f"Grid settings: {settings or 'none'}; attempts "
                                     f"{row.attempts}.")
    if row.status != "done":
        _store_status(row, page)


def _store_status(row, page: Page) -> None:
    message = (row.result or {}).get("message")
    error = f': <span class="error">{esc(message)}</span>' if message else ""
    page.add(f"<p>Status in study.db: <b>{esc(row.status)}</b>{error}</p>")
