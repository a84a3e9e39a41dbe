"""Tasks: data, loss, metric, chance baseline and "solved" threshold, found by name.

A task is one class registered with `@register_task`; the CLI and configs find
it through `TASKS`. Every batch is generated from a `torch.Generator`, so a run
is reproducible from its seed.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from rnnscope.tasks.base import Task

TASKS: dict[str, type[Task]] = {}


def register_task(name: str) -> Callable[[type[Task]], type[Task]]:
    def wrap(cls: type[Task]) -> type[Task]:
        cls.name = name
        TASKS[name] = cls
        return cls

    return wrap


def get_task(name: str, **kwargs) -> Task:
    """Build a registered task by name; an unknown name or setting lists the accepted ones."""
    if name not in TASKS:
        raise ValueError(f"task.name: unknown {name!r}; accepted: {', '.join(sorted(TASKS))}")
    accepted = check_settings(name, kwargs)
    required = [key for key, default in accepted.items() if default is inspect.Parameter.empty]
    missing = [key for key in required if key not in kwargs]
    if missing:
        raise ValueError(f"task.{missing[0]}: task {name!r} needs it "
                         f"(e.g. --task.{missing[0]}=...)")
    return TASKS[name](**kwargs)


@dataclass(frozen=True)
class TaskConfig:
    """The `task` section: a registered task's name and its own settings (`seq_len`,
    `path`, `columns`, ...), which `get_task` checks against the task's signature."""

    name: str = "adding"
    settings: Mapping[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or self.name not in TASKS:
            raise ValueError(f"task.name: unknown {self.name!r}; accepted: "
                             f"{', '.join(sorted(TASKS))}")
        check_settings(self.name, self.settings)

    def build(self) -> Task:
        return get_task(self.name, **self.settings)


def check_settings(name: str, keys) -> dict[str, object]:
    """`task_settings(name)`, after checking that every key in `keys` is one of them."""
    accepted = task_settings(name)
    for key in keys:
        if key not in accepted:
            raise ValueError(f"task.{key}: not a setting of task {name!r}; accepted: "
                             f"{', '.join(accepted) or 'none'}")
    return accepted


def task_settings(name: str) -> dict[str, object]:
    """The settings a task takes, with their defaults (inspect.Parameter.empty if required)."""
    parameters = inspect.signature(TASKS[name].__init__).parameters
    return {key: p.default for key, p in parameters.items() if key != "self"}


# Registration happens on import.
from rnnscope.tasks import adding, copy, noise, pixels, series, temporal_order, text  # noqa: E402,F401

__all__ = ["TASKS", "Task", "TaskConfig", "get_task", "register_task", "task_settings"]
