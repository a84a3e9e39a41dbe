"""Truncated BPTT under manual optimisation: Lightning 1.x's `truncated_bptt_steps` for a
Lightning 2.x module (`truncated_bptt_step`, and the `TruncatedBPTT` mixin around it)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from lightning.pytorch import LightningModule
from torch import Tensor

from rnnscope.checks import choice, number
from rnnscope.flow.bptt import detach_state, window_bounds

UPDATES = ("window", "batch")
CLIP_ALGORITHMS = ("norm", "value")


@dataclass(frozen=True)
class BPTTWindow:
    """Where a window lies in its batch: steps [start, stop) of `steps`, number `index`
    of `count`."""

    index: int
    start: int
    stop: int
    count: int
    steps: int

    @property
    def last(self) -> bool:
        return self.index == self.count - 1


@dataclass
class TBPTTResult:
    loss: Tensor  # sum of the window losses, detached (0 when no window had a loss)
    state: object  # the final state, detached: pass it as `state=` to carry it on
    windows: list[BPTTWindow]
    updates: int  # optimiser steps taken


# window_step(chunk, state, window) -> (loss or None, state); None: the window has no loss
WindowStep = Callable[[object, object, BPTTWindow], tuple[Tensor | None, object]]


def _sequence_length(batch, time_dim: int) -> int | None:
    if isinstance(batch, Tensor):
        return batch.shape[time_dim] if batch.dim() > time_dim else None
    values = batch.values() if isinstance(batch, Mapping) else \
        batch if isinstance(batch, (list, tuple)) else ()
    for value in values:
        steps = _sequence_length(value, time_dim)
        if steps is not None:
            return steps
    return None


def split_batch(batch, start: int, stop: int, *, steps: int, time_dim: int = 1):
    """Steps [start, stop) of every tensor in `batch` (nested lists, tuples and dicts)
    whose size along `time_dim` is `steps`; any other value is passed whole (e.g. one
    label per sequence)."""
    if isinstance(batch, Tensor):
        if batch.dim() > time_dim and batch.shape[time_dim] == steps:
            return batch.narrow(time_dim, start, stop - start)
        return batch
    if isinstance(batch, Mapping):
        return {key: split_batch(value, start, stop, steps=steps, time_dim=time_dim)
                for key, value in batch.items()}
    if isinstance(batch, (list, tuple)):
        parts = [split_batch(value, start, stop, steps=steps, time_dim=time_dim)
                 for value in batch]
        return type(batch)(*parts) if hasattr(batch, "_fields") else type(batch)(parts)
    return batch


def truncated_bptt_step(module: LightningModule, batch, window_step: WindowStep, *,
                        window: int | None, state=None, time_dim: int = 1,
                        update: str = "window", gradient_clip_val: float | None = None,
                        gradient_clip_algorithm: str = "norm", optimizer=None) -> TBPTTResult:
    """Truncated BPTT for one batch, from a `training_step` under manual optimisation.

        batch   x_1 ....... x_k | x_k+1 ...... x_2k | x_2k+1 ... x_T
        state   h_0 ──────────> h_k ─//─────────> h_2k ─//──────> h_T
        backward    <─────────      <───────────       <───────
                     window 1        window 2           window 3
        update="window": zero_grad, backward, clip, step after each window (Lightning 1.x)
        update="batch":  gradients of all windows add up in .grad; clip and step once

    `window_step(chunk, state, window)` runs the model on one window of the batch
    (`split_batch`, along `time_dim`; 1 is batch-first, as 1.x) and returns its
    loss (None: no loss in this window, so no backward and no step) and the new
    state. `window=None` is one window: full BPTT. The state starts as `state`
    (None: the model's zeros, as 1.x's `hiddens` at every batch).

    Clipping (`gradient_clip_val`, "norm" or "value", Lightning's `clip_gradients`)
    runs where automatic optimisation runs it: inside `optimizer.step()`, after
    the AMP gradient scaler has unscaled the gradients and after the
    `on_before_optimizer_step` hooks. Clipping before `optimizer.step()`, as
    Lightning's manual-optimisation example does, clips scaled gradients under
    16-bit AMP (Lightning issue 18089). Learning-rate schedulers are not stepped.
    """
    optimizer = _checked(module, update, gradient_clip_val, gradient_clip_algorithm, optimizer)
    steps = _sequence_length(batch, time_dim)
    if steps is None:
        raise ValueError(f"batch: no tensor with a time dimension {time_dim} to split")
    bounds = window_bounds(steps, window)
    windows = [BPTTWindow(i, start, stop, len(bounds), steps)
               for i, (start, stop) in enumerate(bounds)]
    total, updates, pending = None, 0, False
    for span in windows:
        # Why detach: the previous window's graph was freed by its backward pass, and
        # the cut is what bounds this window's backward (and its cost) to k steps.
        state = detach_state(state)
        chunk = split_batch(batch, span.start, span.stop, steps=steps, time_dim=time_dim)
        if not pending:
            optimizer.zero_grad()  # before, not after, so the last update's .grad stays readable
        loss, state = window_step(chunk, state, span)
        if loss is None:
            continue
        module.manual_backward(loss)
        total = loss.detach() if total is None else total + loss.detach()
        pending = True
        if update == "window" or span.last:
            _step(module, optimizer, gradient_clip_val, gradient_clip_algorithm)
            updates, pending = updates + 1, False
    if pending:  # update="batch" and the last window had no loss
        _step(module, optimizer, gradient_clip_val, gradient_clip_algorithm)
        updates += 1
    if total is None:
        total = torch.zeros((), device=module.device)
    return TBPTTResult(total, detach_state(state), windows, updates)


def _checked(module: LightningModule, update: str, clip_val: float | None, algorithm: str,
             optimizer):
    """The optimiser to step, once the arguments are checked."""
    if module.automatic_optimization:
        raise ValueError("truncated_bptt_step: needs manual optimisation; set "
                         "`self.automatic_optimization = False` in the module's __init__")
    choice("update", update, UPDATES)
    choice("gradient_clip_algorithm", algorithm, CLIP_ALGORITHMS)
    if clip_val is not None:
        number("gradient_clip_val", clip_val, above=0)
    if optimizer is None:
        optimizer = module.optimizers()
        if isinstance(optimizer, list):
            raise ValueError(f"optimizer: the module has {len(optimizer)} optimisers; "
                             "pass the one to step")
    return optimizer


def _step(module: LightningModule, optimizer, clip_val: float | None, algorithm: str) -> None:
    """`optimizer.step()`, clipping inside it after unscaling (see `truncated_bptt_step`)."""
    if clip_val is None:
        optimizer.step()
        return
    # Lightning calls the module's on_before_optimizer_step from inside step(), after
    # unscaling; an instance attribute shadows the method for this one step.
    saved = module.__dict__.get("on_before_optimizer_step")
    hook = module.on_before_optimizer_step

    def hook_then_clip(opt) -> None:
        hook(opt)
        module.clip_gradients(opt, gradient_clip_val=clip_val, gradient_clip_algorithm=algorithm)

    module.on_before_optimizer_step = hook_then_clip
    try:
        optimizer.step()
    finally:
        if saved is None:
            module.__dict__.pop("on_before_optimizer_step", None)
        else:
            module.on_before_optimizer_step = saved


class TruncatedBPTT:
    """Mixin: Lightning 1.x's `truncated_bptt_steps` for a Lightning 2.x module.

        class Model(TruncatedBPTT, lightning.LightningModule):
            truncated_bptt_steps = 50
            def __init__(self):
                super().__init__()
                self.automatic_optimization = False
                ...
            def tbptt_window_step(self, chunk, state, window):
                x, y = chunk
                output, state = self.rnn(x, state)
                return loss_fn(self.head(output), y), state

    Its `training_step` runs `truncated_bptt_step` with the class attributes below
    and returns the batch loss (detached). `window=None` (the default) is full BPTT.
    """

    truncated_bptt_steps: int | None = None
    tbptt_time_dim: int = 1
    tbptt_update: str = "window"
    tbptt_gradient_clip_val: float | None = None
    tbptt_gradient_clip_algorithm: str = "norm"

    def training_step(self, batch, batch_idx: int) -> Tensor:
        window_step = getattr(self, "tbptt_window_step", None)
        if not callable(window_step):
            raise TypeError("TruncatedBPTT: define tbptt_window_step(chunk, state, window) "
                            "-> (loss or None, state) on the module")
        result = truncated_bptt_step(
            self, batch, window_step, window=self.truncated_bptt_steps,
            time_dim=self.tbptt_time_dim, update=self.tbptt_update,
            gradient_clip_val=self.tbptt_gradient_clip_val,
            gradient_clip_algorithm=self.tbptt_gradient_clip_algorithm)
        return result.loss
