"""SASRec: causal self-attention over the item sequence (Kang & McAuley, 2018).

Inputs are left padded: the most recent item sits in the last slot. Padding is exactly nothing:
its embedding is zero, it receives no position, it is masked out of every attention row of a real
item, and its hidden state is zeroed after every block, so no output depends on how much padding
surrounds a history or on which users share the batch.

Positions come in four flavours (``ModelConfig.positions``):

- ``relative`` (default): a learned per-head attention bias indexed by the distance ``t - s``
  between the query (the prediction point) and the key. Every prefix of a packed causal pass
  sees the same distances it will see at inference, which absolute positions cannot give.
- ``absolute``: a learned embedding of the index counted from the oldest item in the window.
- ``both``: the absolute embedding on the input and the relative bias in every attention.
- ``none``: order comes from the causal mask only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from seqrec.config import ModelConfig
from seqrec.models.inputs import AttentionInputs, distances


class SASRecEncoder(AttentionInputs):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)  # scale, positions, input dropout
        self.blocks = nn.ModuleList(SASRecBlock(cfg) for _ in range(cfg.layers))
        self.final_norm = nn.LayerNorm(cfg.dim, eps=1e-8)

    def forward(self, item_vectors: torch.Tensor, mask: torch.Tensor,
                timestamps: torch.Tensor | None = None) -> list[torch.Tensor]:
        """item_vectors (B, L, D) with zeros at padding, mask (B, L) bool -> per-layer hidden [(B, L, D)].

        Every block's output goes through the final LayerNorm, so all returned layers share one scale
        (the last one is the encoder output; the CPR head's Mi input reads the top two).
        ``timestamps`` are not used by SASRec.
        """
        x, keep = self.embed(item_vectors, mask)  # (B, L, D), (B, L, 1)
        attn_bias = self._attention_bias(mask, x.dtype)  # (B, H, L, L)
        layers = []
        for block in self.blocks:
            x = block(x, attn_bias) * keep
            layers.append(self.final_norm(x) * keep)
        return layers

    def _attention_bias(self, mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Additive mask: -inf for future keys and padding keys; relative bias where allowed."""
        length = mask.shape[1]
        causal = distances(length, mask.device) >= 0  # (L, L)
        allowed = causal & mask.unsqueeze(1)  # (B, L, L)
        allowed = allowed | torch.eye(length, dtype=torch.bool, device=mask.device)  # pad rows see self
        bias = torch.zeros(allowed.shape, dtype=dtype, device=mask.device).masked_fill(~allowed, float("-inf"))
        bias = bias.unsqueeze(1)  # (B, 1, L, L)
        relative = self.position_bias(length, mask.device)  # (H, L, L) or None
        return bias if relative is None else bias + relative.unsqueeze(0)  # (B, H, L, L)


class SASRecBlock(nn.Module):
    """Pre-norm block: x + Attn(LN x), then x + FFN(LN x)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.heads = cfg.heads
        self.attn_norm = nn.LayerNorm(cfg.dim, eps=1e-8)
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim)
        self.out = nn.Linear(cfg.dim, cfg.dim)
        self.attn_dropout = cfg.dropout
        self.ffn_norm = nn.LayerNorm(cfg.dim, eps=1e-8)
        width = cfg.ffn_multiplier * cfg.dim
        self.ffn = nn.Sequential(
            nn.Linear(cfg.dim, width), nn.ReLU(), nn.Dropout(cfg.dropout),
            nn.Linear(width, cfg.dim), nn.Dropout(cfg.dropout),
        )

    def forward(self, x: torch.Tensor, attn_bias: torch.Tensor) -> torch.Tensor:
        x = x + self._attention(self.attn_norm(x), attn_bias)
        return x + self.ffn(self.ffn_norm(x))

    def _attention(self, x: torch.Tensor, attn_bias: torch.Tensor) -> torch.Tensor:
        batch, length, dim = x.shape
        q, k, v = self.qkv(x).view(batch, length, 3, self.heads, dim // self.heads).unbind(2)  # (B, L, H, Dh)
        dropout = self.attn_dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=attn_bias, dropout_p=dropout
        )  # (B, H, L, Dh)
        return self._merge_heads(y)  # (B, L, D)

    def _merge_heads(self, y: torch.Tensor) -> torch.Tensor:
        """(B, H, L, Dh) -> out-projected (B, L, D) without reshaping y: the ONNX exporter cannot
        prove a reshape of the attention output's strides valid for a symbolic batch size."""
        weight = self.out.weight.view(self.out.out_features, self.heads, -1)  # (D, H, Dh)
        return torch.einsum("bhld,ehd->ble", y, weight) + self.out.bias
