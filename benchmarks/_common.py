"""Shared pieces of the benchmark scripts: the machine line, timing, shell-game inputs."""

from __future__ import annotations

import os
import platform
import statistics
import time
from typing import Callable

import torch


def machine() -> str:
    """Return one line naming the CPU, core count, memory, GPU and thread settings."""
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
        with open("/proc/meminfo") as handle:
            memory = int(handle.readline().split()[1]) / 2**20
    except OSError:
        memory = float("nan")
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{cpu}, {os.cpu_count()} cores, {memory:.0f} GiB RAM, {gpu}; torch "
            f"{torch.__version__} with {torch.get_num_threads()} threads "
            f"(OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')})")


def timed(function: Callable[[], object]) -> float:
    """Return the wall-clock seconds one call of ``function`` takes."""
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def median_times(functions: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Time each function ``repeats`` times, interleaved so that load changes hit all
    alike, and return the median seconds of each."""
    times = {name: [] for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            times[name].append(timed(function))
    return {name: statistics.median(values) for name, values in times.items()}


def shell_game_inputs(tokenizer, n_stories: int, n_steps: int, seed: int = 0):
    """Return token id lists and readout positions of shell-game stories."""
    from depthprobe.tasks import align_examples, make_task

    task = make_task("shell-game", n_stories=n_stories, n_swaps=n_steps, seed=seed)
    examples = align_examples(task.text_examples(), tokenizer)
    sequences = [example.input_ids for example in examples]
    positions = [[readout.position for readout in example.readouts] for example in examples]
    return task, examples, sequences, positions
