"""Capture throughput against a bare forward pass and TransformerLens, in one process.

Runs the same length-sorted, right-padded batches of shell-game stories through

- ``bare``: the model's forward pass with no hooks (last-position logits only, as capture
  runs it),
- ``capture``: :func:`depthprobe.capture.capture_residuals` at every layer 0..L,
- ``store``: :func:`depthprobe.capture.store.capture_to_store` into a temporary folder,
- ``transformer-lens``: ``TransformerBridge.run_with_cache`` with ``names_filter`` set to
  the residual hooks (``blocks.0.hook_resid_pre`` and every ``hook_resid_post``), keeping
  the readout positions of the cache, on a second copy of the model,

interleaved ``--repeats`` times, and prints tokens per second (median) and the ratios.
Goals: capture at least 0.95 of the bare pass, and at least 1.5 times TransformerLens.

    OMP_NUM_THREADS=1 python benchmarks/capture_throughput.py --stories 40
"""

from __future__ import annotations

import argparse
import tempfile

import torch

from _common import machine, median_times, shell_game_inputs
from depthprobe.capture import capture_residuals, forward_for_capture, pad_batch
from depthprobe.capture.store import ActivationStore, capture_to_store
from depthprobe.models import load_model


def _batches(sequences, batch_size):
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--stories", type=int, default=40)
    parser.add_argument("--steps", type=int, default=8, help="swaps per story")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--device", default=None)
    parser.add_argument("--no-transformer-lens", action="store_true")
    args = parser.parse_args()

    torch.set_grad_enabled(False)
    loaded = load_model(args.model, dtype=args.dtype, device=args.device,
                        attn_implementation="eager")
    model, tokenizer, layout = loaded
    _, _, sequences, positions = shell_game_inputs(tokenizer, args.stories, args.steps)
    pad = tokenizer.pad_token_id or 0
    batches = _batches(sequences, args.batch_size)
    padded = [pad_batch([sequences[i] for i in batch], pad, "right") for batch in batches]
    n_tokens = sum(len(s) for s in sequences)
    n_readouts = sum(len(p) for p in positions)

    def bare():
        for ids, mask, position_ids, _ in padded:
            forward_for_capture(model, ids, mask, position_ids)

    def capture():
        return capture_residuals(model, layout, sequences, positions,
                                 batch_size=args.batch_size, pad_token_id=pad, progress=False)

    def store():
        with tempfile.TemporaryDirectory() as folder:
            created = ActivationStore.create(
                folder, {"benchmark": True}, list(range(layout.n_layers + 1)),
                layout.d_model, [len(p) for p in positions])
            capture_to_store(model, layout, sequences, positions, created,
                             batch_size=args.batch_size, pad_token_id=pad, progress=False)

    functions = {"bare": bare, "capture": capture, "store": store}
    if not args.no_transformer_lens:
        functions["transformer-lens"] = _transformer_lens_capture(args, batches, padded,
                                                                  positions)

    print(f"machine: {machine()}")
    print(f"model {args.model} ({args.dtype}), {args.stories} stories x {args.steps} steps: "
          f"{len(sequences)} texts, {n_tokens} tokens, {n_readouts} readouts, "
          f"{layout.n_layers + 1} layers, batch {args.batch_size}, median of {args.repeats}")
    times = median_times(functions, args.repeats)
    for name, seconds in times.items():
        print(f"  {name:<17} {seconds:7.2f} s  {n_tokens / seconds:8.0f} tokens/s")
    print(f"capture / bare throughput: {times['bare'] / times['capture']:.3f} (goal >= 0.95)")
    print(f"store / bare throughput:   {times['bare'] / times['store']:.3f}")
    if "transformer-lens" in times:
        print(f"capture vs transformer-lens: {times['transformer-lens'] / times['capture']:.2f}x"
              f" (goal >= 1.5x)")
        check = functions["transformer-lens"]()
        ours = capture()
        print(f"max |transformer-lens - capture| over the readouts: "
              f"{(check - ours).abs().max().item():.2e}")


def _transformer_lens_capture(args, batches, padded, positions):
    """Return a function that captures the same readouts with ``run_with_cache``."""
    from transformer_lens.model_bridge import TransformerBridge

    # Booting a bridge replaces the model's modules in place, so it gets its own copy.
    model, tokenizer, layout = load_model(args.model, dtype=args.dtype, device=args.device,
                                          attn_implementation="eager")
    bridge = TransformerBridge.boot_transformers(args.model, hf_model=model,
                                                 tokenizer=tokenizer)
    names = ["blocks.0.hook_resid_pre"] + [f"blocks.{block}.hook_resid_post"
                                           for block in range(layout.n_layers)]
    starts = [0]
    for pos in positions:
        starts.append(starts[-1] + len(pos))

    def run():
        out = torch.empty((starts[-1], len(names), layout.d_model))
        for batch, (ids, mask, _, _) in zip(batches, padded):
            _, cache = bridge.run_with_cache(ids.to(layout.embed.weight.device),
                                             attention_mask=mask.to(layout.embed.weight.device),
                                             names_filter=names)
            stacked = torch.stack([cache[name] for name in names], dim=2)  # (b, pos, L, d)
            for row, index in enumerate(batch):
                rows = torch.arange(starts[index], starts[index + 1])
                out[rows] = stacked[row, positions[index]].float().cpu()
        return out

    return run


if __name__ == "__main__":
    main()
