"""The input stage the attention encoders share (SASRec, HSTU, PCRec).

Item vectors are scaled by sqrt(D) to unit scale; ``positions="absolute"`` adds a learned embedding
of the index counted from the oldest item in the window (padding gets none), ``"relative"`` keeps a
learned per-head bias by the distance ``t - s`` from query to key for the encoder's attention,
``"both"`` does both (the input stage and attention bias of HSTU's research code), and ``"none"``
leaves order to the causal mask. Dropout follows, and padding stays exactly zero.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from seqrec.config import ModelConfig


class AttentionInputs(nn.Module):
    """Base class: sets ``output_layers``, ``cfg`` and the position parameters of ``cfg.positions``."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.output_layers = cfg.layers  # hidden states returned per slot, bottom to top
        self.cfg = cfg
        self.input_scale = math.sqrt(cfg.dim)
        self.position_embedding = (
            nn.Embedding(cfg.max_length, cfg.dim) if cfg.positions in ("absolute", "both") else None
        )
        self.relative_bias = (
            nn.Parameter(torch.zeros(cfg.heads, cfg.max_length)) if cfg.positions in ("relative", "both") else None
        )
        self.input_dropout = nn.Dropout(cfg.dropout)

    def embed(self, item_vectors: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """item_vectors (B, L, D) zero at padding -> (inputs (B, L, D), keep (B, L, 1): 1 at real slots)."""
        keep = mask.unsqueeze(-1).to(item_vectors.dtype)  # (B, L, 1)
        x = item_vectors * self.input_scale
        if self.position_embedding is not None:
            x = x + self.position_embedding(positions_from_oldest(mask)) * keep
        return self.input_dropout(x) * keep, keep

    def position_bias(self, length: int, device: torch.device) -> torch.Tensor | None:
        """The relative bias by distance (H, L, L), or None without relative positions."""
        if self.relative_bias is None:
            return None
        return self.relative_bias[:, distances(length, device).clamp(0, self.cfg.max_length - 1)]


def distances(length: int, device: torch.device) -> torch.Tensor:
    """(L, L): query t minus key s."""
    steps = torch.arange(length, device=device)
    return steps.view(-1, 1) - steps.view(1, -1)


def positions_from_oldest(mask: torch.Tensor) -> torch.Tensor:
    """Index of each real item counted from the oldest one in the window; 0 at padding."""
    return (mask.long().cumsum(1) - 1).clamp(min=0)  # (B, L)
