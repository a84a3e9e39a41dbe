"""One definition of "due every N steps", and every periodic job of training keeps to it."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from rnnscope.flow.probes import ProbeConfig
from rnnscope.flow.recording import record
from rnnscope.schedules import Every, every
from support import tiny_run


def due_steps(schedule: Every, last: int) -> list[int]:
    return [step for step in range(1, last + 1) if schedule.due(step)]


def test_every_n_is_due_at_multiples_of_n_and_first_adds_step_one():
    assert due_steps(every(10), 35) == [10, 20, 30]
    assert due_steps(every(10, first=True), 35) == [1, 10, 20, 30]
    assert due_steps(every(1), 4) == [1, 2, 3, 4]
    assert due_steps(every(1, first=True), 4) == [1, 2, 3, 4]
    assert due_steps(every(0), 50) == [] and due_steps(every(0, first=True), 50) == []


@given(st.integers(1, 50), st.integers(1, 500), st.booleans())
def test_due_is_a_pure_function_of_the_step(n, step, first):
    schedule = every(n, first=first)
    assert schedule.due(step) == ((step % n == 0) or (first and step == 1))
    assert schedule.due(step) == every(n, first=first).due(step)  # no state: resume-safe


@pytest.mark.parametrize("bad", [-1, 1.5, True, "10", None])
def test_a_bad_period_names_the_field(bad):
    with pytest.raises(ValueError, match=r"^probe\.every: must be an integer >= 0, got "):
        every(bad, field="probe.every")


def test_the_trainer_probes_evaluates_and_checkpoints_on_its_schedules():
    from rnnscope.training.trainer import Trainer

    config = tiny_run(run={"steps": 12, "eval_every": 5, "checkpoint_every": 4},
                      probe={"every": 3})
    trainer = Trainer(config)
    probed, evaluated, saved = [], [], []
    trainer.on("after_step", lambda state: state.flow is not None and probed.append(state.step))
    trainer.on("on_eval", lambda evaluation: evaluated.append(evaluation.step))
    trainer.on("on_checkpoint", lambda t: saved.append(t.step))
    trainer.fit()
    assert probed == due_steps(ProbeConfig(every=3).schedule, 12) == [1, 3, 6, 9, 12]
    assert evaluated == [5, 10, 12]  # every 5, and the last step
    assert saved == [4, 8, 12]  # every 4, and the last step


def test_record_every_n_records_the_training_steps_of_the_same_schedule():
    torch.manual_seed(0)
    model = nn.RNN(2, 3)
    with record(model, every=3) as recorder:
        for _ in range(7):
            model(torch.randn(4, 1, 2))[0].sum().backward()
    assert recorder.recorded_steps == due_steps(every(3, first=True), 7) == [1, 3, 6]


def test_the_trainer_tells_the_diagnosis_its_latest_held_out_metric_and_chance():
    """A probe after an evaluation is told the metric it measured and the task's chance
    level (the Elman RNN at chance rule reads both); before any, neither metric nor
    verdict rule has anything to go on."""
    from rnnscope.training.trainer import Trainer

    trainer = Trainer(tiny_run(run={"steps": 6, "eval_every": 3}, probe={"every": 2}))
    told, evaluated, diagnosed = [], {}, {}
    trainer.on("after_step", lambda state: told.append((state.step, trainer.context())))
    trainer.on("after_step", lambda state: state.diagnosis is not None and diagnosed.update(
        {state.step: state.diagnosis.evidence}))
    trainer.on("on_eval", lambda evaluation: evaluated.update({evaluation.step: evaluation}))
    trainer.fit()
    contexts = dict(told)
    assert contexts[1].metric is None and contexts[2].metric is None
    assert contexts[1].chance == contexts[4].chance == trainer.task.baseline > 0
    # A step's diagnosis comes before that step's evaluation: steps 3 to 6 see step 3's.
    assert contexts[4].metric == contexts[6].metric == evaluated[3].metric
    assert evaluated[6].metric != evaluated[3].metric
    # What the diagnosis itself was told (probes at steps 1, 2, 4, 6).
    assert "metric" not in diagnosed[2] and diagnosed[2]["chance"] == trainer.task.baseline
    assert diagnosed[4]["metric"] == diagnosed[6]["metric"] == evaluated[3].metric


def test_a_checkpoint_keeps_the_faint_reaches_and_an_older_one_lends_its_reaches():
    """The diagnosis of a resumed run is told the same earlier faint reaches; a checkpoint
    written before they were kept gives its reaches in their place."""
    from rnnscope.training.trainer import Trainer

    trainer = Trainer(tiny_run(run={"steps": 5}, probe={"every": 2}))
    trainer.fit()
    state = trainer.state_dict()
    assert len(state["faint_history"]) == len(state["reach_history"]) == 3
    assert all(f >= r for f, r in zip(state["faint_history"], state["reach_history"],
                                      strict=True))
    resumed = Trainer(tiny_run(run={"steps": 5}, probe={"every": 2}))
    resumed.load_state_dict(state)
    assert resumed.context().earlier_faint == tuple(state["faint_history"])
    older = {key: value for key, value in state.items() if key != "faint_history"}
    resumed.load_state_dict(older)
    assert resumed.context().earlier_faint == tuple(state["reach_history"])
