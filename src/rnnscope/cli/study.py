"""`rnnscope study`: run a grid of experiments in parallel, resumably; show its progress."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from rnnscope.checks import CONFIRM_RUNS, workers
from rnnscope.cli.common import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK
from rnnscope.files import json_safe

STOPPED = "stopped"  # how --status shows a run left `running` by a study that is gone

EXAMPLES = """\
examples:
  # the classic: tanh RNN vs LSTM vs IRNN on the adding problem at three lengths, 2 seeds
  rnnscope study examples/adding-lengths.yaml --workers 2 --out studies/adding

  # killed, crashed or Ctrl-C? the same command skips finished runs and resumes the rest
  rnnscope study examples/adding-lengths.yaml --workers 2 --out studies/adding

  # how far along is it (from another terminal)?
  rnnscope study --status studies/adding

  # then compare the runs side by side
  rnnscope report studies/adding

  # on a Ray cluster (pip install 'rnnscope[ray]'): --out on a path every node sees
  rnnscope study examples/adding-lengths.yaml --backend ray --address 10.0.0.5:6379 \\
      --out /shared/studies/adding
  # on a local Ray (started for the study, shut down after it), 2 CPUs per run
  rnnscope study examples/adding-lengths.yaml --backend ray --cpus-per-run 2

  # more than 500 runs ask first; a script confirms with --yes
  rnnscope study big-grid.yaml --workers 2 --yes

A study file:
  name: adding-remedies
  base: {task: {name: adding, seq_len: 100}, run: {steps: 2000}}
  grid: {cell: [rnn_tanh, lstm], clip: [none, "norm:1.0"], seed: [0, 1]}

Writes study.yaml, study.db (SQLite: every run's status and summary) and runs/<name>/
under --out (default studies/<name>). With --backend ray the nodes write runs/<name>/
themselves: --out must be a path every node sees at the same place (NFS, a cluster file
system); this process alone writes study.db. See docs/studies-on-ray.md. Exit codes: 0
every run done, 1 some run failed with an error, 2 bad input, 130 interrupted (run the
command again to resume).
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "study", help="run a grid of experiments in parallel; resume after a crash",
        description="Run every combination a study file names (cell x init x clip x "
        "seq_len x seed, ...) in parallel worker processes, keep each run's status and "
        "summary in a SQLite store, and skip finished runs when run again; on this "
        "machine or as Ray tasks on a cluster.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("file", nargs="?", type=Path, help="the study YAML file")
    parser.add_argument("--workers", type=int,
                        help="runs trained at once: local worker processes (default 1); "
                        "with --backend ray, at most this many runs in flight (default: as "
                        "many as the cluster's CPUs hold)")
    parser.add_argument("--backend", default="local", metavar="{local,ray}",
                        help="local: worker processes on this machine (default); ray: each "
                        "run a Ray task, on a local Ray or the cluster at --address "
                        "(pip install 'rnnscope[ray]')")
    parser.add_argument("--address", metavar="HOST:PORT",
                        help="with --backend ray: the Ray head to join, as `ray start --head` "
                        "printed it, or auto (the latest `ray start` on this machine); "
                        "default: RAY_ADDRESS, else a new local Ray for this study")
    parser.add_argument("--cpus-per-run", type=int, metavar="N",
                        help="with --backend ray: CPUs (and torch threads) per run (default 1)")
    parser.add_argument("--gpus-per-run", type=float, metavar="G",
                        help="with --backend ray: GPUs per run, a fraction to share one "
                        "(default 0; give the runs run.device: cuda or auto)")
    parser.add_argument("--out", type=Path, help="study directory (default studies/<name>)")
    parser.add_argument("--status", type=Path, metavar="DIR",
                        help="show the progress of the study in DIR and exit")
    parser.add_argument("--quiet", action="store_true", help="no line per finished run")
    parser.add_argument("--json", action="store_true", help="print a JSON summary instead")
    parser.add_argument("--force", action="store_true",
                        help="allow more --workers than this machine's CPU cores")
    parser.add_argument("--yes", action="store_true",
                        help=f"start a study of more than {CONFIRM_RUNS} runs without asking")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if (args.file is None) == (args.status is None):
        raise ValueError("study: give a study FILE to run, or --status DIR to show one")
    if args.status is not None:
        return _show_status(args.status, args.json)

    from rnnscope.study.spec import load_study  # imports torch: after parsing
    from rnnscope.study.workers import WorkerDied, make_runner, run_study

    # Options first: a missing Ray or a bad flag is refused before the file is read.
    if args.backend == "local" and args.workers is not None:  # this machine's cores
        workers("--workers", args.workers, force=args.force)
    runner = make_runner(args.backend, workers=args.workers, address=args.address,
                         cpus_per_run=args.cpus_per_run, gpus_per_run=args.gpus_per_run)
    study = load_study(args.file, confirm=lambda runs: _confirm_size(runs, args.yes))
    directory = args.out or Path("studies") / study.name
    talk = not (args.json or args.quiet)
    if talk:
        print(f"study {study.name}: {len(study.runs)} runs, {runner.describe()}, "
              f"into {directory}")

    def progress(row, done: int, total: int) -> None:
        if talk:
            from rnnscope.study.spec import result_line

            print(f"  [{done}/{total}] {result_line(row)}", flush=True)

    try:
        rows = run_study(study, directory, runner=runner, source=args.file,
                         on_result=progress)
    except WorkerDied as error:
        print(f"rnnscope: error: {error}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print(f"rnnscope: interrupted; finished runs are kept. Resume with: rnnscope study "
              f"{args.file}{_options(args)} --out {directory}", file=sys.stderr)
        return EXIT_INTERRUPTED
    errors = [row for row in rows if row.status == "error"]
    if args.json:
        print(json.dumps(json_safe(_summary(study.name, directory, rows)), indent=2,
                         allow_nan=False))
    else:
        done = sum(row.status == "done" for row in rows)
        print(f"{done}/{len(rows)} runs done, {len(errors)} failed with an error; "
              f"compare them: rnnscope report {directory}")
    for row in errors:
        print(f"rnnscope: run {row.name} failed: {(row.result or {}).get('message', '')}",
              file=sys.stderr)
    return EXIT_FAILED if errors else EXIT_OK


def _options(args: argparse.Namespace) -> str:
    """The backend options as given, for the command that resumes the study."""
    given = [("--backend", args.backend if args.backend != "local" else None),
             ("--workers", args.workers), ("--address", args.address),
             ("--cpus-per-run", args.cpus_per_run), ("--gpus-per-run", args.gpus_per_run)]
    return "".join(f" {flag} {value:g}" if isinstance(value, float) else f" {flag} {value}"
                   for flag, value in given if value is not None)


def _confirm_size(runs: int, yes: bool) -> None:
    """A study of more than CONFIRM_RUNS runs (counted before exclusions) starts once
    confirmed: --yes, or "y" at a terminal; without a terminal it is refused (a script
    says --yes). Asked before the runs' configs are built, which takes a while."""
    if runs <= CONFIRM_RUNS or yes:
        return
    question = (f"study: {runs:,} runs, more than {CONFIRM_RUNS}; at a minute a run "
                f"that is {runs / 60 / 24:.1f} days of work")
    if not sys.stdin.isatty():
        raise ValueError(f"{question}; confirm with --yes")
    answer = input(f"{question}. Start? [y/N] ").strip().lower()
    if answer not in ("y", "yes"):
        raise ValueError("study: not started (answer y, or give --yes)")


def _show_status(directory: Path, as_json: bool) -> int:
    from rnnscope.study.spec import open_store, result_line
    from rnnscope.study.workers import study_running

    if not directory.is_dir():
        raise ValueError(f"--status: {directory} is not a directory; expected a study "
                         f"directory (made by rnnscope study)")
    store = open_store(directory, readonly=True)
    try:
        rows, counts = store.rows(), store.counts()
    finally:
        store.close()
    if counts["running"] and not study_running(directory):
        # Claimed by a study that is gone (killed, or it hit a full disk): nothing trains
        # them; the next `rnnscope study` resumes them.
        rows = [dataclasses.replace(row, status=STOPPED) if row.status == "running" else row
                for row in rows]
        counts = {**{state: n for state, n in counts.items() if state != "running"},
                  STOPPED: counts["running"]}
    if as_json:
        print(json.dumps(json_safe(_summary(directory.name, directory, rows)), indent=2,
                         allow_nan=False))
        return EXIT_OK
    print(f"{directory}: {len(rows)} runs: " +
          ", ".join(f"{counts[state]} {state}" for state in counts))
    for row in rows:
        attempts = f" ({row.attempts} attempts)" if row.attempts > 1 else ""
        print(f"  {result_line(row)}{attempts}")
    return EXIT_OK


def _summary(name: str, directory: Path, rows) -> dict:
    counts: dict[str, int] = {}
    for row in rows:
        counts[row.status] = counts.get(row.status, 0) + 1
    return {"study": name, "dir": str(directory), "counts": counts,
            "runs": [{"name": row.name, "status": row.status, "params": row.params,
                      "attempts": row.attempts, "finishes": row.finishes,
                      "result": row.result} for row in rows]}


__all__ = ["register", "run"]
