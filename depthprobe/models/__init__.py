"""Model loading and the layout of each supported architecture."""

from .bundled import BUNDLED_MODELS, DEFAULT_MODEL, cache_root, is_cached, is_installed
from .layout import SUPPORTED_ARCHITECTURES, ModelLayout, layout_for, unembed_residual
from .loading import LoadedModel, check_model_name, load_model, resolve_dtype
from .looped import LoopSpec, loop_model, parse_loop

__all__ = [
    "BUNDLED_MODELS", "DEFAULT_MODEL", "SUPPORTED_ARCHITECTURES", "LoadedModel", "LoopSpec",
    "ModelLayout",
    "cache_root", "check_model_name", "is_cached", "is_installed", "layout_for", "load_model",
    "loop_model", "parse_loop", "resolve_dtype", "unembed_residual",
]
