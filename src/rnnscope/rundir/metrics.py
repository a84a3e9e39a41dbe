"""`metrics.jsonl` as the trainer writes it: a listener on the trainer's events."""

from __future__ import annotations

from rnnscope.rundir.directory import RunDirectory


class MetricsLog:
    """Listener writing `metrics.jsonl`: a train line every step (with the gradient flow
    through time on the probe schedule), an eval line on the eval schedule."""

    def __init__(self, run: RunDirectory) -> None:
        self.run = run

    def after_step(self, state) -> None:
        record = {"kind": "train", "step": state.step, **state.scalars(),
                  "clipped": state.clipped}
        if state.action:
            record["guard"] = state.action
        if state.param_norms:
            record["grad_norms"] = state.param_norms
        if state.flow is not None:
            record["flow"] = state.flow.to_dict()
        if state.diagnosis is not None:
            record.update(verdict=state.diagnosis.verdict, reach=state.diagnosis.reach,
                          rate=state.diagnosis.rate)
        self.run.append(record)

    def on_eval(self, evaluation) -> None:
        self.run.append({"kind": "eval", "step": evaluation.step, "loss": evaluation.loss,
                         "metric": evaluation.metric, "metric_name": evaluation.metric_name,
                         "solved": evaluation.solved})
