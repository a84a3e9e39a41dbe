"""`metrics.jsonl` as the trainer writes it: a listener on the trainer's events; and the
probe line every writer of a run directory writes the same way."""

from __future__ import annotations

from rnnscope.rundir.directory import RunDirectory


def probe_line(step: int, flow, diagnosis=None, **scalars) -> dict:
    """A train line carrying one recording of the gradient flow through time (a
    `GradientFlow`) and, when diagnosed, its verdict, reach, rate and faint reach."""
    line = {"kind": "train", "step": step, **scalars, "flow": flow.to_dict()}
    if diagnosis is not None:
        line.update(verdict=diagnosis.verdict, reach=diagnosis.reach, rate=diagnosis.rate)
        if "reach_faint" in diagnosis.evidence:
            line["reach_faint"] = diagnosis.evidence["reach_faint"]
    return line


class MetricsLog:
    """Listener writing `metrics.jsonl`: a train line every step (with the gradient flow
    through time on the probe schedule), an eval line on the eval schedule."""

    def __init__(self, run: RunDirectory) -> None:
        self.run = run

    def after_step(self, state) -> None:
        scalars = {**state.scalars(), "clipped": state.clipped}
        if state.action:
            scalars["guard"] = state.action
        if state.param_norms:
            scalars["grad_norms"] = state.param_norms
        self.run.append(probe_line(state.step, state.flow, state.diagnosis, **scalars)
                        if state.flow is not None else
                        {"kind": "train", "step": state.step, **scalars})

    def on_eval(self, evaluation) -> None:
        self.run.append({"kind": "eval", "step": evaluation.step, "loss": evaluation.loss,
                         "metric": evaluation.metric, "metric_name": evaluation.metric_name,
                         "solved": evaluation.solved})
