"""State-tracking tasks with token-aligned labels."""

from .base import BehaviourQuery, LabelledSpan, Task, TaskOption, TextExample, align_examples
from .boxes import Boxes, parse_boxes_file
from .babi import parse_babi
from .files import DataFileError, LineProblem
from .jsonl import JsonlTask, read_jsonl
from .location import Location
from .number_guess import NumberGuess
from .parity import Parity
from .permutation import Permutation
from .polysemy import Polysemy
from .registry import TASKS, get_task, make_task, parse_task_options
from .shell_game import ShellGame
from .two_hop import TwoHop
from .wsd import read_coarse_wsd, read_wic

__all__ = ["TASKS", "BehaviourQuery", "Boxes", "DataFileError", "JsonlTask", "LabelledSpan",
           "LineProblem", "Location", "NumberGuess", "Parity", "Permutation", "Polysemy",
           "ShellGame", "Task", "TaskOption", "TextExample", "TwoHop", "align_examples",
           "get_task", "make_task", "parse_babi", "parse_boxes_file", "parse_task_options",
           "read_coarse_wsd", "read_jsonl", "read_wic"]
