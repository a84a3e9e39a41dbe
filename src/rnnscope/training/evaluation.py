"""What the model does on held-out data: loss and metric, the diagnosis of the trained
model, and its Lyapunov spectrum.

Held-out batches come from their own generators, seeded apart from the training data,
so every evaluation sees the same batches and evaluating never shifts training data.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from rnnscope.flow.diagnosis import Context, Diagnosis, diagnose
from rnnscope.flow.dynamics import LYAPUNOV_SAMPLES, lyapunov, lyapunov_steps, state_size
from rnnscope.flow.recording import record
from rnnscope.tasks import Task

EVAL_SEED, DIAGNOSIS_SEED = 1_000_003, 2_000_003
LYAPUNOV_K = 16  # exponents of the trained model kept in the summary


@dataclass
class Evaluation:
    step: int
    loss: float
    metric: float
    metric_name: str
    solved: bool


@dataclass(frozen=True)
class HeldOut:
    """A run's held-out data: the task's "valid" split in batches of `batch` rows,
    drawn from generators seeded from `seed`, placed on the run's device and dtype."""

    task: Task
    batch: int
    seed: int
    device: torch.device
    dtype: torch.dtype

    def place(self, *tensors: Tensor) -> tuple[Tensor, ...]:
        """Tensors on the run's device, real values in the run's dtype (run.dtype)."""
        return tuple(t.to(self.device, self.dtype) if t.is_floating_point() else
                     t.to(self.device) for t in tensors)

    def batches(self, seed_offset: int, count: int = 1, rows: int | None = None):
        """`count` placed batches (inputs, targets) of a generator seeded seed + offset:
        the same batches every time."""
        generator = torch.Generator().manual_seed(self.seed + seed_offset)
        for _ in range(count):
            yield self.place(*self.task.batch(rows or self.batch, generator, "valid"))


@torch.no_grad()
def held_out_numbers(model: nn.Module, held_out: HeldOut, batches: int) -> tuple[float, float]:
    """Mean loss and metric over `batches` held-out batches, in eval mode."""
    model.eval()
    losses, metrics = [], []
    try:
        for inputs, targets in held_out.batches(EVAL_SEED, batches):
            output, _ = model(inputs)
            losses.append(held_out.task.loss(output, targets).double())
            metrics.append(held_out.task.metric(output, targets).double())
    finally:
        model.train()
    return torch.stack(losses).mean().item(), torch.stack(metrics).mean().item()


def diagnose_trained(model: nn.Module, held_out: HeldOut, *, lr: float,
                     current: dict[str, str], context: Context | None = None) -> Diagnosis:
    """The diagnosis of `model` on one held-out batch with full BPTT, with the model
    evidence (W_hh spectral radius, Lyapunov exponent) as well. Leaves no gradient."""
    inputs, targets = next(held_out.batches(DIAGNOSIS_SEED))
    model.zero_grad(set_to_none=True)
    with record(model) as recorder:
        output, _ = model(inputs)
        held_out.task.loss(output, targets).backward()
    result = diagnose(recorder, lr=lr, current=current, context=context)
    model.zero_grad(set_to_none=True)
    return result


def lyapunov_spectrum(recurrent: nn.Module, held_out: HeldOut,
                      k: int = LYAPUNOV_K) -> list[float]:
    """The k largest Lyapunov exponents (nats per step) of the first recurrent layer
    along a few held-out sequences: how many directions of the state keep a signal
    alive, and how fast the others forget. -inf: a dead ReLU unit."""
    inputs, _ = next(held_out.batches(DIAGNOSIS_SEED, rows=min(held_out.batch,
                                                                LYAPUNOV_SAMPLES)))
    steps = lyapunov_steps(recurrent, inputs.shape[1], inputs.shape[0])
    return lyapunov(recurrent, inputs[:steps], k=min(k, state_size(recurrent))).tolist()
