"""What a study's worker processes buy, and what the store and the report cost.

One run of this script, the same study (adding problem, 6 runs: 3 cells x 2 seeds)
three ways, each into a fresh directory, wall-clock seconds:

    loop        rnnscope.train called 6 times in this process: the baseline
    workers=1   rnnscope study in-process: the loop plus study.db and the lock
    workers=2   two spawned worker processes (torch threads split between them)

then `rnnscope report` on the finished study (the grid and 2 figures per run, embedded).

    python benchmarks/study_parallel.py            # T=50, hidden 64, 500 steps a run
    python benchmarks/study_parallel.py --quick    # T=30, hidden 32, 40 steps a run
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from rnnscope.report.render import write_report
from rnnscope.study.spec import study_from_dict
from rnnscope.study.workers import run_study
from rnnscope.training.run import train


def study_data(seq_len: int, hidden: int, steps: int) -> dict:
    return {"name": "bench",
            "base": {"task": {"name": "adding", "seq_len": seq_len},
                     "model": {"hidden": hidden}, "clip": "norm:1.0",
                     "probe": {"histograms": False},
                     "run": {"steps": steps, "batch": 32, "eval_every": 50,
                             "early_stop": False}},
            "grid": {"cell": ["rnn_tanh", "lstm", "gru"], "seed": [0, 1]}}


def timed(work) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    seq_len, hidden, steps = (30, 32, 40) if args.quick else (50, 64, 500)
    study = study_from_dict(study_data(seq_len, hidden, steps))
    print(f"study: adding T={seq_len}, hidden {hidden}, {steps} steps a run, "
          f"{len(study.runs)} runs, {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)

        def loop() -> None:
            for run in study.runs:
                train(run.config.with_overrides({"run": {"out": str(root / "loop" / run.name)}}))

        # Warm-up: first-use imports (tensorboard), allocator, lazy initialisation.
        first = study.runs[0].config
        train(first.with_overrides({"run": {"steps": 5, "out": str(root / "warm-up")}}))
        seconds = {"loop": timed(loop)}
        for workers in (1, 2):
            seconds[f"workers={workers}"] = timed(
                lambda w=workers: run_study(study, root / f"w{w}", workers=w))
        seconds["report"] = timed(lambda: write_report(root / "w2"))
    baseline = seconds["loop"]
    print(f"\n{'way':12}{'seconds':>9}{'x loop':>8}")
    for way, value in seconds.items():
        print(f"{way:12}{value:>9.1f}{value / baseline:>8.2f}")


if __name__ == "__main__":
    main()
