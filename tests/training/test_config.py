"""The experiment config: sections, YAML, dotted overrides, and the errors they give."""

from __future__ import annotations

import pytest

from rnnscope.training.config import SECTIONS, ExperimentConfig


def test_defaults_round_trip_through_dict_and_yaml(tmp_path):
    config = ExperimentConfig.from_dict({
        "task": {"name": "copy", "seq_len": 30}, "model": {"cell": "gru", "hidden": 16},
        "init": "orthogonal", "clip": "autoclip:90", "guard": "rollback",
        "bptt": {"window": 10}, "run": {"steps": 5, "name": "x"}})
    data = config.to_dict()
    assert set(data) == set(SECTIONS)
    assert data["task"] == {"name": "copy", "seq_len": 30}
    assert data["clip"]["method"] == "autoclip" and data["clip"]["threshold"] == 90.0
    assert ExperimentConfig.from_dict(data) == config
    from rnnscope.files import write_yaml

    write_yaml(tmp_path / "c.yaml", data)
    assert ExperimentConfig.from_yaml(tmp_path / "c.yaml") == config


def test_overrides_are_typed_and_layered():
    base = ExperimentConfig.from_dict({"optim": {"lr": 0.01, "name": "sgd"}})
    config = base.with_overrides({"optim": {"lr": 1}, "bptt": {"window": "none"},
                                  "run": {"name": 7}})
    assert config.optim.lr == 1.0 and isinstance(config.optim.lr, float)
    assert config.optim.name == "sgd"  # untouched keys keep the base value
    assert config.bptt.window is None
    assert config.run.name == "7"


def test_yaml_numbers_without_a_dot_are_numbers(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim: {lr: 1e-3}\n")  # PyYAML reads 1e-3 as a string
    config = ExperimentConfig.from_yaml(path)
    assert config.optim.lr == 0.001
    with pytest.raises(ValueError, match="schedule.warmup: expected an integer, got 100.0"):
        ExperimentConfig.from_dict({"schedule": {"warmup": "1e2"}})


def test_changing_the_task_drops_the_old_task_settings():
    base = ExperimentConfig.from_dict({"task": {"name": "adding", "seq_len": 50}})
    assert base.with_overrides({"task": {"seq_len": 60}}).task.settings == {"seq_len": 60}
    assert base.with_overrides({"task": {"name": "digits"}}).task.settings == {}


@pytest.mark.parametrize(("data", "message"), [
    ({"modle": {}}, "modle: unknown section; accepted: task, model, init, optim, schedule"),
    ({"model": {"hiden": 3}}, "model.hiden: unknown key; accepted: cell, hidden, layers"),
    ({"model": {"hidden": "big"}}, "model.hidden: expected an integer, got 'big'"),
    ({"model": {"hidden": 1.5}}, "model.hidden: expected an integer, got 1.5"),
    ({"model": {"hidden": True}}, "model.hidden: expected an integer, got True"),
    ({"model": {"cell": "lstn"}}, "model.cell: unknown 'lstn'; accepted: rnn_tanh"),
    ({"model": {"engine": "fast"}}, "model.engine: unknown 'fast'; accepted: unrolled, native"),
    ({"task": {"name": "adder"}}, "task.name: unknown 'adder'; accepted: adding, copy"),
    ({"task": {"seqlen": 3}}, "task.seqlen: not a setting of task 'adding'; accepted: "
                              "seq_len"),
    ({"init": "xavier"}, "init.scheme: unknown 'xavier'; accepted: torch_default"),
    ({"clip": "norm:abc"}, "clip: cannot read 'norm:abc'"),
    ({"clip": "clamp:1"}, "clip"),
    ({"guard": "ignore"}, "guard.policy: unknown 'ignore'; accepted: raise, skip, rollback"),
    ({"run": {"steps": -5}}, "run.steps: must be an integer >= 1, got -5"),
    ({"run": {"device": "tpu"}}, "run.device: unknown 'tpu'; accepted: cpu, cuda, auto"),
    ({"bptt": {"window": 0}}, "bptt.window: must be an integer >= 1, got 0"),
    ({"probe": {"every": -1}}, "probe.every: must be an integer >= 0, got -1"),
    ({"optim": {"name": "adamw"}}, "optim.name: unknown 'adamw'"),
    ({"schedule": {"decay": "exp"}}, "schedule.decay: unknown 'exp'"),
    ({"model": 3}, "model: expected a mapping of keys to values, got 3"),
    ({"run": {"name": "../x"}}, "run.name: must be a plain name without / or \\"),
    ({"run": {"name": ".."}}, "run.name: must be a plain name"),
])
def test_bad_values_name_the_field_and_what_is_accepted(data, message):
    with pytest.raises(ValueError) as error:
        ExperimentConfig.from_dict(data)
    assert str(error.value).startswith(message)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(("text", "message"), [
    ("model: [1, 2\n", "at line"),
    ("- a\n- b\n", "must hold a mapping of sections, got list"),
])
def test_bad_yaml_files(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        ExperimentConfig.from_yaml(path)
    with pytest.raises(ValueError, match="config: no such file"):
        ExperimentConfig.from_yaml(tmp_path / "missing.yaml")


def test_default_run_name_and_directory():
    config = ExperimentConfig.from_dict({"model": {"cell": "lstm"}, "init": "chrono:300"})
    assert config.run_name == "adding-lstm-chrono300"
    assert str(config.run_dir) == "runs/adding-lstm-chrono300"
    named = config.with_overrides({"run": {"name": "a", "out": "elsewhere/b"}})
    assert named.run_name == "a" and str(named.run_dir) == "elsewhere/b"
