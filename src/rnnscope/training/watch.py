"""`rnnscope.watch`: the gradient flow through time over your own training loop.

    with rnnscope.watch(model, "runs/mine", every=100) as w:
        for x, y in data:
            optimizer.zero_grad()
            loss = criterion(model(x), y)
            loss.backward()
            optimizer.step()
            w.log(loss=loss)               # any numbers: curves in the report
        w.held_out(validation_error)       # optional: the held-out metric, lower is better
    # rnnscope report runs/mine

Like `wandb.watch`, one line around a plain PyTorch loop; unlike it, it shows time.
It counts training steps by backward passes and, on the schedule (the first step, then
every `every`-th), records what `record` follows (fused layers, cells, marked states),
diagnoses it, and keeps the history: a probe line in metrics.jsonl, reach and rate in
TensorBoard, the profile and heat map images. When the block ends, summary.json holds
the diagnosis of the latest recording with its fixes as flags and as code. Between
recordings the model runs torch's own kernels: the cost is one hook per forward call.

Under torchrun (DDP) only rank 0 records and writes; a `torch.compile`d model is watched
through the module it compiled.
"""

from __future__ import annotations

import math
import time
import warnings
from pathlib import Path

import torch
from torch import nn

from rnnscope.checks import choice, integer, number, real
from rnnscope.flow.diagnosis import HISTORY, Context, Diagnosis, diagnose
from rnnscope.flow.gradients import GradientFlow
from rnnscope.flow.probes import snapshot as parameter_copies
from rnnscope.flow.probes import update_ratio
from rnnscope.flow.recording import Recorder
from rnnscope.numerics import flush_denormal
from rnnscope.remedies.guard import TrainingDiverged
from rnnscope.remedies.optim import SummedRate
from rnnscope.rundir.flowlog import FlowLog

NONFINITE = ("warn", "raise")


class Watch:
    """The object `watch` returns; see the module docstring."""

    def __init__(self, model: nn.Module, out: str | Path, every: int = 100, *,
                 nonfinite: str = "warn", flush_subnormals: bool = True,
                 cell_state: bool = False, name: str | None = None,
                 horizon: int | None = None, chance: float | None = None,
                 optimizer: torch.optim.Optimizer | None = None) -> None:
        if not isinstance(out, (str, Path)) or not str(out):
            raise ValueError(f"out: expected a directory path, got {out!r}")
        if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
            raise ValueError(f"optimizer: expected a torch.optim.Optimizer or None, got "
                             f"{type(optimizer).__name__}")
        self.nonfinite = choice("nonfinite", nonfinite, NONFINITE)
        self.flush = bool(flush_subnormals)
        self.out = Path(out)
        self.name = name or self.out.name
        self.main = _rank() == 0
        self.horizon = None if horizon is None else integer("horizon", horizon, 1)
        self.chance = None if chance is None else number("chance", chance, above=0.0)
        self._metric: float | None = None  # the latest held-out metric, via held_out()
        # The optimiser's rates summed over its steps, and at the latest held_out()
        # (`SummedRate`: Adam and AdamW; unknown without the optimiser).
        self._optimizer = optimizer
        self.rates = SummedRate()
        if optimizer is None:
            self.rates.forget()
        self.model = model
        self._before: dict | None = None  # the weights a recorded step started from
        self._largest_update: float | None = None  # of the recorded steps so far
        self.recorder = Recorder(model, every=integer("every", every, 1),
                                 cell_state=cell_state)
        self.history: list[tuple[int, Diagnosis]] = []  # (step, diagnosis) per recording
        self._config = {"watch": {"every": every, "cell_state": bool(cell_state),
                                  "nonfinite": nonfinite, "flush_subnormals": self.flush,
                                  "name": self.name},
                        "model": _describe(model, self.recorder)}
        self._log: FlowLog | None = None
        self._started = 0.0
        self._last_loss: float | None = None

    @property
    def step(self) -> int:
        """Training steps so far (backward passes, as `record` counts them)."""
        return self.recorder.step

    def __enter__(self) -> Watch:
        if self.main:  # ranks > 0 train unwatched: rank 0 speaks for all
            self._log = FlowLog(self.out, self._config, self.name)
            self.recorder.on_step(self._step_opens)
            self.recorder.on_recorded(self._probe)
            self.recorder.__enter__()
            if self._optimizer is not None:
                self.rates.follow(self._optimizer)
        if self.flush:
            flush_denormal(True)
        self._started = time.perf_counter()
        return self

    def log(self, **scalars) -> None:
        """Numbers of the current training step (0-d tensors are read here)."""
        if self._log is None:
            return
        self._log.scalars(max(self.step, 1), **scalars)
        loss = self._log.last_scalars.get("loss")
        if loss is not None:
            self._last_loss = loss
        bad = sorted(key for key, value in self._log.last_scalars.items()
                     if not math.isfinite(value))
        if bad:
            self._nonfinite(f"step {self.step}: {', '.join(bad)} not finite")

    def held_out(self, metric) -> None:
        """The latest held-out metric (lower is better; a 0-d tensor is read here): logged
        as `held_out_metric` and, against `chance`, told to the diagnosis (an Elman RNN
        or a GRU still at chance is read for what it will keep, not what it reaches)."""
        value = real("metric", metric)
        # A NaN or inf metric tells nothing of chance; `nonfinite` decides what log does.
        self._metric = value if math.isfinite(value) else None
        self.rates.mark_evaluated()
        self.log(held_out_metric=value)

    def _step_opens(self, step: int, recorded: bool) -> None:
        # The weights before a recorded step's update: at the next step's first forward
        # the update is done, and its size tells a stalled run (lr too small) apart.
        self._before = parameter_copies(self.model) if recorded else None

    def _context(self, step: int) -> Context:
        ratio = None
        if self._before is not None:
            ratio = float(update_ratio(self._before, dict(self.model.named_parameters()))[
                "update_ratio_total"])
        context = Context(horizon=self.horizon, update_ratio=ratio or None,
                          earlier_reach=tuple(d.reach for _, d in self.history[-HISTORY:]),
                          earlier_faint=tuple(d.evidence["reach_faint"]
                                              for _, d in self.history[-HISTORY:]),
                          largest_update=self._largest_update, initial=step <= 1,
                          metric=self._metric, chance=self.chance,
                          lr_total=self.rates.evaluated)
        if ratio and math.isfinite(ratio):
            self._largest_update = max(self._largest_update or 0.0, ratio)
        return context

    def _probe(self, step: int, flow: GradientFlow) -> None:
        cell = self.recorder.cell()
        diagnosis = diagnose(flow, current={"cell": cell} if cell else None,
                             context=self._context(step))
        self.history.append((step, diagnosis))
        self._log.probe(step, flow, diagnosis)
        if diagnosis.verdict == "nonfinite":
            self._nonfinite(f"step {step}: {diagnosis.evidence.get('nonfinite')} NaN/inf "
                            "values in the gradient through time")

    def _nonfinite(self, problem: str) -> None:
        message = f"watch: {problem}; try gradient clipping or a lower learning rate"
        if self.nonfinite == "raise":
            raise TrainingDiverged(message)
        warnings.warn(message, stacklevel=3)

    def __exit__(self, exc_type, exc, traceback) -> bool:
        self.rates.stop()
        try:
            if self._log is not None:
                self.recorder.__exit__(exc_type, exc, traceback)
                self._log.close(self._summary(exc_type, exc))
        finally:
            if self.flush:
                flush_denormal(False)
        return False

    def _summary(self, exc_type, exc) -> dict:
        status = ("watched" if exc_type is None else "interrupted"
                  if issubclass(exc_type, KeyboardInterrupt) else "diverged"
                  if issubclass(exc_type, TrainingDiverged) else "failed")
        summary = {"status": status, "source": "watch", "name": self.name,
                   "steps": self.step, "probes": len(self.history),
                   "seconds": round(time.perf_counter() - self._started, 3),
                   "final_loss": self._last_loss, "run_dir": str(self.out),
                   "message": "" if exc is None else str(exc).splitlines()[0][:500]}
        if self.recorder.recorded:  # the latest recording, with the model's evidence
            latest = self.history[-1][0] if self.history else self.step
            earlier = [d for _, d in self.history[-HISTORY - 1:-1]]  # the latest is "now"
            context = Context(horizon=self.horizon,
                              earlier_reach=tuple(d.reach for d in earlier),
                              earlier_faint=tuple(d.evidence["reach_faint"] for d in earlier),
                              largest_update=self._largest_update, initial=latest <= 1,
                              metric=self._metric, chance=self.chance,
                              lr_total=self.rates.evaluated)
            summary.update(diagnose(self.recorder, context=context).report_fields())
        return summary


def watch(model: nn.Module, out: str | Path, every: int = 100, *, nonfinite: str = "warn",
          flush_subnormals: bool = True, cell_state: bool = False,
          name: str | None = None, horizon: int | None = None,
          chance: float | None = None,
          optimizer: torch.optim.Optimizer | None = None) -> Watch:
    """Watch the gradient flow through time over your own training loop; writes the run
    directory `out` (`rnnscope report OUT` renders it). A context manager with
    `.log(**scalars)`; see `rnnscope.training.watch`.

    `every`: record the first training step and every `every`-th (backward passes).
    `nonfinite`: "warn" (default) or "raise" (TrainingDiverged) when a recording or a
    logged number holds NaN/inf. `flush_subnormals`: flush subnormal floats to zero on
    every thread while watching (on by default: vanishing gradients underflow into them
    and x86 CPUs process them many times slower). `cell_state`: record dL/dc_t too.
    `horizon`: the steps back your task needs the gradient to carry (its longest
    dependency); the diagnosis holds the reach against it (default: the sequence length).
    `chance`: your held-out metric for a model that ignores its inputs (e.g. 1/6, the
    adding problem's MSE); with `w.held_out(metric)` the diagnosis knows whether the
    model has learnt anything yet. `optimizer`: yours; when it is Adam or AdamW (each
    weight moves by about the rate per update) the rates of its steps, summed up to each
    `held_out`, tell the diagnosis how long the model has trained at chance (a tanh RNN
    still at chance after 50 updates at 1e-2 on a task over 20 steps, or no better than
    chance on one of 10-20, did not learn it in rnnscope's diagnosis suite).
    """
    return Watch(model, out, every, nonfinite=nonfinite, flush_subnormals=flush_subnormals,
                 cell_state=cell_state, name=name, horizon=horizon, chance=chance,
                 optimizer=optimizer)


def _rank() -> int:
    distributed = torch.distributed
    return distributed.get_rank() if distributed.is_available() and \
        distributed.is_initialized() else 0


def _describe(model: nn.Module, recorder: Recorder) -> dict:
    """What was watched, for config.yaml: the class, its size and what record follows."""
    return {"class": type(model).__name__,
            "parameters": sum(p.numel() for p in model.parameters()),
            "recurrent_layers": [name for name, _ in recorder.layers],
            "cells": [name for name, _ in recorder.cells]}
