"""Data-parallel training under torchrun: `torchrun --nproc_per_node N -m rnnscope train ...`.

The trainer takes a small context object for everything that differs between one
process and N. `LOCAL` (one process) does nothing at every hook, so the single-process
path is unchanged; `ProcessGroup` (torchrun) does the communication:

    every rank draws the same global batch of run.batch rows (same generator)
        │ shard: rank r keeps rows [r*m, (r+1)*m), m = run.batch / N
        ▼
    forward + backward of the rank's share of the global loss, L_r / N
        │ (so every dL/dh_t a rank records is the global-loss gradient of its rows)
        ▼
    one all-reduce (SUM) of [parameter gradients..., loss]  ──>  the global-batch
        │   gradient and loss, bit-identical on every rank; clipping then sees the
        │   global norm and the NaN guard decides the same everywhere
        ▼ on the probe schedule
    one all-reduce of the flow: batch-mean norms of the global dL/dh_t
        (sum of the ranks' batch means / N), non-finite counts (sum), subnormal and
        underflow fractions (mean: every rank holds as many entries)

Why not `torch.nn.parallel.DistributedDataParallel`: it all-reduces from autograd hooks
during backward, which the truncated-BPTT engine (several backward passes per step)
and the recording hooks would have to be fitted around, and it averages gradients
where the flow needs the shares scaled before backward. One explicit all-reduce after
the step's backward passes is exact, cheap at RNN sizes, and easy to check.
"""

from __future__ import annotations

import os
from dataclasses import replace

import torch
import torch.distributed as dist
from torch import Tensor

from rnnscope.flow.gradients import GradientFlow

# Dropout masks on rank r > 0 come from their own stream, seeded apart from rank 0's.
DROPOUT_SEED = 3_000_017


class RankFailed(ValueError):
    """Another rank failed to set up and said why in its own message; this one exits
    quietly with the same code (exit 2), so the user reads one line, not N."""


def world_size_from_env() -> int:
    """torchrun's WORLD_SIZE (1 outside torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank_from_env() -> int:
    return int(os.environ.get("RANK", "0"))


def wanted() -> bool:
    """True when torchrun started this process as one of several."""
    return world_size_from_env() > 1


class SingleProcess:
    """One process: every hook is the identity (the trainer's default context)."""

    rank, world_size, is_main = 0, 1, True

    def place(self, device: torch.device) -> torch.device:
        return device

    def shard(self, inputs: Tensor, targets: Tensor, *, time_major_targets: bool):
        return inputs, targets

    def share(self, loss: Tensor | None) -> Tensor | None:
        return loss

    def reduce_gradients(self, parameters, loss: Tensor) -> Tensor:
        return loss

    def reduce_flow(self, flow: GradientFlow) -> GradientFlow:
        return flow

    def broadcast(self, numbers: list[float]) -> list[float]:
        return numbers

    def fork_rng(self, seed: int) -> None:
        pass

    def agree(self, error: Exception | None) -> None:
        """Raise `error` if setting up failed (every rank raises if any rank failed)."""
        if error is not None:
            raise error

    def barrier(self) -> None:
        """Wait for every rank (one process: nothing to wait for)."""

    def close(self) -> None:
        pass


LOCAL = SingleProcess()


class ProcessGroup(SingleProcess):
    """One rank of a torchrun job. Collectives run on `self.device`: the rank's GPU
    under nccl, the CPU under gloo."""

    def __init__(self, device: str) -> None:
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        cuda = torch.cuda.is_available() and device in ("cuda", "auto")
        # A cuda run on a machine without one gets gloo here; the trainer then stops
        # with run.device's own one-line error, as it does in one process.
        self.backend = "nccl" if cuda else "gloo"
        self.device = torch.device("cuda", self.local_rank) if cuda else torch.device("cpu")
        if cuda:
            torch.cuda.set_device(self.device)
        self.owned = not dist.is_initialized()  # a caller's own group is left to the caller
        if self.owned:
            dist.init_process_group(self.backend)
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.is_main = self.rank == 0

    def place(self, device: torch.device) -> torch.device:
        return self.device if device.type == "cuda" else device

    def shard(self, inputs: Tensor, targets: Tensor, *, time_major_targets: bool):
        """This rank's rows of a global batch: inputs are time-major [T, B, ...]; targets
        are [T, B, ...] for tasks scored at every step, else [B, ...]."""
        rows = inputs.shape[1] // self.world_size
        start = self.rank * rows
        return (inputs.narrow(1, start, rows),
                targets.narrow(1 if time_major_targets else 0, start, rows))

    def share(self, loss: Tensor | None) -> Tensor | None:
        # Each task's loss is a mean over its rows (and steps), so with equal shards the
        # global loss is the mean of the ranks' losses: rank r backpropagates L_r / N.
        return None if loss is None else loss / self.world_size

    def reduce_gradients(self, parameters, loss: Tensor) -> Tensor:
        """Sum the ranks' gradients of their shares (= the global-batch gradient) in place,
        and their loss shares (= the global loss), in one all-reduce; returns the loss."""
        grads = [p.grad for p in parameters if p.grad is not None]
        flat = torch.cat([g.reshape(-1) for g in grads] +
                         [loss.detach().reshape(1).to(grads[0].dtype if grads else loss.dtype)])
        flat = flat.to(self.device)
        dist.all_reduce(flat)
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()
        return flat[-1].to(loss.device, loss.dtype)

    def reduce_flow(self, flow: GradientFlow) -> GradientFlow:
        """The flow of the global batch from the ranks' flows of their shares.

        norms[r, t] is a batch mean over this rank's m = B/N rows of ||dL/dh_t||, and
        dL/dh_t here is already the global-loss gradient (the loss was shared before
        backward), so the global batch mean is sum over ranks of (m/B) * local = sum / N.
        """
        aligned = flow.aligned if flow.aligned is not None else flow.norms.new_zeros(0)
        numbers = torch.cat([flow.norms.reshape(-1).double(), torch.tensor(
            [flow.nonfinite, flow.subnormal_fraction, flow.underflow_fraction],
            dtype=torch.float64), aligned.reshape(-1).double()]).to(self.device)
        dist.all_reduce(numbers)
        numbers = (numbers / self.world_size).cpu()
        cells = flow.norms.numel()
        return replace(flow, norms=numbers[:cells].view_as(flow.norms),
                       nonfinite=round(float(numbers[cells]) * self.world_size),
                       subnormal_fraction=float(numbers[cells + 1]),
                       underflow_fraction=float(numbers[cells + 2]),
                       aligned=None if flow.aligned is None else
                       numbers[cells + 3:].view_as(flow.aligned))

    def broadcast(self, numbers: list[float]) -> list[float]:
        """Rank 0's numbers on every rank (evaluation: one early-stop decision for all)."""
        values = torch.tensor(numbers, dtype=torch.float64, device=self.device)
        dist.broadcast(values, src=0)
        return values.tolist()

    def fork_rng(self, seed: int) -> None:
        """Give ranks > 0 their own dropout stream: with one stream for all, every shard
        would get the same masks. Rank 0 keeps the single-process stream."""
        if self.rank > 0:
            torch.manual_seed(seed + DROPOUT_SEED * self.rank)

    def agree(self, error: Exception | None) -> None:
        """After setting up: if any rank failed, the lowest failing rank raises its own
        error and every other rank raises RankFailed (quiet), so no rank is left waiting
        in a collective for one that is gone."""
        failed = torch.tensor([self.rank if error is not None else self.world_size],
                              device=self.device)
        dist.all_reduce(failed, op=dist.ReduceOp.MIN)
        first = int(failed)
        if first == self.world_size:
            return
        if first == self.rank:
            raise error
        raise RankFailed(f"rank {first} failed to set up; see its message")

    def barrier(self) -> None:
        dist.barrier()

    def close(self) -> None:
        if self.owned and dist.is_initialized():
            dist.destroy_process_group()


def from_env(device: str) -> SingleProcess:
    """The context for this process: a ProcessGroup under torchrun with WORLD_SIZE > 1
    (the process group is started here), else LOCAL. `device` is run.device."""
    return ProcessGroup(device) if wanted() else LOCAL


__all__ = ["LOCAL", "ProcessGroup", "RankFailed", "SingleProcess", "from_env",
           "rank_from_env", "wanted", "world_size_from_env"]
