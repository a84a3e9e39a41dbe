"""The installed `rnnscope` entry point and the quickstart example, run as a user would."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import rnnscope
from support import ROOT


def run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=cwd)


def test_version_from_console_script_and_module():
    script = Path(sys.executable).with_name("rnnscope")
    for command in ([str(script)], [sys.executable, "-m", "rnnscope"]):
        result = run(*command, "--version")
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == f"rnnscope {rnnscope.__version__}"


def test_help_lists_usage_and_unknown_command_exits_2():
    result = run(sys.executable, "-m", "rnnscope")
    assert result.returncode == 0
    assert "usage: rnnscope" in result.stdout
    result = run(sys.executable, "-m", "rnnscope", "no-such-command")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr


def test_quickstart_example_shows_vanishing_and_remedies(tmp_path):
    result = run(sys.executable, str(ROOT / "examples" / "quickstart.py"), "--seq-len", "60",
                 "--hidden", "16", "--batch", "4", "--train-steps", "3", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    parity = float(re.search(r"max difference: (\S+)", result.stdout).group(1))
    assert parity < 1e-12
    diagnosed, trained = result.stdout.split("\ntraining on the adding problem")
    # The training part: both runs finish (3 steps: neither is solved), each in its own
    # run directory under the working directory.
    assert trained.count(" finished ") == 2
    assert len(list((tmp_path / "runs").glob("quickstart-*/*/summary.json"))) == 2
    rows = {}
    for line in diagnosed.splitlines():
        fields = line.split()
        if fields and fields[0] in ("rnn_tanh", "rnn_relu", "lstm", "gru"):
            rows[(fields[0], fields[1])] = (fields[2], int(fields[3]))
    assert len(rows) == 7
    assert rows[("rnn_tanh", "torch_default")][0] == "vanishing"
    assert rows[("rnn_tanh", "torch_default")][1] < 30
    assert rows[("rnn_relu", "spectral:3.0")][0] == "exploding"
    assert rows[("rnn_relu", "identity:1.0")] == ("healthy", 60)
    assert rows[("lstm", "chrono:60")] == ("healthy", 60)
    assert rows[("lstm", "forget_bias:1.0")][1] < 60
