"""Model loading and the layout of each supported architecture."""

from .bundled import BUNDLED_MODELS, DEFAULT_MODEL, cache_root, is_cached, is_installed
from .layout import SUPPORTED_ARCHITECTURES, ModelLayout, layout_for, unembed_residual
from .loading import LoadedModel, check_model_name, load_model, resolve_dtype

__all__ = [
    "BUNDLED_MODELS", "DEFAULT_MODEL", "SUPPORTED_ARCHITECTURES", "LoadedModel", "ModelLayout",
    "cache_root", "check_model_name", "is_cached", "is_installed", "layout_for", "load_model",
    "resolve_dtype", "unembed_residual",
]
