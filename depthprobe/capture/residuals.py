"""Batched capture of residuals at readout positions."""

from __future__ import annotations

import logging
from typing import Sequence

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from ..models.layout import ModelLayout
from .hooks import ResidualRecorder

logger = logging.getLogger(__name__)

PADDING_SIDES = ("left", "right")


def pad_batch(sequences: Sequence[Sequence[int]], pad_id: int, side: str = "right"):
    """Pad token id lists into ``input_ids``, ``attention_mask`` and ``position_ids``.

    Position ids count from 0 at each text's first real token, so a left-padded text
    gets the same positions as when run alone. Returns the three tensors and each text's
    offset (the number of pad tokens before its first token).
    """
    if side not in PADDING_SIDES:
        raise ValueError(f"Padding side {side!r} is invalid; choose 'left' or 'right'.")
    width = max(len(seq) for seq in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    offsets = []
    for row, seq in enumerate(sequences):
        start = width - len(seq) if side == "left" else 0
        ids[row, start:start + len(seq)] = torch.as_tensor(seq, dtype=torch.long)
        mask[row, start:start + len(seq)] = 1
        offsets.append(start)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids, mask, positions, offsets


def forward_for_capture(model: torch.nn.Module, ids: Tensor, mask: Tensor, positions: Tensor):
    """Run the model without a cache, computing the logits of the last position only."""
    device = next(model.parameters()).device
    kwargs = dict(input_ids=ids.to(device), attention_mask=mask.to(device),
                  position_ids=positions.to(device), use_cache=False)
    try:
        return model(**kwargs, logits_to_keep=1)
    except TypeError:
        # Some architectures have no logits_to_keep argument.
        return model(**kwargs)


def _check_positions(sequences, positions) -> None:
    if len(sequences) != len(positions):
        raise ValueError(
            f"Got {len(sequences)} token sequences but {len(positions)} position lists; "
            f"give one list of readout positions per sequence."
        )
    for index, (seq, pos) in enumerate(zip(sequences, positions)):
        for p in pos:
            if not 0 <= p < len(seq):
                raise ValueError(
                    f"Readout position {p} of sequence {index} is outside its {len(seq)} "
                    f"tokens; positions count from 0 in the unpadded text."
                )


@torch.no_grad()
def capture_residuals(
    model: torch.nn.Module,
    layout: ModelLayout,
    sequences: Sequence[Sequence[int]],
    positions: Sequence[Sequence[int]],
    layers: Sequence[int] | None = None,
    batch_size: int = 8,
    padding_side: str = "right",
    pad_token_id: int = 0,
    progress: bool = True,
) -> Float[Tensor, "readouts layers d_model"]:
    """Capture the residual stream at every readout position, for the chosen layers.

    ``sequences`` are token id lists and ``positions[i]`` the readout positions of
    sequence ``i``, counted in the unpadded text. The result holds one row per readout,
    in the order of the sequences and then of their positions, with layers in the order
    of ``layers`` (default ``0..L``), as float32 on the CPU.
    """
    _check_positions(sequences, positions)
    if batch_size < 1:
        raise ValueError(f"batch_size must be 1 or more, got {batch_size}.")
    pad_batch([[0]], pad_token_id, padding_side)  # validates the side before any work

    # Sorting by length keeps padding small; rows go back to input order at the end.
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    starts = [0]
    for pos in positions:
        starts.append(starts[-1] + len(pos))
    n_layers = layout.n_layers + 1 if layers is None else len(layers)
    out = torch.empty((starts[-1], n_layers, layout.d_model), dtype=torch.float32)

    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    with ResidualRecorder(layout, layers) as recorder:
        for batch in tqdm(batches, desc="capture", unit="batch", disable=not progress):
            ids, mask, pos_ids, offsets = pad_batch(
                [sequences[i] for i in batch], pad_token_id, padding_side)
            rows, cols, targets = [], [], []
            for row, index in enumerate(batch):
                for k, p in enumerate(positions[index]):
                    rows.append(row)
                    cols.append(offsets[row] + p)
                    targets.append(starts[index] + k)
            if not rows:
                continue
            recorder.select(torch.tensor(rows), torch.tensor(cols))
            forward_for_capture(model, ids, mask, pos_ids)
            out[torch.tensor(targets)] = recorder.stacked()
    return out
