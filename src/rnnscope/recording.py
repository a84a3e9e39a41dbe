"""record(): see dL/dh_t for every recurrent layer and time step, in the user's own backward.

    with rnnscope.record(model) as rec:
        loss = criterion(model(x), y)
        loss.backward()
    rec.flow.norms        # [rows, T]: batch-mean ||dL/dh_t|| per layer (and direction)

Inside the block every recurrent layer of `model` (torch's `nn.RNN`/`nn.LSTM`/
`nn.GRU` and rnnscope's `Recurrent`, nested anywhere) runs through the unrolled
engine with its own parameters. A zero "probe" tensor is added to each hidden
output h_t; it changes no value, and after the backward pass the user already
runs, its gradient is the total dL/dh_t. A hook on the probe reduces it to norms
as soon as autograd produces it, so no second backward and no host sync.
Outside the block (and after an exception inside it) the model is untouched.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pad_packed_sequence

from rnnscope.cells import find_recurrent, run_unrolled
from rnnscope.numerics import subnormal_count


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

    @property
    def steps(self) -> int:
        return self.norms.shape[1]

    def steps_back(self) -> Tensor:
        """Norms re-indexed by steps back from the end of the sequence the row ran over
        (the first step for reverse-direction rows): column 0 is where the loss enters."""
        rows = [row.flip(0) if not rev else row for row, rev in
                zip(self.norms, self.reverse, strict=True)]
        return torch.stack(rows) if rows else self.norms


@dataclass
class _Capture:
    """The probes of one recorded call of one recurrent module."""

    name: str
    module: nn.Module
    input: Tensor | PackedSequence  # detached: kept for dynamics (Lyapunov), not for autograd
    batch_sizes: Tensor | None
    per_sample: bool
    norms: dict[tuple[int, int], Tensor] = field(default_factory=dict)
    samples: dict[tuple[int, int], Tensor] = field(default_factory=dict)
    nonfinite: dict[tuple[int, int], Tensor] = field(default_factory=dict)
    subnormal: dict[tuple[int, int], tuple[Tensor, int]] = field(default_factory=dict)
    probes: int = 0

    def tap(self, layer: int, direction: int, shape: tuple[int, ...], like: Tensor) -> Tensor:
        probe = torch.zeros(shape, dtype=like.dtype, device=like.device, requires_grad=True)
        probe.register_hook(lambda grad: self._reduce((layer, direction), grad))
        self.probes += 1
        return probe

    def _reduce(self, key: tuple[int, int], grad: Tensor) -> None:
        grad = grad.detach()
        row_norms = torch.linalg.vector_norm(grad.double(), dim=-1)  # [T, B] or [N]
        if self.batch_sizes is None:
            self.norms[key] = row_norms.mean(dim=1)
            if self.per_sample:
                self.samples[key] = row_norms
        else:
            sizes = self.batch_sizes.to(row_norms.device)
            step_of_row = torch.repeat_interleave(torch.arange(len(sizes), device=sizes.device),
                                                  sizes)
            total = torch.zeros(len(sizes), dtype=row_norms.dtype, device=row_norms.device)
            self.norms[key] = total.index_add_(0, step_of_row, row_norms) / sizes
            if self.per_sample:
                packed = PackedSequence(row_norms.unsqueeze(-1), self.batch_sizes,
                                        self.input.sorted_indices, self.input.unsorted_indices)
                padded, _ = pad_packed_sequence(packed, padding_value=float("nan"))
                self.samples[key] = padded.squeeze(-1)
        self.nonfinite[key] = (~torch.isfinite(grad)).sum()
        self.subnormal[key] = (subnormal_count(grad), grad.numel())

    @property
    def complete(self) -> bool:
        return self.probes > 0 and len(self.norms) == self.probes


class Recorder:
    """The object `record` yields; see the module docstring."""

    def __init__(self, model: nn.Module, every: int = 1, per_sample: bool = False) -> None:
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every: must be a positive integer, got {every!r}")
        self.model = model
        self.every = every
        self.per_sample = per_sample
        self.layers = find_recurrent(model)
        if not self.layers:
            raise ValueError(
                f"model: no recurrent layer found in {type(model).__name__} "
                "(expected rnnscope.Recurrent, nn.RNN, nn.LSTM or nn.GRU)"
            )
        self.calls = dict.fromkeys((name for name, _ in self.layers), 0)
        self.captures: dict[str, _Capture] = {}  # the latest recorded call per module
        self._saved: list[tuple[nn.Module, object]] = []

    def __enter__(self) -> Recorder:
        for name, module in self.layers:
            # An instance attribute shadows the class's forward for this module only.
            self._saved.append((module, module.__dict__.get("forward")))
            module.forward = self._wrap(name, module, module.forward)
        return self

    def __exit__(self, *exc_info) -> bool:
        for module, previous in self._saved:
            if previous is None:
                module.__dict__.pop("forward", None)
            else:
                module.forward = previous
        self._saved.clear()
        return False

    def _wrap(self, name: str, module: nn.Module, native):
        def forward(input, hx=None, **kwargs):
            state = kwargs.pop("state", hx)
            call = self.calls[name]
            self.calls[name] = call + 1
            if call % self.every:
                return native(input, state, **kwargs)
            packed = isinstance(input, PackedSequence)
            kept = input._replace(data=input.data.detach()) if packed else input.detach()
            capture = _Capture(name, module, kept, input.batch_sizes if packed else None,
                               self.per_sample)
            self.captures[name] = capture
            return run_unrolled(module, input, state, tap=capture.tap)

        return forward

    @property
    def recorded(self) -> bool:
        """True once a recorded forward has been followed by its backward pass."""
        return any(c.complete for c in self.captures.values())

    @property
    def flow(self) -> GradientFlow:
        """The gradient flow of the latest recorded call of every recurrent layer."""
        captures = [c for c in self.captures.values() if c.complete]
        if not captures:
            raise RuntimeError(
                "record: no gradient was recorded; call loss.backward() inside the "
                "`with record(model)` block, after a forward pass of the model"
            )
        return _assemble(captures)


def record(model: nn.Module, every: int = 1, per_sample: bool = False) -> Recorder:
    """Context manager capturing dL/dh_t for every recurrent layer of `model`.

    `every=N` records only every Nth forward call of each layer (the others run
    torch's fused kernels), so it can stay on for a whole training run.
    `per_sample=True` also keeps per-sample norms (`flow.per_sample`).
    """
    return Recorder(model, every=every, per_sample=per_sample)


def _assemble(captures: list[_Capture]) -> GradientFlow:
    names, reverse, rows, samples = [], [], [], []
    nonfinite = torch.zeros((), dtype=torch.long)
    subnormal = torch.zeros((), dtype=torch.long)
    entries = 0
    for capture in captures:
        for (layer, direction), norms in sorted(capture.norms.items()):
            prefix = f"{capture.name}." if capture.name else ""
            names.append(f"{prefix}l{layer}" + ("_reverse" if direction else ""))
            reverse.append(bool(direction))
            rows.append(norms.cpu())
            if capture.per_sample:
                samples.append(capture.samples[(layer, direction)].cpu())
            nonfinite = nonfinite + capture.nonfinite[(layer, direction)].cpu()
            count, of = capture.subnormal[(layer, direction)]
            subnormal, entries = subnormal + count.cpu(), entries + of
    steps = max(len(r) for r in rows)
    norms = torch.full((len(rows), steps), float("nan"), dtype=torch.float64)
    for i, row in enumerate(rows):
        norms[i, : len(row)] = row
    per_sample = None
    if samples and len(samples) == len(rows):
        batch = max(s.shape[1] for s in samples)
        per_sample = torch.full((len(rows), steps, batch), float("nan"), dtype=torch.float64)
        for i, s in enumerate(samples):
            per_sample[i, : s.shape[0], : s.shape[1]] = s
    # One host read per assembled flow, not per step.
    fraction = subnormal.item() / entries if entries else 0.0
    return GradientFlow(norms, names, reverse, per_sample, int(nonfinite.item()), fraction)
