"""record(): see dL/dh_t for every recurrent layer and time step, in the user's own backward.

    with rnnscope.record(model) as rec:
        loss = criterion(model(x), y)
        loss.backward()
    rec.flow.norms        # [rows, T]: batch-mean ||dL/dh_t|| per layer (and direction)

Inside the block every recurrent layer of `model` (torch's `nn.RNN`/`nn.LSTM`/
`nn.GRU` and rnnscope's `Recurrent`, nested anywhere) runs through the unrolled
engine with its own parameters. Each hidden output h_t gets a tensor hook; in
the backward pass the user already runs, autograd hands that hook the total
dL/dh_t (through the next step and the layer above alike). The hooks only keep
references; norms are computed once, when `rec.flow` is read, so there is no
second backward and no host sync per step. Gradients of several backward passes
through the same forward add up, as parameter gradients do. Forward passes
under `torch.no_grad()` run torch's own kernels and are not counted.
Outside the block (and after an exception inside it) the model is untouched.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from rnnscope.checks import integer
from rnnscope.models.recurrent import require_recurrent, run_unrolled
from rnnscope.numerics import subnormal_count
from rnnscope.schedules import Every


@dataclass
class GradientFlow:
    """Norms of dL/dh_t, one row per recurrent layer and direction, one column per step.

    `norms[r, t]` is the batch-mean L2 norm of the loss gradient with respect to
    the hidden output h_t of row r (float64; NaN where that row has no step t,
    e.g. a layer run on a shorter sequence). `layers[r]` names the row as in
    `named_modules`, with `l<k>` (and `_reverse`) for the layer inside the module.
    """

    norms: Tensor
    layers: list[str]
    reverse: list[bool]
    per_sample: Tensor | None = None  # [rows, T, B] when recorded with per_sample=True
    nonfinite: int = 0  # non-finite entries in any dL/dh_t
    subnormal_fraction: float = 0.0  # of all entries of dL/dh_t (as probes.subnormal_fraction)
    # zero or subnormal: with subnormals flushed (the default for speed) an underflowed
    # gradient is stored as 0, so this is the fraction that tells vanishing apart.
    underflow_fraction: float = 0.0

    @property
    def steps(self) -> int:
        return self.norms.shape[1]

    def to_dict(self) -> dict:
        """Plain data, as metrics.jsonl keeps it on a probe line and figures draw it."""
        return {"layers": list(self.layers), "norms": self.norms.tolist(),
                "reverse": list(self.reverse), "subnormal_fraction": self.subnormal_fraction,
                "underflow_fraction": self.underflow_fraction}

    def steps_back(self) -> Tensor:
        """Norms re-indexed by steps back from the end of the sequence the row ran over
        (the first step for reverse-direction rows): column 0 is where the loss enters."""
        rows = [row.flip(0) if not rev else row for row, rev in
                zip(self.norms, self.reverse, strict=True)]
        return torch.stack(rows) if rows else self.norms


class _Capture:
    """The hooked hidden outputs of one recorded forward call of one recurrent module."""

    def __init__(self, name: str, module: nn.Module, input, per_sample: bool) -> None:
        self.name, self.module, self.per_sample = name, module, per_sample
        packed = isinstance(input, PackedSequence)
        # Kept detached for dynamics (Lyapunov along the same input), not for autograd.
        self.input = input._replace(data=input.data.detach()) if packed else input.detach()
        self.batch_sizes = input.batch_sizes if packed else None
        self.grads: dict[tuple[int, int], dict[int, Tensor]] = {}
        self.complete = False  # True once backward has reached any h_t

    def tap(self, layer: int, direction: int):
        steps = self.grads.setdefault((layer, direction), {})

        def observe(t: int, state) -> None:
            h = state[0]
            if h.requires_grad:
                h.register_hook(lambda grad: self._store(steps, t, grad))

        return observe

    def _store(self, steps: dict[int, Tensor], t: int, grad: Tensor) -> None:
        grad = grad.detach()
        steps[t] = grad if t not in steps else steps[t] + grad
        self.complete = True

    def rows(self) -> list[tuple[str, bool, Tensor, Tensor]]:
        """(name, reverse, per-step gradients [T, B, H] padded with NaN, live mask [T, B])."""
        out = []
        prefix = f"{self.name}." if self.name else ""
        for (layer, direction), steps in sorted(self.grads.items()):
            name = f"{prefix}l{layer}" + ("_reverse" if direction else "")
            out.append((name, bool(direction), *self._padded(steps)))
        return out

    def _padded(self, steps: dict[int, Tensor]) -> tuple[Tensor, Tensor]:
        like = next(iter(steps.values()), None)
        hidden = self.module.hidden_size
        if self.batch_sizes is None:
            count, batch = (self.input.shape[0], self.input.shape[1]) if self.input.dim() == 3 \
                else (self.input.shape[0], 1)
            if self.input.dim() == 3 and getattr(self.module, "batch_first", False):
                count, batch = batch, count
            sizes = [batch] * count
        else:
            sizes = self.batch_sizes.tolist()  # once per flow read, not per step
            count, batch = len(sizes), sizes[0]
        device = like.device if like is not None else self.input.device if isinstance(
            self.input, Tensor) else self.input.data.device
        dtype = like.dtype if like is not None else torch.float32
        if self.batch_sizes is None and len(steps) == count:  # every step, every row
            grads = torch.stack([steps[t].reshape(batch, hidden) for t in range(count)])
            return grads, torch.ones(count, batch, dtype=torch.bool, device=device)
        grads = torch.zeros(count, batch, hidden, dtype=dtype, device=device)
        live = torch.zeros(count, batch, dtype=torch.bool, device=device)
        for t, rows in enumerate(sizes):
            live[t, :rows] = True
            if t in steps:  # a step no loss depends on has gradient zero
                grads[t, :rows] = steps[t].reshape(rows, hidden)
        if self.batch_sizes is not None and self.input.unsorted_indices is not None:
            # Packed rows run longest first; report them in the caller's batch order.
            order = self.input.unsorted_indices.to(device)
            grads, live = grads.index_select(1, order), live.index_select(1, order)
        return grads, live


class Recorder:
    """The object `record` yields; see the module docstring."""

    def __init__(self, model: nn.Module, every: int = 1, per_sample: bool = False) -> None:
        self.model = model
        self.every = integer("every", every, 1)
        self.schedule = Every(every, first=True)
        self.per_sample = per_sample
        self.layers = require_recurrent(model)
        self.calls = dict.fromkeys((name for name, _ in self.layers), 0)
        # Per module, the latest recorded call and the latest one that received gradient
        # (a later forward, e.g. an evaluation pass, must not discard a finished record).
        self.captures: dict[str, _Capture] = {}
        self._finished: dict[str, _Capture] = {}
        self._saved: list[tuple[nn.Module, object]] = []

    def __enter__(self) -> Recorder:
        if self._saved:
            raise RuntimeError("record: this recorder is already active; use a new record()")
        for name, module in self.layers:
            # An instance attribute shadows the class's forward for this module only.
            self._saved.append((module, module.__dict__.get("forward")))
            module.forward = self._wrap(name, module, module.forward)
        return self

    def __exit__(self, *exc_info) -> bool:
        for module, previous in reversed(self._saved):
            if previous is None:
                module.__dict__.pop("forward", None)
            else:
                module.forward = previous
        self._saved.clear()
        return False

    def _wrap(self, name: str, module: nn.Module, native):
        def forward(input, hx=None, **kwargs):
            state = kwargs.pop("state", hx)
            if not torch.is_grad_enabled():
                return native(input, state, **kwargs)  # nothing to record without a graph
            call = self.calls[name] = self.calls[name] + 1
            if not self.schedule.due(call):
                return native(input, state, **kwargs)
            previous = self.captures.get(name)
            if previous is not None and previous.complete:
                self._finished[name] = previous
            capture = _Capture(name, module, input, self.per_sample)
            self.captures[name] = capture
            return run_unrolled(module, input, state, tap=capture.tap)

        return forward

    def _latest_complete(self) -> list[_Capture]:
        latest = []
        for name, _ in self.layers:
            capture = self.captures.get(name)
            if capture is None or not capture.complete:
                capture = self._finished.get(name)
            if capture is not None:
                latest.append(capture)
        return latest

    @property
    def recorded(self) -> bool:
        """True once a recorded forward has been followed by its backward pass."""
        return bool(self._latest_complete())

    @property
    def flow(self) -> GradientFlow:
        """The gradient flow of the latest recorded call of every recurrent layer."""
        captures = self._latest_complete()
        if not captures:
            raise RuntimeError(
                "record: no gradient was recorded; call loss.backward() inside the "
                "`with record(model)` block, after a forward pass of the model"
            )
        return _assemble(captures)


def record(model: nn.Module, every: int = 1, per_sample: bool = False) -> Recorder:
    """Context manager capturing dL/dh_t for every recurrent layer of `model`.

    `every=N` records the first forward call of each layer and then every Nth
    (`schedules.every(N, first=True)`); the others run torch's fused kernels, so it
    can stay on for a whole training run.
    `per_sample=True` also keeps per-sample norms (`flow.per_sample`).
    """
    return Recorder(model, every=every, per_sample=per_sample)


def _assemble(captures: list[_Capture]) -> GradientFlow:
    names, reverse, norms, samples = [], [], [], []
    nonfinite = subnormal = underflow = entries = 0
    for capture in captures:
        for name, is_reverse, grads, live in capture.rows():
            names.append(name)
            reverse.append(is_reverse)
            per_row = torch.linalg.vector_norm(grads.double(), dim=-1)  # [T, B]
            everywhere = bool(live.all())
            if not everywhere:
                per_row = per_row.masked_fill(~live, float("nan"))
            norms.append(per_row.nanmean(dim=1).cpu())
            if capture.per_sample:
                samples.append(per_row.cpu())
            values = grads.reshape(-1) if everywhere else grads[live]
            nonfinite += int((~torch.isfinite(values)).sum())
            count = int(subnormal_count(values))
            subnormal += count
            underflow += count + int((values == 0).sum())
            entries += values.numel()
    steps = max(len(r) for r in norms)
    table = torch.full((len(norms), steps), float("nan"), dtype=torch.float64)
    for i, row in enumerate(norms):
        table[i, : len(row)] = row
    per_sample = None
    if samples:
        batch = max(s.shape[1] for s in samples)
        per_sample = torch.full((len(samples), steps, batch), float("nan"), dtype=torch.float64)
        for i, s in enumerate(samples):
            per_sample[i, : s.shape[0], : s.shape[1]] = s
    return GradientFlow(table, names, reverse, per_sample, nonfinite,
                        subnormal / entries if entries else 0.0,
                        underflow / entries if entries else 0.0)
