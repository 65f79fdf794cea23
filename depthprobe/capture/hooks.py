"""Forward hooks that read the residual stream, installed only inside a ``with`` block."""

from __future__ import annotations

from typing import Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from ..models.layout import ModelLayout


def _hidden(output) -> Tensor:
    # Decoder blocks return either the hidden states or a tuple that starts with them.
    return output if isinstance(output, Tensor) else output[0]


class ResidualRecorder:
    """Record the residual stream at chosen layers and token positions.

    Use it as a context manager around forward passes; every hook it installs is removed
    on exit, also when the forward pass raises. Before each forward pass, call
    :meth:`select` with the (row, column) entries of the padded batch to keep; only those
    vectors are copied, so memory grows with the number of readouts and not with the
    sequence length.

    Layer ``0`` is read as the input of block 0, and layer ``l >= 1`` as the output of
    block ``l - 1``.
    """

    def __init__(self, layout: ModelLayout, layers: Sequence[int] | None = None,
                 out_dtype: torch.dtype = torch.float32, out_device: str = "cpu"):
        self.layout = layout
        self.layers = list(range(layout.n_layers + 1)) if layers is None else list(layers)
        for layer in self.layers:
            layout.check_layer(layer)
        self.out_dtype = out_dtype
        self.out_device = out_device
        self._handles: list = []
        self._rows: Tensor | None = None
        self._cols: Tensor | None = None
        self.records: dict[int, Tensor] = {}

    def select(self, rows: Int[Tensor, "n"], cols: Int[Tensor, "n"]) -> None:
        """Choose the batch entries ``(rows[i], cols[i])`` that the next forward pass keeps."""
        self._rows, self._cols = rows, cols
        self.records = {}

    def _keep(self, layer: int, hidden: Float[Tensor, "batch pos d_model"]) -> None:
        rows = self._rows.to(hidden.device)
        cols = self._cols.to(hidden.device)
        picked = hidden[rows, cols]  # (n, d_model)
        self.records[layer] = picked.detach().to(self.out_device, self.out_dtype)

    def stacked(self) -> Float[Tensor, "n layers d_model"]:
        """Return the last forward pass's records as one tensor, layers in ``self.layers`` order."""
        missing = [layer for layer in self.layers if layer not in self.records]
        if missing:
            raise RuntimeError(
                f"No residual was recorded for layers {missing}; the forward pass did not "
                f"run through those blocks."
            )
        return torch.stack([self.records[layer] for layer in self.layers], dim=1)

    def __enter__(self) -> "ResidualRecorder":
        blocks = self.layout.blocks
        try:
            if 0 in self.layers:
                self._handles.append(blocks[0].register_forward_pre_hook(
                    self._pre_hook, with_kwargs=True))
            for layer in self.layers:
                if layer >= 1:
                    self._handles.append(blocks[layer - 1].register_forward_hook(
                        self._make_post_hook(layer)))
        except Exception:
            self._remove()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._remove()

    def _remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _pre_hook(self, module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        self._keep(0, hidden)

    def _make_post_hook(self, layer: int):
        def hook(module, args, output):
            self._keep(layer, _hidden(output))
        return hook
