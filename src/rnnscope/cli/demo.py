"""`rnnscope demo`: the seeds' story in one command, on a CPU, ending with a report."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from rnnscope.cli.main import EXIT_FAILED, EXIT_OK
from rnnscope.files import json_safe

EXAMPLES = """\
examples:
  rnnscope demo                 # the whole story, under 5 minutes on 2 CPU cores
  rnnscope demo --quick         # shorter runs, under a minute
  rnnscope demo --out runs/my-demo --workers 4

Trains each model below on the adding problem (two numbers marked in a long
sequence; their sum is the target), records the gradient flow through time, and
writes a study (study.db, runs/<name>/) and report.html under --out. Running it
again reuses finished runs. Exit codes: 0 done, 1 a run failed with an error,
2 bad input, 130 interrupted.
"""

# (run name, settings over the base, what it shows). The relu pair uses plain SGD as
# Pascanu et al. did: Adam's per-weight scaling hides an exploding gradient's step.
STORY = (
    ("tanh", {"model.cell": "rnn_tanh", "clip": "none"},
     "vanishing: the gradient dies within a few dozen steps; stays at chance"),
    ("relu-big-init", {"model.cell": "rnn_relu", "init": "spectral:2.5", "clip": "none",
                       "optim.name": "sgd", "optim.lr": 0.001},
     "exploding: W_hh with spectral radius 2.5; NaN within a few steps"),
    ("relu-big-init+clip", {"model.cell": "rnn_relu", "init": "spectral:2.5",
                            "clip": "norm:1.0", "optim.name": "sgd", "optim.lr": 0.001},
     "the same model, clipped by global norm: training goes on"),
    ("tanh+orthogonal", {"model.cell": "rnn_tanh", "init": "orthogonal"},
     "orthogonal W_hh: the gradient reaches further back"),
    ("irnn", {"model.cell": "rnn_relu", "init": "identity:1.0"},
     "ReLU units with W_hh = I (Le et al. 2015)"),
    ("lstm", {"model.cell": "lstm", "init": "forget_bias:1.0"},
     "gated cell, forget-gate bias 1"),
    ("lstm+chrono", {"model.cell": "lstm", "init": "chrono:{task.seq_len}"},
     "gated cell, chrono init (Tallec & Ollivier 2018)"),
    ("gru", {"model.cell": "gru", "init": "orthogonal"}, "gated cell, orthogonal init"),
    ("lstm+chrono+tbptt", {"model.cell": "lstm", "init": "chrono:{task.seq_len}",
                           "bptt.window": "{window}"},
     "truncated BPTT, window shorter than the dependency: cheaper, but blind to it"),
)
QUICK = ("tanh", "relu-big-init", "relu-big-init+clip", "irnn", "lstm+chrono", "gru",
         "lstm+chrono+tbptt")


def demo_study_data(quick: bool) -> dict:
    """The demo as a study file's contents: the story's models over one base config."""
    seq_len, steps, hidden = (40, 200, 32) if quick else (50, 800, 64)
    window = seq_len // 5
    base = {"task": {"name": "adding", "seq_len": seq_len},
            "model": {"hidden": hidden}, "optim": {"lr": 0.01}, "clip": "norm:1.0",
            "probe": {"every": 10, "histograms": False},
            "run": {"steps": steps, "batch": 32, "eval_every": 50, "checkpoint_every": 100}}
    variants = [{"name": name, **{key: window if value == "{window}" else value
                                  for key, value in settings.items()}}
                for name, settings, _ in STORY if not quick or name in QUICK]
    return {"name": "demo-quick" if quick else "demo", "base": base, "variants": variants}


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo", help="the story in one command: vanishing, exploding, the remedies, a report",
        description="Train a tanh RNN (vanishing gradient), a relu RNN with a large init "
        "(exploding, NaN) and the remedies (clipping, orthogonal and identity init, LSTM, "
        "GRU, chrono init, truncated BPTT) on the adding problem, then write an HTML report "
        "that shows the gradient flow of each side by side.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path,
                        help="directory (default runs/demo, or runs/demo-quick with --quick)")
    parser.add_argument("--quick", action="store_true", help="fewer, shorter runs (< 1 min)")
    parser.add_argument("--workers", type=int, default=2, help="runs at once (default 2)")
    parser.add_argument("--json", action="store_true", help="print a JSON summary instead")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.workers < 1:
        raise ValueError(f"--workers: expected an integer >= 1, got {args.workers}")
    from rnnscope.report.html import write_report  # imports torch and matplotlib
    from rnnscope.study import study_from_dict
    from rnnscope.workers import run_study

    started = time.perf_counter()
    data = demo_study_data(args.quick)
    study = study_from_dict(data)
    directory = args.out or Path("runs") / data["name"]
    talk = not args.json
    if talk:
        base = data["base"]
        print(f"rnnscope demo: the adding problem, T={base['task']['seq_len']} (chance MSE "
              f"0.167, solved below 0.01), {len(study.runs)} models, up to "
              f"{base['run']['steps']} steps each, {args.workers} at a time")
    try:
        rows = run_study(study, directory, workers=args.workers,
                         on_result=(lambda row, done, total: print(
                             f"  [{done}/{total}] {row.name} finished", flush=True))
                         if talk else None)
    except KeyboardInterrupt:
        print(f"rnnscope: interrupted; run the same command again to finish ({directory})",
              file=sys.stderr)
        return 130
    report = write_report(directory)
    seconds = time.perf_counter() - started
    if args.json:
        print(json.dumps(json_safe({
            "dir": str(directory), "report": str(report), "seconds": round(seconds, 1),
            "runs": [{"name": row.name, "status": row.status, "result": row.result}
                     for row in rows]}), indent=2, allow_nan=False))
    else:
        _print_table(rows)
        print(f"done in {seconds:.0f} s. Open the report: {report}")
    return EXIT_FAILED if any(row.status == "error" for row in rows) else EXIT_OK


def _print_table(rows) -> None:
    shows = {name: text for name, _, text in STORY}
    print(f"\n{'model':20}{'status':10}{'steps':>6}{'MSE':>9}  {'gradient':10}{'reach':>6}"
          f"   what it shows")
    for row in rows:
        result = row.result or {}
        if row.status != "done":
            print(f"{row.name:20}{row.status:10}  {result.get('message', '')}")
            continue
        metric = (result.get("metric") or {}).get("value")
        diagnosis = result.get("diagnosis") or {}
        reach = f"{diagnosis.get('reach')}/{(result.get('evidence') or {}).get('steps', '?')}" \
            if diagnosis else "-"
        shown = f"{metric:9.4f}" if isinstance(metric, float) else f"{'nan':>9}"
        print(f"{row.name:20}{result.get('status', ''):10}{result.get('steps', 0):>6}{shown}  "
              f"{diagnosis.get('verdict', '-'):10}{reach:>6}   {shows.get(row.name, '')}")
    print()


__all__ = ["STORY", "demo_study_data", "register", "run"]
