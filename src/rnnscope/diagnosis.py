"""From a recorded gradient flow to a verdict, the numbers behind it, and what to do.

`diagnose(rec_or_flow)` reads the profile of ||dL/dh_t|| by steps back from the
loss, for each forward-direction row of the flow:

- reach: steps back until the norm falls below 1e-3 of its largest value
  (the whole sequence when it never does);
- rate: the geometric change per step, exp of the least-squares slope of
  log ||dL/dh_t|| against steps back (below 1 shrinks, above 1 grows);
- the verdict: `nonfinite` if any gradient is NaN/inf, `exploding` if the
  gradient grows going back (rate > 1 and the largest norm at least 100x the
  norm where the loss enters), `vanishing` if the reach is shorter than the
  sequence, `healthy` otherwise.

Fixes are the seeds' remedies ranked for the verdict and the cell, each with
the exact command-line change that applies it (DESIGN.md's CLI flags).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from rnnscope import dynamics
from rnnscope.cells import cell_name
from rnnscope.recording import GradientFlow, Recorder

REACH_THRESHOLD = 1e-3  # "reached" while within this fraction of the largest norm
EXPLODING_GROWTH = 100.0  # largest norm over the norm where the loss enters
VERDICTS = ("vanishing", "exploding", "healthy", "nonfinite")
LYAPUNOV_SAMPLES = 2  # sequences of the recorded batch used for the Lyapunov exponent
LYAPUNOV_BUDGET = 2**25  # Jacobian entries (T x B x S^2) it may use: 256 MB in float64


@dataclass(frozen=True)
class Fix:
    """One remedy: what to change, why, and the flags that change it."""

    remedy: str
    why: str
    change: dict[str, str]  # CLI flag (without --) -> value, e.g. {"cell": "lstm"}

    @property
    def cli(self) -> str:
        return " ".join(f"--{flag}={value}" for flag, value in self.change.items())


@dataclass
class Diagnosis:
    verdict: str
    reach: int
    rate: float
    steps: int
    evidence: dict[str, float | int | str] = field(default_factory=dict)
    fixes: list[Fix] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "verdict": self.verdict, "reach": self.reach, "rate": self.rate,
            "steps": self.steps, "evidence": dict(self.evidence),
            "fixes": [{"remedy": f.remedy, "why": f.why, "change": dict(f.change),
                       "cli": f.cli} for f in self.fixes],
        }

    def __str__(self) -> str:
        lines = [f"verdict: {self.verdict}", f"  {self.summary()}", "evidence:"]
        lines += [f"  {key}: {_format(value)}" for key, value in self.evidence.items()]
        if self.fixes:
            lines.append("fixes, most effective first:")
            for rank, fix in enumerate(self.fixes, 1):
                lines.append(f"  {rank}. {fix.remedy}: {fix.cli}")
                lines.append(f"     {fix.why}")
        return "\n".join(lines)

    def summary(self) -> str:
        """One sentence in words."""
        per_step = f"x{self.rate:.3g} per step" if math.isfinite(self.rate) else "no fit"
        if self.verdict == "nonfinite":
            return (f"{self.evidence.get('nonfinite', 'some')} gradient values are NaN or inf; "
                    "the update would spread them into every weight")
        if self.verdict == "exploding":
            return (f"the gradient grows going back in time ({per_step}); its largest norm is "
                    f"{_format(self.evidence.get('growth', float('nan')))}x the norm at the loss")
        if self.verdict == "vanishing":
            return (f"the gradient falls below {REACH_THRESHOLD:g} of its peak {self.reach} "
                    f"steps back, of {self.steps} ({per_step}): earlier steps barely "
                    "shape the weights")
        return (f"the gradient reaches all {self.steps} steps back ({per_step}) "
                "within a factor 1000 of its peak")


def diagnose(rec_or_flow: Recorder | GradientFlow, *, lr: float | None = None,
             current: dict[str, str] | None = None) -> Diagnosis:
    """Verdict, reach, rate, evidence and ranked fixes for a recorded gradient flow.

    Given the `Recorder` (not only its flow), the evidence also holds the total
    parameter-gradient norm, the spectral radius of W_hh and the largest
    Lyapunov exponent of the first recurrent layer along the recorded input.
    `lr`, when known, makes the learning-rate fix an exact value. `current` holds
    the settings in force as CLI flags (e.g. `{"cell": "lstm", "init": "chrono:200"}`);
    a fix that would change nothing is left out.
    """
    recorder = rec_or_flow if isinstance(rec_or_flow, Recorder) else None
    flow = recorder.flow if recorder is not None else rec_or_flow
    if not isinstance(flow, GradientFlow):
        raise TypeError(
            f"rec_or_flow: expected a Recorder or GradientFlow, got {type(flow).__name__}"
        )
    profiles = flow.steps_back()
    forward_rows = [row for row, rev in zip(profiles, flow.reverse, strict=True) if not rev]
    stats = [_profile_stats(row) for row in forward_rows]
    best = max(stats, key=lambda s: s.reach)  # the layer that carries gradient furthest
    reach, rate = best.reach, best.rate

    nonfinite = flow.nonfinite + _nonfinite_norms(flow.norms)
    if nonfinite:
        verdict = "nonfinite"
    elif any(s.rate > 1.0 and s.growth >= EXPLODING_GROWTH for s in stats):
        verdict = "exploding"
    elif reach < best.length:
        verdict = "vanishing"
    else:
        verdict = "healthy"

    evidence: dict[str, float | int | str] = {
        "steps": flow.steps, "reach": reach, "rate": rate, "norm_at_loss": best.at_loss,
        "peak_norm": best.peak, "growth": max(s.growth for s in stats),
        "norm_at_first_step": best.at_first_step,
        "subnormal_fraction": flow.subnormal_fraction,
        "underflow_fraction": flow.underflow_fraction, "nonfinite": nonfinite,
        "layers": len(flow.layers),
    }
    cell = None
    if recorder is not None:
        cell = cell_name(recorder.layers[0][1])
        evidence["cell"] = cell
        evidence.update(_model_evidence(recorder))
    current = dict(current or {})
    cell = cell or current.get("cell")
    fixes = rank_fixes(verdict, cell=cell, steps=flow.steps, reach=reach,
                       growth=float(evidence["growth"]),
                       grad_norm=evidence.get("grad_norm_total"), lr=lr,
                       init=current.get("init"),
                       explosive=float(evidence.get("lyapunov_max", -1.0)) > 0)
    fixes = [f for f in fixes if any(current.get(k) != v for k, v in f.change.items())]
    return Diagnosis(verdict, reach, rate, flow.steps, evidence, fixes)


@dataclass(frozen=True)
class _RowStats:
    reach: int
    rate: float
    peak: float
    at_loss: float  # the norm where the loss enters (0 steps back)
    at_first_step: float  # the norm at the far end of the sequence
    length: int

    @property
    def growth(self) -> float:
        return self.peak / self.at_loss if self.at_loss > 0 else math.inf


def _profile_stats(profile: Tensor) -> _RowStats:
    """Reach and rate of one row of norms indexed by steps back."""
    values = profile[~torch.isnan(profile)].double()
    length = len(values)
    if length == 0:
        return _RowStats(0, math.nan, 0.0, 0.0, 0.0, 0)
    finite = torch.where(torch.isfinite(values), values, torch.zeros_like(values))
    peak_at = int(finite.argmax())
    peak, at_loss, at_first = float(finite[peak_at]), float(finite[0]), float(finite[-1])
    if peak <= 0.0:
        return _RowStats(0, 0.0, 0.0, at_loss, at_first, length)
    steps_back = torch.arange(length, dtype=torch.float64)
    fallen = (finite < REACH_THRESHOLD * peak) & (steps_back >= peak_at)
    reach = int(fallen.nonzero()[0]) if fallen.any() else length
    # Fit over every step where the norm is not yet lost in rounding (or flushed to 0).
    usable = finite > peak * 1e-30
    if int(usable.sum()) < 2:
        rate = 0.0 if reach < length else 1.0
    else:
        x, y = steps_back[usable], finite[usable].log()
        slope = ((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()) ** 2).sum()
        rate = math.exp(float(slope))
    return _RowStats(reach, rate, peak, at_loss, at_first, length)


def _nonfinite_norms(norms: Tensor) -> int:
    """inf anywhere, and NaN anywhere but the trailing padding of a shorter row."""
    nan = torch.isnan(norms)
    padding = nan.flip(1).cumprod(dim=1).flip(1).bool()  # NaN from some step to the end
    return int(torch.isinf(norms).sum() + (nan & ~padding).sum())


def _model_evidence(recorder: Recorder) -> dict[str, float]:
    """Numbers that need the model: parameter-gradient norm, spectral radius, Lyapunov."""
    evidence: dict[str, float] = {}
    grads = [p.grad.detach() for p in recorder.model.parameters() if p.grad is not None]
    if grads:
        total = torch.linalg.vector_norm(
            torch.stack([torch.linalg.vector_norm(g.double()) for g in grads]))
        evidence["grad_norm_total"] = float(total)
    name, module = recorder.layers[0]
    radii = dynamics.spectral_radius(module)
    if radii:
        evidence["spectral_radius_max"] = max(radii.values())
    capture = recorder.captures.get(name)
    if capture is not None and isinstance(capture.input, Tensor):
        # Full step Jacobians cost T x B x S^2; a few sequences estimate the top exponent.
        inputs = capture.input if capture.input.dim() == 3 else capture.input.unsqueeze(1)
        if module.batch_first and capture.input.dim() == 3:
            inputs = inputs.transpose(0, 1)
        # The Jacobians cost T x B x S^2 numbers: a few sequences and, for large
        # states, the first steps only, give the estimate within a bounded budget.
        state = module.hidden_size * (2 if cell_name(module) == "lstm" else 1)
        samples = min(LYAPUNOV_SAMPLES, inputs.shape[1])
        steps = max(1, min(inputs.shape[0], LYAPUNOV_BUDGET // (samples * state * state)))
        time_major = inputs[:steps, :samples]
        if module.batch_first:
            time_major = time_major.transpose(0, 1)
        exponents = dynamics.lyapunov(module, time_major, k=1)
        evidence["lyapunov_max"] = float(exponents[0])
        evidence["lyapunov_steps"] = steps
    return evidence


def rank_fixes(verdict: str, *, cell: str | None, steps: int, reach: int, growth: float,
               grad_norm: float | None = None, lr: float | None = None,
               init: str | None = None, explosive: bool = False) -> list[Fix]:
    """The seeds' remedies that address `verdict`, most effective first.

    `init` is the scheme in force (e.g. "chrono:200"); `explosive` says the
    dynamics themselves grow (top Lyapunov exponent > 0), which for a
    non-finite verdict puts the cause (the weights) before the guard.
    """
    if verdict == "healthy":
        return []
    smaller_lr = {"lr": f"{lr / 10:g}"} if lr else {"lr": "<a tenth of the current>"}
    if verdict == "nonfinite":
        fixes = [
            Fix("NaN guard", "restore the last finite weights, halve the learning rate and go "
                "on, instead of spreading NaN into every weight", {"guard": "rollback"}),
            Fix("gradient clipping", "NaN usually follows an overflow that clipping by the "
                "global norm would have capped", {"clip": "norm:1.0"}),
            Fix("smaller learning rate", "a smaller step keeps weights out of the region "
                "where activations overflow", smaller_lr),
        ]
        if explosive:
            fixes.insert(0, Fix("smaller initial recurrent weights", "the state dynamics "
                                "grow (top Lyapunov exponent > 0) until activations overflow; "
                                "spectral radius 1 stops the growth", {"init": "spectral:1.0"}))
        return fixes
    if verdict == "exploding":
        threshold = _clip_threshold(grad_norm, growth)
        fixes = [
            Fix("gradient clipping", f"rescale the update when the global gradient norm "
                f"exceeds {threshold:g} (the observed norm without the {growth:.3g}x "
                "growth through time); the direction is kept", {"clip": f"norm:{threshold:g}"}),
            Fix("smaller initial recurrent weights", "rescale W_hh to spectral radius 1, the "
                "edge between shrinking and growing", {"init": "spectral:1.0"}),
            Fix("smaller learning rate", "smaller steps keep W_hh from growing past the "
                "point where gradients explode", smaller_lr),
            Fix("L2 regularisation", "weight decay pulls the recurrent weights back towards "
                "small norms", {"optim.weight_decay": "1e-4"}),
        ]
        if cell in ("rnn_tanh", "rnn_relu"):
            fixes.append(Fix("gated cell", "an LSTM's gates bound the state and its gradient",
                             {"cell": "lstm"}))
        return fixes
    chrono = f"chrono:{steps}"
    fixes = []
    if cell in (None, "rnn_tanh", "rnn_relu", "gru"):
        fixes.append(Fix("gated cell with chrono init", "the LSTM cell state is additive and "
                         f"chrono-initialised forget gates keep it for up to ~{steps} steps",
                         {"cell": "lstm", "init": chrono}))
    if cell == "lstm":
        fixes.append(Fix("chrono init", f"forget-gate biases log U[1, {steps - 1}] make the "
                         f"cell remember over the {steps} steps the task spans",
                         {"init": chrono}))
        if not (init or "").startswith("chrono"):  # chrono's forget biases are already larger
            fixes.append(Fix("forget-gate bias 1", "forget gates start open (sigmoid(1) ~ "
                             "0.73) instead of half shut", {"init": "forget_bias:1.0"}))
    if cell in (None, "rnn_tanh"):
        fixes.append(Fix("ReLU units with identity init (IRNN)", "W_hh = I and ReLU pass the "
                         "gradient back unchanged while units are active",
                         {"cell": "rnn_relu", "init": "identity:1.0"}))
    if cell == "rnn_relu":
        fixes.append(Fix("identity init (IRNN)", "W_hh = I passes the gradient back "
                         "unchanged while units are active", {"init": "identity:1.0"}))
    fixes.append(Fix("orthogonal init", "an orthogonal W_hh preserves the gradient norm "
                     "through the linear part of every step", {"init": "orthogonal"}))
    if 0 < reach < steps:
        fixes.append(Fix("truncated BPTT (speed, not memory)", f"the gradient beyond {reach} "
                         "steps is already below 1e-3 of its peak, so windows of that length "
                         "cost less per step without losing gradient; it cannot teach "
                         "longer dependencies", {"bptt.window": str(reach)}))
    return fixes


def _clip_threshold(grad_norm: float | None, growth: float) -> float:
    """One significant digit of the gradient norm without its growth through time."""
    if not grad_norm or not math.isfinite(grad_norm) or not math.isfinite(growth):
        return 1.0
    # Capped at 1.0, the threshold of the classic long-range results (TASKS.md).
    estimate = min(max(grad_norm / max(growth, 1.0), 1e-2), 1.0)
    digits = 10 ** math.floor(math.log10(estimate))
    return round(estimate / digits) * digits


def _format(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)
