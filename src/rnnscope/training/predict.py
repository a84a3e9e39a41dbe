"""Will it learn? A prediction from a short run rather than from the initial weights.

At initialisation a gradient profile says little of what training does: gates learn to
remember within a few dozen steps (a GRU's reach grows), a tanh RNN whose Xavier W_hh
keeps the gradient alive at first loses it as soon as it trains, and updates too small
to move the weights look like any other profile. So `rnnscope diagnose --predict` (and
examples/quickstart.py) train the setup for a few dozen steps with rnnscope's trainer in
a temporary run directory and diagnose the model it ends with, told what the run saw:
the horizon, the truncation window, the size of its updates, its reach at each probe,
its held-out metric, the learning rate it spent, and whether it already solved the task.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from rnnscope.flow.diagnosis import ADAPTIVE, Context, chance_level
from rnnscope.rundir.directory import METRICS, read_records
from rnnscope.training.config import ExperimentConfig
from rnnscope.training.run import train

PREDICT_STEPS = 50  # "a few dozen steps": gates start to learn, a collapse shows


@dataclass
class ShortRun:
    # the model's state_dict after the run; None when it diverged before any finite
    # checkpoint (the initial weights stand, and the diagnosis sees why)
    weights: dict | None
    context: Context  # what the run tells the diagnosis


def short_run(config: ExperimentConfig, steps: int = PREDICT_STEPS) -> ShortRun:
    """Train `config` for `steps` steps (probes at the first step and every steps/2, the
    points the diagnosis suite judges its early verdict from, and one evaluation at the
    end) in a temporary directory; the trained weights and the diagnosis' context."""
    with tempfile.TemporaryDirectory(prefix="rnnscope-predict-") as scratch:
        short = config.with_overrides({"run": {
            "steps": steps, "out": str(Path(scratch) / "run"), "quiet": True,
            "eval_every": steps, "checkpoint_every": 0},
            "probe": {"every": max(1, steps // 2), "histograms": False}})
        result = train(short)
        last = Path(scratch) / "run" / "checkpoints" / "last.pt"
        weights = torch.load(last, map_location="cpu", weights_only=True)["model"] \
            if last.is_file() else None
        lines = read_records(Path(scratch) / "run" / METRICS) or []
    probes = [line for line in lines if "flow" in line and isinstance(line.get("reach"), int)]
    updates = [line["update_ratio"] for line in probes if line.get("update_ratio")]
    task = short.task.build()
    return ShortRun(weights, Context(
        horizon=task.reach_needed, window=config.bptt.window, nearest=task.nearest_dependency,
        solved=result.solved, metric=result.metric, chance=chance_level(task),
        update_ratio=updates[-1] if updates else None,
        # The model diagnosed is the last probe's, one update on: its reach is "now".
        earlier_reach=tuple(line["reach"] for line in probes[:-1]),
        earlier_faint=tuple(line.get("reach_faint", line["reach"]) for line in probes[:-1]),
        largest_update=max(updates[:-1]) if len(updates) > 1 else None,
        lr_total=lr_total(config, lines, steps)))


def lr_total(config: ExperimentConfig, lines: list[dict], step: int | None) -> float | None:
    """The learning rates of a run's updates up to `step` (an evaluation's), summed from
    its metrics lines, as the trainer tells the diagnosis (`Context.lr_total`): a step the
    NaN guard vetoed made no update; after a rollback (which the lines do not say how far
    went) it is unknown. None too for an optimiser that does not move each weight by
    about its rate (SGD) and before any evaluation."""
    if step is None or config.optim.name not in ADAPTIVE:
        return None
    steps = [line for line in lines if line.get("kind") == "train"
             and isinstance(line.get("step"), int) and line["step"] <= step]
    if any(line.get("guard") == "rollback" for line in steps):
        return None
    return sum(line["lr"] for line in steps if "guard" not in line
               and isinstance(line.get("lr"), float))
