"""Bring your own task: labelled texts in a JSONL file, run like any built-in task.

Each line of the file is one text with its readouts: character spans, the state's value
there, and its step. This script writes a small light-switch task and runs the probe on
it with the bundled SmolLM2-135M. The state is whether the light is on: each "Flip the
switch." toggles it, and each "Wait." keeps it.

    python examples/custom_jsonl_task.py [OUTPUT_DIR]
"""

import json
import random
import sys
from pathlib import Path

from depthprobe import RunConfig, run

output = Path(sys.argv[1] if len(sys.argv) > 1 else "depthprobe-runs/jsonl-example")
output.mkdir(parents=True, exist_ok=True)
rng = random.Random(0)

lines = []
for story in range(48):
    on = rng.random() < 0.5
    text = f"The light is {'on' if on else 'off'}."
    readouts = [{"start": len(text) - 1, "end": len(text), "label": "on" if on else "off",
                 "step": 0}]
    for step in range(1, 4):
        if rng.random() < 0.5:
            text += " Flip the switch."
            on = not on
        else:
            text += " Wait."
        # The readout is the sentence's final period, labelled with the light after it.
        readouts.append({"start": len(text) - 1, "end": len(text),
                         "label": "on" if on else "off", "step": step})
    lines.append(json.dumps({"text": text, "readouts": readouts, "group": f"story-{story}"}))

data = output / "light-switch.jsonl"
data.write_text("\n".join(lines) + "\n")
print(f"wrote {len(lines)} texts to {data}; first: {json.loads(lines[0])['text']!r}")

config = RunConfig(task="jsonl", task_options={"path": str(data)}, n_folds=3, n_boot=100,
                   behaviour=False, figures=("html",), output_dir=str(output / "run"),
                   overwrite=True, progress=False)
result = run(config)
print(result.summary())
