"""State-tracking tasks with token-aligned labels."""

from .base import BehaviourQuery, LabelledSpan, Task, TaskOption, TextExample, align_examples
from .registry import TASKS, get_task, make_task, parse_task_options
from .shell_game import ShellGame

__all__ = ["TASKS", "BehaviourQuery", "LabelledSpan", "ShellGame", "Task", "TaskOption",
           "TextExample", "align_examples", "get_task", "make_task", "parse_task_options"]
