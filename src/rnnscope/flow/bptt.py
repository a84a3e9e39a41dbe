"""Full and truncated backpropagation through time.

Truncated BPTT (k1 = k2 = k) cuts a long sequence into windows of k steps. The
hidden state is carried from one window to the next, so the forward pass sees
the whole history, but it is detached at every cut, so the backward pass of a
window stops there: memory and time per update are bounded by k, and no
gradient flows across more than k steps. With k >= T it is full BPTT.

    inputs  x_1 ........ x_k | x_k+1 ...... x_2k | x_2k+1 ... x_T
    state   h_0 ──────────> h_k ─//─────────> h_2k ─//──────> h_T
    backward     <─────────      <───────────       <───────
                  window 1        window 2           window 3
    (─//─ : state.detach(); gradients of each window accumulate in .grad)
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from rnnscope.checks import integer
from rnnscope.flow.gradients import GradientFlow
from rnnscope.flow.recording import record

# loss_fn(output_of_window, start, stop) -> scalar loss of that window, or None when the
# window carries no loss (e.g. the adding problem scores only the last step).
WindowLoss = Callable[[Tensor, int, int], Tensor | None]


@dataclass(frozen=True)
class BPTTConfig:
    """The `bptt` section: `window` steps per backward pass; None is full BPTT."""

    window: int | None = None

    def __post_init__(self) -> None:
        if self.window is not None:
            integer("bptt.window", self.window, 1)


@dataclass
class BPTTResult:
    loss: Tensor  # sum of the window losses, detached
    state: object  # the final state, detached, to carry into the next batch
    windows: list[tuple[int, int]]
    flows: list[GradientFlow | None] = field(default_factory=list)  # per window, if recorded


def window_bounds(steps: int, window: int | None) -> list[tuple[int, int]]:
    """[start, stop) of each window; `window=None` or >= steps means one window (full BPTT)."""
    if steps < 1:
        raise ValueError(f"input: the sequence has {steps} steps; expected at least 1")
    if window is None:
        return [(0, steps)]
    integer("bptt.window", window, 1)
    return [(start, min(start + window, steps)) for start in range(0, steps, window)]


def detach_state(state):
    """A state (tensor, tuple of tensors, or None) cut from the graph of earlier windows."""
    if state is None:
        return None
    if isinstance(state, Tensor):
        return state.detach()
    return type(state)(detach_state(s) for s in state)


def truncated_bptt(model: nn.Module, inputs: Tensor, loss_fn: WindowLoss,
                   window: int | None = None, state=None, *, batch_first: bool = False,
                   record_flow: bool = False, cell_state: bool = False) -> BPTTResult:
    """Forward and backward over `inputs` in windows of `window` steps.

    `model(x_window, state) -> (output, state)`, as torch's recurrent modules and
    `Recurrent` are. Each window's loss is backpropagated as soon as it is
    computed, so parameter gradients accumulate across windows in `.grad` and
    the caller steps the optimiser afterwards. With `record_flow`, dL/dh_t is
    recorded for every window (`result.flows`), with dL/dc_t rows for LSTMs when
    `cell_state`.
    """
    time_dim = 1 if batch_first else 0
    bounds = window_bounds(inputs.shape[time_dim], window)
    total = torch.zeros((), dtype=inputs.dtype, device=inputs.device)
    flows: list[GradientFlow | None] = []
    for start, stop in bounds:
        # Why detach: the previous window's graph has been freed by its backward
        # pass; without the cut this backward would try to run through it again.
        state = detach_state(state)
        chunk = inputs.narrow(time_dim, start, stop - start)
        with record(model, cell_state=cell_state) if record_flow else nullcontext() \
                as recorder:
            output, state = model(chunk, state)
            loss = loss_fn(output, start, stop)
            if loss is not None:
                loss.backward()
                total = total + loss.detach()
        flows.append(recorder.flow if recorder is not None and recorder.recorded else None)
    return BPTTResult(total, detach_state(state), bounds, flows)


def join_flows(flows: list[GradientFlow | None], windows: list[tuple[int, int]]) -> GradientFlow:
    """One profile over the whole sequence from the per-window flows of `truncated_bptt`.

    A window that carried no loss had no backward pass: nothing reached its hidden
    states across the cut, so its steps read 0, which is what the diagnosis should
    see (reach can never exceed the window).
    """
    recorded = [flow for flow in flows if flow is not None]
    if not recorded:
        raise ValueError("flows: no window was recorded")
    first = recorded[0]
    parts = [flow.norms if flow is not None else
             torch.zeros(first.norms.shape[0], stop - start, dtype=first.norms.dtype)
             for flow, (start, stop) in zip(flows, windows, strict=True)]
    total = sum(flow.norms.numel() for flow in recorded)
    return GradientFlow(
        torch.cat(parts, dim=1), first.layers, first.reverse,
        nonfinite=sum(flow.nonfinite for flow in recorded),
        subnormal_fraction=sum(f.subnormal_fraction * f.norms.numel() for f in recorded) / total,
        underflow_fraction=sum(f.underflow_fraction * f.norms.numel() for f in recorded) / total,
        states=first.states)
