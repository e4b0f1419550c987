"""GRU4Rec: a GRU over the item sequence (Hidasi et al., 2016), trained with a softmax head.

A GRU fed zero vectors still moves its state (its biases act), so left padding cannot simply be
run through it. Instead each row is rotated so its real items come first, the GRU runs over the
right-padded rows (it is causal, so trailing padding never reaches a real position), and the
outputs are rotated back into left-padded order with padding zeroed. Rotation is one gather: no
packing, no data-dependent control flow, exportable as is.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from seqrec.config import ModelConfig


class GRU4RecEncoder(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.output_layers = 1  # hidden states returned per slot, bottom to top
        self.input_scale = math.sqrt(cfg.dim)  # unit-scale inputs, as in SASRec
        self.input_dropout = nn.Dropout(cfg.dropout)
        self.gru = nn.GRU(cfg.dim, cfg.dim, num_layers=cfg.layers, batch_first=True,
                          dropout=cfg.dropout if cfg.layers > 1 else 0.0)
        self.output_dropout = nn.Dropout(cfg.dropout)
        self.projection = nn.Linear(cfg.dim, cfg.dim)

    def forward(self, item_vectors: torch.Tensor, mask: torch.Tensor,
                timestamps: torch.Tensor | None = None) -> list[torch.Tensor]:
        """item_vectors (B, L, D) with zeros at padding, mask (B, L) bool -> [hidden (B, L, D)].

        ``nn.GRU`` exposes only its top layer's sequence, so one layer is returned whatever
        ``layers`` is (as RecBole's GRU4RecCPR does). ``timestamps`` are not used.
        """
        keep = mask.unsqueeze(-1).to(item_vectors.dtype)  # (B, L, 1)
        shift = mask.shape[1] - mask.long().sum(1, keepdim=True)  # (B, 1) padding per row
        to_right = _rotation(shift, mask.shape[1])  # (B, L)
        x = _gather_steps(self.input_dropout(item_vectors * self.input_scale), to_right)  # right padded (B, L, D)
        y, _ = self.gru(x)  # (B, L, D)
        y = _gather_steps(y, _rotation(-shift, mask.shape[1]))  # back to left padded
        return [self.projection(self.output_dropout(y)) * keep]


def _rotation(shift: torch.Tensor, length: int) -> torch.Tensor:
    """Index so that out[:, i] = in[:, (i + shift) mod L], for -L <= shift <= L.

    Written with comparisons rather than ``remainder``: the ONNX exporter cannot take a remainder
    by a symbolic length.
    """
    steps = torch.arange(length, device=shift.device).unsqueeze(0)  # (1, L)
    index = steps + shift  # (B, L) in [-L, 2L)
    index = torch.where(index >= length, index - length, index)
    return torch.where(index < 0, index + length, index)


def _gather_steps(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    return x.gather(1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))  # (B, L, D)
