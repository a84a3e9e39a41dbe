"""The sections of one run in the report: status, diagnosis in words, figures, config.

Each section names the file it reads and, when that file (or the part of it) is
missing, shows a note instead of failing: a run killed early still gets a report.
"""

from __future__ import annotations

from rnnscope.figures import flow, training
from rnnscope.report.data import RunData, summary_value
from rnnscope.report.page import Page, esc, fmt, table

ALL_FIGURES = ("heatmap", "slices", "curves", "clipping", "lyapunov")
FLOW_NEEDS = "gradient-flow lines (train lines with \"flow\") in metrics.jsonl"


def run_page(run: RunData, page: Page, *, level: int = 2, anchor: str | None = None,
             figures: tuple[str, ...] = ALL_FIGURES, config_open: bool = True,
             lead: str = "") -> None:
    """Append the sections of `run` to `page`; `level` is the heading level of the run's
    own heading (1: the run is the whole page, so it gets none); `lead`: a line of text
    shown first."""
    if level > 1:
        page.heading(level, run.name, anchor)
    if lead:
        page.add(f"<p>{esc(lead)}</p>")
    sub = level + 1
    for note in run.notes:  # damage first: it explains any section that follows
        page.add(f'<p class="skip">{esc(note)}</p>')
    status_section(run, page)
    page.heading(sub, "Diagnosis")
    diagnosis_section(run, page)
    page.heading(sub, "Figures")
    figure_sections(run, page, figures)
    page.heading(sub, "Config")
    if run.config_text is None:
        page.skip("The config", "config.yaml")
    else:
        page.add(f"<details{' open' if config_open else ''}><summary>config.yaml</summary>"
                 f"<pre>{esc(run.config_text)}</pre></details>")


def status_section(run: RunData, page: Page) -> None:
    summary = run.summary
    page.add(f'<p>Run directory: <code>{esc(run.path)}</code></p>')
    if summary is None:
        steps = run.train[-1].get("step") if run.train else None
        if any(note.startswith("summary.json ") for note in run.notes):
            page.skip("The result", f"a readable summary.json (see the note above; "
                      f"{fmt(steps)} training steps logged)")
        else:
            page.skip("The result", "summary.json (written when a run ends; this one was "
                      f"killed or is still running, {fmt(steps)} training steps logged)")
        return
    if summary.get("source") == "watch":
        _watched_status(summary, page)
        return
    metric = summary_value(summary, "metric", "name", default="metric")
    held_out = (f"{metric} {fmt(summary_value(summary, 'metric', 'value'))} on held-out data "
                f"(chance {fmt(summary.get('baseline'))}")
    if summary.get("threshold") is not None:
        held_out += f", solved below {fmt(summary['threshold'])}"
    held_out += ")"
    if summary.get("solved") is not None:
        held_out += ": solved" if summary["solved"] else ": not solved"
    words = [f"after {fmt(summary.get('steps'))} steps in {fmt(summary.get('seconds'), 3)} s",
             *([f"task {summary['task']}"] if summary.get("task") else []), held_out,
             f"last training loss {fmt(summary.get('final_loss'))}"]
    page.add(f'<p class="status"><b>{esc(summary.get("status", "unknown"))}</b> '
             f'{esc("; ".join(words))}.</p>')
    clip_rate = summary.get("clip_rate")
    page.add(f"<p>Clipped {esc(fmt(None if clip_rate is None else 100 * clip_rate, 3))}% of "
             f"steps; the NaN guard rolled back {esc(fmt(summary.get('rollbacks')))} and "
             f"skipped {esc(fmt(summary.get('skipped')))} steps.</p>")
    if summary.get("message"):
        page.add(f'<p class="error">{esc(summary["message"])}</p>')


def _watched_status(summary: dict, page: Page) -> None:
    """The status of a run rnnscope watched (`rnnscope.watch`): the user's loop, so no
    held-out metric, clipping or guard of rnnscope's to report."""
    words = [f"{fmt(summary.get('steps'))} training steps watched in "
             f"{fmt(summary.get('seconds'), 3)} s",
             f"{fmt(summary.get('probes'))} recordings of the gradient flow",
             f"last logged loss {fmt(summary.get('final_loss'))}"]
    page.add(f'<p class="status"><b>{esc(summary.get("status", "unknown"))}</b> '
             f'{esc("; ".join(words))}.</p>')
    if summary.get("message"):
        page.add(f'<p class="error">{esc(summary["message"])}</p>')


def diagnosis_section(run: RunData, page: Page) -> None:
    diagnosis = summary_value(run.summary, "diagnosis")
    if not isinstance(diagnosis, dict):
        page.skip("The diagnosis", "\"diagnosis\" in summary.json")
        return
    verdict = str(diagnosis.get("verdict", "unknown"))
    steps = summary_value(run.summary, "evidence", "steps")
    page.add(f'<p>Verdict: <span class="verdict verdict-{esc(verdict)}">{esc(verdict)}</span>'
             f" &middot; reach {esc(fmt(diagnosis.get('reach')))}"
             f"{'/' + esc(fmt(steps)) if steps is not None else ''} steps back &middot; "
             f"x{esc(fmt(diagnosis.get('rate'), 3))} per step</p>")
    explanation = run.summary.get("explanation")
    if explanation:
        page.add(f"<p>In words: {esc(explanation)}.</p>")
    fixes = run.summary.get("fix_details") or [
        {"remedy": "", "why": "", "cli": cli} for cli in diagnosis.get("fixes") or []]
    if fixes:
        items = "".join(_fix_item(fix) for fix in fixes if isinstance(fix, dict))
        page.add("<p>Fixes, most promising first: the flags for <code>rnnscope train</code>, "
                 "and the code for your own model and loop:</p>"
                 f'<ol class="fixes">{items}</ol>')
    evidence = run.summary.get("evidence")
    if isinstance(evidence, dict) and evidence:
        page.add("<details><summary>Evidence</summary>"
                 + table(["quantity", "value"], [[key, value] for key, value in
                                                  evidence.items()], cls="evidence")
                 + "</details>")
    else:
        page.skip("The evidence table", "\"evidence\" in summary.json")


def _fix_item(fix: dict) -> str:
    remedy, why, code = fix.get("remedy"), fix.get("why"), fix.get("code")
    return (f"<li>{'<b>' + esc(remedy) + '</b>: ' if remedy else ''}"
            f"<code>{esc(fix.get('cli', ''))}</code>"
            f"{'<br><small>' + esc(why) + '</small>' if why else ''}"
            f"{'<pre>' + esc(code) + '</pre>' if isinstance(code, str) and code else ''}</li>")


def _lines_with(lines: list[dict], key: str) -> bool:
    return any(isinstance(line.get(key), (int, float)) for line in lines)


def figure_sections(run: RunData, page: Page, figures: tuple[str, ...]) -> None:
    probes, train, evals, summary = run.probes, run.train or [], run.evals or [], run.summary
    metric = summary_value(summary, "metric", "name") or next(
        (line.get("metric_name") for line in evals if line.get("metric_name")), "metric")
    lyapunov = summary_value(summary, "lyapunov", default=[])
    drawings = {
        "heatmap": ("Gradient flow over training: log10 ||dL/dh_t|| by steps back (x) and "
                    "training step (y)", FLOW_NEEDS, bool(probes),
                    lambda: flow.flow_heatmap_figure(probes)),
        "slices": ("Gradient norm against steps back at the first, middle and last probe",
                   FLOW_NEEDS, bool(probes), lambda: flow.flow_slices_figure(probes)),
        "curves": ("Loss and held-out metric against chance and the solved threshold",
                   "losses in metrics.jsonl", _lines_with(train, "loss") or bool(evals),
                   lambda: training.curves_figure(
                       train, evals, baseline=summary_value(summary, "baseline"),
                       threshold=summary_value(summary, "threshold"), metric_name=metric)),
        "clipping": ("Gradient norm before and after clipping, clipped steps and clip rate",
                     "gradient norms (\"grad_norm\") in metrics.jsonl",
                     _lines_with(train, "grad_norm"),
                     lambda: training.clipping_figure(train)),
        "lyapunov": ("Lyapunov spectrum of the trained model", "\"lyapunov\" in summary.json",
                     bool(lyapunov), lambda: training.lyapunov_figure(lyapunov)),
    }
    for name in figures:
        page.figure(*drawings[name])
