"""Methods that score how well each layer exposes a task's state.

Importing this package registers every built-in method in :data:`METHODS`.
"""

from .base import METHODS, MethodContext, MethodSpec, get_method, register_method
from .behaviour import behaviour_answers, behaviour_by_step
from .probe import LinearProbe, control_labels, probe_scores

__all__ = ["METHODS", "LinearProbe", "MethodContext", "MethodSpec", "behaviour_answers",
           "behaviour_by_step", "control_labels", "get_method", "probe_scores",
           "register_method"]
