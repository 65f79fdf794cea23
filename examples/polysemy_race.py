"""The polysemy race: from which layer do the tokens after "bank" know which bank it is?

A dialog opens with a fishing cue ("packed my rod"), then mentions "bank", then asks about
an ATM. For the "bank" token and for each token after it (through the ATM question), the
script prints per layer:

* the logit lens's top next token,
* what the identity Patchscope decodes the token's state to,
* P(river), the river sense's probability under a sense probe: a linear probe trained
  per layer on the polysemy task's generated dialogs (both senses, readouts on "bank" and
  the words after it), applied to this dialog.

Run it as it stands (with ``--stories 60 --layer-step 5`` it took 39 s on two shared CPU
cores with the bundled SmolLM2; the defaults train on twice the dialogs):

    python examples/polysemy_race.py
    python examples/polysemy_race.py --model gemma3-270m --layer-step 2 --output race.csv
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd

from depthprobe.capture import capture_residuals
from depthprobe.methods import LinearProbe, patchscope, top_tokens
from depthprobe.models import load_model
from depthprobe.tasks import align_examples, make_task

CUE = "I took the day off work and packed my rod."
SPEAKERS = ("Anna", "Ben")
RIVER = 1  # the label of "bank (river)" in the polysemy task


def train_sense_probes(loaded, n_stories: int, n_after: int, seed: int) -> list[LinearProbe]:
    """Fit one sense probe per layer on generated dialogs, pooling the readouts."""
    task = make_task("polysemy", word="bank", n_stories=n_stories, n_after=n_after, seed=seed)
    examples = align_examples(task.text_examples(), loaded.tokenizer)
    features = capture_residuals(
        loaded.model, loaded.layout, [ex.input_ids for ex in examples],
        [[r.position for r in ex.readouts] for ex in examples],
        pad_token_id=loaded.tokenizer.pad_token_id or 0)  # (readouts, layers, d_model)
    labels = np.array([r.label for ex in examples for r in ex.readouts])
    return [LinearProbe().fit(features[:, layer].numpy(), labels)
            for layer in range(features.shape[1])]


def race_rows(loaded, probes: list[LinearProbe], n_after: int, layers: list[int]) -> pd.DataFrame:
    """Read the race dialog at "bank" and each later token with the three methods."""
    task = make_task("polysemy", word="bank", n_stories=1, n_after=n_after)
    race = task.render(SPEAKERS, CUE, [], "", RIVER, group="race")
    example = align_examples([race], loaded.tokenizer)[0]
    positions = [readout.position for readout in example.readouts]
    features = capture_residuals(loaded.model, loaded.layout, [example.input_ids], [positions],
                                 pad_token_id=loaded.tokenizer.pad_token_id or 0,
                                 progress=False)
    lens = top_tokens(loaded, race.text, k=1, layers=layers)

    rows = []
    for index, position in enumerate(positions):
        decoded = patchscope(loaded, race.text, position=position, target="identity",
                             source_layers=layers, progress=False).table
        for column, layer in enumerate(layers):
            p_river = probes[layer].predict_proba(features[index:index + 1, layer].numpy())
            lens_row = lens[(lens["position"] == position) & (lens["layer"] == layer)]
            rows.append(dict(
                token=loaded.tokenizer.decode([example.input_ids[position]]),
                position=position, layer=layer, lens=lens_row["predicted"].iloc[0],
                patchscope=decoded["top_token"].iloc[column],
                p_river=float(p_river[0, list(probes[layer].classes_).index(RIVER)])))
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m", help="bundled name, folder or hub id")
    parser.add_argument("--stories", type=int, default=120,
                        help="generated dialogs to train the sense probes on (default: 120)")
    parser.add_argument("--layer-step", type=int, default=3,
                        help="print every n-th layer (default: 3)")
    parser.add_argument("--output", default=None, help="also write the table to this CSV file")
    args = parser.parse_args()

    loaded = load_model(args.model)
    n_after = 9  # ". Ben: Is there an ATM there?" is nine words and marks after "bank"
    probes = train_sense_probes(loaded, args.stories, n_after, seed=1)
    layers = list(range(0, loaded.layout.n_layers + 1, args.layer_step))
    if layers[-1] != loaded.layout.n_layers:
        layers.append(loaded.layout.n_layers)
    table = race_rows(loaded, probes, n_after, layers)

    for (position, token), rows in table.groupby(["position", "token"], sort=True):
        print(f"\ntoken {token!r} (position {position})")
        print(f"  {'layer':>5}  {'logit lens':<14} {'patchscope':<14} P(river)")
        for row in rows.itertuples():
            print(f"  {row.layer:>5}  {row.lens!r:<14} {row.patchscope!r:<14} {row.p_river:.2f}")
    if args.output:
        table.to_csv(args.output, index=False)
        print(f"\nwrote {args.output}")


if __name__ == "__main__":
    main()
