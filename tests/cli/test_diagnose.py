"""`rnnscope diagnose` end to end: files written, JSON summary, and bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from rnnscope.cli.main import main
from rnnscope.models.sequence import SequenceModel

SMALL = ["--seq-len", "60", "--hidden", "16", "--batch", "8"]


def test_real_entry_point_prints_verdict_and_writes_files(tmp_path):
    out = tmp_path / "diag"
    result = subprocess.run(
        [sys.executable, "-m", "rnnscope", "diagnose", "--task", "adding", "--cell",
         "rnn_tanh", "--init", "torch_default", *SMALL, "--out", str(out)],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "verdict: vanishing" in result.stdout
    assert "fix 1: gated cell with chrono init: --cell=lstm --init=chrono:60" in result.stdout
    assert (out / "flow.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((out / "diagnosis.json").read_text())
    assert saved["verdict"] == "vanishing" and len(saved["flow"][0]) == 60
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_json_summary(tmp_path, capsys):
    code = main(["diagnose", "--cell", "lstm", "--init", "chrono:60", *SMALL, "--json",
                 "--out", str(tmp_path)])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["cell"] == "lstm" and summary["steps"] == 60
    assert summary["verdict"] in ("vanishing", "healthy")
    assert 0 < summary["reach"] <= 60 and summary["rate"] > 0
    assert all(fix["change"] != {"init": "chrono:60"} for fix in summary["fixes"])
    assert {"lyapunov_max", "grad_norm_total", "subnormal_fraction"} <= set(summary["evidence"])


def test_checkpoint_weights_are_used(tmp_path, capsys):
    torch.manual_seed(5)
    model = SequenceModel("rnn_relu", 2, 16, 1)
    rnnscope_init = __import__("rnnscope").init_
    rnnscope_init(model, "identity")
    torch.save({"model": model.state_dict()}, tmp_path / "ckpt.pt")
    args = ["diagnose", "--cell", "rnn_relu", *SMALL, "--json", "--out", str(tmp_path / "out")]
    assert main(args) == 0
    default = json.loads(capsys.readouterr().out)
    assert main([*args, "--checkpoint", str(tmp_path / "ckpt.pt")]) == 0
    loaded = json.loads(capsys.readouterr().out)
    assert loaded["reach"] == 60 and loaded["reach"] > default["reach"]


def test_a_checkpoint_in_a_run_directory_is_told_the_runs_history(tmp_path, capsys):
    """A trainer's checkpoint beside its run's metrics.jsonl is diagnosed with the history
    the trainer had (earlier reaches, updates, the held-out metric against chance, the
    rate spent): here a tanh RNN on the adding problem (30 steps back) still at chance
    after 60 updates at 1e-2 is `vanishing` by the rule for that; the same file elsewhere
    is read alone, as before."""
    from rnnscope.training.run import train
    from support import tiny_run

    config = tiny_run(tmp_path, model={"cell": "rnn_tanh"}, optim={"lr": 0.01},
                      task={"name": "adding", "seq_len": 30},
                      probe={"every": 10}, run={"steps": 60, "eval_every": 20,
                                                "checkpoint_every": 60})
    train(config)
    checkpoint = tmp_path / "run" / "checkpoints" / "last.pt"
    args = ["diagnose", "--task", "adding", "--seq-len", "30", "--cell", "rnn_tanh",
            "--hidden", "16", "--batch", "8", "--json"]
    assert main([*args, "--checkpoint", str(checkpoint), "--out", str(tmp_path / "a")]) == 0
    told = json.loads(capsys.readouterr().out)
    assert told["history"] == {"run_dir": str((tmp_path / "run").resolve()), "step": 60,
                               "recordings": 7}  # probes at steps 1, 10, 20, ..., 60
    evidence = told["evidence"]
    assert evidence["lr_total"] == pytest.approx(0.6, rel=1e-12)
    assert evidence["metric"] > 0.75 * evidence["chance"]  # still at chance
    assert told["verdict"] == "vanishing" and evidence["at_chance_after"] == pytest.approx(0.6)
    alone = tmp_path / "elsewhere" / "last.pt"
    alone.parent.mkdir()
    alone.write_bytes(checkpoint.read_bytes())
    assert main([*args, "--checkpoint", str(alone), "--out", str(tmp_path / "b")]) == 0
    blind = json.loads(capsys.readouterr().out)
    assert blind["history"] is None and "lr_total" not in blind["evidence"]
    assert main([*args[:-1], "--checkpoint", str(checkpoint), "--out", str(tmp_path / "c")]) == 0
    assert f"history: the run in {(tmp_path / 'run').resolve()}, after 60 updates (7 earlier " \
        "recordings read" in capsys.readouterr().out

    # A checkpoint of step 59 is told the evaluation of its own weights or before (step
    # 40), never step 60's, which scored the weights one update on.
    state = torch.load(checkpoint, weights_only=False)
    torch.save({**state, "step": 59}, checkpoint.parent / "mid.pt")
    assert main([*args, "--checkpoint", str(checkpoint.parent / "mid.pt"),
                 "--out", str(tmp_path / "d")]) == 0
    mid = json.loads(capsys.readouterr().out)
    assert mid["history"]["step"] == 59 and mid["history"]["recordings"] == 6
    assert mid["evidence"]["lr_total"] == pytest.approx(0.4, rel=1e-12)

    def note(extra, name):
        assert main([*args[:-1], *extra, "--out", str(tmp_path / name)]) == 0
        out = capsys.readouterr().out
        assert "history: not read (" in out and "earlier recordings read" not in out
        return out.split("history: not read (")[1].split("); the weights")[0]

    # Another task than the run's: its history is not this model's on this task.
    assert note(["--checkpoint", str(checkpoint), "--seq-len", "40"], "e") == (
        "the run trained task settings {'seq_len': 30}, the flags say {'seq_len': 40}")
    torch.save(state["model"], checkpoint.parent / "bare.pt")  # no step: whose history?
    assert note(["--checkpoint", str(checkpoint.parent / "bare.pt")], "f") == \
        "the checkpoint does not say its step"
    torch.save({**state, "step": 70}, checkpoint.parent / "late.pt")
    assert note(["--checkpoint", str(checkpoint.parent / "late.pt")], "g").endswith(
        "metrics.jsonl does not reach step 70")


@pytest.mark.parametrize(("extra", "message"), [
    (["--cell", "transformer"], "cell: unknown 'transformer'; accepted: rnn_tanh"),
    (["--init", "glorot"], "init.scheme: unknown 'glorot'; accepted:"),
    (["--init", "spectral:-1"], "init.radius: must be a positive number"),
    (["--init", "chrono:100", "--cell", "gru"], "init.scheme: 'chrono' does not apply"),
    (["--task", "imagenet"], "task.name: unknown 'imagenet'; accepted: adding"),
    (["--seq-len", "1"], "task.seq_len: must be an integer >= 2"),
    (["--hidden", "0"], "model.hidden: must be an integer >= 1"),
    (["--checkpoint", "missing.pt"], "checkpoint: no such file"),
    (["--checkpoint", "garbage.pt"], "checkpoint: cannot read"),
    (["--checkpoint", "other.pt"], "checkpoint: "),
    (["--seq-len", "abc"], "argument --seq-len: invalid int value: 'abc'"),
    (["--no-such-flag"], "unrecognized argument '--no-such-flag'"),
    (["--task", "digits"], "seq-len: task 'digits' has a fixed length"),
    (["--task.foo=1"], "task.foo: not a setting of task 'adding'; accepted: seq_len"),
    (["--bogus.x=1"], "bogus.x: unknown section 'bogus'; accepted: task"),
    (["--task.path"], "settings are given as --section.key=value"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, extra, message):
    (tmp_path / "garbage.pt").write_text("not a checkpoint")
    torch.save(SequenceModel("gru", 2, 16, 1).state_dict(), tmp_path / "other.pt")
    extra = [str(tmp_path / e) if e.endswith(".pt") else e for e in extra]
    out = tmp_path / "out"
    code = main(["diagnose", *SMALL, "--out", str(out), *extra])
    error = capsys.readouterr().err
    assert code == 2
    assert error.count("\n") == 1 and message in error, error
    assert "Traceback" not in error
    assert not out.exists()


def test_task_settings_reach_the_task(tmp_path, capsys):
    code = main(["diagnose", "--task", "digits", "--task.mode=row", "--task.permuted=true",
                 "--hidden", "8", "--batch", "4", "--json", "--out", str(tmp_path)])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["task_settings"] == {"mode": "row", "permuted": True}
    assert summary["seq_len"] == 8 and summary["steps"] == 8  # 8 rows of 8 pixels


def test_out_that_is_a_file_is_bad_input(tmp_path, capsys):
    (tmp_path / "taken").write_text("")
    code = main(["diagnose", *SMALL, "--out", str(tmp_path / "taken")])
    error = capsys.readouterr().err
    assert code == 2 and error.count("\n") == 1 and "out: " in error


def test_nonfinite_case_writes_strict_json(tmp_path, capsys):
    code = main(["diagnose", "--cell", "rnn_relu", "--init", "spectral:3.0", "--seq-len", "200",
                 "--hidden", "16", "--batch", "4", "--json", "--out", str(tmp_path)])
    assert code == 0
    summary = json.loads(capsys.readouterr().out,
                         parse_constant=lambda name: pytest.fail(f"{name} in JSON"))
    assert summary["verdict"] == "nonfinite"
    saved = json.loads((tmp_path / "diagnosis.json").read_text(),
                       parse_constant=lambda name: pytest.fail(f"{name} in JSON"))
    assert saved["verdict"] == "nonfinite"


def test_help_has_worked_examples(capsys):
    assert main(["diagnose", "--help"]) == 0
    assert "rnnscope diagnose --task adding --seq-len 200" in capsys.readouterr().out
