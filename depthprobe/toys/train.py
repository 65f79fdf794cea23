"""Training a toy model to name a task's state at each readout, and saving it as a checkpoint.

The toy is an ordinary causal LM: at every readout position its next-token logits are
trained, by cross-entropy over the whole vocabulary, to put the token that names the
state's value (see :func:`~depthprobe.toys.vocabulary.label_token_ids`). No other
position carries a loss. The saved folder contains the weights, the word-level tokenizer and
``toy_training.json``, and loads with ``load_model(path)`` like any checkpoint, so every
method runs on it; the lens reads the same label tokens that training used.

NOTE: the toy learns to name the state at readouts, not to answer a task's behaviour
query, so behaviour scores of a toy say little.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from ..capture.residuals import pad_batch
from ..models.layout import layout_for
from ..models.loading import LoadedModel
from ..models.looped import unrolled_copy
from ..sites import Example
from ..tasks.base import Task, align_examples
from .architectures import TOY_ARCHITECTURES, ToyConfig, build_toy_model
from .vocabulary import build_task_tokenizer, label_token_ids

logger = logging.getLogger(__name__)

METADATA_FILE = "toy_training.json"


@dataclass
class ToyResult:
    """A trained toy model with its training record.

    ``history`` has one row per evaluation: ``step`` (optimizer steps so far), ``loss``
    (mean training loss since the previous row) and ``heldout_accuracy``.
    ``accuracy_by_step`` maps each task step ``t`` to the final held-out accuracy of the
    readouts at that step. ``path`` is the saved checkpoint, or ``None``.
    """

    loaded: LoadedModel
    arch: str
    history: pd.DataFrame
    accuracy_by_step: dict[int, float]
    label_tokens: list[int]
    n_parameters: int
    path: Path | None = None

    @property
    def heldout_accuracy(self) -> float:
        """Held-out accuracy over all readouts after the last step."""
        return float(self.history["heldout_accuracy"].iloc[-1])


@dataclass
class _Batchable:
    ids: list[list[int]]
    positions: list[list[int]]
    labels: list[list[int]]
    steps: list[list[int]]

    @classmethod
    def from_examples(cls, examples: Sequence[Example]) -> "_Batchable":
        return cls([e.input_ids for e in examples],
                   [[r.position for r in e.readouts] for e in examples],
                   [[r.label for r in e.readouts] for e in examples],
                   [[r.step for r in e.readouts] for e in examples])

    def __len__(self) -> int:
        return len(self.ids)


def _split(examples: list[Example], fraction: float, seed: int):
    groups = sorted({e.group for e in examples}, key=repr)
    random.Random(seed).shuffle(groups)
    n_eval = max(1, round(len(groups) * fraction))
    if n_eval >= len(groups):
        raise ValueError(
            f"The task gave {len(groups)} groups, too few to hold out {fraction:.0%} of them "
            f"and train on the rest; raise n_stories."
        )
    held_out = set(groups[:n_eval])
    train = [e for e in examples if e.group not in held_out]
    evaluation = [e for e in examples if e.group in held_out]
    return _Batchable.from_examples(train), _Batchable.from_examples(evaluation)


def _readout_logits(model, data: _Batchable, indices: Sequence[int], pad_id: int):
    """Run texts ``indices`` and return the logits at their readouts, with labels and steps."""
    ids, mask, _, _ = pad_batch([data.ids[i] for i in indices], pad_id, "right")
    device = next(model.parameters()).device
    logits = model(input_ids=ids.to(device), attention_mask=mask.to(device),
                   use_cache=False).logits  # (batch, pos, vocab)
    rows = [row for row, i in enumerate(indices) for _ in data.positions[i]]
    cols = [p for i in indices for p in data.positions[i]]
    labels = [label for i in indices for label in data.labels[i]]
    steps = [step for i in indices for step in data.steps[i]]
    picked = logits[torch.tensor(rows, device=device), torch.tensor(cols, device=device)]
    return picked, torch.tensor(labels, device=device), steps  # (readouts, vocab)


@torch.no_grad()
def _evaluate(model, data: _Batchable, label_tokens: Tensor, pad_id: int,
              batch_size: int = 64) -> tuple[float, dict[int, float]]:
    was_training = model.training
    model.eval()
    correct, by_step = [], {}
    for start in range(0, len(data), batch_size):
        indices = range(start, min(start + batch_size, len(data)))
        logits, labels, steps = _readout_logits(model, data, indices, pad_id)
        hits = (logits[:, label_tokens].argmax(-1) == labels).tolist()
        correct.extend(hits)
        for step, hit in zip(steps, hits):
            by_step.setdefault(step, []).append(hit)
    model.train(was_training)
    accuracy = {step: sum(hits) / len(hits) for step, hits in sorted(by_step.items())}
    return sum(correct) / len(correct), accuracy


def _learning_rate(step: int, settings: ToyConfig) -> float:
    if step < settings.warmup_steps:
        return settings.learning_rate * (step + 1) / settings.warmup_steps
    progress = (step - settings.warmup_steps) / max(1, settings.steps - settings.warmup_steps)
    return settings.learning_rate * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _check_output(output_dir: Path | None, overwrite: bool) -> None:
    if output_dir is None or not output_dir.exists():
        return
    if not output_dir.is_dir():
        raise ValueError(f"The output path {output_dir} is a file; give a folder path.")
    if any(output_dir.iterdir()) and not overwrite:
        raise ValueError(
            f"The output folder {output_dir} is not empty; pass overwrite=True to replace "
            f"it, or choose another folder."
        )


def _prepare_task(task: Task, settings: ToyConfig) -> Task:
    if not isinstance(task, Task):
        raise TypeError(f"task must be a depthprobe Task, got {type(task).__name__}; build "
                        f"one with depthprobe.tasks.make_task(name, **options).")
    names = {f.name for f in dataclasses.fields(task)} if dataclasses.is_dataclass(task) else set()
    if settings.n_stories is not None and "n_stories" in names:
        task = dataclasses.replace(task, n_stories=settings.n_stories)
    task.check()
    return task


def train_toy(arch: str = "transformer", task: Task | None = None,
              settings: ToyConfig | None = None, output_dir: str | Path | None = None,
              overwrite: bool = False, progress: bool = True, **overrides) -> ToyResult:
    """Train a small random-weight model of kind ``arch`` to name ``task``'s state.

    ``arch`` is one of :data:`TOY_ARCHITECTURES`; ``settings`` (or keyword ``overrides``
    of its fields) sizes the model and the run. The task's texts are split by group into
    a training and a held-out part; every ``eval_every`` steps the held-out accuracy is
    logged and recorded. With ``output_dir`` the checkpoint is written there (into a
    temporary folder first, renamed when complete). Every setting is checked before
    training starts.

    Texts the toy trained on are not held out from a later ``run`` on the same task
    settings, so analyse it with another task ``seed``.
    """
    known = [f.name for f in dataclasses.fields(ToyConfig)]
    unknown = sorted(set(overrides) - set(known))
    if unknown:
        raise TypeError(f"Unknown toy settings {', '.join(unknown)}; valid settings are "
                        f"{', '.join(known)}.")
    settings = dataclasses.replace(settings or ToyConfig(), **overrides)
    settings.check(arch)
    if task is None:
        raise ValueError("train_toy needs a task; build one with make_task('shell-game').")
    task = _prepare_task(task, settings)
    output = Path(output_dir).expanduser() if output_dir is not None else None
    _check_output(output, overwrite)

    text_examples = task.text_examples()
    tokenizer = build_task_tokenizer(task, text_examples)
    examples = align_examples(text_examples, tokenizer)
    tokens = label_token_ids(task, text_examples, tokenizer)
    longest = max(len(e.input_ids) for e in examples)
    max_length = 2 ** math.ceil(math.log2(max(256, 2 * longest)))
    train, held_out = _split(examples, settings.eval_fraction, settings.seed)

    threads = torch.get_num_threads()
    if settings.threads is not None:
        torch.set_num_threads(settings.threads)
    try:
        model, history, by_step = _train(arch, settings, tokenizer, max_length, train,
                                         held_out, tokens, progress)
    finally:
        torch.set_num_threads(threads)

    if arch == "looped":
        model = unrolled_copy(model)
    model.eval()
    n_parameters = sum(p.numel() for p in model.parameters())
    result = ToyResult(
        loaded=LoadedModel(model, tokenizer, layout_for(model), name=f"toy-{arch}"),
        arch=arch, history=history, accuracy_by_step=by_step, label_tokens=tokens,
        n_parameters=n_parameters)
    if output is not None:
        result.path = _save(result, task, settings, output)
    return result


def _train(arch, settings, tokenizer, max_length, train, held_out, tokens, progress):
    model = build_toy_model(arch, settings, tokenizer, max_length)
    model.train()
    parameters = list(model.parameters())  # shared weights of a looped model appear once
    optimizer = torch.optim.AdamW(parameters, lr=settings.learning_rate,
                                  weight_decay=settings.weight_decay)
    label_tokens = torch.tensor(tokens)
    pad_id = tokenizer.pad_token_id
    order_rng = random.Random(settings.seed)
    order: list[int] = []
    rows, losses = [], []
    logger.info("Training a %s toy (%d parameters) for %d steps on %d texts, %d held out.",
                arch, sum(p.numel() for p in parameters), settings.steps, len(train),
                len(held_out))

    bar = tqdm(range(settings.steps), desc=f"train {arch}", unit="step", disable=not progress)
    for step in bar:
        if len(order) < settings.batch_size:
            refill = list(range(len(train)))
            order_rng.shuffle(refill)
            order.extend(refill)
        batch, order = order[:settings.batch_size], order[settings.batch_size:]

        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(step, settings)
        logits, labels, _ = _readout_logits(model, train, batch, pad_id)
        loss = F.cross_entropy(logits.float(), label_tokens[labels])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        losses.append(loss.item())

        if (step + 1) % settings.eval_every == 0 or step + 1 == settings.steps:
            accuracy, by_step = _evaluate(model, held_out, label_tokens, pad_id)
            mean_loss = sum(losses) / len(losses)
            rows.append({"step": step + 1, "loss": mean_loss, "heldout_accuracy": accuracy})
            logger.info("%s toy, step %d: loss %.4f, held-out accuracy %.3f", arch, step + 1,
                        mean_loss, accuracy)
            bar.set_postfix(loss=f"{mean_loss:.3f}", acc=f"{accuracy:.3f}")
            losses = []
    return model, pd.DataFrame(rows), by_step


def _save(result: ToyResult, task: Task, settings: ToyConfig, output: Path) -> Path:
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}-", dir=output.parent))
    try:
        result.loaded.model.save_pretrained(staging)
        result.loaded.tokenizer.save_pretrained(staging)
        record = {
            "arch": result.arch,
            "settings": dataclasses.asdict(settings),
            "task": task.settings(),
            "label_tokens": result.loaded.tokenizer.convert_ids_to_tokens(result.label_tokens),
            "n_parameters": result.n_parameters,
            "heldout_accuracy": result.heldout_accuracy,
            "accuracy_by_step": {str(k): v for k, v in result.accuracy_by_step.items()},
            "history": result.history.to_dict(orient="records"),
        }
        (staging / METADATA_FILE).write_text(json.dumps(record, indent=2, default=str))
        if output.exists():
            shutil.rmtree(output)
        staging.replace(output)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    logger.info("Saved the %s toy to %s.", result.arch, output)
    return output


__all__ = ["METADATA_FILE", "TOY_ARCHITECTURES", "ToyConfig", "ToyResult", "train_toy"]
