"""An on-disk store of captured residuals: safetensors shards and a JSON manifest.

A store is a folder that contains ``manifest.json`` and the shard files
``shard-00000.safetensors``, ... Each shard contains one tensor, ``residuals`` of shape
(readouts, layers, d_model), for a contiguous range of examples (and so of readouts). The
manifest records the store's *identity*: the model name and weight hash, the task
settings, the capture settings and a hash of the token ids and readout positions. It also
records the dtype, layers and shapes, the plan of shards, and the sha256 of every finished
shard.

Shards are written one by one, each to a temporary file that is renamed into place once
complete, and the manifest is rewritten (atomically too) after each shard. A capture
killed at any moment therefore leaves only complete shards, each listed with its checksum
or not listed at all. :meth:`ActivationStore.open_or_create` with ``resume=True`` keeps the
shards whose checksums match, and :func:`capture_to_store` then captures only the others.
Nothing is read with pickle: shards are safetensors files and the manifest is JSON.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from jaxtyping import Float
from safetensors import safe_open
from safetensors.torch import save as save_safetensors
from torch import Tensor
from tqdm.auto import tqdm

from ..models.layout import ModelLayout
from .residuals import capture_residuals

logger = logging.getLogger(__name__)

STORE_FORMAT = "depthprobe-activations"
STORE_VERSION = 1
MANIFEST = "manifest.json"
TENSOR_NAME = "residuals"
STORE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16,
                "float16": torch.float16}


@dataclass(frozen=True)
class Shard:
    """One planned shard: examples ``[example_start, example_stop)`` and their readouts."""

    index: int
    example_start: int
    example_stop: int
    row_start: int
    row_stop: int

    @property
    def file(self) -> str:
        return f"shard-{self.index:05d}.safetensors"

    @property
    def n_rows(self) -> int:
        return self.row_stop - self.row_start


def plan_shards(readouts_per_example: Sequence[int], bytes_per_readout: int,
                shard_mb: float) -> list[Shard]:
    """Group consecutive examples into shards of about ``shard_mb`` megabytes each.

    An example is never split, so a shard contains at least one example even when that
    example alone is larger than ``shard_mb``.
    """
    if shard_mb <= 0:
        raise ValueError(f"shard_mb must be positive, got {shard_mb}.")
    budget = shard_mb * 2**20
    shards = []
    start = row = 0  # first example and first readout of the open shard
    rows = size = 0  # readouts and bytes in the open shard
    for index, count in enumerate(readouts_per_example):
        extra = count * bytes_per_readout
        if index > start and size + extra > budget:
            shards.append(Shard(len(shards), start, index, row, row + rows))
            start, row, rows, size = index, row + rows, 0, 0
        rows += count
        size += extra
    shards.append(Shard(len(shards), start, len(readouts_per_example), row, row + rows))
    return shards


def _plan_entries(readouts_per_example: Sequence[int], n_layers: int, d_model: int,
                  dtype: str, shard_mb: float) -> list[dict]:
    """Return the manifest entries (file, examples, rows) of a store's shard plan."""
    bytes_per_readout = n_layers * d_model * STORE_DTYPES[dtype].itemsize
    return [{"file": s.file, "examples": [s.example_start, s.example_stop],
             "rows": [s.row_start, s.row_stop]}
            for s in plan_shards(readouts_per_example, bytes_per_readout, shard_mb)]


def inputs_sha256(sequences: Sequence[Sequence[int]],
                  positions: Sequence[Sequence[int]]) -> str:
    """Return a sha256 over token ids and readout positions, to tie a store to its inputs."""
    digest = hashlib.sha256()
    for ids, pos in zip(sequences, positions):
        digest.update(json.dumps([list(map(int, ids)), list(map(int, pos))]).encode())
    return digest.hexdigest()


def _differences(stored, requested, path: str = "") -> list[str]:
    """List the fields where two JSON-like values differ, as ``path: stored X, requested Y``."""
    if isinstance(stored, dict) and isinstance(requested, dict):
        found = []
        for key in sorted(set(stored) | set(requested)):
            found += _differences(stored.get(key), requested.get(key),
                                  f"{path}.{key}" if path else str(key))
        return found
    if stored != requested:
        return [f"{path}: stored {stored!r}, requested {requested!r}"]
    return []


def _write_atomically(path: Path, data: bytes) -> None:
    # Write to a temporary file in the same folder, flush it to disk, then rename: readers
    # see either the old file or the complete new one.
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


class ActivationStore:
    """Residuals of every readout at every captured layer, kept on disk in shards.

    Build one with :meth:`create` or :meth:`open`. Reading is lazy: :meth:`read` (and
    indexing, ``store[rows]`` or ``store[rows, columns]``) reads only the shards that
    contain the requested rows, and verifies each shard's sha256 the first time this object
    reads it. ``shape`` is (readouts, layers, d_model) as for the in-memory tensor of
    :func:`~depthprobe.capture.capture_residuals`; values come back as float32.
    """

    def __init__(self, folder: str | Path, manifest: dict):
        self.folder = Path(folder)
        self.manifest = manifest
        self.shards = [Shard(i, *entry["examples"], *entry["rows"])
                       for i, entry in enumerate(manifest["shards"])]
        self._row_starts = np.array([shard.row_start for shard in self.shards])
        self._verified: set[int] = set()
        self._cached: tuple[int, Tensor] | None = None  # the last shard read, for reuse

    # --- construction -------------------------------------------------------------------

    @classmethod
    def create(cls, folder: str | Path, identity: dict, layers: Sequence[int], d_model: int,
               readouts_per_example: Sequence[int], dtype: str = "float32",
               shard_mb: float = 32.0) -> "ActivationStore":
        """Start an empty store in ``folder``, replacing any store already there.

        Only the files of a store (its manifest and shard files) are removed; other files
        in the folder are left alone.
        """
        if dtype not in STORE_DTYPES:
            raise ValueError(f"Unknown store dtype {dtype!r}; choose one of "
                             f"{', '.join(STORE_DTYPES)}.")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for old in [folder / MANIFEST, *folder.glob("shard-*.safetensors")]:
            old.unlink(missing_ok=True)

        layers = [int(layer) for layer in layers]
        manifest = {
            "format": STORE_FORMAT,
            "version": STORE_VERSION,
            "identity": identity,
            "dtype": dtype,
            "layers": layers,
            "d_model": int(d_model),
            "shape": [int(sum(readouts_per_example)), len(layers), int(d_model)],
            "n_examples": len(readouts_per_example),
            "shard_mb": shard_mb,
            "tensor": TENSOR_NAME,
            "shards": [dict(entry, sha256=None) for entry in _plan_entries(
                readouts_per_example, len(layers), d_model, dtype, shard_mb)],
        }
        store = cls(folder, manifest)
        store._write_manifest()
        return store

    @classmethod
    def open(cls, folder: str | Path) -> "ActivationStore":
        """Open an existing store; raise ``FileNotFoundError`` or ``ValueError`` if invalid."""
        path = Path(folder) / MANIFEST
        if not path.is_file():
            raise FileNotFoundError(f"No activation store at {folder}: {MANIFEST} is missing.")
        try:
            manifest = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"The store manifest {path} is not valid JSON ({error}); "
                             f"delete the folder and capture again.") from None
        if manifest.get("format") != STORE_FORMAT or manifest.get("version") != STORE_VERSION:
            raise ValueError(
                f"{path} is not a depthprobe activation store of version {STORE_VERSION} "
                f"(format {manifest.get('format')!r}, version {manifest.get('version')!r}); "
                f"choose another folder or delete this one.")
        return cls(folder, manifest)

    @classmethod
    def open_or_create(cls, folder: str | Path, identity: dict, layers: Sequence[int],
                       d_model: int, readouts_per_example: Sequence[int],
                       dtype: str = "float32", shard_mb: float = 32.0,
                       resume: bool = False) -> "ActivationStore":
        """Return the store to capture into.

        With ``resume``, an existing store must match ``identity``, the layers, the dtype
        and the shard plan, or ``ValueError`` names each mismatch. Its finished shards
        whose checksums match are kept, and the others are marked for capture. Without
        ``resume``, or when ``folder`` contains no store, a new empty store replaces the
        old one.
        """
        if not resume or not (Path(folder) / MANIFEST).is_file():
            if resume:
                logger.info("No activation store to resume at %s; starting a new one.", folder)
            return cls.create(folder, identity, layers, d_model, readouts_per_example,
                              dtype, shard_mb)
        store = cls.open(folder)
        expected = {"identity": identity, "dtype": dtype, "layers": [int(x) for x in layers],
                    "d_model": int(d_model), "shard_mb": shard_mb}
        stored = {key: store.manifest[key] for key in expected}
        differences = _differences(json.loads(json.dumps(stored, default=str)),
                                   json.loads(json.dumps(expected, default=str)))
        plan = _plan_entries(readouts_per_example, len(layers), d_model, dtype, shard_mb)
        stored_plan = [{key: entry[key] for key in ("file", "examples", "rows")}
                       for entry in store.manifest["shards"]]
        if plan != stored_plan:
            differences.append(
                f"shard plan: stored {len(stored_plan)} shards over "
                f"{store.manifest['n_examples']} examples and {store.shape[0]} readouts, "
                f"requested {len(plan)} shards over {len(readouts_per_example)} examples and "
                f"{sum(readouts_per_example)} readouts")
        if differences:
            raise ValueError(
                f"The activation store at {folder} was made for other inputs, so it cannot "
                f"be resumed: " + "; ".join(differences) + ". Capture without resume "
                f"(--resume) to replace it, or choose another store folder.")
        bad = store.verify(raise_on_error=False)
        for index in bad:
            logger.warning("Shard %s of the store at %s is corrupt or missing; it will be "
                           "captured again.", store.shards[index].file, folder)
            store.manifest["shards"][index]["sha256"] = None
        if bad:
            store._write_manifest()
        logger.info("Resuming the activation store at %s: %d of %d shards kept.", folder,
                    len(store.finished_shards()), len(store.shards))
        return store

    # --- state --------------------------------------------------------------------------

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.manifest["shape"])

    @property
    def layers(self) -> list[int]:
        return list(self.manifest["layers"])

    @property
    def dtype(self) -> torch.dtype:
        return STORE_DTYPES[self.manifest["dtype"]]

    def __len__(self) -> int:
        return self.shape[0]

    def finished_shards(self) -> list[Shard]:
        return [s for s in self.shards if self.manifest["shards"][s.index]["sha256"]]

    def missing_shards(self) -> list[Shard]:
        return [s for s in self.shards if not self.manifest["shards"][s.index]["sha256"]]

    @property
    def complete(self) -> bool:
        return not self.missing_shards()

    def verify(self, raise_on_error: bool = True) -> list[int]:
        """Check every finished shard's sha256; return (or raise on) the bad shard indices."""
        bad = []
        for shard in self.finished_shards():
            if not self._shard_ok(shard):
                bad.append(shard.index)
        if bad and raise_on_error:
            raise ValueError(self._corrupt_message(bad))
        return bad

    def _shard_ok(self, shard: Shard) -> bool:
        path = self.folder / shard.file
        expected = self.manifest["shards"][shard.index]["sha256"]
        ok = path.is_file() and _file_sha256(path) == expected
        if ok:
            self._verified.add(shard.index)
        return ok

    def _corrupt_message(self, indices: list[int]) -> str:
        files = ", ".join(self.shards[i].file for i in indices)
        return (f"The activation store at {self.folder} has shards that are missing or whose "
                f"sha256 does not match the manifest: {files}. Capture again with --resume "
                f"to recompute only those shards.")

    # --- writing ------------------------------------------------------------------------

    def write_shard(self, index: int, residuals: Float[Tensor, "rows layers d_model"]) -> None:
        """Write shard ``index`` atomically and record its checksum in the manifest."""
        shard = self.shards[index]
        expected = (shard.n_rows, len(self.layers), self.manifest["d_model"])
        if tuple(residuals.shape) != expected:
            raise ValueError(f"Shard {index} needs residuals of shape {expected}, got "
                             f"{tuple(residuals.shape)}.")
        tensor = residuals.detach().to("cpu", self.dtype).contiguous()
        # One metadata entry only: safetensors writes several in no fixed order, and equal
        # shards must be equal files for their checksums to compare.
        description = json.dumps({"format": STORE_FORMAT,
                                  "rows": [shard.row_start, shard.row_stop]})
        data = save_safetensors({TENSOR_NAME: tensor}, metadata={"depthprobe": description})
        _write_atomically(self.folder / shard.file, data)
        self.manifest["shards"][index]["sha256"] = hashlib.sha256(data).hexdigest()
        self._verified.add(index)
        if self._cached is not None and self._cached[0] == index:
            self._cached = None
        self._write_manifest()

    def _write_manifest(self) -> None:
        text = json.dumps(self.manifest, indent=1, default=str)
        _write_atomically(self.folder / MANIFEST, text.encode())

    # --- reading ------------------------------------------------------------------------

    def read(self, rows: Sequence[int] | np.ndarray | slice | None = None,
             columns: Sequence[int] | None = None) -> Float[Tensor, "rows columns d_model"]:
        """Return the residuals of ``rows`` (readout indices) at ``columns`` as float32.

        ``columns`` index the store's layers (default: all). Only the shards that contain
        ``rows`` are read. The last shard read stays in memory, so that reading a few rows
        at a time, in order, reads each shard once.
        """
        if not self.complete:
            raise ValueError(
                f"The activation store at {self.folder} is incomplete "
                f"({len(self.missing_shards())} of {len(self.shards)} shards missing); "
                f"finish the capture with --resume first.")
        n_rows, n_layers, d_model = self.shape
        if rows is None:
            rows = slice(None)
        if isinstance(rows, slice):
            rows = np.arange(n_rows)[rows]
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if rows.size and (rows.min() < -n_rows or rows.max() >= n_rows):
            raise IndexError(f"Readout indices must lie in [0, {n_rows}); got "
                             f"{rows.min()} to {rows.max()}.")
        rows = rows % max(n_rows, 1)
        columns = list(range(n_layers)) if columns is None else [int(c) for c in columns]
        out = torch.empty((len(rows), len(columns), d_model), dtype=torch.float32)

        owner = np.searchsorted(self._row_starts, rows, side="right") - 1
        for index in np.unique(owner):
            wanted = np.flatnonzero(owner == index)
            local = torch.as_tensor(rows[wanted] - self.shards[index].row_start)
            out[torch.as_tensor(wanted)] = self._shard(int(index))[local][:, columns].float()
        return out

    def _shard(self, index: int) -> Tensor:
        """Return one shard's residuals, verifying its checksum on its first read."""
        if self._cached is not None and self._cached[0] == index:
            return self._cached[1]
        shard = self.shards[index]
        if index not in self._verified and not self._shard_ok(shard):
            raise ValueError(self._corrupt_message([index]))
        with safe_open(self.folder / shard.file, framework="pt") as handle:
            tensor = handle.get_tensor(TENSOR_NAME)
        self._cached = (index, tensor)
        return tensor

    def __getitem__(self, key) -> Tensor:
        """Index like the (readouts, layers, d_model) tensor: ``store[rows]`` or
        ``store[rows, columns]``, where each index is an int, a slice or a sequence."""
        rows, columns = key if isinstance(key, tuple) else (key, slice(None))
        if isinstance(columns, slice):
            columns_list = list(range(self.shape[1]))[columns]
        elif isinstance(columns, (int, np.integer)):
            columns_list = [int(columns)]
        else:
            columns_list = [int(c) for c in columns]
        result = self.read([rows] if isinstance(rows, (int, np.integer)) else rows,
                           columns_list)
        if isinstance(columns, (int, np.integer)):
            result = result[:, 0]
        if isinstance(rows, (int, np.integer)):
            result = result[0]
        return result

    def numpy(self) -> np.ndarray:
        """Return every residual as one float32 array; this loads the whole store."""
        return self.read().numpy()

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        array = self.numpy()
        return array if dtype is None else array.astype(dtype)


@torch.no_grad()
def capture_to_store(
    model: torch.nn.Module,
    layout: ModelLayout,
    sequences: Sequence[Sequence[int]],
    positions: Sequence[Sequence[int]],
    store: ActivationStore,
    batch_size: int = 8,
    padding_side: str = "right",
    pad_token_id: int = 0,
    progress: bool = True,
) -> ActivationStore:
    """Capture the residuals of the store's missing shards and write them one by one.

    ``sequences`` and ``positions`` are those the store was planned for (see
    :func:`~depthprobe.capture.capture_residuals`). Memory contains one shard at a time,
    so it does not grow with the number of examples. Returns ``store``.
    """
    if len(sequences) != store.manifest["n_examples"]:
        raise ValueError(f"The store at {store.folder} was planned for "
                         f"{store.manifest['n_examples']} examples, got {len(sequences)}.")
    missing = store.missing_shards()
    total = sum(shard.example_stop - shard.example_start for shard in missing)
    bar = tqdm(total=total, desc="capture", unit="example", disable=not progress)
    for shard in missing:
        span = slice(shard.example_start, shard.example_stop)
        residuals = capture_residuals(
            model, layout, sequences[span], positions[span], layers=store.layers,
            batch_size=batch_size, padding_side=padding_side, pad_token_id=pad_token_id,
            progress=False)
        store.write_shard(shard.index, residuals)
        bar.update(shard.example_stop - shard.example_start)
    bar.close()
    return store
