"""Tasks: data, loss, metric, chance baseline and "solved" threshold, found by name.

A task is one class registered with `@register_task`; the CLI and configs find
it through `TASKS`. Every batch is generated from a `torch.Generator`, so a run
is reproducible from its seed.
"""

from __future__ import annotations

from collections.abc import Callable

from rnnscope.tasks.base import Task

TASKS: dict[str, type[Task]] = {}


def register_task(name: str) -> Callable[[type[Task]], type[Task]]:
    def wrap(cls: type[Task]) -> type[Task]:
        cls.name = name
        TASKS[name] = cls
        return cls

    return wrap


def get_task(name: str, **kwargs) -> Task:
    """Build a registered task by name; an unknown name lists the accepted ones."""
    if name not in TASKS:
        raise ValueError(f"task.name: unknown {name!r}; accepted: {', '.join(sorted(TASKS))}")
    return TASKS[name](**kwargs)


# Registration happens on import.
from rnnscope.tasks import adding, pixels  # noqa: E402,F401

__all__ = ["TASKS", "Task", "get_task", "register_task"]
