"""The activation store: round trips, checksums, resume after an interrupted capture."""

from __future__ import annotations

import hashlib
import json
import random

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from conftest import tiny_model
from tiny_lm import tiny_loaded
from depthprobe.capture import capture_residuals
from depthprobe.capture.store import (
    MANIFEST, STORE_DTYPES, ActivationStore, capture_to_store, inputs_sha256, plan_shards)
from depthprobe.models import layout_for

IDENTITY = {"model": {"name": "tiny", "weights_sha256": "abc"}, "task": {"task": "t"}}


def _random_inputs(n_examples: int, seed: int = 0):
    rng = random.Random(seed)
    sequences, positions = [], []
    for _ in range(n_examples):
        length = rng.randint(4, 12)
        sequences.append([rng.randrange(1, 500) for _ in range(length)])
        positions.append(sorted(rng.sample(range(length), rng.randint(1, 3))))
    return sequences, positions


def _filled_store(folder, residuals: torch.Tensor, counts: list[int], dtype="float32",
                  shard_mb=None) -> ActivationStore:
    n_layers, d_model = residuals.shape[1:]
    if shard_mb is None:  # about four readouts per shard
        shard_mb = 4 * n_layers * d_model * STORE_DTYPES[dtype].itemsize / 2**20
    store = ActivationStore.create(folder, IDENTITY, list(range(n_layers)), d_model, counts,
                                   dtype=dtype, shard_mb=shard_mb)
    for shard in store.shards:
        store.write_shard(shard.index, residuals[shard.row_start:shard.row_stop])
    return store


def _shard_hashes(folder) -> dict[str, str]:
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.glob("shard-*.safetensors"))}


def test_plan_shards_covers_every_example():
    counts = [3, 1, 4, 1, 5, 9, 2, 6]
    shards = plan_shards(counts, bytes_per_readout=100, shard_mb=1000 / 2**20)

    assert shards[0].example_start == 0
    assert shards[0].row_start == 0
    assert shards[-1].example_stop == len(counts)
    assert shards[-1].row_stop == sum(counts)
    for before, after in zip(shards, shards[1:]):
        assert before.example_stop == after.example_start
        assert before.row_stop == after.row_start
    for shard in shards:
        rows = sum(counts[shard.example_start:shard.example_stop])
        assert shard.n_rows == rows
        # A shard over budget contains a single example that alone exceeds it.
        assert rows * 100 <= 1000 or shard.example_stop - shard.example_start == 1


def test_plan_shards_rejects_nonpositive_size():
    with pytest.raises(ValueError, match="shard_mb must be positive"):
        plan_shards([1, 2], 10, 0)


@pytest.mark.parametrize("dtype", list(STORE_DTYPES))
def test_store_round_trip(tmp_path, dtype):
    counts = [2, 3, 1, 4, 2, 2, 1]
    residuals = torch.randn(sum(counts), 4, 8)
    _filled_store(tmp_path, residuals, counts, dtype=dtype)
    expected = residuals.to(STORE_DTYPES[dtype]).float()

    store = ActivationStore.open(tmp_path)
    assert store.complete
    assert len(store.shards) > 2
    assert store.shape == (sum(counts), 4, 8)
    assert torch.equal(store.read(), expected)
    rows = np.array([14, 0, 7, 3, 3])
    assert torch.equal(store.read(rows), expected[rows])
    assert torch.equal(store.read(rows, columns=[3, 1]), expected[rows][:, [3, 1]])
    assert torch.equal(store[5], expected[5])
    assert torch.equal(store[2:9, 1], expected[2:9, 1])
    assert torch.equal(store[rows, 1:3], expected[rows, 1:3])
    assert np.array_equal(np.asarray(store), expected.numpy())


def test_shards_are_plain_safetensors(tmp_path):
    counts = [2, 2, 2]
    residuals = torch.randn(6, 3, 5)
    store = _filled_store(tmp_path, residuals, counts, shard_mb=2 * 3 * 5 * 4 / 2**20)

    manifest = json.loads((tmp_path / MANIFEST).read_text())
    assert manifest["identity"] == IDENTITY
    assert manifest["shape"] == [6, 3, 5]
    assert len(manifest["shards"]) == 3
    for shard, entry in zip(store.shards, manifest["shards"]):
        path = tmp_path / entry["file"]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"]
        tensors = load_file(path)
        assert list(tensors) == ["residuals"]
        assert torch.equal(tensors["residuals"], residuals[shard.row_start:shard.row_stop])


def test_corrupt_shard_is_rejected_on_read(tmp_path):
    counts = [2, 3, 1, 4, 2, 2, 1]
    _filled_store(tmp_path, torch.randn(sum(counts), 4, 8), counts)
    store = ActivationStore.open(tmp_path)
    target = tmp_path / store.shards[1].file
    data = bytearray(target.read_bytes())
    data[-3] ^= 0xFF
    target.write_bytes(bytes(data))

    untouched = store.read(np.arange(store.shards[0].n_rows))  # shard 0 only
    assert untouched.shape[0] == store.shards[0].n_rows
    with pytest.raises(ValueError, match=store.shards[1].file):
        store.read()
    with pytest.raises(ValueError, match="sha256"):
        ActivationStore.open(tmp_path).verify()


def test_missing_shard_is_rejected_on_read(tmp_path):
    counts = [2, 3, 1, 4, 2, 2, 1]
    _filled_store(tmp_path, torch.randn(sum(counts), 4, 8), counts)
    store = ActivationStore.open(tmp_path)
    (tmp_path / store.shards[-1].file).unlink()

    with pytest.raises(ValueError, match=store.shards[-1].file):
        store.read()


def test_incomplete_store_cannot_be_read(tmp_path):
    counts = [2, 3, 1, 4]
    store = ActivationStore.create(tmp_path, IDENTITY, [0, 1], 8, counts,
                                   shard_mb=2 * 3 * 8 * 4 / 2**20)
    store.write_shard(0, torch.randn(store.shards[0].n_rows, 2, 8))

    with pytest.raises(ValueError, match="incomplete"):
        ActivationStore.open(tmp_path).read()


def test_write_shard_checks_shape(tmp_path):
    store = ActivationStore.create(tmp_path, IDENTITY, [0, 1], 8, [2, 3], shard_mb=1)
    with pytest.raises(ValueError, match=r"shape \(5, 2, 8\)"):
        store.write_shard(0, torch.randn(5, 3, 8))


def test_open_rejects_other_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        ActivationStore.open(tmp_path)
    (tmp_path / MANIFEST).write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ValueError, match="not a depthprobe activation store"):
        ActivationStore.open(tmp_path)


@pytest.mark.parametrize("change, field", [
    (dict(identity={**IDENTITY, "model": {"name": "tiny", "weights_sha256": "def"}}),
     "identity.model.weights_sha256: stored 'abc', requested 'def'"),
    (dict(identity={**IDENTITY, "task": {"task": "other"}}), "identity.task.task"),
    (dict(dtype="bfloat16"), "dtype: stored 'float32', requested 'bfloat16'"),
    (dict(layers=[0, 2, 3]), "layers"),
    (dict(readouts_per_example=[2, 3, 1, 5]), "shard plan"),
])
def test_resume_rejects_mismatch_by_name(tmp_path, change, field):
    counts = [2, 3, 1, 4]
    _filled_store(tmp_path, torch.randn(sum(counts), 3, 8), counts, shard_mb=1)
    arguments = dict(identity=IDENTITY, layers=[0, 1, 2], d_model=8,
                     readouts_per_example=counts, dtype="float32", shard_mb=1)
    arguments.update(change)

    with pytest.raises(ValueError, match="cannot be resumed") as error:
        ActivationStore.open_or_create(tmp_path, resume=True, **arguments)
    assert field in str(error.value)


def test_create_replaces_only_store_files(tmp_path):
    counts = [2, 3]
    _filled_store(tmp_path, torch.randn(5, 2, 4), counts, shard_mb=1e-5)
    (tmp_path / "notes.txt").write_text("keep me")
    store = ActivationStore.create(tmp_path, IDENTITY, [0, 1], 4, counts, shard_mb=1)

    assert store.missing_shards() == store.shards
    assert not list(tmp_path.glob("shard-*.safetensors"))
    assert (tmp_path / "notes.txt").read_text() == "keep me"


def test_inputs_hash_depends_on_ids_and_positions():
    base = inputs_sha256([[1, 2, 3]], [[0, 2]])
    assert base == inputs_sha256([[1, 2, 3]], [[0, 2]])
    assert base != inputs_sha256([[1, 2, 4]], [[0, 2]])
    assert base != inputs_sha256([[1, 2, 3]], [[1, 2]])


# --- capture into a store ---------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny():
    model = tiny_model("llama", n_layers=3, width=32)
    return model, layout_for(model)


def _store_for(folder, layout, positions, shard_examples=3, resume=False):
    n_layers = layout.n_layers + 1
    shard_mb = shard_examples * 3 * n_layers * layout.d_model * 4 / 2**20
    return ActivationStore.open_or_create(
        folder, IDENTITY, list(range(n_layers)), layout.d_model,
        [len(p) for p in positions], shard_mb=shard_mb, resume=resume)


def test_capture_to_store_equals_capture_residuals(tmp_path, tiny):
    model, layout = tiny
    sequences, positions = _random_inputs(14)
    store = _store_for(tmp_path, layout, positions)
    capture_to_store(model, layout, sequences, positions, store, batch_size=1,
                     progress=False)
    # Batch size 1 runs every text alone, so both paths compute exactly the same.
    expected = capture_residuals(model, layout, sequences, positions, batch_size=1,
                                 progress=False)

    assert len(store.shards) > 2
    assert torch.equal(ActivationStore.open(tmp_path).read(), expected)


def test_capture_to_store_batched_close_to_one_by_one(tmp_path, tiny):
    model, layout = tiny
    sequences, positions = _random_inputs(14, seed=1)
    store = _store_for(tmp_path, layout, positions)
    capture_to_store(model, layout, sequences, positions, store, batch_size=4,
                     progress=False)
    expected = capture_residuals(model, layout, sequences, positions, batch_size=1,
                                 progress=False)

    torch.testing.assert_close(store.read(), expected, atol=1e-4, rtol=1e-4)


class _Interrupt(Exception):
    """Stands in for a kill signal arriving during the capture."""


def _interrupt_after(store: ActivationStore, n_shards: int) -> list[int]:
    # Wrap the real write so that the capture loop dies right after n_shards shards.
    written, write = [], store.write_shard

    def write_then_maybe_die(index, residuals):
        if len(written) == n_shards:
            raise _Interrupt
        write(index, residuals)
        written.append(index)

    store.write_shard = write_then_maybe_die
    return written


def _count_writes(store: ActivationStore) -> list[int]:
    written, write = [], store.write_shard

    def counted(index, residuals):
        write(index, residuals)
        written.append(index)

    store.write_shard = counted
    return written


def test_interrupted_capture_resumes_to_identical_store(tmp_path, tiny):
    model, layout = tiny
    sequences, positions = _random_inputs(17, seed=2)
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    capture_to_store(model, layout, sequences, positions, _store_for(whole, layout, positions),
                     batch_size=4, progress=False)

    store = _store_for(broken, layout, positions)
    written = _interrupt_after(store, 2)
    with pytest.raises(_Interrupt):
        capture_to_store(model, layout, sequences, positions, store, batch_size=4,
                         progress=False)
    assert written == [0, 1]
    assert not ActivationStore.open(broken).complete

    resumed = _store_for(broken, layout, positions, resume=True)
    assert [s.index for s in resumed.finished_shards()] == [0, 1]
    rewritten = _count_writes(resumed)
    capture_to_store(model, layout, sequences, positions, resumed, batch_size=4,
                     progress=False)

    assert rewritten == list(range(2, len(resumed.shards)))
    assert _shard_hashes(broken) == _shard_hashes(whole)
    assert torch.equal(ActivationStore.open(broken).read(), ActivationStore.open(whole).read())


def test_resume_recaptures_only_damaged_shards(tmp_path, tiny):
    model, layout = tiny
    sequences, positions = _random_inputs(17, seed=3)
    store = _store_for(tmp_path, layout, positions)
    capture_to_store(model, layout, sequences, positions, store, batch_size=4,
                     progress=False)
    before = _shard_hashes(tmp_path)
    corrupt, deleted = store.shards[1].file, store.shards[3].file
    (tmp_path / corrupt).write_bytes(b"not a safetensors file")
    (tmp_path / deleted).unlink()

    resumed = _store_for(tmp_path, layout, positions, resume=True)
    rewritten = _count_writes(resumed)
    capture_to_store(model, layout, sequences, positions, resumed, batch_size=4,
                     progress=False)

    assert rewritten == [1, 3]
    assert _shard_hashes(tmp_path) == before


def test_capture_to_store_checks_example_count(tmp_path, tiny):
    model, layout = tiny
    sequences, positions = _random_inputs(5)
    store = _store_for(tmp_path, layout, positions)
    with pytest.raises(ValueError, match="planned for 5 examples, got 4"):
        capture_to_store(model, layout, sequences[:4], positions[:4], store, progress=False)


# --- the run: interrupted, resumed, and compared with an uninterrupted run ------------


def _run_config(output, **changes):
    from depthprobe.run import RunConfig

    settings = dict(n_stories=12, n_steps=2, behaviour=False, figures=(), n_boot=20,
                    progress=False, shard_mb=0.01, output_dir=str(output))
    settings.update(changes)
    return RunConfig(**settings)


def _tables(folder) -> dict[str, pd.DataFrame]:
    names = ["scores.csv", "readout_scores.csv", "depth.csv", "shortcuts.csv"]
    return {name: pd.read_csv(folder / name) for name in names}


def test_run_resumes_to_identical_tables(tmp_path, monkeypatch):
    from depthprobe.run import run

    model = tiny_loaded()
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    run(_run_config(whole), model=model)
    n_shards = len(ActivationStore.open(whole / "activations").shards)
    assert n_shards >= 3

    calls = []
    write = ActivationStore.write_shard

    def die_after_two(self, index, residuals):
        if len(calls) == 2:
            raise _Interrupt
        write(self, index, residuals)
        calls.append(index)

    monkeypatch.setattr(ActivationStore, "write_shard", die_after_two)
    with pytest.raises(_Interrupt):
        run(_run_config(broken), model=model)
    monkeypatch.setattr(ActivationStore, "write_shard", write)
    assert not (broken / "scores.csv").exists()

    def counted(self, index, residuals):
        write(self, index, residuals)
        calls.append(index)

    calls.clear()
    monkeypatch.setattr(ActivationStore, "write_shard", counted)
    result = run(_run_config(broken, resume=True), model=model)

    assert calls == list(range(2, n_shards))
    assert result.manifest["store"]["shards_kept"] == 2
    for name, table in _tables(whole).items():
        pd.testing.assert_frame_equal(_tables(broken)[name], table, check_exact=True)

    # A shard damaged after the run is captured again, and the tables stay the same.
    store = ActivationStore.open(broken / "activations")
    (broken / "activations" / store.shards[0].file).write_bytes(b"damaged")
    calls.clear()
    run(_run_config(broken, resume=True), model=model)
    assert calls == [0]
    for name, table in _tables(whole).items():
        pd.testing.assert_frame_equal(_tables(broken)[name], table, check_exact=True)


def test_run_rejects_store_of_another_task_before_loading(tmp_path):
    from depthprobe.run import check_config

    folder = tmp_path / "store"
    ActivationStore.create(folder, {"model": {"name": "smollm2-135m"},
                                    "task": {"task": "parity"}}, [0], 4, [1])
    config = _run_config(tmp_path / "out", store_dir=str(folder), resume=True)

    with pytest.raises(ValueError, match="parity") as error:
        check_config(config)
    assert "--store" in str(error.value)
