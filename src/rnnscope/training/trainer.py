"""The training loop: one task, one model, the remedies, and named events.

The loop knows nothing of logging, checkpoints or the NaN guard: they listen to
its events (minGPT's trainer "has nothing to do with GPT"):

    after_backward(step)  gradients (and, on the probe schedule, the gradient flow
                          through time) are in; nothing is clipped yet
    before_step(step)     clipped; the guard may veto the update or roll back
    after_step(step)      the optimiser has stepped; loggers write the step
    on_eval(evaluation)   held-out loss and metric, on the eval schedule
    on_checkpoint(trainer)  the state to save, on the checkpoint schedule and at the end

`train(config)` (run.py) wires the run directory, TensorBoard, the progress bar and
checkpoints to these events; `Trainer` alone is the bare loop for library use.
Under torchrun the trainer is given a `ProcessGroup` (distributed.py):
each rank trains on its rows of the global batch, and gradients, loss and gradient
flow are reduced across ranks before anything reads them.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from rnnscope.checks import integer
from rnnscope.flow.bptt import BPTTResult, join_flows, truncated_bptt
from rnnscope.flow.diagnosis import HISTORY, Context, Diagnosis, chance_level, diagnose
from rnnscope.flow.gradients import GradientFlow
from rnnscope.flow.probes import grad_norms, update_ratio
from rnnscope.flow.probes import snapshot as parameter_copies
from rnnscope.remedies.clipping import Clipper, ClipResult
from rnnscope.remedies.guard import Guard, TrainingDiverged
from rnnscope.remedies.optim import LRSchedule, SummedRate, build_optimizer
from rnnscope.schedules import every
from rnnscope.training.config import ExperimentConfig
from rnnscope.training.distributed import LOCAL, SingleProcess
from rnnscope.training.evaluation import Evaluation, HeldOut, held_out_numbers

EVENTS = ("after_backward", "before_step", "after_step", "on_eval", "on_checkpoint")
CHECKPOINT_FIELDS = ("step", "clipped_steps", "model", "optimizer", "schedule", "clipper",
                     "guard", "evaluation", "rng")


@dataclass
class StepState:
    """One optimiser step as listeners see it (numbers read once, after clipping)."""

    step: int  # 1-based: the number of this update
    lr: float
    loss: float = math.nan
    clip: ClipResult | None = None
    grad_norm: float = math.nan  # total L2 norm before clipping
    grad_norm_clipped: float = math.nan
    clipped: bool = False
    finite: bool = True
    flow: GradientFlow | None = None  # on the probe schedule
    diagnosis: Diagnosis | None = None  # of `flow`
    grads: dict[str, Tensor] = field(default_factory=dict)  # for histograms, on the probe schedule
    param_norms: dict[str, float] = field(default_factory=dict)  # on the probe schedule
    skip: bool = False  # set by the guard: no update this step
    action: str | None = None  # what the guard did: "skip" or "rollback"
    clip_rate: float = 0.0  # fraction of the run's steps so far that were clipped
    update_ratio: float | None = None  # ||dtheta|| / ||theta|| of this update, when probed

    def scalars(self) -> dict[str, float]:
        numbers = {"loss": self.loss, "grad_norm": self.grad_norm,
                   "grad_norm_clipped": self.grad_norm_clipped, "lr": self.lr,
                   "clip_rate": self.clip_rate}
        if self.update_ratio is not None:
            numbers["update_ratio"] = self.update_ratio
        return numbers


class Trainer:
    """Builds everything from an `ExperimentConfig` and runs the loop (`fit`).
    `distributed` is this process's share of a data-parallel job (default: the only one)."""

    def __init__(self, config: ExperimentConfig, distributed: SingleProcess = LOCAL) -> None:
        self.config = config
        self.dist = distributed
        if config.run.batch % distributed.world_size:
            raise ValueError(f"run.batch: {config.run.batch} does not split evenly across "
                             f"{distributed.world_size} processes; run.batch is the global "
                             f"batch, use a multiple of {distributed.world_size}")
        self.device = distributed.place(_device(config.run.device))
        torch.manual_seed(config.run.seed)  # initial weights and dropout masks
        self.task = config.task.build()
        for split in ("train", "valid"):  # a data set too small for the batch fails here,
            self.task.batch(config.run.batch, torch.Generator().manual_seed(0), split)
        self.held_out = HeldOut(self.task, config.run.batch, config.run.seed, self.device,
                                getattr(torch, config.run.dtype))
        self.model = config.model.build(self.task.input_size, self.task.output_size)
        config.init.apply(self.model)
        self.model.to(self.device, self.held_out.dtype)
        distributed.fork_rng(config.run.seed)  # dropout masks differ between ranks
        self.optimizer = build_optimizer(self.model.parameters(), config.optim)
        self.schedule = LRSchedule(config.schedule, config.optim.lr, config.run.steps)
        self.clipper = Clipper(config.clip)
        self.probes = config.probe.schedule
        self.evaluations = every(config.run.eval_every)
        self.checkpoints = every(config.run.checkpoint_every)
        self.data = torch.Generator().manual_seed(config.run.seed)
        self.step = 0  # updates done
        self.clipped_steps = 0
        self.evaluation: Evaluation | None = None
        self.reach_history: list[int] = []  # the reach at each probe so far
        self.faint_history: list[int] = []  # the same, within 1e-6 of the peak
        self._last_update: float | None = None
        self.largest_update: float | None = None  # of the probed steps before the latest
        # The rates of the updates so far, summed, and at the latest evaluation (the
        # diagnosis' `Context.lr_total`); None for SGD and RMSprop.
        self.rates = SummedRate()
        self.rates.follow(self.optimizer)
        self.listeners: dict[str, list[Callable]] = {event: [] for event in EVENTS}
        self.guard = Guard(config.guard, snapshot=self.snapshot, restore=self.restore,
                           scale_lr=self.schedule.scale_by)
        self.on("before_step", self.guard.before_step)

    def on(self, event: str, listener: Callable) -> None:
        if event not in self.listeners:
            raise ValueError(f"event: unknown {event!r}; accepted: {', '.join(EVENTS)}")
        self.listeners[event].append(listener)

    def fire(self, event: str, payload) -> None:
        for listener in self.listeners[event]:
            listener(payload)

    # the loop

    def fit(self) -> str:
        """Train until `run.steps` or until solved; returns the status: "solved",
        "finished", or raises TrainingDiverged (the guard gave up)."""
        run = self.config.run
        status = "finished"
        while self.step < run.steps:
            self.train_step()
            last = self.step == run.steps
            if last or self.evaluations.due(self.step):
                evaluation = self.evaluate(shared=True)
                if run.early_stop and evaluation.solved:
                    status = "solved"
            if status == "solved" or last or self.checkpoints.due(self.step):
                self.fire("on_checkpoint", self)
            if status == "solved":
                break
        return status

    def train_step(self) -> StepState:
        step = self.step + 1
        state = StepState(step, lr=self.schedule.apply(self.optimizer, self.step))
        probing = self.probes.due(step)
        result, batch_loss = self._backward(probing)
        if probing:
            self._probe(state, result)
        self.fire("after_backward", state)
        self._clip(state, batch_loss)
        self.fire("before_step", state)  # the guard acts here
        measured = probing and not state.skip  # a skipped step's zero update says nothing
        before = parameter_copies(self.model) if measured else None
        if not state.skip:
            self.optimizer.step()
        if measured:
            state.update_ratio = self._last_update = float(update_ratio(
                before, dict(self.model.named_parameters()))["update_ratio_total"])
        if probing:
            self._diagnose(state)
        self.step = step
        self.clipped_steps += state.clipped
        state.clip_rate = self.clipped_steps / step
        self.fire("after_step", state)
        return state

    def _backward(self, probing: bool) -> tuple[BPTTResult, Tensor]:
        """Forward and backward of one global batch; the batch loss, reduced across ranks.

        In windows of bptt.window steps (bptt.py draws it): each window's share of the
        loss is backpropagated as soon as it is known and the state is detached at the
        cut, so no gradient crosses a window boundary. One window (the default) is full
        BPTT. On the probe schedule every window is recorded, which yields dL/dh_t for
        every layer and step. With N ranks each backpropagates its share of the global
        loss (its mean over its rows, / N).
        """
        # Every rank draws the same global batch and keeps its own rows of it.
        inputs, targets = self.held_out.place(*self.dist.shard(
            *self.task.batch(self.config.run.batch, self.data, "train"),
            time_major_targets=self.task.scored_steps == "every"))
        steps = inputs.shape[0]
        self.optimizer.zero_grad(set_to_none=True)
        result = truncated_bptt(
            self.model, inputs,
            lambda output, start, stop: self.dist.share(
                self.task.window_loss(output, targets, start, stop, steps)),
            window=self.config.bptt.window, record_flow=probing, cell_state=True)
        # The ranks' gradients and losses add up to the global batch's (one process: as is).
        return result, self.dist.reduce_gradients(self.model.parameters(), result.loss)

    def _probe(self, state: StepState, result: BPTTResult) -> None:
        """The gradient flow through time and per-parameter gradient norms, before
        clipping; gradient copies for histograms when asked."""
        if any(flow is not None for flow in result.flows):
            state.flow = self.dist.reduce_flow(join_flows(result.flows, result.windows))
        norms = grad_norms(self.model)
        state.param_norms = dict(zip(norms, torch.stack(list(norms.values())).tolist(),
                                     strict=True))
        if self.config.probe.histograms:
            # Copies: on a CPU .cpu() would alias .grad, which clipping then scales in place.
            state.grads = {name: p.grad.detach().to("cpu", copy=True) for name, p in
                           self.model.named_parameters() if p.grad is not None}

    def _diagnose(self, state: StepState) -> None:
        """The diagnosis of a probed step's flow, once its update is known: how far the
        gradient reaches against the horizon the task needs, the window in force, the
        size of the update and the reach at earlier probes."""
        if state.flow is None:
            return
        state.diagnosis = diagnose(state.flow, lr=state.lr, current=self.config.as_flags(),
                                   context=self.context(state.update_ratio, state.step))
        self.reach_history.append(state.diagnosis.reach)
        self.faint_history.append(state.diagnosis.evidence["reach_faint"])
        if state.update_ratio is not None and math.isfinite(state.update_ratio):
            self.largest_update = max(self.largest_update or 0.0, state.update_ratio)

    def context(self, update: float | None = None, step: int | None = None) -> Context:
        """What the diagnosis is told of this run besides a flow recorded at `step` (from
        1; default: the next step, on the weights as they are now)."""
        evaluation = self.evaluation
        return Context(horizon=self.task.reach_needed, window=self.config.bptt.window,
                       solved=evaluation.solved if evaluation is not None else None,
                       metric=evaluation.metric if evaluation is not None else None,
                       chance=chance_level(self.task),
                       update_ratio=update if update is not None else self.last_update(),
                       earlier_reach=tuple(self.reach_history[-HISTORY:]),
                       earlier_faint=tuple(self.faint_history[-HISTORY:]),
                       largest_update=self.largest_update,
                       nearest=self.task.nearest_dependency,
                       initial=(self.step + 1 if step is None else step) <= 1,
                       lr_total=self.rates.evaluated if evaluation is not None else None)

    def last_update(self) -> float | None:
        """The update ratio of the latest probed step."""
        return self._last_update

    def _clip(self, state: StepState, batch_loss: Tensor) -> None:
        """Clip after the backward pass and before the update (nanoGPT's order), then read
        every number of this step in one host sync."""
        clip = state.clip = self.clipper(self.model.parameters())
        numbers = torch.stack([batch_loss.detach(), clip.norm_before, clip.norm_after,
                               clip.clipped, clip.nonfinite]).double()
        loss, before, after, clipped, nonfinite = numbers.tolist()
        state.loss, state.grad_norm, state.grad_norm_clipped = loss, before, after
        state.clipped = bool(clipped)
        state.finite = math.isfinite(loss) and not nonfinite

    def evaluate(self, *, shared: bool = False) -> Evaluation:
        """Mean loss and metric over `run.eval_batches` held-out batches (the same ones at
        every evaluation). By default this rank alone; `shared=True` (the loop's
        evaluations) takes rank 0's numbers on every rank, a collective that every rank
        must reach, so that all ranks stop early at the same step."""
        loss, metric = held_out_numbers(self.model, self.held_out, self.config.run.eval_batches)
        if shared:  # every rank evaluated the same batches; rank 0's numbers make one
            loss, metric = self.dist.broadcast([loss, metric])  # early-stop decision for all
        self.evaluation = Evaluation(self.step, loss, metric, self.task.metric_name,
                                     self.task.solved(metric))
        self.rates.mark_evaluated()
        self.schedule.observe(metric)
        self.fire("on_eval", self.evaluation)
        return self.evaluation

    # state: snapshots for the guard, checkpoints for resume

    def snapshot(self) -> dict:
        # Deep copies: state_dict() returns the live tensors that later steps update.
        return copy.deepcopy({"model": self.model.state_dict(),
                              "optimizer": self.optimizer.state_dict(),
                              "lr_total": self.rates.total})

    def restore(self, snapshot: dict) -> None:
        self.model.load_state_dict(snapshot["model"])  # copies into the parameters
        # The optimiser adopts the tensors it is given; a copy keeps the snapshot reusable.
        self.optimizer.load_state_dict(copy.deepcopy(snapshot["optimizer"]))
        # The updates rolled back no longer count (a snapshot of before: unknown).
        self.rates.rewind(snapshot.get("lr_total"))

    def state_dict(self) -> dict:
        """Everything a resumed run needs to continue exactly as if never stopped."""
        evaluation = self.evaluation.__dict__ if self.evaluation is not None else None
        return {"step": self.step, "clipped_steps": self.clipped_steps,
                "reach_history": list(self.reach_history), "last_update": self._last_update,
                "faint_history": list(self.faint_history),
                "largest_update": self.largest_update, **self.rates.state_dict(),
                "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "schedule": self.schedule.state_dict(), "clipper": self.clipper.state_dict(),
                "guard": self.guard.state_dict(), "evaluation": evaluation,
                "rng": {"data": self.data.get_state(), "torch": torch.get_rng_state(),
                        "cuda": torch.cuda.get_rng_state_all() if self.device.type == "cuda"
                        else []}}

    def check_state_dict(self, state) -> None:
        """A checkpoint's fields, checked before any is loaded: a file that torch reads but
        whose fields are wrong (`step: -5`, `optimizer: 5`, a step past run.steps) is one
        ValueError naming the field, before anything is changed or believed."""
        if not isinstance(state, dict):
            raise ValueError(f"must hold a mapping of fields, got {type(state).__name__}")
        missing = [key for key in CHECKPOINT_FIELDS if key not in state]
        if missing:
            raise ValueError(f"{missing[0]}: missing; a checkpoint holds "
                             f"{', '.join(CHECKPOINT_FIELDS)}")
        integer("step", state["step"], 0, self.config.run.steps)  # run.steps: config.yaml's
        integer("clipped_steps", state["clipped_steps"], 0, state["step"])
        for key in ("model", "optimizer", "schedule", "clipper", "guard", "rng"):
            if not isinstance(state[key], dict):
                raise ValueError(f"{key}: must be a mapping, got {type(state[key]).__name__}")
        for key in ("skipped", "rollbacks", "consecutive", "survived"):
            integer(f"guard.{key}", state["guard"].get(key), 0, state["step"])
        for key in ("good_state", "candidate"):  # snapshots the guard rolls back to
            snapshot = state["guard"].get(key)
            if snapshot is not None and not (isinstance(snapshot, dict) and all(
                    isinstance(snapshot.get(part), dict) for part in ("model", "optimizer"))):
                raise ValueError(f"guard.{key}: must be none or a snapshot (model, optimizer)")
        SummedRate.check_state(state)  # optional: older checkpoints lack its fields
        evaluation = state["evaluation"]
        if evaluation is not None:
            fields = {"step": int, "loss": float, "metric": float, "metric_name": str,
                      "solved": bool}
            if not isinstance(evaluation, dict) or set(evaluation) != set(fields) or not all(
                    isinstance(evaluation[key], kind) for key, kind in fields.items()):
                raise ValueError(f"evaluation: must be none or a mapping of "
                                 f"{', '.join(fields)} of their types")
        for key in ("data", "torch"):
            value = state["rng"].get(key)
            if not (isinstance(value, Tensor) and value.dtype == torch.uint8):
                raise ValueError(f"rng.{key}: must be a generator state (a byte tensor)")

    def load_state_dict(self, state: dict) -> None:
        self.check_state_dict(state)
        self.step, self.clipped_steps = state["step"], state["clipped_steps"]
        self.reach_history = list(state.get("reach_history", []))  # checkpoints of before
        # Checkpoints of before kept no faint reaches: the reaches stand in for them.
        self.faint_history = list(state.get("faint_history", self.reach_history))
        self._last_update = state.get("last_update")
        self.largest_update = state.get("largest_update")
        self.rates.load_state_dict(state)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.clipper.load_state_dict(state["clipper"])
        self.guard.load_state_dict(state["guard"])
        self.evaluation = Evaluation(**state["evaluation"]) if state["evaluation"] else None
        self.data.set_state(state["rng"]["data"])
        torch.set_rng_state(state["rng"]["torch"])  # rank 0's
        if self.device.type == "cuda" and state["rng"].get("cuda"):
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        # Last, so that ranks > 0 reseed every generator (the GPU's too) for their stream.
        self.dist.fork_rng(self.config.run.seed + self.step)


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("run.device: cuda is not available on this machine; accepted here: "
                         "cpu, auto")
    return torch.device(name)


__all__ = ["EVENTS", "Evaluation", "StepState", "Trainer", "TrainingDiverged"]
