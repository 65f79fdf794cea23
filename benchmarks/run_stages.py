"""The default ``depthprobe run``, end to end, broken down by stage.

Runs :func:`depthprobe.run.run` with the default settings (or smaller sizes given on the
command line) into a temporary folder and prints the manifest's ``timings_s`` per stage
with its share of the total, then the run's summary.

    OMP_NUM_THREADS=1 python benchmarks/run_stages.py --stories 60
"""

from __future__ import annotations

import argparse
import tempfile

from _common import machine
from depthprobe.run import RunConfig, run


def main() -> None:
    defaults = RunConfig()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stories", type=int, default=defaults.n_stories)
    parser.add_argument("--steps", type=int, default=defaults.n_steps)
    parser.add_argument("--behaviour-stories", type=int, default=defaults.behaviour_stories)
    parser.add_argument("--probe-backend", default=defaults.probe_backend)
    parser.add_argument("--device", default=None)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        result = run(RunConfig(n_stories=args.stories, n_steps=args.steps,
                               behaviour_stories=args.behaviour_stories,
                               probe_backend=args.probe_backend, device=args.device,
                               output_dir=folder, progress=False))
    timings = result.manifest["timings_s"]
    print(f"machine: {machine()}")
    print(f"depthprobe run: {result.config.model}, {args.stories} stories x {args.steps} "
          f"steps, behaviour on {args.behaviour_stories} stories, probe backend "
          f"{args.probe_backend}")
    for stage, seconds in timings.items():
        if stage != "total":
            print(f"  {stage:<12} {seconds:8.2f} s  {100 * seconds / timings['total']:5.1f} %")
    print(f"  {'total':<12} {timings['total']:8.2f} s")
    print(result.summary())


if __name__ == "__main__":
    main()
