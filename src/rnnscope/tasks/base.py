"""The task interface: what the trainer, `diagnose` and the studies need from a data set.

Conventions every task keeps:
- Batches are time-major: inputs [T, B, input_size] (float32), model outputs [T, B, O].
- Everything random comes from the `torch.Generator` passed in, so a run is
  reproducible from its seed; a task never touches the global RNG.
- `split` is "train" or "valid". Synthetic tasks draw fresh data for both (fresh
  data is held out by construction); file-based tasks keep the two apart.
- The metric is "lower is better" (MSE, error rate, bits per character, ...);
  `baseline` is its value for a model that ignores the inputs (chance level),
  and the task is "solved" when the metric on held-out data is below
  `solved_below` (None: no such threshold, e.g. language modelling).
- Bad input raises ValueError with one line naming the field (`task.<key>`) or
  the file and the problem.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from pathlib import Path

import torch
from torch import Tensor

from rnnscope.checks import choice, integer, shown

SPLITS = ("train", "valid")


class Task(ABC):
    name: str = ""
    input_size: int
    output_size: int
    metric_name: str
    baseline: float
    solved_below: float | None
    # Which steps the loss scores: "last" (one prediction after the whole sequence) or
    # "every" (the mean over all steps), so truncated BPTT can split it by window.
    scored_steps: str = "last"

    @property
    def reach_needed(self) -> int | None:
        """Steps back the gradient must carry for the task to be learnt, the span of its
        longest dependency: the horizon the diagnosis holds the reach against. None where
        the task does not fix one (language, real series, pixels)."""
        return None

    @property
    def nearest_dependency(self) -> int | None:
        """Steps back the gradient must carry to the most recent step the target depends
        on, at its shortest (the adding problem's second number at the last step; the
        second symbol of temporal order): a truncation window at least this long holds
        some of what the weights must learn to read and store (what they learn there
        serves every step), one shorter holds none. None where unknown."""
        return self.reach_needed

    def batch(self, batch_size: int, generator: torch.Generator,
              split: str = "train") -> tuple[Tensor, Tensor]:
        """(inputs [T, B, input_size], targets) of `batch_size` sequences of `split`, drawn
        from `generator`. Synthetic tasks draw fresh data for either split: held out by
        construction."""
        choice("split", split, SPLITS)
        integer("task.batch_size", batch_size, 1)
        return self.draw(batch_size, generator, split)

    @abstractmethod
    def draw(self, batch_size: int, generator: torch.Generator,
             split: str) -> tuple[Tensor, Tensor]:
        """`batch`, once its arguments are checked: what each task writes."""

    @abstractmethod
    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        """The training loss (a scalar) of model outputs [T, B, O] against `target`."""

    def metric(self, output: Tensor, target: Tensor) -> Tensor:
        """The reported metric (lower is better); the loss unless the task says otherwise."""
        return self.loss(output, target)

    def window_loss(self, output: Tensor, target: Tensor, start: int, stop: int,
                    steps: int) -> Tensor | None:
        """The share of `loss` that falls in steps [start, stop) of a `steps`-long sequence,
        for truncated BPTT: the window losses add up to the whole-sequence loss, so a
        window >= T is full BPTT. `output` holds that window's steps only; None when
        the window is not scored (no backward pass is needed for it)."""
        if self.scored_steps == "every":
            return self.loss(output, target[start:stop]) * ((stop - start) / steps)
        return self.loss(output, target) if stop == steps else None

    def solved(self, metric: float) -> bool:
        return self.solved_below is not None and metric < self.solved_below


def data_path(path: str | os.PathLike, what: str = "a file") -> Path:
    """`task.path` as a Path, with ~ expanded: `--task.path=~/data` reaches us as typed,
    since the shell expands ~ only at the start of a word."""
    if not isinstance(path, (str, os.PathLike)) or not str(path):
        raise ValueError(f"task.path: must name {what}, got {shown(path)}")
    if "\0" in str(path):
        raise ValueError(f"task.path: must name {what}, got a path with a NUL byte")
    expanded = Path(path).expanduser()
    try:
        expanded.stat()
    except FileNotFoundError:
        pass  # the caller says "no such file" in its own words
    except OSError as error:  # a name too long, a directory we may not enter
        raise ValueError(f"task.path: cannot open {shown(str(path))} "
                         f"({error.strerror or error})") from None
    return expanded


def read_utf8(path: str | os.PathLike) -> tuple[Path, str]:
    """The file at `path` as text (a leading byte-order mark dropped), or a one-line ValueError."""
    file = data_path(path)
    if not file.is_file():
        problem = "is a directory, not a file" if file.is_dir() else "no such file"
        raise ValueError(f"task.path: {problem}: {file}")
    try:
        data = file.read_bytes()
    except OSError as error:
        raise ValueError(f"{file}: cannot read ({error.strerror or error})") from None
    try:
        return file, data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise ValueError(f"{file}: not UTF-8 text (byte 0x{data[error.start]:02x} at offset "
                         f"{error.start})") from None
