"""From a recorded gradient flow to a verdict, the numbers behind it, and what to do.

`diagnose(rec_or_flow)` reads the profile of ||dL/dh_t|| by steps back from the loss
(`reach.py`: reach, rate, growth), taking for an LSTM the better of its hidden output
and, where recorded, its cell state (the path an LSTM's memory gives the gradient),
and what else it is told (`Context`: the horizon the task needs and its nearest
dependency, the truncation window, whether the task is solved, the held-out metric
against chance, the size of the latest update, earlier reaches). The verdicts, in the
order they are decided:

    nonfinite   a NaN or inf in the gradient through time
    healthy     the task is solved: whatever the profile, there is nothing to fix
    exploding   the gradient grows going back (rate > 1 and the largest norm >= 100x the
                norm where the loss enters), or an update, this one or an earlier, moved
                the weights by more than their own norm (||dtheta|| / ||theta|| > 1: a
                rate far too large, after which units saturate and the flow dies)
    stalled     updates are too small to move the weights (no update so far moved them by
                1e-3 of their norm, ||dtheta|| / ||theta||): the learning rate, not the
                gradient's path, holds training back
    truncated   truncated BPTT with a window shorter than the horizon and than the task's
                nearest dependency: no window holds a whole instance to learn from. When
                some fit (the adding problem's second number may be the last step), the
                weights learn inside the window and the state carries the rest: healthy
                when the gradient reaches the cut and its rate per step, taken over the
                horizon, stays above 1e-3 (a chrono LSTM with windows of 10 solves adding
                at T=100), vanishing otherwise
    vanishing   the reach is shorter than the horizon (the task's longest dependency, or
                the recorded sequence when it is not known), or an untrained tanh RNN
                (initial weights, or at chance) is asked for 50 steps or more (where every
                tanh RNN of the diagnosis suite failed, whatever it reached before it
                learnt; published: from T ~ 100 on the adding problem with long budgets),
                or a tanh RNN asked for more than 20 steps is still at chance after 0.5 of
                summed learning rate (50 updates of Adam at 1e-2; `Context.lr_total`), or
                one asked for 10 to 20 steps is no better than chance (at or above it)
                by then.
                An Elman RNN (rnn_tanh, rnn_relu) is held to the shortest reach of its last
                three recordings once it has three before (its reach swings: 100 steps at
                one, 3 at the next); while its held-out metric has not left chance (above
                3/4 of the task's chance level: it stores nothing yet) it is read as on its
                initial weights, to 1e-6, and held to the shortest such reach of the
                recordings it is told of (the last eight: the initial one among them early
                in a run).
                A gated cell (LSTM, GRU) is read down to 1e-6 of the peak, where its gates
                still learn, and so is any cell before training; a gated cell whose reach
                grew at each of its last three recordings, to at least twice the first, is
                healthy (its gates are learning to hold the state), and so is a GRU before
                training or while its held-out metric is at chance (its gates learn to hold
                the state once it learns)
    healthy     otherwise. A tanh RNN asked for 10 to 49 steps that is healthy before
                those rules can tell (initial weights, or at chance before 0.5 of summed
                rate; full BPTT) says so: evidence `undecided_until`, the summed rate at
                which its held-out metric tells, and "too soon to tell" in its summary

Fixes are the seeds' remedies ranked for the verdict and the cell (`fixes.py`), each as
command-line flags and as code for one's own model and loop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor

from rnnscope.flow import dynamics
from rnnscope.flow.fixes import Fix, rank_fixes
from rnnscope.flow.gradients import GradientFlow
from rnnscope.flow.reach import REACH_THRESHOLD, ProfileStats, nonfinite_norms, profile_stats
from rnnscope.flow.recording import Recorder
from rnnscope.models.cells import CELLS

EXPLODING_GROWTH = 100.0  # largest norm over the norm where the loss enters
# No update so far moved the weights by this much of their norm: they barely move. In
# the diagnosis suite Adam at 1e-2 moved them by 4e-2 to 1e-1 at first, at 1e-3 by
# 6e-3; the runs held back by the rate alone, by 2e-6 to 2e-4.
STALLED_UPDATE = 1e-3
HUGE_UPDATE = 1.0  # above this an update outweighs the weights themselves
# The order matters to the Lightning callback's `verdict` code (its index here).
# Cells by whether gates decide what the state keeps (models/cells.py knows).
GATED = tuple(name for name, spec in CELLS.items() if spec.gated)
ELMAN = tuple(name for name, spec in CELLS.items() if not spec.gated)
FAINT_REACH = 1e-6  # a gated cell's gradient still teaches its gates down to this
TREND = 3  # recordings, this one included, that the reach trend is read over
HISTORY = 8  # earlier recordings the diagnosis reads (callers keep no more in a Context)
# A held-out metric below this share of chance: the model has learnt something. In the
# diagnosis suite the Elman RNN that solved (temporal order, L=20) was at 0.5 of chance by
# step 50; those that never learnt stayed at 0.87-2.1 of it (evaluated on 64 sequences).
LEFT_CHANCE = 0.75
# Steps back from which an untrained tanh RNN is held to fail. Published: the adding
# problem fails beyond T ~ 100-150 (Arjovsky, Shah & Bengio 2016; TASKS.md), with budgets
# of thousands of updates. The diagnosis suite (hidden 64, Adam, 800 steps), temporal
# order: tanh RNNs learnt tasks needing up to 31 steps back (L=34, orthogonal, lr 3e-3)
# and failed from 23 (L=25, Xavier), a boundary that init, rate and seed move: limits of
# 20, 25 and 30 each failed a held-out round (L=22, 28 and 34 learnt). 50 held its own
# (L=56 and 60, orthogonal and Xavier, failed), and no tanh RNN of the suite needing 32
# steps or more learnt (one did with another seed: L=35 at lr 3e-3). On the adding
# problem none learnt in 800 steps from T=10 up: a limit no horizon draws.
TANH_HORIZON = 50
# A tanh RNN still at chance after this much of Adam's rate (the sum of the rates of its
# updates; Adam moves each weight by about the rate per update: 50 updates at
# 1e-2) on a task needing more than STORE_HORIZON steps back does not learn it. Drawn
# from rounds 1-9 of the diagnosis suite and their seed-1 runs: every tanh RNN needing
# 21-31 steps back that learnt had left chance by then (0.00-0.54 of it at step 50, at
# lr 1e-2 and 3e-3), and no evaluation at chance past 0.5 of summed rate on such a task
# was of a run that went on to solve. Held by round 10, trained after it was written
# (temporal order 21-29 steps back on each init and at 5e-3 and 3e-3, adding at 22): it
# fired on all 18 of its tanh runs that failed and on none of the 10 that learnt. Over
# the suite's 3,175 evaluations of tanh runs on such tasks (cases, interventions, seeds,
# fixes) it fires on 130 of the 135 runs that fail and at no point of one that solves.
# Nearer (to-L22-tanh, 20 steps back) one learnt from 0.77 of chance at step 50.
CHANCE_PROGRESS = 0.5
STORE_HORIZON = 20
# Nearer, from NEAR_HORIZON to STORE_HORIZON steps back, a tanh RNN may leave chance later
# (to-L22-tanh, 20 steps back, learnt from 0.77 of it at step 50), so there the rule asks
# more: after CHANCE_PROGRESS of summed rate the held-out metric is no better than chance
# itself (a model that ignores its inputs). Drawn from rounds 1-11 and their seed-1 runs:
# every tanh RNN needing 10-20 steps back that learnt in its budget was at 0.0-0.77 of
# chance by then; of their 47 tanh runs on such tasks, read at every evaluation, the rule
# fires on 25 of the 33 that did not learn in their budget (adding, T=10-20; copy, T=10)
# and on two that learnt only with 3x the steps (add-T10-tanh, add-T12-tanh-orthogonal,
# which an LSTM heals too). Held by round 12, trained after it was written: at step 50
# it named 4 of the 6 setups of 10-20 steps that failed, and none of the 5 that learnt.
# No tanh RNN of rounds 1-11 was asked for fewer than 10 steps: there the rule is silent
# (round 12's add-T8-tanh failed in 800 steps, and learnt in 2,400).
NEAR_HORIZON = 10
VERDICTS = ("vanishing", "exploding", "healthy", "nonfinite", "truncated", "stalled")


@dataclass(frozen=True)
class Context:
    """What `diagnose` may know besides the flow; every field is optional."""

    horizon: int | None = None  # steps back the task needs the gradient to carry
    window: int | None = None  # the truncated-BPTT window in force (None: full BPTT)
    solved: bool | None = None  # the held-out metric is below the task's threshold
    update_ratio: float | None = None  # ||dtheta|| / ||theta|| of the latest update
    # The reach at earlier recordings, oldest first (the last HISTORY of them are read).
    earlier_reach: tuple[int, ...] = ()
    largest_update: float | None = None  # the largest update ratio of earlier recordings
    nearest: int | None = None  # steps back the task's shortest dependency spans
    initial: bool = False  # recorded on the initial weights, before any update
    metric: float | None = None  # the latest held-out metric (lower is better)
    chance: float | None = None  # the task's metric for a model that ignores its inputs
    # The reach within FAINT_REACH of the peak at the same earlier recordings (where not
    # given, earlier_reach stands in for it).
    earlier_faint: tuple[int, ...] = ()
    # The learning rates of the updates before the held-out metric was measured, summed,
    # for an optimiser that moves each weight by about its rate (Adam, AdamW: see
    # remedies/optim.py, `SummedRate`);
    # None for others (SGD's step is the rate times the gradient) or when unknown.
    lr_total: float | None = None


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
        if self.verdict == "exploding" and self.evidence.get("cause") == "update":
            return (f"an update moved the weights by "
                    f"{_format(self.evidence.get('largest_update'))}x their norm: the learning "
                    "rate is far too large")
        if self.verdict == "exploding":
            return (f"the gradient grows going back in time ({per_step}); its largest norm is "
                    f"{_format(self.evidence.get('growth', float('nan')))}x the norm at the loss")
        horizon = self.evidence.get("horizon", self.steps)
        if self.verdict in ("vanishing", "healthy") and not self.evidence.get("solved"):
            words = self._reach_words(horizon, per_step)
            if "undecided_until" in self.evidence:
                until = self.evidence["undecided_until"]
                words += (f"; but too soon to tell: whether a tanh RNN learns a task of "
                          f"{NEAR_HORIZON}-{TANH_HORIZON - 1} steps depends on the task, "
                          "init, rate and seed more than on what its gradient reaches now, "
                          f"and its held-out metric after {_format(until)} of summed "
                          f"learning rate ({until / 1e-2:.0f} Adam updates at 1e-2) tells: "
                          "train that far and diagnose again (for rnnscope's tasks, "
                          "`rnnscope diagnose --predict --lr 0.01`)")
            return words
        if self.verdict == "truncated":
            return (f"truncated BPTT cuts the gradient every {self.evidence.get('window')} "
                    f"steps, where the task needs {horizon}: no cell can learn across the "
                    "cut")
        if self.verdict == "stalled":
            return (f"an update moves the weights by "
                    f"{_format(self.evidence.get('update_ratio'))} of their norm: too "
                    "little to learn in any number of steps; the gradient's path is not "
                    "the problem")
        return "the task is solved: nothing to fix"

    def _reach_words(self, horizon: int, per_step: str) -> str:
        """Vanishing or healthy in words, by the rule that decided it."""
        evidence = self.evidence
        if "extrapolated_at_horizon" in evidence:
            kept = _format(evidence["extrapolated_at_horizon"])
            return (f"windows of {evidence.get('window')} steps hold the task's nearest "
                    f"dependency; at {per_step} within them the state keeps {kept} of the "
                    f"gradient over the {horizon} steps it needs"
                    + ("" if self.verdict == "healthy" else ": too little"))
        if "tanh_horizon" in evidence:
            return (f"the gradient reaches {self.reach} steps back (the task needs {horizon}) "
                    "before the model has learnt anything, but a tanh RNN does not keep that "
                    "reach once it learns to store anything: none learnt a task of "
                    f"{evidence['tanh_horizon']} steps or more in rnnscope's diagnosis suite, "
                    "and in published results they fail from about 100")
        if "at_chance_after" in evidence:
            spent = (f"{_format(evidence['of_chance'])} of chance after "
                     f"{_format(evidence['at_chance_after'])} of summed learning rate (50 "
                     f"updates at 1e-2 is 0.5), on a task needing {horizon} steps back")
            if evidence.get("chance_band") == "near":
                return (f"the held-out metric is no better than chance, at {spent}: a tanh "
                        f"RNN that learns a task of {NEAR_HORIZON}-{STORE_HORIZON} steps has "
                        "moved off chance by then (in rnnscope's diagnosis suite every one "
                        f"had); the gradient reaches {self.reach} steps back now, but "
                        "nothing is stored")
            return (f"the held-out metric is still at chance, at {spent}: a tanh RNN that "
                    f"learns a task longer than {STORE_HORIZON} steps leaves chance sooner "
                    "(in rnnscope's diagnosis suite every one did); the gradient reaches "
                    f"{self.reach} steps back now, but nothing is stored")
        if "reach_at_chance_min" in evidence and "reach_recent_min" not in evidence:
            earlier = (f" (earlier ones read to {REACH_THRESHOLD:g})"
                       if "earlier_read_at" in evidence else "")
            return ("the held-out metric has not left chance, so the reach is read as on "
                    f"initial weights: within {FAINT_REACH:g} of its peak the gradient reached "
                    f"at least {evidence['reach_at_chance_min']} steps back at each recent "
                    f"recording{earlier} ({self.reach} within {REACH_THRESHOLD:g} now), where "
                    f"the task needs {horizon}" + (
                        "" if self.verdict == "healthy" else ": an Elman RNN's reach shrinks "
                        "further once it has to store anything"))
        if self.verdict == "vanishing":
            recent = evidence.get("reach_recent_min", self.reach)
            held = (f" (the shortest of its last three recordings; {self.reach} now)"
                    if recent != self.reach else "")
            return (f"the gradient falls below {REACH_THRESHOLD:g} of its peak {recent} "
                    f"steps back{held}, where the task needs {horizon} ({per_step}): "
                    "earlier steps barely shape the weights")
        if evidence.get("at_chance"):
            return (f"the gradient reaches {self.reach} of the {horizon} steps the task needs, "
                    "but the held-out metric has not left chance: a GRU's update gates learn "
                    "to hold the state once it starts to learn (in the diagnosis suite GRUs "
                    "at chance for hundreds of steps went on to solve): train longer before "
                    "changing the model")
        if evidence.get("gates") == "untrained":
            return (f"the gradient reaches {self.reach} of the {horizon} steps the task needs, "
                    "but a GRU's update gates learn to hold the state in its first tens of "
                    "steps: `rnnscope diagnose --predict` reads it after a short run")
        if "reach_trend" in evidence:
            return (f"the gradient reaches {self.reach} of the {horizon} steps the task "
                    f"needs, and further at each recording ({evidence['reach_trend']}): the "
                    "gates are learning to hold the state")
        if self.reach < min(horizon, self.steps) and "reach_faint" in evidence:
            return (f"the gradient stays within {FAINT_REACH:g} of its peak for "
                    f"{evidence['reach_faint']} steps back ({self.reach} within "
                    f"{REACH_THRESHOLD:g}), where the task needs {horizon}: enough to learn "
                    "from")
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
        context = replace(context, horizon=horizon if horizon is not None else context.horizon,
                          window=window if window is not None else context.window)
    current = dict(current or {})
    cell = current.get("cell")
    if recorder is not None:
        cell = recorder.cell() or cell
    stats, best, rows = _rows(flow)
    nonfinite = flow.nonfinite + nonfinite_norms(flow.norms)
    target = best.length if context.horizon is None else context.horizon  # the reach needed
    evidence = _flow_evidence(flow, stats, best, nonfinite)
    # Kept for every cell: the trainer, watch and the Lightning callback keep its history.
    evidence["reach_faint"] = max(profile_stats(row, FAINT_REACH).reach for row in rows)
    verdict = _verdict(stats, best, nonfinite, context, target, cell, evidence)
    if verdict == "healthy" and _too_soon(context, cell):
        evidence["undecided_until"] = CHANCE_PROGRESS
    if verdict == "exploding" and not _grows(stats):
        evidence["cause"] = "update"  # the update's size, not the flow through time
        evidence["largest_update"] = _largest_update(context)
    evidence.update({key: value for key, value in (
        ("horizon", context.horizon), ("window", context.window),
        ("update_ratio", context.update_ratio), ("solved", context.solved),
        ("metric", context.metric), ("chance", context.chance),
        ("lr_total", context.lr_total))
        if value is not None})
    if cell is not None:
        evidence["cell"] = cell
    if recorder is not None:
        evidence.update(_model_evidence(recorder))
    fixes = rank_fixes(verdict, cell=cell, steps=target, reach=best.reach,
                       growth=float(evidence["growth"]),
                       grad_norm=evidence.get("grad_norm_total"), lr=lr,
                       init=current.get("init"),
                       explosive=float(evidence.get("lyapunov_max", -1.0)) > 0,
                       update_ratio=_fix_update(verdict, evidence, context),
                       window=context.window)
    fixes = [f for f in fixes if any(current.get(k) != v for k, v in f.change.items())]
    return Diagnosis(verdict, best.reach, best.rate, best.length, evidence, fixes)


def _rows(flow: GradientFlow) -> tuple[list[ProfileStats], ProfileStats, list[Tensor]]:
    """Statistics of the forward-direction rows (where the loss enters at the end), the
    row that carries the gradient furthest (an LSTM's cell state counts, being the path
    its memory gives the gradient) and the rows themselves."""
    profiles = flow.steps_back()
    rows = [row for row, reverse in zip(profiles, flow.reverse, strict=True) if not reverse]
    rows = rows or list(profiles)  # a reverse-only flow: read it as it is
    stats = [profile_stats(row) for row in rows]
    return stats, max(stats, key=lambda s: s.reach), rows


def _verdict(stats: list[ProfileStats], best: ProfileStats, nonfinite: int,
             context: Context, target: int, cell: str | None, evidence: dict) -> str:
    """The verdict (see the module docstring); `evidence` gains the numbers of the
    reach rules that decided it."""
    if nonfinite:
        return "nonfinite"
    if context.solved:
        return "healthy"
    if _grows(stats):
        return "exploding"
    if _largest_update(context) > HUGE_UPDATE:
        return "exploding"
    if context.update_ratio is not None and _largest_update(context) < STALLED_UPDATE:
        return "stalled"
    if context.window is not None and context.window < target:
        return _through_windows(stats, context, context.window, target, evidence)
    return _by_reach(best, context, target, cell, evidence)


def _through_windows(stats: list[ProfileStats], context: Context, window: int, target: int,
                     evidence: dict) -> str:
    """Truncated BPTT with windows shorter than the horizon."""
    if context.nearest is None or window < context.nearest:
        return "truncated"
    # Some instances of the dependency fit in a window and teach the weights; the rest
    # are carried forward by the state. Within the window the gradient must reach the
    # cut, and at its rate per step it must span the horizon.
    rate = max((s.rate for s in stats if s.length > 0 and math.isfinite(s.rate)
                and s.reach >= min(window, s.length)), default=0.0)
    extrapolated = min(rate, 1.0) ** target  # a growing rate is exploding's to judge
    evidence["extrapolated_at_horizon"] = extrapolated
    return "healthy" if extrapolated >= REACH_THRESHOLD else "vanishing"


def _by_reach(best: ProfileStats, context: Context, target: int, cell: str | None,
              evidence: dict) -> str:
    """Healthy or vanishing, by the reach against the horizon and what each cell does."""
    needed = min(target, best.length)
    reach = best.reach
    # Untrained: on the initial weights, or still at chance (nothing learnt, nothing
    # stored yet). The reach of an untrained model is not the reach it will keep.
    untrained = context.initial or _at_chance(context)
    if cell == "rnn_tanh" and untrained and context.horizon is not None \
            and context.horizon >= TANH_HORIZON:
        # An untrained tanh RNN's gradient may reach far while it stores nothing (near an
        # isometry: orthogonal, Xavier init); to store it must contract (Bengio, Simard &
        # Frasconi 1994). The suite: 85 and 100 steps of 100 at init, 9-13 by step 25,
        # never solved (temporal order, L=100: 55 steps at init, all 100 at steps 25 and
        # 50, at chance; then 10). So a task this long is held against it whatever it
        # reaches now.
        evidence["tanh_horizon"] = TANH_HORIZON
        return "vanishing"
    if cell == "rnn_tanh" and _stuck(context):
        # Trained at a normal rate for a while and still at chance on a task needing more
        # than STORE_HORIZON steps back (no better than chance from NEAR_HORIZON): a tanh
        # RNN that learns such a task leaves chance early, one that has not by then does
        # not (CHANCE_PROGRESS); whatever it reaches now, it stores nothing.
        evidence["at_chance_after"] = context.lr_total
        evidence["of_chance"] = context.metric / context.chance
        evidence["chance_band"] = "far" if context.horizon > STORE_HORIZON else "near"
        return "vanishing"
    faint = evidence["reach_faint"]
    if cell in ELMAN and untrained and not context.initial and context.earlier_reach:
        # An Elman RNN still at chance is read as on its initial weights (to 1e-6 of the
        # peak) and held to the shortest such reach of the recordings it is told of (the
        # trainer's last eight, the initial one among them early on): while it stores
        # nothing its reach swings far (add-T100-tanh: 25, 100, 100 steps at steps 1, 25,
        # 50, at chance, then 5 from step 75; to-L40-tanh: 25, 40, 40, then 5-6), and to
        # store it must contract (Bengio et al. 1994). Read to 1e-3 the rule called
        # to-L20-tanh at lr 1e-3 vanishing (13 steps at steps 1 and 25, at chance by step
        # 50) and it solved: to 1e-6 it reached all 20 each time.
        earlier = (context.earlier_faint or context.earlier_reach)[-HISTORY:]
        shortest = min(*earlier, faint)
        evidence["reach_at_chance_min"] = shortest
        if not context.earlier_faint:
            evidence["earlier_read_at"] = REACH_THRESHOLD  # the faint reaches were not kept
        if shortest < needed or len(context.earlier_reach) < TREND:
            return "healthy" if shortest >= needed else "vanishing"
        # With a history of its own it is held to its last three as well (below): at
        # chance it is never read more kindly than in training (the demo's IRNN at chance,
        # 35-50 steps of 50 within 1e-3, 50 within 1e-6, does not learn).
    elif (cell in GATED or untrained) and faint >= needed:
        # Gates learn from a faint gradient: LSTMs with 10^-5.8 .. 10^-3.5 of the peak at
        # the horizon learnt the adding problem (T=30, 50) in the diagnosis suite, those
        # with 10^-6.6 and less (T=100) did not. Before training any cell is read so:
        # training moves the reach by orders of magnitude either way (an Elman RNN with
        # 10^-4.2 at the horizon of temporal order, L=20, reached it by step 25).
        return "healthy"
    recent = (*context.earlier_reach[-(TREND - 1):], reach)
    if cell in ELMAN and len(context.earlier_reach) >= TREND:
        # An Elman RNN's reach swings from one recording to the next (the suite: 100
        # steps at step 50, 3 at step 75): once it has a history of its own (the first
        # recording, on the initial weights, is left behind), it is held to the shortest
        # of its last three.
        reach = min(recent)
        evidence["reach_recent_min"] = reach
    if reach >= needed:
        return "healthy"
    if cell == "gru" and untrained:
        # Before training a GRU's reach says little: its update gates learn to hold the
        # state in tens of steps (the suite: reach 14-21 at init for all five GRUs that
        # solved, T=60 to 150; three reached 50-99 steps by step 50). Nor while it is
        # still at chance: to-L100-gru sat at 13-15 steps and chance for 300 steps and
        # solved at step 750; to-L200-gru (trained after this rule was proposed, to test
        # it) at 14-15 steps and chance for 800, and solved with 3x the steps.
        evidence["gates"] = "untrained"
        if not context.initial:
            evidence["at_chance"] = True
        return "healthy"
    if cell in GATED and len(recent) == TREND and _rising(recent):
        # The gates are learning to hold the state: the reach grows recording by
        # recording (a GRU at T=100: 15, 25, 76 steps at steps 1, 25, 50; it solves).
        evidence["reach_trend"] = " -> ".join(str(r) for r in recent)
        return "healthy"
    return "vanishing"


def chance_level(task) -> float | None:
    """The chance level the diagnosis reads a task's held-out metric against: its baseline
    where the task knows the horizon it needs (the synthetic tasks, on which `LEFT_CHANCE`
    was measured); None for the others, whose baseline is a naive forecast or a unigram
    model that a model far from chance may still be near (persistence, unigram bits)."""
    return task.baseline if task.reach_needed is not None else None


def _at_chance(context: Context) -> bool:
    """The held-out metric has not left chance (unknown: not at chance)."""
    metric, chance = context.metric, context.chance
    return metric is not None and chance is not None and math.isfinite(metric) and \
        chance > 0 and metric > LEFT_CHANCE * chance


def _stuck(context: Context) -> bool:
    """After CHANCE_PROGRESS of summed rate, still at chance on a task needing more than
    STORE_HORIZON steps back, or no better than chance on one needing NEAR_HORIZON to
    STORE_HORIZON."""
    if not _spent(context.lr_total) or context.horizon is None:
        return False
    if context.horizon > STORE_HORIZON:
        return _at_chance(context)
    return context.horizon >= NEAR_HORIZON and _at_chance(context) and \
        context.metric >= context.chance


def _spent(lr_total: float | None) -> bool:
    """The summed rate has reached CHANCE_PROGRESS (unknown or not finite: no)."""
    # 50 rates of 0.01 summed may fall a rounding short of 0.5: a relative 1e-9 spares it.
    return lr_total is not None and math.isfinite(lr_total) and \
        lr_total >= CHANCE_PROGRESS * (1 - 1e-9)


def _too_soon(context: Context, cell: str | None) -> bool:
    """A tanh RNN asked for NEAR_HORIZON to TANH_HORIZON steps with full BPTT, not yet
    trained long enough for `_stuck` to tell: on its initial weights, or at chance before
    CHANCE_PROGRESS of summed rate. Its `healthy` says only that the gradient reaches: in
    the diagnosis suite 21 of the 22 misses on initial weights were such (temporal order
    and adding, 14-45 steps back), which training 50 steps at 1e-2 tells apart. (Under
    truncation the windows' rules decide, and `_stuck` is not asked.)"""
    if cell != "rnn_tanh" or context.horizon is None or context.solved or \
            not NEAR_HORIZON <= context.horizon < TANH_HORIZON or \
            (context.window is not None and context.window < context.horizon):
        return False
    if context.initial:
        return True
    return _at_chance(context) and context.lr_total is not None and \
        math.isfinite(context.lr_total) and context.lr_total >= 0 and \
        not _spent(context.lr_total)


def _rising(reaches: tuple[int, ...]) -> bool:
    """No recording reaches less far than the one before, and the last twice as far as the
    first (a reach of 0, a gradient that never leaves the loss, rises from nothing)."""
    return reaches[0] > 0 and reaches[-1] >= 2 * reaches[0] and \
        all(b >= a for a, b in zip(reaches, reaches[1:], strict=False))


def _fix_update(verdict: str, evidence: dict, context: Context) -> float | None:
    """The update size that ranks and sizes the fixes: the largest so far for a stalled
    run and for one exploding by its updates; none for a gradient that grows back in
    time (its huge updates follow from the growth, which the fixes address)."""
    if verdict == "stalled" or evidence.get("cause") == "update":
        return _largest_update(context)
    return None if verdict == "exploding" else context.update_ratio


def _largest_update(context: Context) -> float:
    return max(context.update_ratio or 0.0, context.largest_update or 0.0)


def _grows(stats: list[ProfileStats]) -> bool:
    return any(s.rate > 1.0 and s.growth >= EXPLODING_GROWTH for s in stats)


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
