"""`GradientFlow`: the norms of dL/dh_t of every recorded row, and how they are assembled
from the gradients a recording captured.

A row is one recurrent state followed through time: a layer and direction of a fused
module (`encoder.l0`, `encoder.l0_reverse`, `encoder#2.l0` for a second, separate run of
the same module), a cell module (`decoder.cell`), a `mark`ed state (`ssm`), or with
`cell_state=True` an LSTM's memory (`encoder.l0/c`). Each row holds, per step, the
gradient of its state at that step for the rows of the batch that were live then.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from rnnscope.numerics import magnitude_bits


@dataclass
class GradientFlow:
    """Norms of dL/dh_t, one row per recorded state, one column per step.

    `norms[r, t]` is the batch-mean L2 norm of the loss gradient with respect to the
    state of row r at step t (float64; NaN where that row has no step t, e.g. a layer
    run on a shorter sequence). `layers[r]` names the row (see the module docstring).
    `states[r]` is "h" (the hidden output) or "c" (an LSTM's cell state).
    `aligned`, when the sequences of a batch end at different steps (packed input, or
    padding that the loss never reads), is the profile by steps back from each
    sequence's own end, which `steps_back` returns.
    """

    norms: Tensor
    layers: list[str]
    reverse: list[bool]
    per_sample: Tensor | None = None  # [rows, T, B] when recorded with per_sample=True
    nonfinite: int = 0  # non-finite entries in any dL/dh_t
    subnormal_fraction: float = 0.0  # of all entries of dL/dh_t (as probes.subnormal_fraction)
    # Entries that underflowed: subnormal, or zero in a gradient vector that has fallen into
    # the range where rounding reaches zero; with subnormals flushed (the default, for
    # speed) an underflowed gradient is stored as 0. Zeros that the forward pass made
    # (dropout, padding, an unused unit) sit in vectors of normal size and do not count.
    underflow_fraction: float = 0.0
    states: list[str] = field(default_factory=list)
    aligned: Tensor | None = None  # [rows, T] by steps back, per sequence

    def __post_init__(self) -> None:
        if not self.states:
            self.states = ["h"] * len(self.layers)

    @property
    def steps(self) -> int:
        return self.norms.shape[1]

    @classmethod
    def from_dict(cls, data: dict) -> GradientFlow:
        """The flow `to_dict` wrote (a probe line's "flow"; JSON's nulls are NaN again)."""
        def table(rows) -> Tensor:
            return torch.tensor([[math.nan if v is None else v for v in row] for row in rows],
                                dtype=torch.float64)

        aligned = data.get("steps_back")
        return cls(table(data["norms"]), list(data["layers"]),
                   list(data.get("reverse") or [False] * len(data["norms"])),
                   subnormal_fraction=data.get("subnormal_fraction", 0.0),
                   underflow_fraction=data.get("underflow_fraction", 0.0),
                   states=list(data.get("states") or []),
                   aligned=None if aligned is None else table(aligned))

    def to_dict(self) -> dict:
        """Plain data, as metrics.jsonl keeps it on a probe line and figures draw it."""
        data = {"layers": list(self.layers), "norms": self.norms.tolist(),
                "reverse": list(self.reverse), "states": list(self.states),
                "subnormal_fraction": self.subnormal_fraction,
                "underflow_fraction": self.underflow_fraction}
        if self.aligned is not None:
            data["steps_back"] = self.aligned.tolist()
        return data

    def steps_back(self) -> Tensor:
        """Norms re-indexed by steps back from the end of the sequence the row ran over
        (each sequence's own end; the first step for reverse-direction rows): column 0 is
        where the loss enters."""
        if self.aligned is not None:
            return self.aligned
        rows = [row.flip(0) if not rev else row for row, rev in
                zip(self.norms, self.reverse, strict=True)]
        return torch.stack(rows) if rows else self.norms


@dataclass
class RowGradients:
    """What a recording captured for one row: the gradient of the state at every step,
    `grads[t, b]` for row b of the caller's batch ([T, B, H]; zero where backward never
    reached that step), and `live[t, b]`, whether row b of the batch ran step t (a packed
    sequence shorter than the longest does not; its entries there are not read)."""

    name: str
    reverse: bool
    state: str
    grads: Tensor
    live: Tensor


def assemble(rows: list[RowGradients], per_sample: bool = False) -> GradientFlow:
    """The flow of the captured rows: norms per step, the per-sequence alignment, and the
    counts of non-finite, subnormal and underflowed entries."""
    norms, profiles, samples = [], [], []
    counts = {"nonfinite": 0, "subnormal": 0, "underflow": 0, "entries": 0}
    any_aligned = False
    for row in rows:
        grads, live = row.grads, row.live
        # In float64: the norm of a vanishing float32 gradient would underflow in float32.
        per_row = torch.linalg.vector_norm(grads, dim=-1, dtype=torch.float64)  # [T, B]
        per_row = per_row.masked_fill(~live, float("nan"))
        norms.append(per_row.nanmean(dim=1).cpu())
        ends = _ends(per_row, live, row.reverse)
        profile, shifted = _by_steps_back(per_row, ends, row.reverse)
        profiles.append(profile.cpu())
        any_aligned |= shifted
        if per_sample:
            samples.append(per_row.cpu())
        _count(grads, live, per_row, ends, row.reverse, counts)
    table = _stack(norms)
    entries = counts["entries"]
    return GradientFlow(
        table, [row.name for row in rows], [row.reverse for row in rows],
        _stack_samples(samples, table.shape[1]) if samples else None, counts["nonfinite"],
        counts["subnormal"] / entries if entries else 0.0,
        counts["underflow"] / entries if entries else 0.0,
        [row.state for row in rows], _stack(profiles) if any_aligned else None)


def _ends(norms: Tensor, live: Tensor, reverse: bool) -> Tensor:
    """Per sequence, the step where the loss enters: for a forward row the last live step
    whose gradient is not zero (padding that no loss reads gets none), else the last live
    step; for a reverse row step 0."""
    steps = torch.arange(norms.shape[0], device=norms.device).unsqueeze(1)
    if reverse:
        return torch.zeros(norms.shape[1], dtype=torch.long, device=norms.device)
    reached = live & (norms.nan_to_num(nan=1.0) != 0)
    last_live = torch.where(live, steps, -1).amax(dim=0)
    last_reached = torch.where(reached, steps, -1).amax(dim=0)
    return torch.where(last_reached >= 0, last_reached, last_live).clamp_min(0)


def _by_steps_back(norms: Tensor, ends: Tensor, reverse: bool) -> tuple[Tensor, bool]:
    """The batch-mean profile by steps back from each sequence's end, and whether that
    differs from reading the time axis backwards (some sequence ends early)."""
    if reverse:
        return norms.nanmean(dim=1), False
    steps = norms.shape[0]
    back = torch.arange(steps, device=norms.device).unsqueeze(1)
    index = ends.unsqueeze(0) - back  # [T, B]: the step k steps back of each sequence
    gathered = norms.gather(0, index.clamp_min(0)).masked_fill(index < 0, float("nan"))
    return gathered.nanmean(dim=1), bool((ends != steps - 1).any())


def _count(grads: Tensor, live: Tensor, norms: Tensor, ends: Tensor, reverse: bool,
           counts: dict[str, int]) -> None:
    """Non-finite, subnormal and underflowed entries among those of live steps up to each
    sequence's end (steps past it are padding).

    Read off the bits (with DAZ on, subnormals compare == 0 as floats), and only of the
    vectors that can hold such entries: one whose smallest |entry| is normal holds no zero
    or subnormal, and one whose norm is finite holds no NaN or inf. A healthy gradient
    costs one more pass over [T, B, H] (the smallest |entry| of each vector), no more."""
    steps = torch.arange(grads.shape[0], device=grads.device).unsqueeze(1)
    counted = live if reverse else live & (steps <= ends.unsqueeze(0))
    finfo = torch.finfo(grads.dtype)
    smallest = torch.linalg.vector_norm(grads, -math.inf, dim=-1)  # min |g| of each vector
    suspect = counted & ((smallest < finfo.tiny) | ~torch.isfinite(norms))
    bits, tiny = magnitude_bits(grads[suspect])  # [N, H]
    zero = bits == 0
    vanished = norms[suspect] < finfo.tiny / finfo.eps  # the vector is down at rounding range
    infinite = torch.tensor(math.inf, dtype=grads.dtype).view(bits.dtype).to(bits.device)
    numbers = torch.stack([
        torch.count_nonzero(zero), torch.count_nonzero(bits < tiny.to(bits.device)),
        torch.count_nonzero(zero & vanished.unsqueeze(1)),
        torch.count_nonzero(bits >= infinite), counted.sum()]).tolist()
    zeros, below, vanished_zeros, nonfinite, vectors = numbers
    counts["nonfinite"] += nonfinite
    counts["subnormal"] += below - zeros
    counts["underflow"] += below - zeros + vanished_zeros
    counts["entries"] += vectors * grads.shape[-1]


def _stack(rows: list[Tensor]) -> Tensor:
    steps = max((len(r) for r in rows), default=0)
    table = torch.full((len(rows), steps), float("nan"), dtype=torch.float64)
    for i, row in enumerate(rows):
        table[i, : len(row)] = row
    return table


def _stack_samples(samples: list[Tensor], steps: int) -> Tensor:
    batch = max(s.shape[1] for s in samples)
    out = torch.full((len(samples), steps, batch), float("nan"), dtype=torch.float64)
    for i, s in enumerate(samples):
        out[i, : s.shape[0], : s.shape[1]] = s
    return out
