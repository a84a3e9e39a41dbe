"""`rnnscope demo`: the seeds' story in one command, on a CPU, ending with a report."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from rnnscope.checks import available_cores, workers
from rnnscope.cli.common import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK
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

# (run name, settings over the base, what it is). The relu pair uses plain SGD as
# Pascanu et al. did: Adam's per-weight step scaling hides an exploding gradient.
# "{radius}" and "{window}" depend on the demo's size (`demo_study_data`).
STORY = (
    ("tanh", {"model.cell": "rnn_tanh", "clip": "none"},
     "tanh RNN, torch's default init, no clipping"),
    ("relu-big-init", {"model.cell": "rnn_relu", "init": "spectral:{radius}", "clip": "none",
                       "optim.name": "sgd"},
     "ReLU RNN, W_hh scaled to spectral radius {radius}, SGD, no clipping"),
    ("relu-big-init+clip", {"model.cell": "rnn_relu", "init": "spectral:{radius}",
                            "clip": "norm:1.0", "optim.name": "sgd"},
     "the same, gradient clipped to global norm 1"),
    ("tanh+orthogonal", {"model.cell": "rnn_tanh", "init": "orthogonal"},
     "tanh RNN, orthogonal W_hh"),
    ("irnn", {"model.cell": "rnn_relu", "init": "identity:1.0"},
     "ReLU RNN with W_hh = I (IRNN, Le et al. 2015)"),
    ("lstm", {"model.cell": "lstm", "init": "forget_bias:1.0"}, "LSTM, forget-gate bias 1"),
    ("lstm+chrono", {"model.cell": "lstm", "init": "chrono:{task.seq_len}"},
     "LSTM, chrono init (Tallec & Ollivier 2018)"),
    ("gru", {"model.cell": "gru", "init": "orthogonal"}, "GRU, orthogonal W_hh"),
    ("lstm+chrono+tbptt", {"model.cell": "lstm", "init": "chrono:{task.seq_len}",
                           "bptt.window": "{window}"},
     "LSTM, chrono init, truncated BPTT in windows of {window} steps"),
)
QUICK = ("tanh", "relu-big-init", "relu-big-init+clip", "irnn", "lstm+chrono", "gru",
         "lstm+chrono+tbptt")


def demo_sizes(quick: bool) -> dict:
    """Sizes that finish in time on 2 CPU cores. The radius is the smallest at which the
    unclipped ReLU RNN of that width reaches NaN within a few steps (measured)."""
    if quick:
        return {"seq_len": 40, "steps": 200, "hidden": 32, "radius": 2.5, "window": 8}
    return {"seq_len": 50, "steps": 800, "hidden": 64, "radius": 2.0, "window": 10}


def _sized(value, sizes: dict):
    if value == "{window}":
        return sizes["window"]
    if isinstance(value, str):
        return value.replace("{radius}", str(sizes["radius"])) \
            .replace("{window}", str(sizes["window"]))
    return value


def demo_study_data(quick: bool) -> dict:
    """The demo as a study file's contents: the story's models over one base config."""
    sizes = demo_sizes(quick)
    base = {"task": {"name": "adding", "seq_len": sizes["seq_len"]},
            "model": {"hidden": sizes["hidden"]}, "optim": {"lr": 0.01}, "clip": "norm:1.0",
            "probe": {"every": 10, "histograms": False},
            "run": {"steps": sizes["steps"], "batch": 32, "eval_every": 50,
                    "checkpoint_every": 100}}
    variants = [{"name": name, **{key: _sized(value, sizes) for key, value in settings.items()}}
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
    parser.add_argument("--workers", type=int, default=None,
                        help="runs at once (default 2, or 1 on a one-core machine; at most "
                        "the CPU cores unless --force)")
    parser.add_argument("--force", action="store_true",
                        help="allow more --workers than this machine's CPU cores")
    parser.add_argument("--json", action="store_true", help="print a JSON summary instead")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rnnscope.report.render import write_report  # imports torch and matplotlib
    from rnnscope.study.spec import study_from_dict
    from rnnscope.study.workers import WorkerDied, run_study

    started = time.perf_counter()
    if args.workers is None:
        args.workers = min(2, available_cores())
    workers("--workers", args.workers, force=args.force)
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
    except WorkerDied as error:
        print(f"rnnscope: error: {error}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print(f"rnnscope: interrupted; run the same command again to finish ({directory})",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    report = write_report(directory)
    seconds = time.perf_counter() - started
    if args.json:
        print(json.dumps(json_safe({
            "dir": str(directory), "report": str(report), "seconds": round(seconds, 1),
            "runs": [{"name": row.name, "status": row.status, "result": row.result}
                     for row in rows]}), indent=2, allow_nan=False))
    else:
        _print_table(rows, demo_sizes(args.quick))
        print(f"done in {seconds:.0f} s. Open the report: {report}")
    return EXIT_FAILED if any(row.status == "error" for row in rows) else EXIT_OK


def _print_table(rows, sizes: dict) -> None:
    shows = {name: _sized(text, sizes) for name, _, text in STORY}
    print(f"\n{'run':20}{'status':10}{'steps':>6}{'MSE':>9}  {'gradient':10}{'reach':>6}"
          f"   what was trained")
    for row in rows:
        result = row.result or {}
        if row.status != "done":
            print(f"{row.name:20}{row.status:10}  {result.get('message', '')}")
            continue
        metric = (result.get("metric") or {}).get("value")
        diagnosis = result.get("diagnosis") or {}
        reach = f"{diagnosis.get('reach')}/{sizes['seq_len']}" if diagnosis else "-"
        shown = f"{metric:9.4f}" if isinstance(metric, float) else f"{'nan':>9}"
        print(f"{row.name:20}{result.get('status', ''):10}{result.get('steps') or 0:>6}{shown}  "
              f"{diagnosis.get('verdict', '-'):10}{reach:>6}   {shows.get(row.name, '')}")
    for line in _story(rows, sizes):
        print(f"  {line}" if line else "")
    print()


def _story(rows, sizes: dict) -> list[str]:
    """What the numbers say, for the runs that got that far."""
    results = {row.name: row.result for row in rows if row.status == "done" and row.result}
    lines = ["", "reach: steps back until ||dL/dh_t|| falls below 1e-3 of its peak, after "
             "training"]
    tanh = results.get("tanh")
    if tanh and tanh.get("diagnosis"):
        lines.append(f"tanh RNN: {tanh['diagnosis']['verdict']}, the gradient reaches "
                     f"{tanh['diagnosis']['reach']} of {sizes['seq_len']} steps back")
    wild, clipped = results.get("relu-big-init"), results.get("relu-big-init+clip")
    if wild and clipped and wild["status"] == "diverged" and wild.get("steps") is not None:
        lines.append(f"big init: NaN at step {wild['steps'] + 1} without clipping; clipped, "
                     f"{clipped['status']} after {clipped['steps']} steps (clipped "
                     f"{clipped.get('clip_rate', 0):.0%} of them)")
    solved = [f"{name} ({result['steps']} steps)" for name, result in results.items()
              if result.get("solved")]
    lines.append(f"solved (MSE < 0.01): {', '.join(solved) if solved else 'none'}")
    return lines


__all__ = ["STORY", "demo_study_data", "register", "run"]
