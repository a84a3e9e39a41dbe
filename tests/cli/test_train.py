"""`rnnscope train` end to end through the real entry point: output, exit codes, bad
input, and a run killed with SIGKILL and resumed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from rnnscope.cli.main import main

TINY = ["--task", "adding", "--seq-len", "12", "--cell", "lstm", "--hidden", "16",
        "--batch", "16", "--quiet", "--probe.histograms=false"]


def rnnscope_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rnnscope", *args], capture_output=True,
                          text=True, timeout=timeout)


def test_json_summary_has_the_documented_keys(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", *TINY, "--steps", "4", "--run.eval_every=2", "--init", "chrono:12",
                 "--clip", "norm:1.0", "--json", "--out", str(out)])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert {"status", "steps", "final_loss", "metric", "baseline", "solved", "diagnosis",
            "run_dir", "seconds"} <= set(summary)
    assert summary["status"] == "finished" and summary["steps"] == 4
    assert summary["metric"]["name"] == "mse" and summary["baseline"] == pytest.approx(1 / 6)
    assert {"verdict", "reach", "rate"} <= set(summary["diagnosis"])
    assert summary["run_dir"] == str(out)
    saved = (out / "config.yaml").read_text()
    assert "scheme: chrono:12" in saved and "method: norm" in saved
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 4 + 2  # 4 train, 2 eval


def test_config_file_and_overrides(tmp_path, capsys):
    config = tmp_path / "exp.yaml"
    config.write_text("task: {name: adding, seq_len: 12}\nmodel: {cell: gru, hidden: 8}\n"
                      "run: {steps: 2, batch: 8, quiet: true}\nclip: value:0.5\n")
    out = tmp_path / "run"
    code = main(["train", "--config", str(config), "--bptt.window=5", "--hidden", "12",
                 "--run.name=custom", "--out", str(out), "--json"])
    assert code == 0, capsys.readouterr().err
    from rnnscope.training.config import ExperimentConfig

    saved = ExperimentConfig.from_yaml(out / "config.yaml")
    assert saved.model.cell == "gru" and saved.model.hidden == 12  # shorthand over the file
    assert saved.bptt.window == 5 and saved.clip.method == "value"
    assert saved.run.name == "custom"


@pytest.mark.parametrize(("args", "message"), [
    (["--task", "adder"], "task.name: unknown 'adder'; accepted: adding, copy"),
    (["--cell", "lstn"], "model.cell: unknown 'lstn'; accepted: rnn_tanh, rnn_relu, lstm, gru"),
    (["--init", "xavier"], "init.scheme: unknown 'xavier'; accepted: torch_default"),
    (["--init", "chrono:300", "--cell", "gru"], "init"),
    (["--clip", "norm:abc"], "clip: cannot read 'norm:abc'"),
    (["--clip", "clamp:1"], "clip"),
    (["--steps", "-5"], "run.steps: must be an integer >= 1, got -5"),
    (["--steps", "ten"], "argument --steps: invalid int value: 'ten'"),
    (["--guard", "ignore"], "guard.policy: unknown 'ignore'; accepted: raise, skip, rollback"),
    (["--optim.lerning_rate=0.1"], "optim.lerning_rate: unknown key; accepted: name, lr"),
    (["--optimizer.lr=0.1"], "optimizer.lr: unknown section 'optimizer'; accepted: task"),
    (["--model.hidden=big"], "model.hidden: expected an integer, got 'big'"),
    (["--config", "missing.yaml"], "config: no such file: missing.yaml"),
    (["--task", "series", "--task.path=absent.csv", "--task.column=c"],
     "task.path: no such file: absent.csv"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, monkeypatch, capsys, args,
                                                        message):
    monkeypatch.chdir(tmp_path)
    code = main(["train", "--steps", "2", *args])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "Traceback" not in err
    assert message in err
    assert list(tmp_path.iterdir()) == []  # no run directory half-written


def test_unreadable_config_file(tmp_path, capsys):
    config = tmp_path / "exp.yaml"
    config.write_text("model: {cell: lstm\n")
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rnnscope: error: config: ") and "line" in err
    assert not (tmp_path / "r").exists()


def test_resume_refuses_config_flags(tmp_path, capsys):
    assert main(["train", "--resume", "--out", str(tmp_path), "--cell", "gru"]) == 2
    assert "resume: the run's saved config.yaml decides; drop --cell" in capsys.readouterr().err
    assert main(["train", "--resume", "--out", str(tmp_path / "none")]) == 2
    assert "holds no run to resume" in capsys.readouterr().err
    assert main(["train", "--resume"]) == 2
    assert "resume: name the run directory with --out" in capsys.readouterr().err


def test_raise_policy_exits_1_with_a_clear_message(tmp_path):
    result = rnnscope_cli("train", *TINY, "--cell", "rnn_relu", "--seq-len", "30", "--lr",
                          "1.0", "--optim.name=sgd", "--optim.momentum=0", "--steps", "40",
                          "--guard", "raise", "--out", str(tmp_path / "run"))
    assert result.returncode == 1, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("rnnscope: training failed: step ")
    assert "non-finite" in last and "guard.policy=raise" in last
    assert "Traceback" not in result.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "diverged"


def test_sigkill_then_resume_gives_the_weights_of_an_uninterrupted_run(tmp_path):
    common = [*TINY, "--steps", "150", "--run.checkpoint_every=20", "--run.eval_every=25",
              "--clip", "autoclip:50", "--schedule.decay=cosine", "--schedule.warmup=10"]
    straight = rnnscope_cli("train", *common, "--out", str(tmp_path / "straight"))
    assert straight.returncode == 0, straight.stderr

    killed = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, "-m", "rnnscope", "train", *common, "--out",
                                str(killed)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    metrics = killed / "metrics.jsonl"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        lines = metrics.read_text().splitlines() if metrics.exists() else []
        if len(lines) >= 90:  # past the checkpoints at 20, 40, 60: mid-way
            break
        time.sleep(0.05)
    assert process.poll() is None, "the run ended before it could be killed"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not (killed / "summary.json").exists()

    resumed = rnnscope_cli("train", "--resume", "--out", str(killed), "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    a = torch.load(tmp_path / "straight" / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(killed / "checkpoints" / "last.pt", weights_only=True)
    assert a["step"] == b["step"] == 150
    for name, weight in a["model"].items():
        torch.testing.assert_close(b["model"][name], weight, rtol=0, atol=1e-6)
    # The metrics stream has each step exactly once, as the uninterrupted run's does.
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()
             if json.loads(line)["kind"] == "train"]
    assert steps == list(range(1, 151))
    # Resuming a finished run changes nothing.
    again = rnnscope_cli("train", "--resume", "--out", str(killed), "--quiet", "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["steps"] == 150


def test_resume_before_the_first_checkpoint_starts_again(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", *TINY, "--steps", "6", "--run.checkpoint_every=0", "--out", str(out)]
    assert main(args) == 0
    capsys.readouterr()
    # As if killed before any checkpoint: only config.yaml and part of the metrics remain.
    (out / "checkpoints" / "last.pt").unlink()
    (out / "summary.json").unlink()
    assert main(["train", "--resume", "--out", str(out), "--quiet", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["steps"] == 6
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").open()
             if json.loads(line)["kind"] == "train"]
    assert steps == list(range(1, 7))


@pytest.mark.parametrize("damage", ["truncated", "garbage", "other model"])
def test_resume_from_a_damaged_checkpoint_is_one_line_exit_2(tmp_path, capsys, damage):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--steps", "2", "--out", str(out)]) == 0
    capsys.readouterr()
    last = out / "checkpoints" / "last.pt"
    if damage == "truncated":
        last.write_bytes(last.read_bytes()[:500])
    elif damage == "garbage":
        last.write_text("not a checkpoint")
    else:
        torch.save({"step": 1, "model": {"w": torch.zeros(2)}}, last)
    assert main(["train", "--resume", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rnnscope: error: resume: ") and err.count("\n") == 1
    assert "Traceback" not in err


def test_data_too_small_for_the_batch_fails_before_writing(tmp_path, capsys):
    text = tmp_path / "small.txt"
    text.write_text("abcdefghij" * 30)  # 300 characters: 30 held out, too few for 64 columns
    out = tmp_path / "run"
    code = main(["train", "--task", "text", f"--task.path={text}", "--seq-len", "20",
                 "--batch", "64", "--steps", "3", "--out", str(out)])
    assert code == 2 and not out.exists()
    assert "batch_size" in capsys.readouterr().err


def test_clipping_rescues_gradients_too_large_for_float32_squares(tmp_path, capsys):
    """A relu RNN with spectral radius 3 at T=50: gradients near 1e19 whose float32
    squares overflow. Clipping by norm must act on them, not call them NaN."""
    out = tmp_path / "run"
    code = main(["train", "--cell", "rnn_relu", "--init", "spectral:3.0", "--seq-len", "50",
                 "--hidden", "16", "--batch", "16", "--steps", "5", "--clip", "norm:1.0",
                 "--quiet", "--json", "--out", str(out), "--probe.histograms=false"])
    summary = json.loads(capsys.readouterr().out)
    assert code == 0 and summary["status"] == "finished"
    lines = [json.loads(line) for line in (out / "metrics.jsonl").open()]
    first = lines[0]
    assert first["grad_norm"] > 1e19 and first["grad_norm_clipped"] == pytest.approx(1.0, rel=1e-3)
