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
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from rnnscope.flow.diagnosis import Context
from rnnscope.rundir.directory import METRICS, read_records
from rnnscope.training.config import ExperimentConfig
from rnnscope.training.history import context_at
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
    # The model diagnosed has had `steps` updates, one more than the probe at `steps`
    # saw: that probe's reach stands for "now", the earlier ones are its history (for an
    # odd `steps` the last probe is at steps - 1 and counts as history), the final
    # evaluation gives the metric.
    context = context_at(short, lines, steps, solved=result.solved)
    return ShortRun(weights, replace(context, initial=False))
