"""Look up tasks by name and build them from command-line options."""

from __future__ import annotations

from .base import Task
from .boxes import Boxes
from .jsonl import JsonlTask
from .location import Location
from .number_guess import NumberGuess
from .parity import Parity
from .permutation import Permutation
from .polysemy import Polysemy
from .shell_game import ShellGame
from .two_hop import TwoHop

TASKS: dict[str, type[Task]] = {
    task.name: task
    for task in (ShellGame, Parity, Permutation, Location, Boxes, Polysemy, NumberGuess,
                 TwoHop, JsonlTask)
}


def get_task(name: str) -> type[Task]:
    """Return the task class called ``name``; raise ``ValueError`` listing the names."""
    if name not in TASKS:
        raise ValueError(f"Unknown task {name!r}; choose one of {', '.join(sorted(TASKS))}.")
    return TASKS[name]


def _convert(task: type[Task], key: str, raw, kind: type):
    if not isinstance(raw, str):
        return raw
    try:
        if kind is bool:
            if raw.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(raw)
            return raw.lower() in ("true", "1", "yes")
        return kind(raw)
    except ValueError:
        raise ValueError(
            f"Task option {key}={raw!r} of task {task.name!r} is not a valid "
            f"{kind.__name__}."
        ) from None


def parse_task_options(name: str, options: dict[str, object]) -> dict[str, object]:
    """Check option names and convert string values to each option's type.

    Raises ``ValueError`` that lists the valid options with types and defaults.
    """
    task = get_task(name)
    known = {option.name: option for option in task.options()}
    parsed = {}
    for key, raw in options.items():
        if key not in known:
            listing = "; ".join(f"{o.name} ({o.type.__name__}, default {o.default!r})"
                                for o in known.values())
            raise ValueError(
                f"Unknown option {key!r} for task {name!r}. Valid options: {listing}."
            )
        parsed[key] = _convert(task, key, raw, known[key].type)
    return parsed


def make_task(name: str, **options) -> Task:
    """Build and check a task from its name and options (strings are converted)."""
    task = get_task(name)(**parse_task_options(name, options))
    task.check()
    return task
