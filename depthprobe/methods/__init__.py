"""Methods that score how well each layer exposes a task's state."""

from .behaviour import behaviour_answers, behaviour_by_step
from .probe import LinearProbe, control_labels, probe_scores

__all__ = ["LinearProbe", "behaviour_answers", "behaviour_by_step", "control_labels",
           "probe_scores"]
