"""Study files expand to the runs they name, with each setting where the grid, a variant
or a template puts it, or one clear error naming the field."""

from __future__ import annotations

import pytest
import yaml

from rnnscope.study.spec import load_study, study_from_dict
from rnnscope.training.config import ExperimentConfig
from support import EXAMPLES, TINY_STUDY, write_yaml_file


def test_grid_expands_to_every_combination_with_readable_names():
    study = study_from_dict({"base": TINY_STUDY, "grid": {"cell": ["rnn_tanh", "lstm", "gru"],
                                                     "seq_len": [10, 20], "seed": [0, 1]}},
                            default_name="lengths")
    assert study.name == "lengths" and len(study.runs) == 3 * 2 * 2
    names = [run.name for run in study.runs]
    assert names[:3] == ["cell=rnn_tanh,seq_len=10,seed=0", "cell=rnn_tanh,seq_len=10,seed=1",
                         "cell=rnn_tanh,seq_len=20,seed=0"]
    assert len(set(names)) == len(names)
    run = study.runs[-1]
    assert run.name == "cell=gru,seq_len=20,seed=1"
    # Aliases are stored under the field they set, and set it.
    assert run.params == {"model.cell": "gru", "task.seq_len": 20, "run.seed": 1}
    config = run.config
    assert (config.model.cell, config.task.settings["seq_len"], config.run.seed) == ("gru", 20, 1)
    assert config.run.name == run.name and config.run.quiet  # one directory per run, no bars
    assert config.model.hidden == 4 and config.run.steps == 10  # the rest is the base


def test_every_alias_and_dotted_key_sets_its_field():
    study = study_from_dict({"base": TINY_STUDY, "grid": {
        "hidden": [6], "layers": [2], "engine": ["native"], "lr": [0.01], "batch": [4],
        "steps": [3], "window": [5], "optim.name": ["sgd"], "clip": ["norm:1.0"],
        "guard": ["skip"], "task": ["copy"], "init": ["orthogonal"]}})
    (run,) = study.runs
    config = run.config
    assert (config.model.hidden, config.model.layers, config.model.engine) == (6, 2, "native")
    assert (config.optim.lr, config.optim.name, config.run.batch) == (0.01, "sgd", 4)
    assert (config.run.steps, config.bptt.window) == (3, 5)
    assert (config.clip.method, config.clip.threshold) == ("norm", 1.0)
    assert config.guard.policy == "skip" and config.init.scheme == "orthogonal"
    assert config.task.name == "copy" and dict(config.task.settings) == {}  # adding's seq_len
    # is adding's own setting: it does not carry over to another task


def test_templates_are_filled_from_each_runs_own_config():
    study = study_from_dict({"base": TINY_STUDY, "grid": {
        "cell": ["lstm"], "seq_len": [10, 20], "init": ["chrono:{task.seq_len}"]}})
    runs = {run.config.task.settings["seq_len"]: run for run in study.runs}
    assert runs[10].config.init.scheme == "chrono:10"
    assert runs[20].config.init.scheme == "chrono:20"
    assert runs[20].params["init"] == "chrono:20"
    assert runs[20].name == "cell=lstm,seq_len=20,init=chrono-20"
    # A template may read a value set by the base config too.
    (run,) = study_from_dict({"base": TINY_STUDY, "grid": {"init": ["chrono:{run.steps}"]}}).runs
    assert run.config.init.scheme == "chrono:10" and run.name == "init=chrono-10"


def test_variants_are_crossed_with_the_grid_and_exclude_leaves_out_combinations():
    study = study_from_dict({
        "base": TINY_STUDY,
        "grid": {"cell": ["rnn_tanh", "lstm"], "init": ["torch_default", "chrono:{task.seq_len}"]},
        "variants": [{"name": "full"}, {"name": "tbptt", "window": 5, "clip": "norm:1.0"}],
        "exclude": [{"cell": "rnn_tanh", "init": "chrono:{task.seq_len}"}]})
    names = [run.name for run in study.runs]
    assert names == ["full,cell=rnn_tanh,init=torch_default", "full,cell=lstm,init=torch_default",
                     "full,cell=lstm,init=chrono-10", "tbptt,cell=rnn_tanh,init=torch_default",
                     "tbptt,cell=lstm,init=torch_default", "tbptt,cell=lstm,init=chrono-10"]
    for run in study.runs:
        tbptt = run.name.startswith("tbptt")
        assert run.config.bptt.window == (5 if tbptt else None)
        assert run.config.clip.method == ("norm" if tbptt else "none")
    # Every run names every setting any run varies, so runs compare column by column.
    assert study.runs[3].params == {"bptt.window": 5, "clip": "norm:1.0",
                                    "model.cell": "rnn_tanh", "init": "torch_default"}
    assert study.runs[2].params == {"bptt.window": None, "clip": "none",
                                    "model.cell": "lstm", "init": "chrono:10"}


def test_a_single_unnamed_variant_and_no_grid_is_one_run():
    (run,) = study_from_dict({"base": TINY_STUDY, "variants": [{"seed": 3}]}).runs
    assert run.name == "run" and run.config.run.seed == 3


def test_base_may_be_a_yaml_file_next_to_the_study_file(tmp_path, monkeypatch):
    folder = tmp_path / "studies"
    folder.mkdir()
    (folder / "base.yaml").write_text(yaml.safe_dump(TINY_STUDY), encoding="utf-8")
    path = write_yaml_file(folder / "lengths.yaml", {"base": "base.yaml", "grid": {"seed": [0, 1]}})
    monkeypatch.chdir(tmp_path)  # relative to the study file, not to the working directory
    study = load_study(path)
    assert study.name == "lengths" and len(study.runs) == 2
    assert study.runs[0].config.model.hidden == 4 and study.runs[1].config.run.seed == 1
    named = write_yaml_file(folder / "other.yaml", {"name": "given", "base": "base.yaml"})
    assert load_study(named).name == "given"


@pytest.mark.parametrize(("data", "message"), [
    ({"grids": {"seed": [0]}}, "study.grids: unknown key; accepted: name, base, grid"),
    ({"grid": {"modle.cell": ["lstm"]}}, "study: modle.cell: unknown setting; use section.key"),
    ({"grid": {"model": ["lstm"]}}, "study: model: give a key of the section"),
    ({"grid": {"model.hiden": [4]}}, "study: run hiden=4: model.hiden: unknown key; accepted:"),
    ({"base": {"optimizer": {"lr": 1}}}, "optimizer: unknown section; accepted: task, model"),
    ({"grid": {"seed": 0}}, "study.grid: expected a mapping of setting -> non-empty list"),
    ({"grid": {"seed": []}}, "study.grid: expected a mapping of setting -> non-empty list"),
    ({"grid": {"cell": ["rnn_tanh", "lstm"], "init": ["chrono:10"]}},
     "study: run cell=rnn_tanh,init=chrono-10: init.scheme: 'chrono' does not apply to a "
     "rnn_tanh cell"),
    ({"variants": [{"name": "a"}, {"name": "a", "window": 5}]},
     "study: two runs are both named 'a'"),
    ({"variants": [{"name": "a"}, {"window": 5}]}, "study.variants[1]: needs a name"),
    ({"variants": {"name": "a"}}, "study.variants: expected a list of mappings"),
    ({"exclude": {"seed": 0}}, "study.exclude: expected a list of mappings"),
    ({"grid": {"seed": [0]}, "exclude": [{"seed": 0}]}, "study: no runs left"),
    ({"base": {"model": {"hidden": -1}}}, "model.hidden: must be an integer >= 1, got -1"),
    ({"grid": {"hidden": [4, -1]}}, "study: run hidden=-1: model.hidden: must be an integer"),
    ({"grid": {"init": ["chrono:{task.length}"]}}, "{task.length}: no such setting to fill in"),
    ({"grid": {"task.seq_len": [10, "long"]}},
     "study: run seq_len=long: task.seq_len: must be an integer >= 2, got 'long'"),
    ({"base": {"task": {"name": "text", "path": "absent.txt"}}},
     "study: run run: task.path: no such file: absent.txt"),
    ({"name": "../../elsewhere"}, "study.name: letters, digits and . _ + - only"),
    ({"grid": {"cell": ["lstm"], "model.cell": ["gru"]}},
     "study.grid: model.cell is given twice"),
    ({"grid": {"window": [5]}, "variants": [{"name": "a", "bptt.window": 3}]},
     "study.variants: a sets bptt.window, which the grid also varies"),
])
def test_bad_study_files_are_one_line_errors_naming_the_field(data, message):
    with pytest.raises(ValueError) as error:
        study_from_dict({"base": TINY_STUDY, **data} if "base" not in data else data)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_an_init_that_does_not_fit_a_cell_points_to_exclude():
    with pytest.raises(ValueError, match="leave such combinations out with exclude"):
        study_from_dict({"base": TINY_STUDY,
                         "grid": {"cell": ["gru"], "init": ["forget_bias:1.0"]}})


def test_load_study_errors_name_the_file(tmp_path):
    with pytest.raises(ValueError, match="is not a file; expected a study YAML file"):
        load_study(tmp_path / "absent.yaml")
    (tmp_path / "broken.yaml").write_text("grid: {seed: [0\n")
    with pytest.raises(ValueError, match="broken.yaml at line"):
        load_study(tmp_path / "broken.yaml")
    write_yaml_file(tmp_path / "s.yaml", {"base": "missing-base.yaml"})
    with pytest.raises(ValueError, match="no such file: .*missing-base.yaml"):
        load_study(tmp_path / "s.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="must hold a mapping"):
        load_study(tmp_path / "list.yaml")


# The command line: bad input


# The command line: running a study in this process (--workers 1)


# A study killed with SIGKILL, and the same command again


# Example study files


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_example_study_files_load_and_say_how_to_run_them(path):
    study = load_study(path)
    assert study.runs and len({run.name for run in study.runs}) == len(study.runs)
    head = path.read_text().splitlines()[0]
    assert head.startswith("#")
    assert f"rnnscope study examples/{path.name}" in path.read_text()
    tasks = {}
    for run in study.runs:
        assert isinstance(run.config, ExperimentConfig)
        key = (run.config.task.name, tuple(sorted(run.config.task.settings.items())))
        tasks.setdefault(key, run.config.task)
    for task in tasks.values():
        task.build()  # the data each run trains on can be made


def test_there_are_example_study_files():
    assert {"adding-lengths.yaml", "copy-lengths.yaml", "remedies.yaml",
            "temporal-order.yaml"} <= {p.name for p in EXAMPLES.glob("*.yaml")}


def test_exclude_matches_a_template_as_written_and_as_filled_in():
    grid = {"cell": ["rnn_tanh", "lstm"], "init": ["orthogonal", "chrono:{task.seq_len}"]}
    for excluded in ("chrono:{task.seq_len}", "chrono:10"):
        study = study_from_dict({"base": TINY_STUDY, "grid": grid,
                                 "exclude": [{"cell": "rnn_tanh", "init": excluded}]})
        assert [run.name for run in study.runs] == [
            "cell=rnn_tanh,init=orthogonal", "cell=lstm,init=orthogonal",
            "cell=lstm,init=chrono-10"]


