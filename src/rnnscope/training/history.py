"""What a run's metrics lines tell the diagnosis of a recording at a given step.

The trainer tells `diagnose` what it knows of the run so far (`Context`): the reach at
earlier probes, the size of the updates, the latest held-out evaluation against chance,
the learning rate spent before it. A run directory keeps all of it in metrics.jsonl, so
the same context can be read back afterwards: by `rnnscope diagnose --predict` (from its
short run), by `rnnscope diagnose --checkpoint` when the checkpoint lies in a run
directory, and by the diagnosis suite (benchmarks/doctor.py), which re-judges stored
runs with today's rules. One reader, so that all three are told the same.

The evaluation read is the latest at or before the step: for a probe at step s that is
the evaluation of step s itself when there is one, which the trainer runs after the
probe (its own diagnosis at s sees it at its next probe); this is what `--predict`
reads from its short run.
"""

from __future__ import annotations

from rnnscope.flow.diagnosis import HISTORY, Context, chance_level, diagnose
from rnnscope.flow.gradients import GradientFlow
from rnnscope.remedies.optim import ADAPTIVE
from rnnscope.training.config import ExperimentConfig


def probes(lines: list[dict]) -> list[dict]:
    """The probe lines (a training step with a recorded flow and its reach)."""
    return [line for line in lines if line.get("kind") == "train"
            and isinstance(line.get("flow"), dict) and isinstance(line.get("reach"), int)]


def faint_reach(line: dict) -> int:
    """A probe's reach within 1e-6 of the peak: as kept, or (runs of before kept only the
    flow) as `diagnose` reads it from the flow."""
    if isinstance(line.get("reach_faint"), int):
        return line["reach_faint"]
    return diagnose(GradientFlow.from_dict(line["flow"])).evidence["reach_faint"]


def lr_total(config: ExperimentConfig, lines: list[dict], step: int | None) -> float | None:
    """The learning rates of a run's updates up to `step` (an evaluation's), summed from
    its metrics lines, as the trainer tells the diagnosis (`Context.lr_total`): a step the
    NaN guard vetoed made no update; after a rollback (which the lines do not say how far
    went) it is unknown. None too for an optimiser that does not move each weight by
    about its rate (SGD) and before any evaluation."""
    if step is None or config.optim.name not in ADAPTIVE:
        return None
    steps = [line for line in lines if line.get("kind") == "train"
             and isinstance(line.get("step"), int) and line["step"] <= step]
    if any(line.get("guard") == "rollback" for line in steps):
        return None
    return sum(line["lr"] for line in steps if "guard" not in line
               and isinstance(line.get("lr"), float))


def context_at(config: ExperimentConfig, lines: list[dict], step: int, *,
               solved: bool | None = None, evaluated_by: int | None = None) -> Context:
    """The context of a recording at training step `step` (1-based; the weights after
    step - 1 updates), read from the run's metrics `lines`: the probes before it (the
    last HISTORY), the update ratio of the probe at `step` (or the latest before it) and
    the largest before, the latest evaluation at or before `evaluated_by` (default
    `step`) with its rate spent. `solved` overrides the evaluation's (a run's final
    word, from its summary). A value of the wrong type in a line (a damaged file) is
    read as unknown."""
    task = config.task.build()
    recorded = probes(lines)
    before = [line for line in recorded if line["step"] < step][-HISTORY:]
    ratios = [line for line in recorded if line["step"] <= step
              and isinstance(line.get("update_ratio"), float)]
    latest = ratios[-1]["update_ratio"] if ratios else None
    earlier = [line["update_ratio"] for line in ratios if line["step"] < step]
    last = step if evaluated_by is None else evaluated_by
    evaluation = next((line for line in reversed(lines) if line.get("kind") == "eval"
                       and isinstance(line.get("step"), int) and line["step"] <= last), {})
    metric = evaluation.get("metric")
    told = evaluation.get("solved")
    return Context(
        horizon=task.reach_needed, window=config.bptt.window,
        nearest=task.nearest_dependency, initial=step <= 1,
        solved=(told if isinstance(told, bool) else None) if solved is None else solved,
        metric=metric if isinstance(metric, float | int) and not isinstance(metric, bool)
        else None, chance=chance_level(task),
        update_ratio=latest, largest_update=max(earlier, default=None),
        earlier_reach=tuple(line["reach"] for line in before),
        earlier_faint=tuple(faint_reach(line) for line in before),
        lr_total=lr_total(config, lines, evaluation.get("step")))
