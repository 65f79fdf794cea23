"""Peak resident memory of a capture of 10x more examples against 1x.

Each size runs in a fresh subprocess (so one run's allocations cannot hide in the
other's peak): it loads the bundled model, builds shell-game stories, captures every
layer at every readout and reports its peak resident set size (``ru_maxrss``). The
``store`` mode streams into an activation store, as ``depthprobe run`` does; the
``memory`` mode keeps the whole (readouts, layers, d_model) tensor in memory, for
contrast. Prints the peak of each size and the ratio 10x / 1x (goal for the store: at
most 1.2).

    OMP_NUM_THREADS=1 python benchmarks/capture_memory.py --stories 20
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import machine


def _child(args) -> None:
    import torch

    from _common import shell_game_inputs
    from depthprobe.capture import capture_residuals
    from depthprobe.capture.store import ActivationStore, capture_to_store
    from depthprobe.models import load_model

    torch.set_grad_enabled(False)
    model, tokenizer, layout = load_model(args.model)
    _, _, sequences, positions = shell_game_inputs(tokenizer, args.child, args.steps)
    after_load = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    pad = tokenizer.pad_token_id or 0
    if args.mode == "store":
        with tempfile.TemporaryDirectory() as folder:
            store = ActivationStore.create(folder, {"benchmark": True},
                                           list(range(layout.n_layers + 1)), layout.d_model,
                                           [len(p) for p in positions], shard_mb=args.shard_mb)
            capture_to_store(model, layout, sequences, positions, store, pad_token_id=pad,
                             progress=False)
            stored = sum(f.stat().st_size for f in Path(folder).glob("*.safetensors"))
    else:
        features = capture_residuals(model, layout, sequences, positions, pad_token_id=pad,
                                     progress=False)
        stored = features.numel() * features.element_size()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"after_load_mb": after_load / 1024, "peak_mb": peak / 1024,
                      "residuals_mb": stored / 2**20, "readouts": sum(map(len, positions))}))


def _measure(args, n_stories: int, mode: str) -> dict:
    command = [sys.executable, __file__, "--child", str(n_stories), "--mode", mode,
               "--model", args.model, "--steps", str(args.steps),
               "--shard-mb", str(args.shard_mb)]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--stories", type=int, default=20, help="the 1x size")
    parser.add_argument("--steps", type=int, default=8, help="swaps per story")
    parser.add_argument("--shard-mb", type=float, default=32.0)
    parser.add_argument("--modes", default="store,memory")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="store", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        _child(args)
        return

    print(f"machine: {machine()}")
    print(f"model {args.model}, shell game with {args.steps} swaps, shards of "
          f"{args.shard_mb:g} MB; each size in a fresh process")
    for mode in args.modes.split(","):
        small = _measure(args, args.stories, mode)
        large = _measure(args, 10 * args.stories, mode)
        for size, result in ((args.stories, small), (10 * args.stories, large)):
            print(f"  {mode:<6} {size:>5} stories ({result['readouts']:>5} readouts, "
                  f"{result['residuals_mb']:7.1f} MB of residuals): peak RSS "
                  f"{result['peak_mb']:7.0f} MB (after loading the model "
                  f"{result['after_load_mb']:.0f} MB)")
        goal = " (goal <= 1.2)" if mode == "store" else ""
        growth = ((large["peak_mb"] - large["after_load_mb"])
                  / (small["peak_mb"] - small["after_load_mb"]))
        print(f"  {mode}: peak RSS 10x / 1x = {large['peak_mb'] / small['peak_mb']:.3f}{goal}; "
              f"peak above the loaded model 10x / 1x = {growth:.2f}")


if __name__ == "__main__":
    main()
