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

from rnnscope.flow import dynamics
from rnnscope.flow.fixes import Fix, rank_fixes
from rnnscope.flow.gradients import GradientFlow
from rnnscope.flow.recording import Recorder

REACH_THRESHOLD = 1e-3  # "reached" while within this fraction of the largest norm
EXPLODING_GROWTH = 100.0  # largest norm over the norm where the loss enters
VERDICTS = ("vanishing", "exploding", "healthy", "nonfinite")


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
                       "cli": f.cli, "code": f.code} for f in self.fixes],
        }

    def report_fields(self) -> dict:
        """What a run directory's summary.json keeps of a diagnosis (the report reads it):
        the verdict with the fixes' flags, the evidence, the summary in words, and every
        fix with its reason, flags and code."""
        return {"diagnosis": {"verdict": self.verdict, "reach": self.reach, "rate": self.rate,
                              "fixes": [fix.cli for fix in self.fixes]},
                "evidence": dict(self.evidence), "explanation": self.summary(),
                "fix_details": [{"remedy": f.remedy, "why": f.why, "cli": f.cli,
                                 "code": f.code} for f in self.fixes]}

    def __str__(self) -> str:
        lines = [f"verdict: {self.verdict}", f"  {self.summary()}", "evidence:"]
        lines += [f"  {key}: {_format(value)}" for key, value in self.evidence.items()]
        if self.fixes:
            lines.append("fixes, most effective first:")
            for rank, fix in enumerate(self.fixes, 1):
                lines.append(f"  {rank}. {fix.remedy}: {fix.cli}")
                lines.append(f"     {fix.why}")
                lines += [f"       {line}" for line in fix.code.splitlines()]
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
    # The hidden outputs of the forward direction: where the loss enters at the end.
    forward_rows = [row for row, rev, state in zip(profiles, flow.reverse, flow.states,
                                                   strict=True) if not rev and state == "h"]
    stats = [_profile_stats(row) for row in forward_rows]
    best = max(stats, key=lambda s: s.reach)  # the layer that carries gradient furthest
    nonfinite = flow.nonfinite + _nonfinite_norms(flow.norms)
    verdict = _verdict(stats, best, nonfinite)
    evidence = _flow_evidence(flow, stats, best, nonfinite)
    current = dict(current or {})
    cell = current.get("cell")
    if recorder is not None:
        cell = recorder.cell() or cell
        if cell is not None:
            evidence["cell"] = cell
        evidence.update(_model_evidence(recorder))
    fixes = rank_fixes(verdict, cell=cell, steps=flow.steps, reach=best.reach,
                       growth=float(evidence["growth"]),
                       grad_norm=evidence.get("grad_norm_total"), lr=lr,
                       init=current.get("init"),
                       explosive=float(evidence.get("lyapunov_max", -1.0)) > 0)
    fixes = [f for f in fixes if any(current.get(k) != v for k, v in f.change.items())]
    return Diagnosis(verdict, best.reach, best.rate, flow.steps, evidence, fixes)


def _verdict(stats: list[_RowStats], best: _RowStats, nonfinite: int) -> str:
    if nonfinite:
        return "nonfinite"
    if any(s.rate > 1.0 and s.growth >= EXPLODING_GROWTH for s in stats):
        return "exploding"
    return "vanishing" if best.reach < best.length else "healthy"


def _flow_evidence(flow: GradientFlow, stats: list[_RowStats], best: _RowStats,
                   nonfinite: int) -> dict[str, float | int | str]:
    return {
        "steps": flow.steps, "reach": best.reach, "rate": best.rate,
        "norm_at_loss": best.at_loss, "peak_norm": best.peak,
        "growth": max(s.growth for s in stats), "norm_at_first_step": best.at_first_step,
        "subnormal_fraction": flow.subnormal_fraction,
        "underflow_fraction": flow.underflow_fraction, "nonfinite": nonfinite,
        "layers": len(flow.layers),
    }


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
    fused = [(name, module) for name, module in recorder.layers if module in
             recorder.followed]
    if not fused:  # cells and marked states: no W_hh of a layer to measure
        return evidence
    name, module = fused[0]
    radii = dynamics.spectral_radius(module)
    if radii:
        evidence["spectral_radius_max"] = max(radii.values())
    recorded = recorder.input_of(name)
    if isinstance(recorded, Tensor):
        # A few sequences, and for large states the first steps only, estimate the top
        # exponent within the Jacobians' budget.
        inputs = recorded if recorded.dim() == 3 else recorded.unsqueeze(1)
        if module.batch_first and recorded.dim() == 3:
            inputs = inputs.transpose(0, 1)
        samples = min(dynamics.LYAPUNOV_SAMPLES, inputs.shape[1])
        steps = dynamics.lyapunov_steps(module, samples, inputs.shape[0])
        time_major = inputs[:steps, :samples]
        if module.batch_first:
            time_major = time_major.transpose(0, 1)
        exponents = dynamics.lyapunov(module, time_major, k=1)
        evidence["lyapunov_max"] = float(exponents[0])
        evidence["lyapunov_steps"] = steps
    return evidence


def _format(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)
