"""Training-step time of rnnscope against plain PyTorch, same model and data, in one run.

Each way trains the same model (cell + linear read-out) on the same adding-problem
batches (batch 64) with Adam and clipping by global norm 1.0, and is timed as the
mean over N steps after one warm-up step:

    (a) plain    torch's nn.LSTM/GRU/RNN loop with PyTorch's defaults (subnormals on)
    (b) flush    the same loop after torch.set_flush_denormal(True) (the calling
                 thread only, as most users would write it)
    (c) native   rnnscope's Trainer, engine native, gradient flow recorded every
                 10 steps (record(every=10)), subnormals flushed on every thread
    (d) unrolled rnnscope's Trainer, unrolled cells, flow recorded every step

and truncated BPTT (windows 25, 50, 100) against full BPTT at T=1000 (LSTM, native,
probe every 10). Ratios are read within a row: (a)/(c) is the speed-up rnnscope's
trainer gives over the plain loop, (c)/(b) its cost over a loop that flushes
subnormals, (d)/(c) the cost of recording every step. The last column is the share
of dL/dh_t values that are subnormal in (a)'s first backward pass: the slow-down
that (b) and (c) remove exists only where it is large.

    python benchmarks/speed.py            # cells x T {100, 200, 1000} x hidden {64, 128, 256}
    python benchmarks/speed.py --quick    # LSTM (the targets) and tanh RNN at T=200, hidden 128
"""

from __future__ import annotations

import argparse
import itertools
import time

import torch
from torch import nn

import rnnscope
from rnnscope.numerics import flush_denormal
from rnnscope.tasks import get_task
from rnnscope.training.config import ExperimentConfig
from rnnscope.training.trainer import Trainer

BATCH = 64
TORCH_MODULES = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn_tanh": nn.RNN}
# Targets of issue 7 for LSTM, T=200, hidden 128.
TARGET = {"a_over_c": 5.0, "c_over_b": 1.25, "d_over_c": 1.5}


def plain_loop(cell: str, seq_len: int, hidden: int, steps: int, batch: int = BATCH) -> float:
    """Mean seconds per step of a hand-written loop with torch's module."""
    torch.manual_seed(0)
    task = get_task("adding", seq_len=seq_len)
    rnn, head = TORCH_MODULES[cell](task.input_size, hidden), nn.Linear(hidden, 1)
    parameters = [*rnn.parameters(), *head.parameters()]
    optimizer = torch.optim.Adam(parameters, lr=1e-3)
    generator = torch.Generator().manual_seed(0)

    def step() -> None:
        x, y = task.batch(batch, generator)
        optimizer.zero_grad(set_to_none=True)
        loss = task.loss(head(rnn(x)[0]), y)
        loss.backward()
        nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        loss.item()  # a loop that logs reads its loss every step

    return _mean_time(step, steps)


def subnormal_share(cell: str, seq_len: int, hidden: int) -> float:
    """Fraction of dL/dh_t values that are subnormal floats in the plain loop's first
    backward pass (subnormals on): what (b) and (c) are there to avoid."""
    torch.manual_seed(0)
    task = get_task("adding", seq_len=seq_len)
    model = nn.Sequential()
    model.rnn, model.head = TORCH_MODULES[cell](task.input_size, hidden), nn.Linear(hidden, 1)
    x, y = task.batch(BATCH, torch.Generator().manual_seed(0))
    with rnnscope.record(model) as recorder:
        task.loss(model.head(model.rnn(x)[0]), y).backward()
    return recorder.flow.subnormal_fraction


def trainer_loop(cell: str, seq_len: int, hidden: int, steps: int, *, engine: str,
                 every: int, window: int | None = None) -> float:
    """Mean seconds per step of rnnscope's Trainer (the loop of `rnnscope train`, without
    the run directory's writing)."""
    config = ExperimentConfig.from_dict({
        "task": {"name": "adding", "seq_len": seq_len},
        "model": {"cell": cell, "hidden": hidden, "engine": engine},
        "optim": {"name": "adam", "lr": 1e-3}, "clip": "norm:1.0",
        "bptt": {"window": window}, "probe": {"every": every, "histograms": False},
        "run": {"steps": steps + 1, "batch": BATCH, "eval_every": 0, "early_stop": False,
                "quiet": True}})
    trainer = Trainer(config)
    return _mean_time(trainer.train_step, steps)


def _mean_time(step, steps: int) -> float:
    step()  # warm-up: first-call allocations and lazy initialisation
    started = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - started) / steps


def measure(cell: str, seq_len: int, hidden: int, steps: int) -> dict[str, float]:
    times = {}
    flush_denormal(False)
    times["subnormal"] = subnormal_share(cell, seq_len, hidden)
    times["a"] = plain_loop(cell, seq_len, hidden, steps)
    torch.set_flush_denormal(True)
    times["b"] = plain_loop(cell, seq_len, hidden, steps)
    flush_denormal(True)  # every thread, as rnnscope's trainer does
    times["c"] = trainer_loop(cell, seq_len, hidden, steps, engine="native", every=10)
    times["d"] = trainer_loop(cell, seq_len, hidden, steps, engine="unrolled", every=1)
    flush_denormal(False)
    return times


def steps_for(seq_len: int, quick: bool) -> int:
    return {100: 20, 200: 10, 1000: 3}[seq_len] // (2 if quick else 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        grid = [("lstm", 200, 128), ("rnn_tanh", 200, 128)]
    else:
        grid = list(itertools.product(("lstm", "gru", "rnn_tanh"), (100, 200, 1000),
                                      (64, 128, 256)))
    print(f"adding problem, batch {BATCH}, Adam, clip norm 1.0; ms per training step; "
          f"{torch.get_num_threads()} threads")
    print(f"{'cell':9}{'T':>5}{'H':>5}{'(a) plain':>11}{'(b) flush':>11}{'(c) native':>12}"
          f"{'(d) unrolled':>14}{'a/c':>7}{'c/b':>7}{'d/c':>7}{'subnormal':>11}")
    results = {}
    for cell, seq_len, hidden in grid:
        t = measure(cell, seq_len, hidden, steps_for(seq_len, args.quick))
        results[(cell, seq_len, hidden)] = t
        print(f"{cell:9}{seq_len:>5}{hidden:>5}{t['a'] * 1e3:>11.1f}{t['b'] * 1e3:>11.1f}"
              f"{t['c'] * 1e3:>12.1f}{t['d'] * 1e3:>14.1f}{t['a'] / t['c']:>7.2f}"
              f"{t['c'] / t['b']:>7.2f}{t['d'] / t['c']:>7.2f}{t['subnormal']:>11.1%}",
              flush=True)

    t = results[("lstm", 200, 128)]
    print("\ntargets (LSTM, T=200, hidden 128):")
    for name, value, target, better in (
            ("(a)/(c): trainer speed-up over the plain loop", t["a"] / t["c"],
             TARGET["a_over_c"], "higher"),
            ("(c)/(b): trainer cost over a flushing loop", t["c"] / t["b"],
             TARGET["c_over_b"], "lower"),
            ("(d)/(c): recording every step, unrolled", t["d"] / t["c"],
             TARGET["d_over_c"], "lower")):
        met = value >= target if better == "higher" else value <= target
        print(f"  {name:48} {value:6.2f}  target {'>=' if better == 'higher' else '<='} "
              f"{target:g}: {'met' if met else 'missed'}")

    print("\ntruncated BPTT, LSTM, T=1000, hidden 128, native, probe every 10:")
    flush_denormal(True)
    steps = steps_for(1000, args.quick)
    full = trainer_loop("lstm", 1000, 128, steps, engine="native", every=10)
    print(f"{'window':>8}{'ms/step':>10}{'x full':>8}")
    print(f"{'full':>8}{full * 1e3:>10.1f}{1.0:>8.2f}")
    for window in (100, 50, 25):
        seconds = trainer_loop("lstm", 1000, 128, steps, engine="native", every=10,
                               window=window)
        print(f"{window:>8}{seconds * 1e3:>10.1f}{seconds / full:>8.2f}", flush=True)
    flush_denormal(False)


if __name__ == "__main__":
    main()
