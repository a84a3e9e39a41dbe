"""From a recorded gradient flow to a verdict, the numbers behind it, and what to do.

`diagnose(rec_or_flow)` reads the profile of ||dL/dh_t|| by steps back from the loss
(`reach.py`: reach, rate, growth), taking for an LSTM the better of its hidden output
and, where recorded, its cell state (the path an LSTM's memory gives the gradient),
and what else it is told (`Context`: the horizon the task needs, the truncation
window, whether the task is solved, the size of the latest update, earlier reaches).
The verdicts, in the order they are decided:

    nonfinite   a NaN or inf in the gradient through time
    healthy     the task is solved: whatever the profile, there is nothing to fix
    exploding   the gradient grows going back (rate > 1 and the largest norm >= 100x the
                norm where the loss enters)
    stalled     updates are too small to move the weights (||dtheta|| / ||theta|| below
                1e-4): the learning rate, not the gradient's path, holds training back
    truncated   truncated BPTT with a window shorter than the horizon: no gradient can
                cross the cut, whatever the cell
    vanishing   the reach is shorter than the horizon (the task's longest dependency, or
                the recorded sequence when it is not known)
    healthy     otherwise

Fixes are the seeds' remedies ranked for the verdict and the cell (`fixes.py`), each as
command-line flags and as code for one's own model and loop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from rnnscope.flow import dynamics
from rnnscope.flow.fixes import Fix, rank_fixes
from rnnscope.flow.gradients import GradientFlow
from rnnscope.flow.reach import REACH_THRESHOLD, ProfileStats, nonfinite_norms, profile_stats
from rnnscope.flow.recording import Recorder

EXPLODING_GROWTH = 100.0  # largest norm over the norm where the loss enters
STALLED_UPDATE = 1e-4  # ||dtheta|| / ||theta|| below this: the weights barely move
# The order matters to the Lightning callback's `verdict` code (its index here).
VERDICTS = ("vanishing", "exploding", "healthy", "nonfinite", "truncated", "stalled")


@dataclass(frozen=True)
class Context:
    """What `diagnose` may know besides the flow; every field is optional."""

    horizon: int | None = None  # steps back the task needs the gradient to carry
    window: int | None = None  # the truncated-BPTT window in force (None: full BPTT)
    solved: bool | None = None  # the held-out metric is below the task's threshold
    update_ratio: float | None = None  # ||dtheta|| / ||theta|| of the latest update
    earlier_reach: tuple[int, ...] = ()  # the reach at earlier recordings, oldest first


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
        horizon = self.evidence.get("horizon", self.steps)
        if self.verdict == "vanishing":
            return (f"the gradient falls below {REACH_THRESHOLD:g} of its peak {self.reach} "
                    f"steps back, where the task needs {horizon} ({per_step}): earlier "
                    "steps barely shape the weights")
        if self.verdict == "truncated":
            return (f"truncated BPTT cuts the gradient every {self.evidence.get('window')} "
                    f"steps, where the task needs {horizon}: no cell can learn across the "
                    "cut")
        if self.verdict == "stalled":
            return (f"an update moves the weights by "
                    f"{_format(self.evidence.get('update_ratio'))} of their norm: too "
                    "little to learn in any number of steps; the gradient's path is not "
                    "the problem")
        if self.evidence.get("solved"):
            return "the task is solved: nothing to fix"
        return (f"the gradient reaches {self.reach} of {self.steps} steps back ({per_step}) "
                "within a factor 1000 of its peak")


def diagnose(rec_or_flow: Recorder | GradientFlow, *, lr: float | None = None,
             current: dict[str, str] | None = None, horizon: int | None = None,
             window: int | None = None, context: Context | None = None) -> Diagnosis:
    """Verdict, reach, rate, evidence and ranked fixes for a recorded gradient flow.

    Given the `Recorder` (not only its flow), the evidence also holds the total
    parameter-gradient norm, the spectral radius of W_hh and the largest
    Lyapunov exponent of the first recurrent layer along the recorded input.
    `horizon`: the steps back your task needs (the span of its longest dependency;
    default: the recorded length). `window`: the truncated-BPTT window you train with.
    `context` says more (see `Context`; the trainer and `watch` fill it in).
    `lr`, when known, makes the learning-rate fixes exact values. `current` holds the
    settings in force as CLI flags (e.g. `{"cell": "lstm", "init": "chrono:200"}`); a
    fix that would change nothing is left out.
    """
    recorder = rec_or_flow if isinstance(rec_or_flow, Recorder) else None
    flow = recorder.flow if recorder is not None else rec_or_flow
    if not isinstance(flow, GradientFlow):
        raise TypeError(
            f"rec_or_flow: expected a Recorder or GradientFlow, got {type(flow).__name__}"
        )
    context = context or Context()
    if horizon is not None or window is not None:
        context = Context(horizon if horizon is not None else context.horizon,
                          window if window is not None else context.window, context.solved,
                          context.update_ratio, context.earlier_reach)
    stats, best = _rows(flow)
    nonfinite = flow.nonfinite + nonfinite_norms(flow.norms)
    target = best.length if context.horizon is None else context.horizon  # the reach needed
    verdict = _verdict(stats, best, nonfinite, context, target)
    evidence = _flow_evidence(flow, stats, best, nonfinite)
    evidence.update({key: value for key, value in (
        ("horizon", context.horizon), ("window", context.window),
        ("update_ratio", context.update_ratio), ("solved", context.solved))
        if value is not None})
    current = dict(current or {})
    cell = current.get("cell")
    if recorder is not None:
        cell = recorder.cell() or cell
        if cell is not None:
            evidence["cell"] = cell
        evidence.update(_model_evidence(recorder))
    fixes = rank_fixes(verdict, cell=cell, steps=target, reach=best.reach,
                       growth=float(evidence["growth"]),
                       grad_norm=evidence.get("grad_norm_total"), lr=lr,
                       init=current.get("init"),
                       explosive=float(evidence.get("lyapunov_max", -1.0)) > 0,
                       update_ratio=context.update_ratio, window=context.window)
    fixes = [f for f in fixes if any(current.get(k) != v for k, v in f.change.items())]
    return Diagnosis(verdict, best.reach, best.rate, best.length, evidence, fixes)


def _rows(flow: GradientFlow) -> tuple[list[ProfileStats], ProfileStats]:
    """Statistics of the forward-direction rows (where the loss enters at the end) and
    the row that carries the gradient furthest: an LSTM's cell state counts, being the
    path its memory gives the gradient."""
    profiles = flow.steps_back()
    stats = [profile_stats(row) for row, reverse in zip(profiles, flow.reverse, strict=True)
             if not reverse]
    if not stats:  # a reverse-only flow: read it as it is
        stats = [profile_stats(row) for row in profiles]
    return stats, max(stats, key=lambda s: s.reach)


def _verdict(stats: list[ProfileStats], best: ProfileStats, nonfinite: int,
             context: Context, target: int) -> str:
    if nonfinite:
        return "nonfinite"
    if context.solved:
        return "healthy"
    if any(s.rate > 1.0 and s.growth >= EXPLODING_GROWTH for s in stats):
        return "exploding"
    if context.update_ratio is not None and context.update_ratio < STALLED_UPDATE:
        return "stalled"
    if context.window is not None and context.window < target:
        return "truncated"
    return "vanishing" if best.reach < min(target, best.length) else "healthy"


def _flow_evidence(flow: GradientFlow, stats: list[ProfileStats], best: ProfileStats,
                   nonfinite: int) -> dict[str, float | int | str]:
    return {
        "steps": flow.steps, "reach": best.reach, "rate": best.rate,
        "norm_at_loss": best.at_loss, "peak_norm": best.peak,
        "growth": max(s.growth for s in stats), "norm_at_first_step": best.at_first_step,
        "subnormal_fraction": flow.subnormal_fraction,
        "underflow_fraction": flow.underflow_fraction, "nonfinite": nonfinite,
        "layers": len(flow.layers),
    }


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
