"""The tuned lens: one affine translator per layer before the model's final norm and unembedding.

Translator ``l`` maps a residual ``h`` at layer ``l < L`` to ``h + A_l h + b_l``; ``A_l`` and
``b_l`` start at zero, so an untrained tuned lens is exactly the logit lens. Training fits
every translator so that the translated layer's next-token distribution matches the
model's final one, by minimising the KL divergence ``KL(final || translated)`` averaged
over token positions of a plain-text corpus. Layer ``L`` has no translator: it is the
model's output.

A trained lens is saved as safetensors (the translators) beside a JSON config that
records the model it was trained for; loading it onto another model raises
``ValueError``.

The ``tuned-lens`` method scores readouts as the ``lens`` method does (the answer token
top-1 among the class answer tokens, with the same depth rule), after training on the
run's own texts or loading a saved lens (run option ``tuned_lens_path``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from pathlib import Path
from typing import Sequence

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from ..capture import ResidualRecorder, forward_for_capture, pad_batch
from .base import MethodSpec, register_method
from .lens import LENS_DEPTH_RULE, Lens, score_with_lens

logger = logging.getLogger(__name__)

METHOD = "tuned-lens"
WEIGHTS_FILE = "tuned_lens.safetensors"
CONFIG_FILE = "tuned_lens.json"
FORMAT_VERSION = 1


def parameter_fingerprint(loaded) -> str:
    """Return a sha256 over the embedding, final norm and last block's parameters.

    It tells models apart when no checkpoint hash is known (models built in memory). The
    parameters are hashed as float32, so the same weights in another dtype that rounds
    them (bfloat16) give another fingerprint.
    """
    layout = loaded.layout
    digest = hashlib.sha256(f"{layout.architecture}/{layout.n_layers}/{layout.d_model}".encode())
    for module in (layout.embed, layout.final_norm, layout.blocks[-1]):
        for name, parameter in sorted(module.named_parameters()):
            digest.update(name.encode())
            digest.update(parameter.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def model_identity(loaded) -> dict:
    """Return what a saved lens records about the model it was trained for."""
    layout = loaded.layout
    return {"name": loaded.name, "architecture": layout.architecture,
            "n_layers": layout.n_layers, "d_model": layout.d_model,
            "weights_sha256": loaded.weights_hash, "fingerprint": parameter_fingerprint(loaded)}


def _mismatch(saved: dict, current: dict) -> str | None:
    for key in ("architecture", "n_layers", "d_model"):
        if saved[key] != current[key]:
            return f"{key} {saved[key]!r} (this model has {current[key]!r})"
    if saved.get("weights_sha256") and current.get("weights_sha256"):
        if saved["weights_sha256"] != current["weights_sha256"]:
            return (f"weights sha256 {saved['weights_sha256'][:12]}… (this model has "
                    f"{current['weights_sha256'][:12]}…)")
        return None
    if saved["fingerprint"] != current["fingerprint"]:
        return (f"parameter fingerprint {saved['fingerprint'][:12]}… (this model has "
                f"{current['fingerprint'][:12]}…)")
    return None


class _Frozen:
    """Context manager that turns off gradients of some parameters and restores them."""

    def __init__(self, modules: Sequence[nn.Module]):
        self.parameters = [p for module in modules for p in module.parameters()]
        self.saved: list[bool] = []

    def __enter__(self):
        self.saved = [p.requires_grad for p in self.parameters]
        for parameter in self.parameters:
            parameter.requires_grad_(False)
        return self

    def __exit__(self, *exc):
        for parameter, flag in zip(self.parameters, self.saved):
            parameter.requires_grad_(flag)


class TunedLens(Lens):
    """A tuned lens for one model; untrained (equal to the logit lens) until :meth:`fit`.

    After fitting, ``loss_log_`` holds the mean KL divergence over layers per step.
    """

    method_name = "tuned lens"

    def __init__(self, loaded):
        super().__init__(loaded)
        d_model = self.loaded.layout.d_model
        self.translators = nn.ModuleList(nn.Linear(d_model, d_model)
                                         for _ in range(self.n_layers)).to(self.device)
        for translator in self.translators:
            nn.init.zeros_(translator.weight)
            nn.init.zeros_(translator.bias)
        self.training_info: dict = {}
        self.loss_log_: list[float] = []

    def transform(self, residual, layer):
        self.check_layer(layer)
        if layer == self.n_layers:
            return residual
        hidden = residual.float()
        return hidden + self.translators[layer](hidden)

    def fit(self, texts: Sequence[str], n_steps: int = 100, lr: float = 1e-3,
            batch_size: int = 8, max_length: int = 128, max_positions: int = 128,
            seed: int = 0, progress: bool = True) -> "TunedLens":
        """Train the translators on ``texts`` for ``n_steps`` Adam steps; return ``self``.

        Each step runs one batch of texts (cycled in a shuffled order), keeps at most
        ``max_positions`` random token positions, and minimises the KL divergence from the
        model's final distribution, summed over layers. Texts are truncated to
        ``max_length`` tokens.
        """
        for name, value in (("n_steps", n_steps), ("batch_size", batch_size),
                            ("max_length", max_length), ("max_positions", max_positions)):
            if value < 1:
                raise ValueError(f"{name} must be 1 or more, got {value}.")
        if lr <= 0:
            raise ValueError(f"lr must be positive, got {lr}.")
        tokenizer = self.loaded.tokenizer
        encoded = [ids for ids in (tokenizer(text)["input_ids"][:max_length] for text in texts)
                   if len(ids) > 1]
        if not encoded:
            raise ValueError("The tuned lens needs training texts of at least 2 tokens; got "
                             f"{len(texts)} texts and none that long.")

        rng = random.Random(seed)
        generator = torch.Generator().manual_seed(seed)
        order: list[int] = []
        optimizer = torch.optim.Adam(self.translators.parameters(), lr=lr)
        layout = self.loaded.layout
        bar = tqdm(range(n_steps), desc="tuned lens", unit="step", disable=not progress)
        with _Frozen([layout.final_norm, layout.unembed]):
            for step in bar:
                if len(order) < batch_size:
                    shuffled = list(range(len(encoded)))
                    rng.shuffle(shuffled)
                    order.extend(shuffled)
                batch = [encoded[order.pop(0)] for _ in range(min(batch_size, len(encoded)))]
                loss = self._train_step(batch, optimizer, max_positions, generator)
                self.loss_log_.append(loss)
                bar.set_postfix(kl=f"{loss:.3f}")
                if step % 10 == 0 or step == n_steps - 1:
                    logger.info("tuned lens step %d/%d: mean KL %.4f", step + 1, n_steps, loss)
        self.training_info = {"n_steps": n_steps, "lr": lr, "batch_size": batch_size,
                              "max_length": max_length, "max_positions": max_positions,
                              "seed": seed, "n_texts": len(encoded),
                              "final_kl": self.loss_log_[-1]}
        return self

    def _train_step(self, batch, optimizer, max_positions: int, generator) -> float:
        model, tokenizer, layout = self.loaded
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        ids, mask, positions, _ = pad_batch(batch, pad_id, side="right")
        rows, cols = torch.nonzero(mask, as_tuple=True)
        if len(rows) > max_positions:
            keep = torch.randperm(len(rows), generator=generator)[:max_positions]
            rows, cols = rows[keep], cols[keep]
        with torch.no_grad(), ResidualRecorder(layout, out_dtype=self.dtype,
                                               out_device=self.device) as recorder:
            recorder.select(rows, cols)
            forward_for_capture(model, ids, mask, positions)
            hidden = recorder.stacked()  # (positions, layers, d_model)
            target = torch.log_softmax(self._unembed(hidden[:, -1]).float(), dim=-1)
            target_probs = target.exp()

        total = 0.0
        for layer in range(self.n_layers):
            predicted = torch.log_softmax(self.logits(hidden[:, layer], layer).float(), dim=-1)
            kl = (target_probs * (target - predicted)).sum(-1).mean()
            kl.backward()
            total += kl.item()
        optimizer.step()
        optimizer.zero_grad()
        return total / self.n_layers

    def save(self, folder: str | Path) -> Path:
        """Write the translators and a config naming the model to ``folder``; return it."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {name: tensor.detach().cpu().contiguous()
                   for name, tensor in self.translators.state_dict().items()}
        save_file(tensors, folder / WEIGHTS_FILE)
        config = {"format_version": FORMAT_VERSION, "model": model_identity(self.loaded),
                  "training": self.training_info, "loss_log": self.loss_log_}
        (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2))
        return folder

    @classmethod
    def load(cls, folder: str | Path, loaded) -> "TunedLens":
        """Load a saved tuned lens onto ``loaded``, the model it was trained for.

        Raises ``FileNotFoundError`` when a file is missing and ``ValueError`` when the
        lens was trained for another model.
        """
        folder = Path(folder)
        for name in (WEIGHTS_FILE, CONFIG_FILE):
            if not (folder / name).is_file():
                raise FileNotFoundError(
                    f"{folder / name} not found; a saved tuned lens is a folder holding "
                    f"{WEIGHTS_FILE} and {CONFIG_FILE}, as TunedLens.save writes it.")
        config = json.loads((folder / CONFIG_FILE).read_text())
        lens = cls(loaded)
        saved, current = config["model"], model_identity(lens.loaded)
        problem = _mismatch(saved, current)
        if problem is not None:
            raise ValueError(
                f"The tuned lens in {folder} was trained for the model {saved['name']!r} with "
                f"{problem}, so it does not fit the model {current['name']!r}. Load it onto "
                f"the model it was trained for, or train one for this model with "
                f"TunedLens(model).fit(texts).")
        lens.translators.load_state_dict(load_file(folder / WEIGHTS_FILE))
        lens.translators.to(lens.device)
        lens.training_info = config.get("training", {})
        lens.loss_log_ = list(config.get("loss_log", []))
        return lens


def _score_with_tuned_lens(context):
    path = context.options.get("tuned_lens_path")
    if path:
        lens = TunedLens.load(path, context.loaded)
    else:
        texts = [example.text for example in context.text_examples]
        lens = TunedLens(context.loaded).fit(
            texts, n_steps=int(context.options.get("tuned_lens_steps", 30)),
            batch_size=context.batch_size, seed=context.seed, progress=context.progress)
    return score_with_lens(context, lens, METHOD)


register_method(MethodSpec(
    name=METHOD, score=_score_with_tuned_lens,
    summary="tuned lens (trained on the run's texts): is the answer the top class token",
    depth_rule=LENS_DEPTH_RULE, needs_unembed=True,
    cost="training: per step one forward pass and one unembedding per layer and position"))
