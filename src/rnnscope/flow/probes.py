"""Probes: pure functions from one training step to numbers. No I/O, no logging.

Every function takes tensors and returns a 0-d tensor or a dict of tensors under a
fixed key scheme, computed without `.item()` or any other host sync, so a caller
can gather them every step and read them once per logged step (`rundir` writes):

    grad_norm/<param>, grad_norm_total        grad_norms
    nonfinite/<param>, nonfinite_total        nonfinite_counts
    update_ratio/<param>, update_ratio_total  update_ratio
    flow/l<k>                                 flow_profile

`<param>` is the name from `named_parameters()`, e.g. `rnn.weight_hh_l0`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from rnnscope.checks import integer
from rnnscope.numerics import magnitude_bits
from rnnscope.schedules import Every

NamedParameters = nn.Module | Iterable[tuple[str, Tensor]]


@dataclass(frozen=True)
class ProbeConfig:
    """The `probe` section: how often the trainer records the gradient flow through
    time (dL/dh_t for every layer and step; 0 = never). Recording costs about one
    unrolled forward and backward pass (an LSTM: its fused kernel's with H more input
    channels, models/fused.py), so long runs record every N steps."""

    every: int = 10
    histograms: bool = True  # gradient histograms to TensorBoard on the same schedule

    def __post_init__(self) -> None:
        integer("probe.every", self.every, 0)

    @property
    def schedule(self) -> Every:
        """The first update, then every `every`-th (`schedules.every`)."""
        return Every(self.every, first=True)


def _named_grads(named_parameters: NamedParameters) -> list[tuple[str, Tensor]]:
    if isinstance(named_parameters, nn.Module):
        named_parameters = named_parameters.named_parameters()
    return [(name, p.grad.detach()) for name, p in named_parameters if p.grad is not None]


def grad_norms(named_parameters: NamedParameters, norm_type: float = 2.0) -> dict[str, Tensor]:
    """Per-parameter gradient norms `grad_norm/<param>` and their global norm `grad_norm_total`.

    `grad_norm_total` is the norm of the vector of per-parameter norms, the same
    quantity `torch.nn.utils.clip_grad_norm_` computes and clips, so a logged value
    can be compared with a clipping threshold directly. `norm_type` may be `inf`.
    Parameters without `.grad` are skipped; with none at all the total is 0, as torch's.
    Accepts a module or an iterable of (name, parameter), e.g. `model.named_parameters()`.
    """
    norm_type = float(norm_type)
    named = _named_grads(named_parameters)
    norms = {f"grad_norm/{name}": torch.linalg.vector_norm(g, norm_type) for name, g in named}
    if not norms:
        return {"grad_norm_total": torch.tensor(0.0)}
    device = named[0][1].device
    per_param = torch.stack([n.to(device) for n in norms.values()])
    norms["grad_norm_total"] = torch.linalg.vector_norm(per_param, norm_type)
    return norms


def nonfinite_counts(named_parameters: NamedParameters) -> dict[str, Tensor]:
    """Counts of NaN and +-inf gradient entries: `nonfinite/<param>` and `nonfinite_total`.

    A single non-finite entry poisons a global-norm clip and then every weight it
    touches; counting per parameter names where it entered. Counts are int64 tensors.
    Parameters without `.grad` are skipped.
    """
    named = _named_grads(named_parameters)
    counts = {f"nonfinite/{name}": (~torch.isfinite(g)).sum() for name, g in named}
    device = named[0][1].device if named else None
    total = sum((c.to(device) for c in counts.values()), torch.zeros((), dtype=torch.long,
                                                                      device=device))
    counts["nonfinite_total"] = total
    return counts


def _fraction(tensors: Tensor | Iterable[Tensor], which) -> Tensor:
    tensors = [tensors] if isinstance(tensors, Tensor) else list(tensors)
    total = sum(t.numel() for t in tensors)
    if total == 0:
        return torch.tensor(0.0)
    device = tensors[0].device
    counts = [which(*magnitude_bits(t)).sum().to(device) for t in tensors]
    return torch.stack(counts).sum() / total


def subnormal_fraction(tensors: Tensor | Iterable[Tensor]) -> Tensor:
    """Fraction of all elements of `tensors` that are subnormal: nonzero, |x| < finfo.tiny.

    Vanishing gradients underflow into subnormals, which x86 CPUs process many times
    slower; a rising fraction is both a symptom and a speed warning. The threshold is
    per dtype (float64's tiny is ~2.2e-308, float32's ~1.2e-38). Counted on the bit
    pattern, so it is correct under `torch.set_flush_denormal(True)` too.
    """
    return _fraction(tensors, lambda bits, tiny: (bits > 0) & (bits < tiny))


def zero_fraction(tensors: Tensor | Iterable[Tensor]) -> Tensor:
    """Fraction of all elements of `tensors` that are exactly +-0 (subnormals are not zero).

    Where the gradient underflowed all the way (or was flushed), this is where it went.
    """
    return _fraction(tensors, lambda bits, tiny: bits == 0)


def snapshot(named_parameters: NamedParameters) -> dict[str, Tensor]:
    """Detached copies of the parameters, `{<param>: tensor}`: the `before` of `update_ratio`.

    Take it just before `optimizer.step()`; the step updates parameters in place.
    """
    if isinstance(named_parameters, nn.Module):
        named_parameters = named_parameters.named_parameters()
    return {name: p.detach().clone() for name, p in named_parameters}


def update_ratio(before: Mapping[str, Tensor], after: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Relative size of one update: `update_ratio/<param>` = ||after - before|| / ||before||.

    `update_ratio_total` is the same over all parameters as one vector. Around 1e-3 is
    the usual healthy range; far above it the step rewrites the weights (exploding),
    far below it they are frozen (vanishing). A parameter with ||before|| = 0 (a
    zero-initialised bias) has no scale to be relative to: its ratio is 0 if it did
    not move and inf if it did. `after` may be `dict(model.named_parameters())`; only
    the names in `before` are used and each must be in `after`.
    """
    missing = sorted(set(before) - set(after))
    if missing:
        raise KeyError(f"parameters in `before` but not in `after`: {missing}")
    ratios: dict[str, Tensor] = {}
    deltas, scales = [], []
    for name, old in before.items():
        old = old.detach()
        delta = torch.linalg.vector_norm(after[name].detach() - old)
        scale = torch.linalg.vector_norm(old)
        ratios[f"update_ratio/{name}"] = _ratio(delta, scale)
        deltas.append(delta)
        scales.append(scale)
    if not deltas:
        ratios["update_ratio_total"] = torch.tensor(0.0)
        return ratios
    device = deltas[0].device
    ratios["update_ratio_total"] = _ratio(
        torch.linalg.vector_norm(torch.stack([d.to(device) for d in deltas])),
        torch.linalg.vector_norm(torch.stack([s.to(device) for s in scales])))
    return ratios


def _ratio(delta: Tensor, scale: Tensor) -> Tensor:
    # 0/0 -> 0 (unmoved zero tensor), x/0 -> inf; where() keeps it free of host syncs.
    return torch.where(scale > 0, delta / scale,
                       torch.where(delta > 0, torch.inf, 0.0).to(delta.dtype))


def loss_spike(history: Tensor | Sequence[float], loss: Tensor | float, *, window: int = 50,
               min_history: int = 5, eps: float = 1e-6) -> Tensor:
    """Robust z-score of `loss` against the last `window` values of `history`.

    z = (loss - median) / (1.4826 * MAD + eps * (1 + |median|)), with median and MAD
    (median absolute deviation) over the finite values of the window; 1.4826 * MAD
    estimates the standard deviation of Gaussian noise, and unlike a mean and std it is
    not dragged along by the spikes it is looking for. The eps term keeps a perfectly
    flat history from turning float rounding into a spike. `history` holds earlier
    losses only (not `loss`). Returns 0 while fewer than `min_history` finite values
    exist, and +inf for a non-finite `loss`: divergence is the largest spike.
    """
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    loss, history = torch.as_tensor(loss).detach(), torch.as_tensor(history).detach()
    dtype = torch.promote_types(loss.dtype, torch.get_default_dtype())
    loss = loss.to(dtype)
    inf, zero = torch.full_like(loss, torch.inf), torch.zeros_like(loss)
    recent = history.reshape(-1)[-window:].to(device=loss.device, dtype=dtype)
    if recent.numel() < min_history:
        return torch.where(torch.isfinite(loss), zero, inf)
    finite = torch.isfinite(recent)
    recent = torch.where(finite, recent, torch.nan)  # nanmedian skips them, no masking sync
    median = recent.nanmedian()
    mad = (recent - median).abs().nanmedian()
    z = (loss - median) / (1.4826 * mad + eps * (1 + median.abs()))
    z = torch.where(finite.sum() >= min_history, z, zero)
    return torch.where(torch.isfinite(loss), z, inf)


def flow_profile(norms: Tensor) -> dict[str, Tensor]:
    """Split gradient-flow norms `[rows, T]` into `flow/l<k>` -> `[T]`, one per row.

    `norms` is `GradientFlow.norms`: the batch-mean ||dL/dh_t|| per recurrent layer
    (and direction) in time order, NaN where a row has no step t; k is the row index
    (`GradientFlow.layers[k]` names it). Kept as one series per row so a logger can
    store each layer's profile as its own curve.
    """
    if norms.dim() != 2:
        raise ValueError(f"norms must be [num_layers, T], got shape {tuple(norms.shape)}")
    return {f"flow/l{k}": row for k, row in enumerate(norms.detach())}
