"""Methods that score how well each layer exposes a task's state.

Importing this package registers every built-in method in :data:`METHODS`.
"""

from .base import METHODS, MethodContext, MethodSpec, get_method, register_method
from .behaviour import behaviour_answers, behaviour_by_step
from .probe import LinearProbe, control_labels, probe_scores
from .probe_torch import PROBE_BACKENDS, BatchedLinearProbe, probe_scores_torch
from .lens import LogitLens, top_tokens
from .tuned_lens import TunedLens
from .patchscope import TARGET_PROMPTS, TargetPrompt, patchscope, patchscope_grid
from .interchange import backpatch, interchange, interchange_sweep
from .agreement import depth_agreement
from .transformer_lens import as_loaded_model, loaded_from_bridge

__all__ = ["METHODS", "LinearProbe", "MethodContext", "MethodSpec", "behaviour_answers",
           "behaviour_by_step", "control_labels", "get_method", "probe_scores",
           "register_method",
           "LogitLens", "TARGET_PROMPTS", "TargetPrompt", "TunedLens", "as_loaded_model",
           "backpatch", "depth_agreement", "interchange", "interchange_sweep",
           "loaded_from_bridge", "patchscope", "patchscope_grid", "top_tokens",
           "BatchedLinearProbe", "PROBE_BACKENDS", "probe_scores_torch"]
