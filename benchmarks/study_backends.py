"""The same study on the local worker processes and on a local Ray: wall time and ratio.

The study of study_parallel.py (adding problem, 3 cells x 2 seeds = 6 runs), each way
into a fresh directory, as many runs at once as the machine has cores (1 CPU and 1
torch thread per run both ways), wall-clock seconds:

    local       rnnscope study --workers N: N spawned processes, started by the study
    ray         rnnscope study --backend ray on a local Ray that is already running
    ray+start   the same plus starting and stopping that Ray (ray.init, ray.shutdown),
                as `rnnscope study --backend ray` without --address does

and checks that both ways give the same result for every run. The ways alternate for
--rounds rounds (default 2), so that a load that comes and goes on a shared machine
falls on both; the table shows the best round of each.

    python benchmarks/study_backends.py            # T=50, hidden 64, 500 steps a run
    python benchmarks/study_backends.py --quick    # T=30, hidden 32, 40 steps a run
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

import ray

from rnnscope.study.ray_backend import RayRunner
from rnnscope.study.spec import study_from_dict
from rnnscope.study.workers import run_study
from rnnscope.training.run import train
from study_parallel import study_data  # benchmarks/: run as a script
from timing import cpu_model


def results(rows) -> dict:
    """What a run achieved, without where and how long."""
    return {row.name: {key: value for key, value in row.result.items()
                       if key not in ("run_dir", "seconds")} for row in rows}


def timed_ways(study, root: Path, cores: int) -> tuple[dict, dict]:
    """One round: the study locally, then on a Ray started for it; seconds and results."""
    seconds, outcomes = {}, {}
    started = time.perf_counter()
    outcomes["local"] = results(run_study(study, root / "local", workers=cores))
    seconds["local"] = time.perf_counter() - started

    started = time.perf_counter()
    ray.init(address="local", num_cpus=cores, logging_level=logging.WARNING,
             log_to_driver=False)
    seconds["ray start"] = time.perf_counter() - started
    try:
        started = time.perf_counter()
        outcomes["ray"] = results(run_study(study, root / "ray", runner=RayRunner()))
        seconds["ray"] = time.perf_counter() - started
    finally:
        started = time.perf_counter()
        ray.shutdown()
        seconds["ray stop"] = time.perf_counter() - started
    seconds["ray+start"] = seconds["ray start"] + seconds["ray"] + seconds["ray stop"]
    return seconds, outcomes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=2,
                        help="rounds of both ways, alternating; the best of each is shown")
    args = parser.parse_args()
    seq_len, hidden, steps = (30, 32, 40) if args.quick else (50, 64, 500)
    cores = len(os.sched_getaffinity(0))
    study = study_from_dict(study_data(seq_len, hidden, steps))
    print(f"CPU: {cpu_model()}, {cores} cores; ray {ray.__version__}")
    print(f"study: adding T={seq_len}, hidden {hidden}, {steps} steps a run, "
          f"{len(study.runs)} runs, {cores} at once, 1 CPU each; {args.rounds} rounds")
    rounds = []
    with tempfile.TemporaryDirectory() as scratch:
        # Warm-up: first-use imports in this process (tensorboard), as in study_parallel.py.
        first = study.runs[0].config
        train(first.with_overrides({"run": {"steps": 5, "out": f"{scratch}/warm-up"}}))
        for index in range(args.rounds):
            seconds, outcomes = timed_ways(study, Path(scratch) / str(index), cores)
            assert outcomes["local"] == outcomes["ray"], "the backends disagree"
            rounds.append(seconds)
            print(f"round {index + 1}: " + ", ".join(
                f"{way} {value:.1f} s" for way, value in seconds.items()), flush=True)
    print("same result for every run on both backends: yes")
    best = {way: min(seconds[way] for seconds in rounds) for way in rounds[0]}
    print(f"\n{'way':12}{'best s':>9}{'x local':>9}")
    for way in ("local", "ray", "ray+start"):
        print(f"{way:12}{best[way]:>9.1f}{best[way] / best['local']:>9.2f}")
    print(f"(Ray start {best['ray start']:.1f} s, stop {best['ray stop']:.1f} s)")


if __name__ == "__main__":
    main()
