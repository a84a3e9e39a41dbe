"""Helpers the tests share: configs built over small defaults, torch's own modules as
references, the command line in a subprocess, and one-line error checks.

Fixtures live in conftest.py; this module holds plain functions (pytest puts tests/ on
the path: `from support import ...`).
"""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import torch
import yaml
from torch import nn

import rnnscope
from rnnscope.models.cells import CELLS
from rnnscope.study.store import StudyStore
from rnnscope.tasks import get_task
from rnnscope.training.config import ExperimentConfig

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


# Study runs of a few hundred milliseconds each: no evaluation before the end, no probes.
TINY_STUDY = {"task": {"name": "adding", "seq_len": 10}, "model": {"hidden": 4},
              "run": {"steps": 10, "batch": 8, "eval_every": 0, "checkpoint_every": 5},
              "probe": {"every": 0, "histograms": False}}


def merged_config(defaults: dict, out=None, **sections) -> ExperimentConfig:
    """`defaults` with `sections` over them (a dict merges into a dict section, anything
    else replaces it), and `run.out` when `out` is given."""
    data = {section: dict(values) if isinstance(values, dict) else values
            for section, values in defaults.items()}
    for section, values in sections.items():
        if isinstance(values, dict) and isinstance(data.get(section), dict):
            data[section] = {**data[section], **values}
        else:
            data[section] = values
    if out is not None:
        data["run"] = {**data.get("run", {}), "out": str(out)}
    return ExperimentConfig.from_dict(data)


# A run that trains in well under a second a step: T=12, hidden 16, batch 16.
TINY_RUN = {"task": {"name": "adding", "seq_len": 12}, "model": {"cell": "lstm", "hidden": 16},
            "run": {"steps": 6, "batch": 16, "eval_every": 3, "eval_batches": 1,
                    "quiet": True}, "probe": {"every": 2, "histograms": False}}


def tiny_run(tmp_path=None, **sections) -> ExperimentConfig:
    """TINY_RUN with `sections` over it, writing to tmp_path/run when given."""
    return merged_config(TINY_RUN, None if tmp_path is None else tmp_path / "run", **sections)


def torch_module(cell: str, *args, **kwargs) -> nn.RNNBase:
    """torch's own nn.RNN/nn.LSTM/nn.GRU for an rnnscope cell name."""
    if cell.startswith("rnn_"):
        kwargs["nonlinearity"] = cell.removeprefix("rnn_")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # dropout with one layer
        return CELLS[cell].torch_class(*args, **kwargs)


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """||actual - expected|| / ||expected||."""
    return ((actual - expected).norm() / (expected.norm() + 1e-30)).item()


def rnnscope_cli(*args: str, timeout: float = 300, cwd: Path | None = None
                 ) -> subprocess.CompletedProcess:
    """`python -m rnnscope ARGS` in a subprocess, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "rnnscope", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=cwd)


def one_line_error(capsys) -> str:
    """The one line a refused command wrote to stderr (and nothing like a traceback)."""
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def write_yaml_file(path: Path, data: dict) -> Path:
    """`data` as a YAML file at `path` (a study file, a config)."""
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


# A study directory made by hand for the report, with hostile strings in its data.

EVIL = "x<script>alert(1)<"  # run.name may not hold "/", so the tag stays open
EVIL_PARAM = "<script>alert(2)</script>"
EVIL_MESSAGE = "<img src=x onerror=alert(3)>"
# (name, cell, seq_len): the lengths sort differently as text ("12" < "20" < "9")
TRAINED = [(EVIL, "rnn_tanh", 20), ("lstm-T9", "lstm", 9), ("tanh-T12", "rnn_tanh", 12)]


def report_run_config(out: Path, name: str, cell: str, seq_len: int) -> ExperimentConfig:
    return ExperimentConfig.from_dict({
        "task": {"name": "adding", "seq_len": seq_len},
        "model": {"cell": cell, "hidden": 8},
        "clip": "norm:0.5",
        "run": {"steps": 20, "batch": 16, "eval_every": 10, "eval_batches": 1,
                "checkpoint_every": 0, "quiet": True, "name": name, "out": str(out)},
        "probe": {"every": 5, "histograms": False}})


def metrics_lines(run: Path) -> list[dict]:
    """Every line of a run's metrics.jsonl."""
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def make_study(directory: Path) -> Path:
    """A study directory made by hand: three trained runs (done), one pending run whose
    grid value is a script tag, one run that ended in an error."""
    runs = []
    for name, cell, seq_len in TRAINED:
        config = report_run_config(directory / "runs" / name, name, cell, seq_len)
        runs.append((name, {"model.cell": cell, "task.seq_len": seq_len}, config))
    pending = ("pending-run", {"model.cell": EVIL_PARAM, "task.seq_len": 100}, runs[0][2])
    broken = ("broken-run", {"model.cell": "gru", "task.seq_len": 5}, runs[0][2])
    store = StudyStore(directory / "study.db")
    try:
        store.add([(name, params, config.to_dict()) for name, params, config in
                   [*runs, pending, broken]])
        for name, _, config in runs:
            rnnscope.train(config)
            summary = json.loads((config.run_dir / "summary.json").read_text())
            assert store.claim(name, "test") and store.finish(name, "test", "done", summary)
        assert store.claim("broken-run", "test")
        store.finish("broken-run", "test", "error", {"message": EVIL_MESSAGE})
    finally:
        store.close()
    (directory / "study.yaml").write_text("name: tiny\ngrid: {cell: [rnn_tanh, lstm]}\n")
    return directory


# A plain PyTorch loop, watched (rnnscope.watch): the user's own training loop.


class WatchedModel(nn.Module):
    """The model of the watched loops: a recurrent layer and a last-step read-out."""

    def __init__(self, rnn: type[nn.Module] = nn.LSTM) -> None:
        super().__init__()
        self.rnn = rnn(2, 16)
        self.head = nn.Linear(16, 1)

    def forward(self, x):
        return self.head(self.rnn(x)[0][-1])


def watched_loop(out, steps=60, every=5, keep_at=(), rnn=nn.LSTM, seq_len=12, **options):
    """A training loop as users write one, with one `with watch(...)` around it; the
    weights and batch of the steps in `keep_at`, as they were for that step's backward."""
    torch.manual_seed(0)
    model, task = WatchedModel(rnn), get_task("adding", seq_len=seq_len)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    generator, kept = torch.Generator().manual_seed(0), {}
    with rnnscope.watch(model, out, every=every, **options) as watcher:
        for step in range(1, steps + 1):
            inputs, targets = task.batch(16, generator)
            if step in keep_at:
                kept[step] = ({k: v.clone() for k, v in model.state_dict().items()},
                              inputs, targets)
            optimizer.zero_grad()
            loss = nn.functional.mse_loss(model(inputs), targets)
            loss.backward()
            optimizer.step()
            watcher.log(loss=loss, lr=optimizer.param_groups[0]["lr"])
    return watcher, model, kept
