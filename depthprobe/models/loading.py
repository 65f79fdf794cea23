"""Load a causal LM by bundled name, local folder, GGUF file or hub id."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from .bundled import BUNDLED_MODELS, convert_to_cache, file_sha256, weights_hash
from .layout import ModelLayout, layout_for

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class LoadedModel:
    """A model with its tokenizer and layout; unpacks as ``model, tokenizer, layout``."""

    model: torch.nn.Module
    tokenizer: object
    layout: ModelLayout
    name: str
    weights_hash: str | None = None

    def __iter__(self):
        return iter((self.model, self.tokenizer, self.layout))

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return self.layout.embed.weight.device


def resolve_dtype(dtype: str | torch.dtype | None, device: str | None = None) -> torch.dtype:
    """Turn a dtype name into a ``torch.dtype``; ``"auto"`` picks bf16 on a GPU that has it."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        on_gpu = torch.cuda.is_available() and (device is None or str(device).startswith("cuda"))
        if on_gpu and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"Unknown dtype {dtype!r}; choose one of auto, {', '.join(DTYPES)}.")
    return DTYPES[dtype]


def check_model_name(name_or_path: str) -> None:
    """Raise ``ValueError`` early when a model name can be neither bundled nor a path.

    A name with no ``/`` that is not bundled and not an existing path cannot be a hub id
    either (hub ids are ``owner/name``), so it is rejected before any slow work starts.
    """
    if name_or_path in BUNDLED_MODELS or Path(name_or_path).expanduser().exists():
        return
    if "/" not in name_or_path:
        raise ValueError(
            f"Unknown model {name_or_path!r}: it is not a bundled model, a local folder or "
            f"a GGUF file, nor a hub id of the form owner/name. Bundled models: "
            f"{', '.join(BUNDLED_MODELS)}."
        )


def _from_pretrained(source, tok_source, kwargs: dict, extra: dict, hub: bool):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    remote = kwargs.get("trust_remote_code", False)
    if hub:
        # A hub id already in the local HF cache loads without touching the network.
        try:
            return _from_pretrained(source, tok_source, {**kwargs, "local_files_only": True},
                                    extra, hub=False)
        except OSError:
            logger.info("%s is not in the local HF cache; asking the hub.", source)
    tokenizer = AutoTokenizer.from_pretrained(
        tok_source, trust_remote_code=remote,
        local_files_only=kwargs.get("local_files_only", False), **extra)
    model = AutoModelForCausalLM.from_pretrained(source, **kwargs, **extra)
    return tokenizer, model


def load_model(
    name_or_path: str,
    dtype: str | torch.dtype | None = "float32",
    device: str | None = None,
    device_map: str | dict | None = None,
    attn_implementation: str | None = None,
    trust_remote_code: bool = False,
) -> LoadedModel:
    """Load a causal LM and find its blocks, final norm and unembedding.

    ``name_or_path`` is a bundled name (``smollm2-135m``, ``gemma3-270m``), a local folder
    with a transformers checkpoint, a ``.gguf`` file, or a hub id. Bundled models are
    converted once to safetensors in the cache (``$DEPTHPROBE_CACHE``) and loaded from
    there afterwards. ``device_map`` is passed to transformers (for example ``"auto"`` to
    spread a model over several GPUs with accelerate).
    """
    check_model_name(name_or_path)
    torch_dtype = resolve_dtype(dtype, device)
    kwargs = {"dtype": torch_dtype, "trust_remote_code": trust_remote_code}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if device_map is not None:
        kwargs["device_map"] = device_map

    path = Path(name_or_path).expanduser()
    if name_or_path in BUNDLED_MODELS:
        folder = convert_to_cache(name_or_path)
        source, tok_source, extra, digest = folder, folder, {}, weights_hash(folder)
    elif path.is_file() and path.suffix == ".gguf":
        source, tok_source = path.parent, path.parent
        extra = {"gguf_file": path.name}
        digest = file_sha256(path)
    elif path.is_dir():
        source, tok_source, extra, digest = path, path, {}, weights_hash(path)
    else:
        source, tok_source, extra, digest = name_or_path, name_or_path, {}, None

    try:
        tokenizer, model = _from_pretrained(source, tok_source, kwargs, extra,
                                            hub=source is name_or_path)
    except OSError as error:
        if source is name_or_path:
            raise ValueError(
                f"Could not load the model {name_or_path!r}: it is not bundled, cached or a "
                f"local path, and the hub did not provide it (this machine is offline, or "
                f"the id is unknown). Bundled models: {', '.join(BUNDLED_MODELS)}."
            ) from error
        raise

    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    if device is not None and device_map is None:
        model.to(device)
    model.eval()
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token

    layout = layout_for(model)
    logger.info("Loaded %s (%s, %d blocks, width %d, %s).", name_or_path,
                layout.architecture, layout.n_layers, layout.d_model, torch_dtype)
    return LoadedModel(model, tokenizer, layout, name=str(name_or_path), weights_hash=digest)
