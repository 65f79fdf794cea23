"""Small randomly initialised causal LMs of each kind, built from transformers configs."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..models.looped import loop_model

TOY_ARCHITECTURES = ("transformer", "mamba", "mamba2", "looped")


@dataclass
class ToyConfig:
    """Size and training settings of a toy model; each field's help is its CLI help."""

    n_layers: int = field(default=4, metadata={
        "help": "blocks run per token (for looped: unrolled blocks, n_layers / loop_times "
                "distinct ones)"})
    d_model: int = field(default=64, metadata={"help": "residual stream width"})
    n_heads: int = field(default=4, metadata={"help": "attention heads (transformer, looped)"})
    d_state: int = field(default=16, metadata={"help": "state size per channel (mamba, mamba2)"})
    loop_times: int = field(default=2, metadata={
        "help": "passes through the distinct blocks (looped)"})
    steps: int = field(default=800, metadata={"help": "optimizer steps"})
    batch_size: int = field(default=32, metadata={"help": "texts per optimizer step"})
    learning_rate: float = field(default=3e-3, metadata={"help": "peak AdamW learning rate"})
    warmup_steps: int = field(default=50, metadata={
        "help": "steps of linear warm-up before the cosine decay"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay"})
    n_stories: int | None = field(default=3000, metadata={
        "help": "texts generated for training and evaluation; replaces the task's n_stories "
                "option (None keeps the task's own)"})
    eval_fraction: float = field(default=0.1, metadata={
        "help": "share of the texts (whole groups) held out to measure accuracy"})
    eval_every: int = field(default=50, metadata={
        "help": "steps between held-out evaluations"})
    seed: int = field(default=0, metadata={"help": "seed of the weights, split and batches"})
    # One thread by default: a toy's small matrices gain little from more, and on a
    # 2-core machine busy with other processes, two threads slowed a training step of the
    # default transformer from about 0.2 s to between 1.5 and 9 s.
    threads: int | None = field(default=1, metadata={
        "help": "torch CPU threads while training (None keeps torch's setting)"})

    def check(self, arch: str) -> None:
        """Raise ``ValueError`` naming the first invalid setting for ``arch``."""
        if arch not in TOY_ARCHITECTURES:
            raise ValueError(
                f"Unknown toy architecture {arch!r}; choose one of {', '.join(TOY_ARCHITECTURES)}."
            )
        positive = ("n_layers", "d_model", "n_heads", "d_state", "loop_times", "steps",
                    "batch_size", "eval_every")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be 1 or more, got {getattr(self, name)}.")
        if self.d_model % self.n_heads:
            raise ValueError(
                f"d_model ({self.d_model}) must be a multiple of n_heads ({self.n_heads}).")
        if arch == "mamba2" and self.d_model * 2 % 16:
            raise ValueError(
                f"mamba2 splits 2 * d_model into heads of 16 channels; d_model={self.d_model} "
                f"must be a multiple of 8.")
        if arch == "looped" and (self.n_layers % self.loop_times or self.n_layers < 2):
            raise ValueError(
                f"A looped toy runs n_layers / loop_times distinct blocks loop_times times; "
                f"n_layers={self.n_layers} is not a multiple of loop_times={self.loop_times}."
            )
        if not 0 < self.eval_fraction < 1:
            raise ValueError(f"eval_fraction must lie strictly between 0 and 1, got "
                             f"{self.eval_fraction}.")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate}.")
        if self.n_stories is not None and self.n_stories < 10:
            raise ValueError(f"n_stories must be 10 or more, got {self.n_stories}.")


def _config(arch: str, settings: ToyConfig, vocab_size: int, max_length: int, tokenizer):
    from transformers import AutoConfig

    special = dict(vocab_size=vocab_size, pad_token_id=tokenizer.pad_token_id,
                   bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    if arch in ("transformer", "looped"):
        n_blocks = settings.n_layers // settings.loop_times if arch == "looped" else settings.n_layers
        return AutoConfig.for_model(
            "llama", hidden_size=settings.d_model, num_hidden_layers=n_blocks,
            num_attention_heads=settings.n_heads, num_key_value_heads=settings.n_heads,
            intermediate_size=4 * settings.d_model, max_position_embeddings=max_length,
            tie_word_embeddings=False, **special)
    if arch == "mamba":
        return AutoConfig.for_model(
            "mamba", hidden_size=settings.d_model, num_hidden_layers=settings.n_layers,
            state_size=settings.d_state, expand=2, conv_kernel=4, **special)
    # Mamba 2 with heads of 16 channels, scanning in chunks of 64 tokens: the PyTorch
    # fallback pads each sequence to whole chunks, so short chunks suit short texts.
    return AutoConfig.for_model(
        "mamba2", hidden_size=settings.d_model, num_hidden_layers=settings.n_layers,
        state_size=settings.d_state, expand=2, n_groups=1, num_heads=2 * settings.d_model // 16,
        head_dim=16, conv_kernel=4, chunk_size=64, **special)


def build_toy_model(arch: str, settings: ToyConfig, tokenizer, max_length: int) -> nn.Module:
    """Build a randomly initialised causal LM of kind ``arch`` sized by ``settings``.

    ``transformer`` is a Llama, ``mamba`` a Mamba and ``mamba2`` a Mamba 2 model. ``looped``
    is a Llama with ``n_layers / loop_times`` distinct blocks, wrapped by
    :func:`~depthprobe.models.looped.loop_model` so that the stack runs ``loop_times``
    times over shared weights. The weights come from ``settings.seed``.
    """
    from transformers import AutoModelForCausalLM

    settings.check(arch)
    config = _config(arch, settings, len(tokenizer), max_length, tokenizer)
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(settings.seed)
    try:
        model = AutoModelForCausalLM.from_config(config)
    finally:
        torch.random.set_rng_state(generator_state)
    if arch == "looped":
        n_blocks = config.num_hidden_layers
        model = loop_model(model, 0, n_blocks, settings.loop_times).model
    return model
