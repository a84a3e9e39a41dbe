"""Optimisers and the learning-rate schedule.

`build_optimizer(parameters, OptimConfig)` builds one of torch's optimisers by name;
`LRSchedule` gives the learning rate of every optimiser step as a function of the step
number, and `apply` writes it into the optimiser before the step:

    lr(step) = base_lr * scale * warmup(step) * decay(step)

torch's own schedulers keep the rate as state that each `step()` updates from the last
one, so a run resumed from a checkpoint, or rolled back by the NaN guard, has to replay
them exactly. Here only the plateau decay and the guard's `scale` are state; everything
else is recomputed from the step number, and the rates equal torch's StepLR,
CosineAnnealingLR (closed form) and ReduceLROnPlateau (tests/test_optim.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from rnnscope.checks import choice, integer, number, positive

# ReduceLROnPlateau's defaults (mode="min", threshold_mode="rel"): an evaluation improves
# on the best so far only when it is lower by more than this fraction of it.
PLATEAU_THRESHOLD = 1e-4


# --- optimisers --------------------------------------------------------------------------

OptimizerBuilder = Callable[[Iterable, "OptimConfig"], torch.optim.Optimizer]

# weight_decay is torch's coupled L2 term (wd * w added to the gradient), also for Adam:
# the diagnosis suggests it as a remedy for small norms, and L2 is what it means there.
_BUILDERS: dict[str, OptimizerBuilder] = {
    "sgd": lambda params, c: torch.optim.SGD(
        params, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay),
    "adam": lambda params, c: torch.optim.Adam(
        params, lr=c.lr, eps=c.eps, weight_decay=c.weight_decay),
    "rmsprop": lambda params, c: torch.optim.RMSprop(
        params, lr=c.lr, momentum=c.momentum, eps=c.eps, weight_decay=c.weight_decay),
}
OPTIMIZERS = tuple(_BUILDERS)


@dataclass(frozen=True)
class OptimConfig:
    """The `optim` section."""

    name: str = "adam"  # sgd (with momentum) | adam | rmsprop
    lr: float = 1e-3
    momentum: float = 0.9  # sgd and rmsprop; adam ignores it
    weight_decay: float = 0.0  # L2: wd * w added to the gradient (not AdamW's decoupled decay)
    eps: float = 1e-8  # adam and rmsprop: added to the denominator

    def __post_init__(self) -> None:
        choice("optim.name", self.name, OPTIMIZERS)
        positive("optim.lr", self.lr)
        number("optim.momentum", self.momentum, minimum=0.0, below=1.0)
        number("optim.weight_decay", self.weight_decay, minimum=0.0)
        positive("optim.eps", self.eps)


def build_optimizer(parameters: Iterable, config: OptimConfig) -> torch.optim.Optimizer:
    """torch's optimiser named by `config.name`, with the config's settings."""
    return _BUILDERS[config.name](parameters, config)


# Optimisers (rnnscope's config names; torch's classes, lower-cased) that move each weight
# by about the learning rate per update, whatever the gradient's size: Adam, on which the
# diagnosis' rule for a tanh RNN still at chance was measured, and AdamW (the same step,
# with decoupled decay). RMSprop's first steps are ~10x its rate (no bias correction) and
# SGD's are the rate times the gradient: not counted.
ADAPTIVE = ("adam", "adamw")


def adaptive(optimizer: torch.optim.Optimizer) -> bool:
    """Whether a torch optimiser moves each weight by about its rate (`ADAPTIVE`)."""
    return type(optimizer).__name__.lower() in ADAPTIVE


class SummedRate:
    """The learning rates of an optimiser's steps, summed (`total`), and the sum when the
    model was last evaluated (`evaluated`): how far an Adam-like optimiser has moved the
    weights, which the diagnosis reads as `Context.lr_total`. The trainer, `watch` and
    the Lightning callback each keep one.

    `follow(optimizer)` counts by a hook on the optimiser's step, so only real updates
    count: not backward passes (gradient accumulation), not a step the NaN guard vetoes
    or an AMP scaler skips. The rate is read as a Python float (no host sync); any other
    optimiser, or a tensor rate, leaves the sum unknown (None) from then on.
    """

    def __init__(self) -> None:
        self.total: float | None = 0.0
        self.evaluated: float | None = None
        self._hook = None

    def follow(self, optimizer: torch.optim.Optimizer) -> None:
        if not adaptive(optimizer):
            self.total = None
        elif self.total is not None and self._hook is None:
            self._hook = optimizer.register_step_post_hook(self._stepped)

    def _stepped(self, optimizer: torch.optim.Optimizer, args, kwargs) -> None:
        rate = optimizer.param_groups[0]["lr"]
        if self.total is None or isinstance(rate, bool) or not isinstance(rate, float | int):
            self.total = None
        else:
            self.total += rate

    def forget(self) -> None:
        """The sum is unknown (no optimiser to follow), and stays so."""
        self.total = None

    def rewind(self, total: float | None) -> None:
        """Back to the sum of a snapshot taken earlier (a rollback undid the updates since);
        unknown stays unknown."""
        if self.total is not None:
            self.total = total

    def mark_evaluated(self) -> None:
        """The model was evaluated now: its metric pairs with the sum so far."""
        self.evaluated = self.total

    def stop(self) -> None:
        """Stop counting (the hook goes)."""
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    def state_dict(self) -> dict:
        return {"lr_total": self.total, "evaluated_lr_total": self.evaluated}

    @staticmethod
    def check_state(state: dict) -> None:
        """The two fields of `state_dict` in `state`, each none (a state of before kept no
        sum) or a finite number >= 0; else a ValueError naming the field."""
        for key in ("lr_total", "evaluated_lr_total"):
            value = state.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(
                    value, float | int) or not math.isfinite(value) or value < 0):
                raise ValueError(f"{key}: must be none or a finite number >= 0, got "
                                 f"{value!r}")

    def load_state_dict(self, state: dict) -> None:
        """Go on from a saved sum; a state of before that kept none leaves it unknown for
        the rest of the run, and so does an optimiser this one does not count."""
        self.check_state(state)
        total, evaluated = state.get("lr_total"), state.get("evaluated_lr_total")
        self.total = None if total is None or self.total is None else float(total)
        self.evaluated = None if evaluated is None else float(evaluated)


# --- learning-rate schedule --------------------------------------------------------------

DECAYS = ("none", "step", "cosine", "plateau")


@dataclass(frozen=True)
class ScheduleConfig:
    """The `schedule` section: linear warm-up, then one decay."""

    warmup: int = 0  # steps of linear warm-up: factor (step + 1) / warmup for step < warmup
    decay: str = "none"  # none | step | cosine | plateau
    step_size: int = 1000  # step: multiply by gamma every step_size steps
    gamma: float = 0.5  # step and plateau: the factor
    min_lr: float = 0.0  # cosine: the floor at the end of the run; plateau: never below it
    patience: int = 3  # plateau: evaluations without improvement tolerated before a decay

    def __post_init__(self) -> None:
        integer("schedule.warmup", self.warmup, 0)
        choice("schedule.decay", self.decay, DECAYS)
        integer("schedule.step_size", self.step_size, 1)
        number("schedule.gamma", self.gamma, above=0.0, below=1.0)
        number("schedule.min_lr", self.min_lr, minimum=0.0)
        integer("schedule.patience", self.patience, 0)


class LRSchedule:
    """The learning rate of every optimiser step as a pure function of the step number
    (plus the plateau state and a scale), so that a run resumed from a checkpoint, or
    rolled back by the NaN guard, gets exactly the same rates.

    - step:    gamma ** (step // step_size), counted from step 0 (torch's StepLR).
    - cosine:  over the steps after warm-up, t = step - warmup of T = total_steps - warmup,
               min_lr + (peak - min_lr) * (1 + cos(pi * t / T)) / 2 with peak = base_lr *
               scale (CosineAnnealingLR(T_max=T, eta_min=min_lr) in closed form); held at
               min_lr past the end instead of rising again, as torch's would.
    - plateau: peak * factor, floored at min_lr; `observe` cuts the factor by gamma as
               ReduceLROnPlateau(mode="min", threshold=1e-4 relative, cooldown=0) does.
    """

    def __init__(self, config: ScheduleConfig, base_lr: float, total_steps: int) -> None:
        self.config = config
        self.base_lr = float(base_lr)
        self.total_steps = total_steps
        self.scale = 1.0  # the NaN guard's persistent cut (`scale_by`)
        self.plateau_best = math.inf  # the lowest metric seen, as ReduceLROnPlateau's `best`
        self.plateau_bad = 0  # evaluations since the last improvement (or decay)
        self.plateau_factor = 1.0  # gamma ** (number of plateau decays)

    def lr(self, step: int) -> float:
        """The rate for optimiser step `step` (0-based): the schedule's rate times the
        guard's scale, applied last so no floor (min_lr) can undo a rollback's cut."""
        return self.scale * self._scheduled(step)

    def _scheduled(self, step: int) -> float:
        config = self.config
        peak = self.base_lr
        warmup = (step + 1) / config.warmup if step < config.warmup else 1.0
        if config.decay == "step":
            return peak * warmup * config.gamma ** (step // config.step_size)
        if config.decay == "plateau":
            return max(peak * self.plateau_factor, config.min_lr) * warmup
        if config.decay == "cosine" and step >= config.warmup:
            # Written as torch's closed form is, operation for operation, so the rates are
            # bit-identical to CosineAnnealingLR's; a warm-up as long as the run leaves no
            # cosine phase (span <= 0), so the rate is already at the floor.
            span = self.total_steps - config.warmup
            if span <= 0:
                return config.min_lr
            t = min(step - config.warmup, span)
            return config.min_lr + (peak - config.min_lr) * (1 + math.cos(math.pi * t / span)) / 2
        return peak * warmup

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> float:
        """Set the rate of every parameter group to `lr(step)`; returns it."""
        rate = self.lr(step)
        for group in optimizer.param_groups:
            group["lr"] = rate
        return rate

    def observe(self, metric: float) -> bool:
        """Feed one held-out evaluation (lower is better) to the plateau decay; True when
        the rate was cut. A NaN metric counts as no improvement. No-op without plateau."""
        config = self.config
        if config.decay != "plateau":
            return False
        metric = float(metric)
        if metric < self.plateau_best * (1 - PLATEAU_THRESHOLD):
            self.plateau_best, self.plateau_bad = metric, 0
        else:
            self.plateau_bad += 1
        # "More than patience", as ReduceLROnPlateau: patience=0 decays on the first
        # evaluation that does not improve.
        if self.plateau_bad <= config.patience:
            return False
        self.plateau_bad = 0
        above_floor = self.base_lr * self.scale * self.plateau_factor > config.min_lr
        self.plateau_factor *= config.gamma
        return above_floor

    def scale_by(self, factor: float) -> None:
        """Multiply every later rate by `factor` (the NaN guard halves it after a rollback)."""
        self.scale *= float(factor)

    def state_dict(self) -> dict:
        """Plain floats and ints, so `torch.load(weights_only=True)` reads them back."""
        return {"scale": self.scale, "plateau_best": self.plateau_best,
                "plateau_bad": self.plateau_bad, "plateau_factor": self.plateau_factor}

    def load_state_dict(self, state: dict) -> None:
        self.scale = float(state["scale"])
        self.plateau_best = float(state["plateau_best"])
        self.plateau_bad = int(state["plateau_bad"])
        self.plateau_factor = float(state["plateau_factor"])
