"""`GradientFlowCallback`: the gradient flow through time of a LightningModule, recorded,
diagnosed and logged on a schedule of training batches."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from rnnscope.checks import integer, number, real
from rnnscope.flow.diagnosis import HISTORY, VERDICTS, Context, Diagnosis, diagnose
from rnnscope.flow.gradients import GradientFlow
from rnnscope.flow.recording import Recorder, record
from rnnscope.models.recurrent import require_recurrent
from rnnscope.remedies.optim import SummedRate
from rnnscope.rundir.flowlog import FlowLog
from rnnscope.schedules import Every


def flow_metrics(diagnosis: Diagnosis, prefix: str = "rnnscope/") -> dict[str, float]:
    """The numbers the callback logs for one diagnosis (a pure function; the caller logs).

    <prefix>reach, rate, steps       as in `Diagnosis` (steps: the recorded sequence length)
    <prefix>verdict                  the verdict as a code: its index in VERDICTS,
                                     0 vanishing, 1 exploding, 2 healthy, 3 nonfinite,
                                     4 truncated, 5 stalled
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
    aligned = None if flow.aligned is None else flow.aligned * factor
    return replace(flow, norms=flow.norms * factor, per_sample=per_sample, aligned=aligned)


class GradientFlowCallback(Callback):
    """Record, diagnose and log the gradient flow through time every `every` batches.

    Schedule: the first training batch, then every `every`-th (1-based: batches
    `every`, `2*every`, ...; counted across epochs), as rnnscope's own trainer does
    with `--probe.every`. On a due batch `on_train_batch_start` enters
    `rnnscope.record(pl_module)`, so the recurrent layers are recorded for that
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

    `out`: also write an rnnscope run directory there (rank 0; refused where one exists),
    as `rnnscope.watch` does: a probe line per recording, the training loss of every
    batch (`training_step`'s returned loss: one host read per batch), TensorBoard
    images, and summary.json with the latest diagnosis and its fixes when training
    ends. `rnnscope report OUT` renders it.

    What the diagnosis is told besides the flow: the reach at the callback's earlier
    recordings, whether this is the first batch (the initial weights), `horizon` (the
    steps back your task needs; default: the recorded length) and, with `monitor` (a
    key of `trainer.callback_metrics`, your held-out metric, lower is better) and
    `chance` (that metric for a model that ignores its inputs), whether the model has
    left chance yet (an Elman RNN or a GRU still at chance is read for what it will
    keep, not for what it reaches now), and, when the (first) optimiser is Adam or
    AdamW, the rates of its steps summed up to the latest validation: how long the
    model has trained at chance (a tanh RNN still at chance after 50 updates at 1e-2 on
    a task over 20 steps, or no better than chance on one of 10-20, did not learn it in
    rnnscope's diagnosis suite).
    """

    def __init__(self, every: int = 100, stop_on_nonfinite: bool = True,
                 prefix: str = "rnnscope/", out: str | Path | None = None, *,
                 horizon: int | None = None, monitor: str | None = None,
                 chance: float | None = None) -> None:
        super().__init__()
        self.horizon = None if horizon is None else integer("horizon", horizon, 1)
        if monitor is not None and (not isinstance(monitor, str) or not monitor):
            raise ValueError(f"monitor: must be a key of trainer.callback_metrics, got "
                             f"{monitor!r}")
        self.monitor = monitor
        self.chance = None if chance is None else number("chance", chance, above=0.0)
        if (monitor is None) != (chance is None):
            raise ValueError("monitor, chance: give both (the held-out metric's key and its "
                             "chance level) or neither")
        self.reaches: list[int] = []  # the reach at each kept recording, oldest first
        # The first optimiser's rates summed over its steps so far, and at the latest
        # validation (`SummedRate`: Adam and AdamW; None for others).
        self.rates = SummedRate()
        self.faint_reaches: list[int] = []  # the same, within 1e-6 of the peak
        self.every = integer("every", every, 1)
        self.schedule = Every(self.every, first=True)
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
        if out is not None and (not isinstance(out, (str, Path)) or not str(out)):
            raise ValueError(f"out: expected a directory path, got {out!r}")
        self.out = None if out is None else Path(out)
        self._log: FlowLog | None = None
        self._probes = 0
        self._last_loss: float | None = None

    def context(self, trainer: Trainer) -> Context:
        """What the diagnosis of the current batch's flow is told besides the flow."""
        metric = None
        if self.monitor is not None and self.monitor in trainer.callback_metrics:
            try:
                value = real(self.monitor, trainer.callback_metrics[self.monitor])
            except ValueError:  # not one number (a tensor of several): nothing known
                value = math.nan
            metric = value if math.isfinite(value) else None
        return Context(horizon=self.horizon, initial=self._step == 0,
                       earlier_reach=tuple(self.reaches[-HISTORY:]),
                       earlier_faint=tuple(self.faint_reaches[-HISTORY:]), metric=metric,
                       chance=self.chance,
                       lr_total=self.rates.evaluated if metric is not None else None)

    def state_dict(self) -> dict:
        """The reach histories, so that a resumed fit tells the diagnosis the same."""
        return {"reaches": list(self.reaches), "faint_reaches": list(self.faint_reaches),
                **self.rates.state_dict()}

    def load_state_dict(self, state_dict: dict) -> None:
        self.reaches = list(state_dict.get("reaches", []))
        self.faint_reaches = list(state_dict.get("faint_reaches", self.reaches))
        self.rates.load_state_dict(state_dict)  # a state of before: unknown

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # The first optimiser's real steps (manual or automatic optimisation alike).
        if trainer.optimizers:
            self.rates.follow(trainer.optimizers[0])
        else:
            self.rates.forget()

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.rates.stop()

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.sanity_checking:  # the sanity check validates before any update
            self.rates.mark_evaluated()

    def due(self, batch: int) -> bool:
        """Whether training batch `batch` (0-based, across epochs) is recorded: step
        batch + 1 of `schedules.every(every, first=True)`."""
        return self.schedule.due(batch + 1)

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        # Fail before training, not at the first due batch.
        layers = require_recurrent(pl_module, field="GradientFlowCallback: the LightningModule")
        if self.out is not None and trainer.is_global_zero and self._log is None:
            self._log = FlowLog(self.out, {
                "lightning": {"every": self.every, "stop_on_nonfinite": self.stop_on_nonfinite},
                "model": {"class": type(pl_module).__name__,
                          "parameters": sum(p.numel() for p in pl_module.parameters()),
                          "recurrent_layers": [name for name, _ in layers]}})

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
        self._log_loss(trainer, outputs)
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
            cell = recorder.cell()
            diagnosis = diagnose(flow, current={"cell": cell} if cell else None,
                                 context=self.context(trainer))
            metrics = {}
            if scale is not None:
                overflow = scaler.get_scale() < scale or diagnosis.verdict == "nonfinite"
                metrics = {f"{self.prefix}amp_scale": scale,
                           f"{self.prefix}amp_overflow": float(overflow)}
            if not (overflow and diagnosis.verdict == "nonfinite"):
                self.last_flow, self.last_diagnosis, self.last_step = flow, diagnosis, self._step
                self.reaches.append(diagnosis.reach)
                self.faint_reaches.append(diagnosis.evidence["reach_faint"])
                metrics.update(flow_metrics(diagnosis, self.prefix))
                if self._log is not None:
                    self._log.probe(self._step, flow, diagnosis)
                    self._probes += 1
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

    def _log_loss(self, trainer: Trainer, outputs) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if self._log is not None and isinstance(loss, Tensor) and loss.numel() == 1:
            step = getattr(trainer.fit_loop.epoch_loop, "_batches_that_stepped",
                           trainer.global_step)
            self._log.scalars(step, loss=loss)
            self._last_loss = self._log.last_scalars["loss"]

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._close()  # a due batch that ended the epoch early (-1) had no end hook

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._close()
        self._write_summary(trainer, "finished", "")

    def on_exception(self, trainer: Trainer, pl_module: LightningModule,
                     exception: BaseException) -> None:
        self._close()  # the model must not stay unrolled after a failed batch
        self.rates.stop()
        status = "interrupted" if isinstance(exception, KeyboardInterrupt) else "failed"
        self._write_summary(trainer, status, str(exception).splitlines()[0][:500]
                            if str(exception) else type(exception).__name__)

    def _write_summary(self, trainer: Trainer, status: str, message: str) -> None:
        log, self._log = self._log, None
        if log is None:
            return
        summary = {"status": status, "source": "lightning", "name": log.run.path.name,
                   "steps": trainer.global_step, "probes": self._probes,
                   "final_loss": self._last_loss, "run_dir": str(log.run.path),
                   "message": message}
        if self.last_diagnosis is not None:  # the latest recording, from its flow alone
            summary.update(self.last_diagnosis.report_fields())
        log.close(summary)

    def _close(self) -> Recorder | None:
        recorder, self._recorder = self._recorder, None
        if recorder is not None:
            recorder.__exit__(None, None, None)
        return recorder


def _enabled_scaler(trainer: Trainer):
    """The AMP gradient scaler of `precision="16-mixed"`, or None (none, or disabled)."""
    scaler = getattr(trainer.precision_plugin, "scaler", None)
    return scaler if scaler is not None and scaler.is_enabled() else None
