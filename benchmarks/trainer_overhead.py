"""What the trainer costs over a hand-written loop, on the same model, data and remedies.

One run, same sizes (adding problem, LSTM, Adam, clipping by global norm 1.0,
subnormals flushed), mean time per training step over the same number of steps:

    plain       a hand-written loop: nn.LSTM + Linear, Adam, clip_grad_norm_, step
    trainer     rnnscope's Trainer (engine native), gradient flow recorded every 10
                steps, no run directory: the loop, events, clipping and guard
    train()     rnnscope.train (engine native, probe every 10): the above plus the
                run directory (metrics.jsonl every step, TensorBoard scalars and
                histograms, checkpoints every 100 steps)
    unrolled    rnnscope.train with the unrolled engine, flow recorded every step

    python benchmarks/trainer_overhead.py            # T=200, hidden 128, batch 64, 60 steps
    python benchmarks/trainer_overhead.py --quick    # T=50, 30 steps
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

import rnnscope
from rnnscope.numerics import flush_denormal
from rnnscope.training.config import ExperimentConfig
from rnnscope.training.trainer import Trainer
from speed import plain_loop  # benchmarks/speed.py: run as a script


def config(seq_len: int, hidden: int, batch: int, steps: int, engine: str, every: int,
           out: Path) -> ExperimentConfig:
    return ExperimentConfig.from_dict({
        "task": {"name": "adding", "seq_len": seq_len},
        "model": {"cell": "lstm", "hidden": hidden, "engine": engine},
        "optim": {"name": "adam", "lr": 1e-3}, "clip": "norm:1.0",
        "probe": {"every": every},
        "run": {"steps": steps, "batch": batch, "eval_every": 0, "checkpoint_every": 100,
                "early_stop": False, "quiet": True, "out": str(out)}})


def bare_trainer(experiment: ExperimentConfig, steps: int) -> float:
    trainer = Trainer(experiment)
    trainer.train_step()  # warm-up
    started = time.perf_counter()
    for _ in range(steps):
        trainer.train_step()
    return (time.perf_counter() - started) / steps


def full_train(experiment: ExperimentConfig, steps: int) -> float:
    """Per-step time of rnnscope.train without its fixed costs (set-up, the final
    evaluation and diagnosis): a run of `steps` + 1 steps minus a run of 1 step."""
    def seconds(n: int, name: str) -> float:
        run = experiment.with_overrides({"run": {"steps": n, "out": f"{experiment.run.out}"
                                                                      f"-{name}"}})
        started = time.perf_counter()
        rnnscope.train(run)
        return time.perf_counter() - started

    seconds(1, "warm-up")  # first-use imports (TensorBoard, matplotlib) out of the figure
    return (seconds(steps + 1, "long") - seconds(1, "short")) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    seq_len, steps = (50, 30) if args.quick else (200, 60)
    hidden, batch = 128, 64
    flush_denormal(True)
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch)
        rows = {
            "plain": plain_loop("lstm", seq_len, hidden, steps, batch=batch),
            "trainer": bare_trainer(config(seq_len, hidden, batch, steps, "native", 10,
                                           out / "bare"), steps),
            "train()": full_train(config(seq_len, hidden, batch, steps, "native", 10,
                                         out / "native"), steps),
            "unrolled": full_train(config(seq_len, hidden, batch, steps, "unrolled", 1,
                                          out / "unrolled"), steps),
        }
    print(f"LSTM, adding T={seq_len}, hidden {hidden}, batch {batch}, {steps} steps, "
          f"{torch.get_num_threads()} threads")
    print(f"{'loop':<10} {'ms/step':>9} {'x plain':>8}")
    for name, seconds in rows.items():
        print(f"{name:<10} {seconds * 1000:9.1f} {seconds / rows['plain']:8.2f}")


if __name__ == "__main__":
    main()
