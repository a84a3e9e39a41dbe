"""Lightning 2.x: a gradient-flow callback, and truncated BPTT under manual optimisation.

    trainer = lightning.Trainer(callbacks=[GradientFlowCallback(every=100)])

`GradientFlowCallback` records dL/dh_t for every recurrent layer of the
LightningModule (torch's `nn.RNN`/`nn.LSTM`/`nn.GRU` and rnnscope's `Recurrent`)
on a schedule of training batches, diagnoses it and logs verdict, reach and rate
to the trainer's loggers; a non-finite gradient stops training.

`truncated_bptt_step` (and the `TruncatedBPTT` mixin around it) brings back
Lightning 1.x's `truncated_bptt_steps`, removed in 2.0: the batch is cut into
windows along time, the hidden state is carried and detached between windows,
each window is backpropagated with `manual_backward`, and the optimiser steps
after every window (as 1.x did) or once per batch, with gradient clipping done
where automatic optimisation does it (after AMP unscaling).

Needs Lightning 2.x: pip install 'rnnscope[lightning]'. `import rnnscope` never
imports this module or Lightning.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from rnnscope.bptt import detach_state, window_bounds
from rnnscope.cells import cell_name, require_recurrent
from rnnscope.diagnosis import VERDICTS, Diagnosis, diagnose
from rnnscope.fields import choice, integer, number
from rnnscope.recording import GradientFlow, Recorder, record

try:
    import lightning
    from lightning.pytorch import Callback, LightningModule, Trainer
    from lightning.pytorch.utilities import rank_zero_warn
except ImportError as error:
    raise ImportError(
        "rnnscope.integrations.lightning needs Lightning 2.x (the `lightning` package): "
        "pip install 'rnnscope[lightning]'"
    ) from error

if int(lightning.__version__.split(".")[0]) < 2:
    raise ImportError(
        f"rnnscope.integrations.lightning needs Lightning 2.x, found {lightning.__version__}: "
        "pip install 'rnnscope[lightning]'"
    )

__all__ = [
    "BPTTWindow",
    "GradientFlowCallback",
    "TBPTTResult",
    "TruncatedBPTT",
    "flow_metrics",
    "rescaled_flow",
    "split_batch",
    "truncated_bptt_step",
]

UPDATES = ("window", "batch")
CLIP_ALGORITHMS = ("norm", "value")


def flow_metrics(diagnosis: Diagnosis, prefix: str = "rnnscope/") -> dict[str, float]:
    """The numbers the callback logs for one diagnosis (a pure function; the caller logs).

    <prefix>reach, rate, steps       as in `Diagnosis` (steps: the recorded sequence length)
    <prefix>verdict                  the verdict as a code: its index in VERDICTS,
                                     0 vanishing, 1 exploding, 2 healthy, 3 nonfinite
    <prefix>verdict_<name>           1.0 for the verdict, 0.0 for the three others
    <prefix>norm_at_loss             ||dL/dh_t|| where the loss enters (best layer)
    <prefix>norm_at_first_step       ||dL/dh_t|| at the far end of the sequence
    <prefix>nonfinite                count of NaN/inf entries of dL/dh_t
    <prefix>underflow_fraction       zero or subnormal share of the dL/dh_t entries
    """
    evidence = diagnosis.evidence
    metrics = {
        f"{prefix}reach": float(diagnosis.reach),
        f"{prefix}rate": float(diagnosis.rate),
        f"{prefix}steps": float(diagnosis.steps),
        f"{prefix}verdict": float(VERDICTS.index(diagnosis.verdict)),
    }
    metrics.update({f"{prefix}verdict_{name}": float(diagnosis.verdict == name)
                    for name in VERDICTS})
    for key in ("norm_at_loss", "norm_at_first_step", "nonfinite", "underflow_fraction"):
        metrics[f"{prefix}{key}"] = float(evidence[key])
    return metrics


def rescaled_flow(flow: GradientFlow, factor: float) -> GradientFlow:
    """`flow` with its norms multiplied by `factor`: the flow of `factor` times the loss.

    Backpropagation is linear in the loss, so this is what recording that loss would
    give (exactly, for a power of two such as an AMP scale). Verdict, reach and rate
    are unchanged; counts and fractions of entries describe the backward that ran."""
    per_sample = None if flow.per_sample is None else flow.per_sample * factor
    return replace(flow, norms=flow.norms * factor, per_sample=per_sample)


class GradientFlowCallback(Callback):
    """Record, diagnose and log the gradient flow through time every `every` batches.

    Schedule: the first training batch, then every `every`-th (1-based: batches
    `every`, `2*every`, ...; counted across epochs), as rnnscope's own trainer does
    with `--probe.every`. On a due batch `on_train_batch_start` enters
    `rnnscope.record(pl_module)`, so the recurrent layers run unrolled for that
    batch only; `on_train_batch_end` reads the flow after every backward pass of
    the batch, which works the same under automatic and manual optimisation. On
    any other batch the hooks compare one integer and the model runs torch's own
    kernels: nothing is recorded or slowed.

    What is read: each recurrent layer's latest recorded forward that received
    gradient, diagnosed from the flow alone (`diagnose(flow)`: verdict, reach and
    rate as from the recorder, without the Lyapunov exponent, which costs T*B*S^2
    numbers per record). With several backward passes per batch through different forwards
    (truncated BPTT), that is the last window: reach cannot exceed the window.

    The norms are those of the loss `training_step` returned (or passed to
    `manual_backward`), not of the loss Lightning backpropagated: they are divided
    by the AMP gradient scaler's scale of the batch's last backward pass and, under
    automatic optimisation, multiplied by `accumulate_grad_batches` (Lightning
    divides the loss by it).

    With an enabled gradient scaler (`precision="16-mixed"`), every recorded batch
    also logs `<prefix>amp_scale` (the scale of that backward) and
    `<prefix>amp_overflow`: 1.0 when the scaler lowered its scale after it or the
    flow is non-finite. The scaler skips the optimiser step of such a batch, so it
    is not a "nonfinite" verdict: its non-finite flow is neither logged nor kept,
    and training goes on.

    Logged to every logger in `trainer.loggers` (see `flow_metrics` for the keys),
    at the same step as the module's own `self.log` values of that batch (Lightning's
    `log_every_n_steps` does not apply: the schedule is `every`). The latest
    results stay on the callback: `last_flow`, `last_diagnosis`, `last_step`.

    `stop_on_nonfinite`: a "nonfinite" verdict sets `trainer.should_stop` (decided
    across processes under DDP). The optimiser step of that batch has already run.
    """

    def __init__(self, every: int = 100, stop_on_nonfinite: bool = True,
                 prefix: str = "rnnscope/") -> None:
        super().__init__()
        self.every = integer("every", every, 1)
        self.stop_on_nonfinite = bool(stop_on_nonfinite)
        if not isinstance(prefix, str):
            raise ValueError(f"prefix: must be a string, got {prefix!r}")
        self.prefix = prefix
        self.last_flow: GradientFlow | None = None
        self.last_diagnosis: Diagnosis | None = None
        self.last_step: int | None = None
        self._recorder: Recorder | None = None
        self._step = 0
        self._backward_scale: float | None = None
        self._warned_empty = False

    def due(self, batch: int) -> bool:
        """Whether training batch `batch` (0-based, across epochs) is recorded."""
        return batch == 0 or (batch + 1) % self.every == 0

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage == "fit":  # fail before training, not at the first due batch
            require_recurrent(pl_module, field="GradientFlowCallback: the LightningModule")

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch,
                             batch_idx: int) -> None:
        if not self.due(trainer.fit_loop.total_batch_idx):
            return
        # The x-axis of the module's own step metrics; read now because Lightning
        # advances it after on_train_batch_end.
        self._step = getattr(trainer.fit_loop.epoch_loop, "_batches_that_stepped",
                             trainer.global_step)
        self._backward_scale = None
        self._recorder = record(pl_module).__enter__()

    def on_before_backward(self, trainer: Trainer, pl_module: LightningModule,
                           loss: Tensor) -> None:
        # Lightning has just multiplied the loss by the scaler's scale; the scaler may
        # change it at the optimiser step (truncated BPTT: between windows), so read it
        # here, at every backward pass of a recorded batch (one host sync each).
        if self._recorder is None:
            return  # not a recorded batch: nothing to read
        scaler = _enabled_scaler(trainer)
        if scaler is not None:
            self._backward_scale = float(scaler.get_scale())

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        recorder = self._close()
        if recorder is None:
            return
        scaler = _enabled_scaler(trainer)
        scale = self._backward_scale if scaler is not None else None
        diagnosis, overflow = None, False
        if recorder.recorded:
            # Lightning backpropagated loss * scale / accumulate_grad_batches.
            accumulate = trainer.accumulate_grad_batches if pl_module.automatic_optimization \
                else 1
            flow = rescaled_flow(recorder.flow, accumulate / (scale or 1.0))
            diagnosis = diagnose(flow, current={"cell": cell_name(recorder.layers[0][1])})
            metrics = {}
            if scale is not None:
                overflow = scaler.get_scale() < scale or diagnosis.verdict == "nonfinite"
                metrics = {f"{self.prefix}amp_scale": scale,
                           f"{self.prefix}amp_overflow": float(overflow)}
            if not (overflow and diagnosis.verdict == "nonfinite"):
                self.last_flow, self.last_diagnosis, self.last_step = flow, diagnosis, self._step
                metrics.update(flow_metrics(diagnosis, self.prefix))
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=self._step)
        elif not self._warned_empty:
            self._warned_empty = True
            rank_zero_warn("GradientFlowCallback: a due batch ran no backward pass through "
                           "a recorded recurrent forward; nothing was logged for it")
        if self.stop_on_nonfinite:
            # Every process takes this branch on the same batches, so the collective is safe.
            # An AMP overflow is the scaler's to handle: it skips the step and lowers its scale.
            nonfinite = diagnosis is not None and diagnosis.verdict == "nonfinite" \
                and not overflow
            if trainer.strategy.reduce_boolean_decision(nonfinite, all=False):
                trainer.should_stop = True
                rank_zero_warn(f"GradientFlowCallback: non-finite gradient through time at "
                               f"step {self._step}; stopping training")

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._close()  # a due batch that ended the epoch early (-1) had no end hook

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._close()

    def on_exception(self, trainer: Trainer, pl_module: LightningModule,
                     exception: BaseException) -> None:
        self._close()  # the model must not stay unrolled after a failed batch

    def _close(self) -> Recorder | None:
        recorder, self._recorder = self._recorder, None
        if recorder is not None:
            recorder.__exit__(None, None, None)
        return recorder


def _enabled_scaler(trainer: Trainer):
    """The AMP gradient scaler of `precision="16-mixed"`, or None (none, or disabled)."""
    scaler = getattr(trainer.precision_plugin, "scaler", None)
    return scaler if scaler is not None and scaler.is_enabled() else None


# ---------------------------------------------------------------------------------------
# Truncated BPTT under manual optimisation


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
    if module.automatic_optimization:
        raise ValueError("truncated_bptt_step: needs manual optimisation; set "
                         "`self.automatic_optimization = False` in the module's __init__")
    choice("update", update, UPDATES)
    choice("gradient_clip_algorithm", gradient_clip_algorithm, CLIP_ALGORITHMS)
    if gradient_clip_val is not None:
        number("gradient_clip_val", gradient_clip_val, above=0)
    if optimizer is None:
        optimizer = module.optimizers()
        if isinstance(optimizer, list):
            raise ValueError(f"optimizer: the module has {len(optimizer)} optimisers; "
                             "pass the one to step")
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
