"""Gradient clipping by name: `clip_grad(parameters, method, **kw)` and the trainer's `Clipper`.

Every method leaves the gradients alone when any of them holds NaN or inf (the total
norm is then non-finite): multiplying by a coefficient computed from a NaN norm would
spread the NaN into every finite gradient, and clamping an inf would hide the divergence
the NaN guard is there to see. The decision is a `torch.where` on the coefficient, not a
Python `if`, so clipping never waits for the device.

A new method is one function `method(params, grads, *, main, ...) -> ClipResult`
registered with `@register`; `ClipConfig` and the CLI find it by name, and the config's
`threshold` goes to its first keyword argument (`history` and `eps`, where it takes them,
come from the config too).
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import Tensor

from rnnscope.checks import choice, integer, number, positive

CLIP_METHODS: dict[str, Callable[..., ClipResult]] = {}
DEFAULT_THRESHOLD: dict[str, float] = {
    "norm": 1.0, "value": 1.0, "param_norm": 1.0, "autoclip": 10.0, "agc": 0.01}
_EPS = 1e-6  # clip_grad_norm_'s guard against dividing by a zero norm; kept for equality


def register(name: str):
    def wrap(fn: Callable[..., ClipResult]) -> Callable[..., ClipResult]:
        CLIP_METHODS[name] = fn
        _keywords.cache_clear()
        return fn

    return wrap


def _known(method) -> None:
    choice("clip.method", method, CLIP_METHODS)


def _percentile(field: str, value) -> float:
    return number(field, value, above=0.0, maximum=100.0)


@dataclass(frozen=True)
class ClipConfig:
    """The `clip` section. `threshold` is the method's one main parameter (None: the
    method's default): the max norm for norm and param_norm, the max |g| for value, the
    percentile p in (0, 100] for autoclip, the clipping factor lambda for agc. It is
    ignored by `none`, so switching a config to `none` needs no other edit."""

    method: str = "none"
    threshold: float | None = None
    history: int = 1000  # autoclip: how many recent gradient norms the percentile is over
    eps: float = 1e-3  # agc: floor on a unit's weight norm, so zero-initialised rows can move

    def __post_init__(self) -> None:
        _known(self.method)
        if self.threshold is not None:
            check = _percentile if self.method == "autoclip" else positive
            check("clip.threshold", self.threshold)
        integer("clip.history", self.history, 1)
        positive("clip.eps", self.eps)

    @classmethod
    def from_spec(cls, spec: str) -> ClipConfig:
        """`"norm:1.0"`, `"autoclip:90"`, `"agc"` (default threshold), `"none"`."""
        method, colon, threshold = str(spec).strip().partition(":")
        try:
            value = float(threshold) if colon else None
        except ValueError:
            raise ValueError(
                f"clip: cannot read {spec!r}; expected METHOD[:THRESHOLD] with METHOD one of "
                f"{', '.join(CLIP_METHODS)}") from None
        return cls(method, value)

    @property
    def spec(self) -> str:
        """The inverse of `from_spec` (history and eps are not part of a spec)."""
        return self.method if self.threshold is None else f"{self.method}:{float(self.threshold)!r}"


@dataclass
class ClipResult:
    """What one clipping step did; all 0-d tensors, read on the host only when logged."""

    norm_before: Tensor  # total gradient norm before (clip_grad_norm_'s return value)
    norm_after: Tensor  # the same after
    clipped: Tensor  # bool: the method changed some gradient
    nonfinite: Tensor  # bool: some gradient holds NaN/inf (or its norm overflows): none changed
    threshold: Tensor  # the threshold applied (autoclip: the percentile; none: inf)


@functools.cache  # inspect.signature costs more than the clipping of a small model
def _keywords(method: str) -> tuple[inspect.Parameter, ...]:
    """A method's own arguments: the keyword-only ones, the first being its threshold."""
    return tuple(p for p in inspect.signature(CLIP_METHODS[method]).parameters.values()
                 if p.kind is inspect.Parameter.KEYWORD_ONLY)


def clip_grad(parameters: Tensor | Iterable[Tensor], method: str, **kw) -> ClipResult:
    """Clip the gradients of `parameters` in place with a named method; see each method.

    none(), norm(max_norm, norm_type=2), value(clip_value), param_norm(max_norm),
    autoclip(history, percentile=10), agc(clipping=0.01, eps=1e-3). Parameters whose
    `.grad` is None are skipped. Norms are L2 except for `norm` with another norm_type.
    """
    _known(method)
    arguments = _keywords(method)
    accepted = ", ".join(p.name for p in arguments) or "none"
    unknown = sorted(set(kw) - {p.name for p in arguments})
    if unknown:
        raise ValueError(
            f"clip.{unknown[0]}: not an argument of method {method!r}; accepted: {accepted}")
    missing = [p.name for p in arguments if p.default is p.empty and p.name not in kw]
    if missing:
        raise ValueError(f"clip.{missing[0]}: required by method {method!r}; accepted: {accepted}")
    params = [parameters] if isinstance(parameters, Tensor) else list(parameters)
    params = [p for p in params if p.grad is not None]
    with torch.no_grad():
        return CLIP_METHODS[method](params, [p.grad for p in params], **kw)


def _total_norm(grads: list[Tensor], norm_type: float = 2.0) -> tuple[Tensor, Tensor]:
    """The total norm as clip_grad_norm_ computes it, and whether a gradient is non-finite.

    Exploding gradients are where clipping matters most, and there float32 squares
    overflow (|g| beyond ~1e19) although every entry and the norm itself are finite;
    torch then returns inf and would zero every gradient. Here the norm is recomputed
    in float64 in that case, so huge gradients are clipped, not mistaken for NaN.
    """
    total = torch.nn.utils.get_total_norm(grads, norm_type)
    if not grads:
        return total, ~torch.isfinite(total)
    # float64 squares of float32 entries cannot overflow: `wide` is finite exactly when
    # every entry is, so it also says whether the gradients are finite.
    wide = torch.nn.utils.get_total_norm(
        [torch.linalg.vector_norm(g, norm_type, dtype=torch.float64) for g in grads], norm_type)
    total = torch.where(torch.isinf(total) & torch.isfinite(wide), wide.to(total), total)
    return total, ~torch.isfinite(total)


def _scale_(grads: list[Tensor], coef: Tensor) -> None:
    groups: dict[tuple, list[Tensor]] = {}
    for g in grads:
        groups.setdefault((g.device, g.dtype), []).append(g)
    for (device, _), group in groups.items():
        torch._foreach_mul_(group, coef.to(device))


def _by_global_norm(grads: list[Tensor], threshold: float | Tensor, total: Tensor,
                    nonfinite: Tensor) -> ClipResult:
    coef = torch.clamp(threshold / (total + _EPS), max=1.0)
    coef = torch.where(nonfinite, torch.ones_like(coef), coef)
    _scale_(grads, coef)
    return ClipResult(total, (total * coef).to(total.dtype), (coef < 1) & (total > 0),
                      nonfinite, _like(threshold, total))


def _like(value: float | Tensor, total: Tensor) -> Tensor:
    return torch.as_tensor(value, dtype=total.dtype, device=total.device)


def _unchanged(total: Tensor, nonfinite: Tensor, threshold: float | Tensor) -> ClipResult:
    return ClipResult(total, total, torch.zeros_like(nonfinite), nonfinite, _like(threshold, total))


@register("none")
def no_clip(params: list[Tensor], grads: list[Tensor]) -> ClipResult:
    """Change nothing; still measure, so an unclipped run logs the same quantities."""
    return _unchanged(*_total_norm(grads), math.inf)


@register("norm")
def norm(params: list[Tensor], grads: list[Tensor], *, max_norm: float,
         norm_type: float = 2.0) -> ClipResult:
    """Pascanu et al.: rescale all gradients together so their total norm is at most
    max_norm; the direction of the update is kept. Equals torch's clip_grad_norm_."""
    max_norm = positive("clip.max_norm", max_norm)
    if not float(norm_type) > 0:
        raise ValueError(f"clip.norm_type: must be a positive number or inf, got {norm_type!r}")
    return _by_global_norm(grads, max_norm, *_total_norm(grads, norm_type))


@register("value")
def value(params: list[Tensor], grads: list[Tensor], *, clip_value: float) -> ClipResult:
    """Clamp every entry to [-clip_value, clip_value]; equals torch's clip_grad_value_.
    Changes the update's direction, unlike norm clipping."""
    clip_value = positive("clip.clip_value", clip_value)
    total, nonfinite = _total_norm(grads)
    largest = torch.nn.utils.get_total_norm(grads, math.inf)  # before clamping: was any over?
    # With a non-finite gradient the bounds widen to +-inf: a clamp that changes nothing.
    bound = torch.where(nonfinite, math.inf, _like(clip_value, nonfinite.double()))
    for g in grads:
        b = bound.to(device=g.device, dtype=g.dtype)
        g.clamp_(min=-b, max=b)
    return ClipResult(total, _total_norm(grads)[0], (largest > clip_value) & ~nonfinite,
                      nonfinite, _like(clip_value, total))


@register("param_norm")
def param_norm(params: list[Tensor], grads: list[Tensor], *, max_norm: float) -> ClipResult:
    """Clip each parameter's gradient to L2 norm max_norm on its own, so one exploding
    matrix (often W_hh) no longer shrinks the update of every other parameter."""
    max_norm = positive("clip.max_norm", max_norm)
    total, nonfinite = _total_norm(grads)
    if not grads:
        return _unchanged(total, nonfinite, max_norm)
    # float64: an exploding parameter's squares may pass float32's range.
    norms = torch.stack([torch.linalg.vector_norm(g, dtype=torch.float64).to(total.device)
                         for g in grads])
    coefs = torch.clamp(max_norm / (norms + _EPS), max=1.0)
    coefs = torch.where(nonfinite, torch.ones_like(coefs), coefs)
    for g, c in zip(grads, coefs, strict=True):
        g.mul_(c.to(g.device))
    after = torch.linalg.vector_norm(norms * coefs).to(total.dtype)
    clipped = ((coefs < 1) & (norms > 0)).any()
    return ClipResult(total, after, clipped, nonfinite, _like(max_norm, total))


@register("autoclip")
def autoclip(params: list[Tensor], grads: list[Tensor], *,
             percentile: float = DEFAULT_THRESHOLD["autoclip"],
             history: NormHistory) -> ClipResult:
    """Seetharaman et al. 2020 (AutoClip): record the total norm, then clip by global norm
    at the p-th percentile of the recent norms, so the threshold follows the run instead
    of being tuned by hand. A non-finite norm is not recorded: it would poison the
    percentile for `history.size` steps."""
    if not isinstance(history, NormHistory):
        raise ValueError(f"clip.history: must be a NormHistory, got {type(history).__name__}")
    percentile = _percentile("clip.percentile", percentile)
    total, nonfinite = _total_norm(grads)
    if grads:  # with nothing measured, nothing enters the history
        history.append(total)
        threshold = history.percentile(percentile)
        result = _by_global_norm(grads, threshold, total, nonfinite)
        # The current norm is in its own history: at or below the percentile the
        # coefficient t / (t + 1e-6) is a rounding, not a clip, and is not counted as one.
        result.clipped = result.clipped & (total > threshold)
        return result
    return _unchanged(total, nonfinite, history.percentile(percentile))


def _unit_norms(x: Tensor) -> Tensor:
    """L2 norm of each row (unit) of a >=2-D tensor, shaped to broadcast; of all of a 0/1-D."""
    # float64: a unit of an exploding gradient may square past float32's range.
    if x.dim() <= 1:
        return torch.linalg.vector_norm(x, dtype=torch.float64)
    return torch.linalg.vector_norm(x, dim=tuple(range(1, x.dim())), keepdim=True,
                                    dtype=torch.float64)


@register("agc")
def agc(params: list[Tensor], grads: list[Tensor], *,
        clipping: float = DEFAULT_THRESHOLD["agc"], eps: float = 1e-3) -> ClipResult:
    """Brock et al. 2021 (NFNets), unit-wise adaptive clipping: a unit's gradient may be at
    most `clipping` times its weight norm (floored at eps), so the limit scales with each
    unit's weights: ||G_i|| / max(||W_i||, eps) > lambda -> G_i *= lambda max(||W_i||, eps)
    / ||G_i||. A unit is a row (output unit) of a >=2-D weight; a 0/1-D parameter is one."""
    clipping = positive("clip.clipping", clipping)
    eps = positive("clip.eps", eps)
    total, nonfinite = _total_norm(grads)
    clipped = torch.zeros_like(nonfinite)
    for p, g in zip(params, grads, strict=True):
        limit = clipping * _unit_norms(p.detach()).clamp_min(eps)
        grad_norm = _unit_norms(g)
        over = (grad_norm > limit) & ~nonfinite.to(g.device)
        g.mul_(torch.where(over, limit / grad_norm, 1.0))
        clipped |= over.any().to(clipped.device)
    return ClipResult(total, _total_norm(grads)[0], clipped, nonfinite,
                      _like(clipping, total))


class NormHistory:
    """The most recent `size` finite gradient norms, oldest first, kept in a tensor.

    Appending shifts the window by one and takes a percentile by sorting it, both
    without a host sync; empty slots hold NaN, which sorts after every number and so
    drops out of the percentile.
    """

    def __init__(self, size: int = 1000):
        self.size = integer("clip.history", size, 1)
        self._norms = torch.full((size,), math.nan, dtype=torch.float64)

    def append(self, norm: Tensor | float) -> None:
        norm = torch.as_tensor(norm, dtype=torch.float64).detach().to(self._norms.device)
        shifted = torch.cat([self._norms[1:], norm.view(1)])
        self._norms = torch.where(torch.isfinite(norm), shifted, self._norms)

    def percentile(self, p: float) -> Tensor:
        """The p-th percentile (0 <= p <= 100) of the held norms, interpolating linearly
        between neighbours as numpy.percentile does; NaN while the history is empty."""
        p = number("clip.percentile", p, minimum=0.0, maximum=100.0)
        last = (torch.isfinite(self._norms).sum() - 1).clamp_min(0)  # index of the largest
        ranked = torch.sort(self._norms).values
        rank = last.to(torch.float64) * (p / 100)
        low = rank.floor().long()
        high = torch.clamp(low + 1, max=last)
        # take(), not ranked[low]: indexing by a 0-d tensor may read it on the host
        value = torch.lerp(ranked.take(low), ranked.take(high), rank - low)
        return torch.where(torch.isfinite(self._norms).any(), value, math.nan)

    def __len__(self) -> int:
        return int(torch.isfinite(self._norms).sum())

    def state_dict(self) -> dict:
        """The held norms, oldest first, as one tensor (loads with weights_only=True)."""
        return {"norms": self._norms[torch.isfinite(self._norms)].cpu()}

    def load_state_dict(self, state: dict) -> None:
        """Take the norms of `state`; a shorter history keeps the most recent ones."""
        norms = torch.as_tensor(state["norms"], dtype=torch.float64)[-self.size:]
        self._norms = torch.cat([torch.full((self.size - len(norms),), math.nan,
                                            dtype=torch.float64), norms]).to(self._norms.device)


class Clipper:
    """Applies `config` once per step (after unscaling, before the optimizer step) and
    keeps the autoclip history, which `state_dict` carries into a resumed run."""

    def __init__(self, config: ClipConfig):
        self.config = config
        self.history: NormHistory | None = None
        names = [p.name for p in _keywords(config.method)]
        threshold = config.threshold
        if threshold is None:
            threshold = DEFAULT_THRESHOLD.get(config.method)
        self._kwargs = {} if not names or threshold is None else {names[0]: threshold}
        if "history" in names:
            self._kwargs["history"] = self.history = NormHistory(config.history)
        if "eps" in names:
            self._kwargs["eps"] = config.eps

    def __call__(self, parameters: Tensor | Iterable[Tensor]) -> ClipResult:
        return clip_grad(parameters, self.config.method, **self._kwargs)

    def state_dict(self) -> dict:
        return {} if self.history is None else {"history": self.history.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        """A state without a history (saved under another method) starts an empty one."""
        if self.history is not None and "history" in state:
            self.history.load_state_dict(state["history"])
