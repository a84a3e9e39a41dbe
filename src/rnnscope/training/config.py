"""The experiment config: one frozen dataclass per section, each defined next to its
component, composed here; loaded from YAML and overridden from the command line.

    task      tasks.TaskConfig              name and the task's own settings (seq_len, ...)
    model     models.sequence.ModelConfig   cell, hidden, layers, engine, dropout
    init      models.init.InitConfig        scheme[:argument]
    optim     remedies.optim.OptimConfig    name, lr, momentum, weight_decay (L2), eps
    schedule  remedies.optim.ScheduleConfig warmup, decay (step/cosine/plateau), ...
    clip      remedies.clipping.ClipConfig  method, threshold, history, eps
    bptt      flow.bptt.BPTTConfig          window (truncated BPTT; none = full)
    probe     flow.probes.ProbeConfig       every (gradient-flow recording schedule), ...
    guard     remedies.guard.GuardConfig    policy (raise/skip/rollback), limit, factor
    run       RunConfig (below)             steps, batch, seed, name, out, schedules, ...

A section may be written as one string where it has a natural spec: `task: adding`,
`init: chrono:300`, `clip: norm:1.0`, `guard: rollback`. `SHORTHANDS` is the one table
of short names for common fields, shared by the command line (`--cell`) and study
files (`cell: [...]`).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path

from rnnscope.checks import build_section, choice, integer, name, seed, text, to_plain
from rnnscope.files import read_yaml
from rnnscope.flow.bptt import BPTTConfig
from rnnscope.flow.probes import ProbeConfig
from rnnscope.models.init import InitConfig
from rnnscope.models.sequence import ModelConfig
from rnnscope.remedies.clipping import ClipConfig
from rnnscope.remedies.guard import GuardConfig
from rnnscope.remedies.optim import OptimConfig, ScheduleConfig
from rnnscope.tasks import TaskConfig

DEVICES = ("cpu", "cuda", "auto")
DTYPES = ("float32", "float64")  # of the weights and the data
# A million sequences a step is past any use here; larger is a typo (and torch's sizes
# overflow at 2**63).
MAX_BATCH = 2**20
PATH_MAX = 4096  # bytes in a path on Linux: a longer run.out could never be created


@dataclass(frozen=True)
class RunConfig:
    """The `run` section: length, batch, seed, where results go, and the schedules of
    evaluation and checkpoints (in optimiser steps; 0 = only at the end). Under torchrun
    `batch` is the global batch, split evenly across the processes."""

    steps: int = 1000
    batch: int = 64
    seed: int = 0
    name: str | None = None  # default: <task>-<cell>-<init>
    out: str | None = None  # the run directory; default: runs/<name>
    eval_every: int = 100
    eval_batches: int = 4
    checkpoint_every: int = 100
    early_stop: bool = True  # stop once the held-out metric is below the task's threshold
    flush_denormal: bool = True  # subnormals make CPU steps up to 10x slower (DESIGN.md)
    device: str = "cpu"  # auto: cuda when available
    dtype: str = "float32"  # float64: for reference comparisons (slower)
    quiet: bool = False

    def __post_init__(self) -> None:
        integer("run.steps", self.steps, 1)
        integer("run.batch", self.batch, 1, MAX_BATCH)
        seed("run.seed", self.seed)
        integer("run.eval_every", self.eval_every, 0)
        integer("run.eval_batches", self.eval_batches, 1)
        integer("run.checkpoint_every", self.checkpoint_every, 0)
        choice("run.device", self.device, DEVICES)
        choice("run.dtype", self.dtype, DTYPES)
        if self.name is not None:  # one directory under runs/; a path belongs in run.out
            name("run.name", self.name)
        if self.out is not None:
            text("run.out", self.out, max_length=PATH_MAX)


SECTIONS: dict[str, type] = {
    "task": TaskConfig, "model": ModelConfig, "init": InitConfig, "optim": OptimConfig,
    "schedule": ScheduleConfig, "clip": ClipConfig, "bptt": BPTTConfig,
    "probe": ProbeConfig, "guard": GuardConfig, "run": RunConfig,
}
# The field a section's one-string form sets (`clip: norm:1.0` is parsed by ClipConfig).
SPEC_FIELDS = {"task": "name", "init": "scheme", "guard": "policy"}
# Short names of common fields: `--cell` on the command line, `cell:` in a study grid.
# "clip" is the whole section as one spec (`norm:1.0`).
SHORTHANDS = {
    "task": "task.name", "seq_len": "task.seq_len", "cell": "model.cell",
    "hidden": "model.hidden", "layers": "model.layers", "engine": "model.engine",
    "init": "init.scheme", "clip": "clip", "guard": "guard.policy", "batch": "run.batch",
    "lr": "optim.lr", "steps": "run.steps", "seed": "run.seed", "out": "run.out",
    "window": "bptt.window",
}


@dataclass(frozen=True)
class ExperimentConfig:
    task: TaskConfig = field(default_factory=TaskConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    init: InitConfig = field(default_factory=InitConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    clip: ClipConfig = field(default_factory=ClipConfig)
    bptt: BPTTConfig = field(default_factory=BPTTConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    guard: GuardConfig = field(default_factory=GuardConfig)
    run: RunConfig = field(default_factory=RunConfig)

    @classmethod
    def from_dict(cls, data: dict, base: ExperimentConfig | None = None) -> ExperimentConfig:
        """Sections of `data` over `base` (else the defaults); unknown sections and keys and
        wrong types are one-line ValueErrors listing what is accepted."""
        config = base or cls()
        if not isinstance(data, dict):
            raise ValueError(f"config: expected a mapping of sections, got {data!r}")
        for section, values in data.items():
            if section not in SECTIONS:
                raise ValueError(f"{section}: unknown section; accepted: {', '.join(SECTIONS)}")
            if values is None:
                continue
            if section == "clip" and isinstance(values, str):
                updated = ClipConfig.from_spec(values)
            elif isinstance(values, str) and section in SPEC_FIELDS:
                updated = _section(config, section, {SPEC_FIELDS[section]: values})
            else:
                updated = _section(config, section, values)
            config = dataclasses.replace(config, **{section: updated})
        return config

    @classmethod
    def from_yaml(cls, path: str | Path) -> ExperimentConfig:
        return cls.from_dict(read_yaml(path))

    def with_overrides(self, overrides: dict[str, dict]) -> ExperimentConfig:
        return ExperimentConfig.from_dict(overrides, base=self)

    def to_dict(self) -> dict:
        """Every field of every section (defaults included): what `config.yaml` holds and
        what `from_dict` reads back to the same config."""
        data = {name: to_plain(getattr(self, name)) for name in SECTIONS}
        settings = data["task"].pop("settings")
        data["task"].update(dict(settings))
        return data

    def as_flags(self) -> dict[str, str]:
        """The settings a diagnosis may advise changing, as the CLI flags its fixes are
        written in (`{"cell": "lstm", "init": "chrono:200", ...}`)."""
        flags = {"cell": self.model.cell, "init": self.init.scheme, "clip": self.clip.spec,
                 "guard": self.guard.policy,
                 "optim.weight_decay": f"{self.optim.weight_decay:g}"}
        if self.bptt.window is not None:
            flags["bptt.window"] = str(self.bptt.window)
        return flags

    @property
    def run_name(self) -> str:
        if self.run.name:
            return self.run.name
        return re.sub(r"[^A-Za-z0-9._-]+", "", f"{self.task.name}-{self.model.cell}-"
                                                 f"{self.init.scheme.replace(':', '')}")

    @property
    def run_dir(self) -> Path:
        # expanduser: `--run.out=~/runs/x` reaches us unexpanded (the shell expands ~ only
        # at the start of a word)
        return Path(self.run.out).expanduser() if self.run.out else Path("runs") / self.run_name


def _section(config: ExperimentConfig, section: str, values: dict):
    if section != "task":
        return build_section(SECTIONS[section], section, values, base=getattr(config, section))
    if not isinstance(values, dict):
        raise ValueError(f"task: expected a mapping of keys to values, got {values!r}")
    values = dict(values)
    name = values.pop("name", config.task.name)
    # Another task's settings (from the base config) do not carry over to a new task.
    settings = dict(config.task.settings) if name == config.task.name else {}
    return TaskConfig(name, {**settings, **values})  # checks the name and the keys
