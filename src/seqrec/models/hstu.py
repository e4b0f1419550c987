"""HSTU: hierarchical sequential transduction units (Zhai et al., 2024, "Actions Speak Louder than Words").

One layer, on the residual stream x (B, L, D):

    U, V, Q, K = split(SiLU(W_uvqk LayerNorm(x)))                      fused projection
    A = SiLU(Q K^T + rab) * causal_mask / n                           pointwise attention, no softmax
    x <- x + W_o Dropout(U * LayerNorm(A V))

Q K^T is not divided by sqrt(d), as DESIGN.md and HSTU's research code have it (an earlier version
here divided it; the Beauty figures of both are in benchmarks/RESULTS.md).
``n`` is ``max_length``, a constant: dividing by the padded or the real length would make a user's
scores depend on the batch or on the prefix. ``rab`` is a learned bias per head by the distance
``t - s`` back from the query (``positions="relative"``) plus, when timestamps are given, a learned
bias per head by the log-bucketed gap |t_query - t_key|. Without timestamps the time bias is off,
not fed zeros (zeros would put every pair in bucket 0 and train that bucket on nothing). HSTU's
research code also adds a learned position embedding to the inputs, counted from the oldest item:
``positions="both"`` gives that and the relative bias together.

Padding is nothing, as in SASRec: padding keys are masked out of every real query's row (with no
softmax a masked weight is simply 0), padding rows attend to nothing, and the state is zeroed at
padding after every layer. Every layer's state is returned, bottom to top.

``after_layer`` is the hook PCRec (``seqrec.models.pcrec``) fills with its predictive-coding steps;
here it is the identity.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from seqrec.config import ModelConfig
from seqrec.models.inputs import AttentionInputs, distances

TIME_BUCKETS = 64  # bucket = floor(2 log2(1 + |dt| seconds)), the last one holds every gap >= ~68 years


class HSTUEncoder(AttentionInputs):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)  # scale, positions (relative: HSTU's position bias), input dropout
        self.time_bias = nn.Parameter(torch.zeros(cfg.heads, TIME_BUCKETS))
        self.layers = nn.ModuleList(HSTULayer(cfg) for _ in range(cfg.layers))

    def forward(self, item_vectors: torch.Tensor, mask: torch.Tensor,
                timestamps: torch.Tensor | None = None) -> list[torch.Tensor]:
        """item_vectors (B, L, D) zero at padding, mask (B, L) bool, timestamps (B, L) seconds or None
        -> per-layer hidden [(B, L, D)], zero at padding."""
        x, keep = self.embed(item_vectors, mask)  # (B, L, D), (B, L, 1)
        allowed = _causal_real_keys(mask).unsqueeze(1).to(x.dtype)  # (B, 1, L, L)
        bias = self._attention_bias(mask, timestamps)  # (B or 1, H, L, L) or None
        layers = []
        for index, layer in enumerate(self.layers):
            x = self.after_layer(index, layer(x, bias, allowed) * keep, mask) * keep
            layers.append(x)
        return layers

    def after_layer(self, index: int, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Hook between a layer and the next: identity in HSTU."""
        return x

    def _attention_bias(self, mask: torch.Tensor, timestamps: torch.Tensor | None) -> torch.Tensor | None:
        """rab: relative position bias (1, H, L, L) plus time bias (B, H, L, L) when timestamps are given."""
        bias = self.position_bias(mask.shape[1], mask.device)  # (H, L, L) or None
        bias = None if bias is None else bias.unsqueeze(0)  # (1, H, L, L)
        if timestamps is not None:
            buckets = time_buckets(timestamps)  # (B, L, L)
            time = self.time_bias[:, buckets].transpose(0, 1)  # (B, H, L, L)
            bias = time if bias is None else bias + time
        return bias


class HSTULayer(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.heads = cfg.heads
        self.length_scale = 1.0 / cfg.max_length  # the constant n of silu(...) / n
        self.uvqk = nn.Linear(cfg.dim, 4 * cfg.dim)
        self.out = nn.Linear(cfg.dim, cfg.dim)
        self.dropout = nn.Dropout(cfg.dropout)
        nn.init.normal_(self.uvqk.weight, std=0.02)  # as generative-recommenders initialises it
        nn.init.zeros_(self.uvqk.bias)
        nn.init.xavier_uniform_(self.out.weight)

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None, allowed: torch.Tensor) -> torch.Tensor:
        batch, length, dim = x.shape
        projected = F.silu(self.uvqk(F.layer_norm(x, (dim,), eps=1e-6)))  # (B, L, 4D)
        u, v, q, k = projected.chunk(4, dim=-1)  # each (B, L, D)
        q, k, v = (t.view(batch, length, self.heads, dim // self.heads).transpose(1, 2) for t in (q, k, v))
        scores = q @ k.transpose(-1, -2)  # [B,H,L,Dh] x [B,H,Dh,L] -> [B,H,L,L]
        if bias is not None:
            scores = scores + bias
        weights = F.silu(scores) * allowed * self.length_scale  # (B, H, L, L)
        mixed = (weights @ v).transpose(1, 2).reshape(batch, length, dim)  # (B, L, D)
        return x + self.out(self.dropout(u * F.layer_norm(mixed, (dim,), eps=1e-6)))


def time_buckets(timestamps: torch.Tensor) -> torch.Tensor:
    """timestamps (B, L) seconds -> bucket of |t_query - t_key| per pair (B, L, L), log2 steps of 1/2."""
    gaps = (timestamps.unsqueeze(2) - timestamps.unsqueeze(1)).abs().float()  # (B, L, L) float32: TensorRT has no float64
    return (2 * torch.log2(1 + gaps)).floor().long().clamp(0, TIME_BUCKETS - 1)


def _causal_real_keys(mask: torch.Tensor) -> torch.Tensor:
    """(B, L, L) bool: key s is at or before query t and is a real item (padding rows get nothing)."""
    return (distances(mask.shape[1], mask.device) >= 0) & mask.unsqueeze(1) & mask.unsqueeze(2)
