"""A sequential recommender: item embedding -> encoder -> head.

``encode_layers`` gives every encoder layer's hidden state per slot [(B, L, D)], which training
hands to the head for every prefix at once; ``forward`` scores the catalog for the prediction
point after the last slot (B, N + 1), which is what evaluation, export and batch scoring call.
"""

from __future__ import annotations

import numbers

import torch
from torch import nn

from seqrec.config import CATALOG_BLOCK, POINTER_OPS, ModelConfig, _check_choice
from seqrec.errors import ConfigError, ModelInputError, received_expected
from seqrec.models.cpr import CPRHead
from seqrec.models.gru4rec import GRU4RecEncoder
from seqrec.models.heads import SoftmaxHead
from seqrec.models.hstu import HSTUEncoder
from seqrec.models.pcrec import PCRecEncoder
from seqrec.models.sasrec import SASRecEncoder

ENCODERS: dict[str, type[nn.Module]] = {"sasrec": SASRecEncoder, "gru4rec": GRU4RecEncoder, "hstu": HSTUEncoder,
                                        "pcrec": PCRecEncoder}
HEADS: dict[str, type[nn.Module]] = {"softmax": SoftmaxHead, "cpr": CPRHead}


class SequentialRecommender(nn.Module):
    def __init__(self, cfg: ModelConfig, initialise: bool = True) -> None:
        """``initialise=False`` leaves the item table uninitialised, for weights that are loaded next:
        drawing N x D normals costs about a second at N = 1M."""
        super().__init__()
        self.cfg = cfg
        table = None if initialise else torch.empty(cfg.num_items + 1, cfg.dim)  # (N + 1, D)
        self.item_embedding = nn.Embedding(cfg.num_items + 1, cfg.dim, padding_idx=0, _weight=table)
        self.encoder = _lookup(ENCODERS, cfg.model, "model")(cfg)
        if initialise:
            self.reset_item_embedding()
        with torch.random.fork_rng(devices=[]):  # the head's draws leave the stream as a softmax head does, so
            # encoder, table and training's dropout masks do not depend on the head (models.cpr: second stage)
            self.head = _lookup(HEADS, cfg.head, "head")(self.item_embedding, cfg=cfg,
                                                         mixed_layers=self.encoder.output_layers)

    def reset_item_embedding(self) -> None:
        """N(0, 1/D) so that sqrt(D)-scaled inputs have unit scale, or N(0, embedding_std^2) when set
        (HSTU's research code uses 0.02); the padding row stays zero."""
        std = self.cfg.dim**-0.5 if self.cfg.embedding_std is None else self.cfg.embedding_std
        with torch.no_grad():
            self.item_embedding.weight.normal_(0.0, std)
            self.item_embedding.weight[0].zero_()

    def encode_layers(self, items: torch.Tensor, timestamps: torch.Tensor | None = None) -> list[torch.Tensor]:
        """items (B, L) left padded with 0 -> per-layer hidden [(B, L, D)], zero at padding.

        Histories longer than ``max_length`` keep their most recent ``max_length`` items. Any integer
        dtype is taken (as int64); anything else, or ids outside 0..N, is a ModelInputError.
        """
        return self._encode_checked(checked_items(items, self.cfg.num_items), timestamps)

    def _encode_checked(self, items: torch.Tensor, timestamps: torch.Tensor | None) -> list[torch.Tensor]:
        """``encode_layers`` for items that ``checked_items`` has passed (so a call reads its ids once)."""
        check_timestamps(timestamps, items)
        items = items[:, -self.cfg.max_length :]  # (B, L)
        if timestamps is not None:
            timestamps = timestamps[:, -self.cfg.max_length :]  # (B, L)
        return self.encoder(self.item_embedding(items), items > 0, timestamps)

    def reads_timestamps(self) -> bool:
        """Whether timestamps can change this model's output: its encoder has a time bias that is not
        zero everywhere (trained on data without real times, the bias keeps its zero start)."""
        bias = getattr(self.encoder, "time_bias", None)
        return bias is not None and bool(bias.detach().ne(0).any())

    def encode(self, items: torch.Tensor, timestamps: torch.Tensor | None = None) -> torch.Tensor:
        """items (B, L) -> the top layer's hidden state (B, L, D)."""
        return self.encode_layers(items, timestamps)[-1]

    def forward(self, items: torch.Tensor, timestamps: torch.Tensor | None = None) -> torch.Tensor:
        """items (B, L) left padded -> logits (B, N + 1) for the next item; column 0 is -inf."""
        items = checked_items(items, self.cfg.num_items)
        layers = self._encode_checked(items, timestamps)
        return self.head.logits(layers, items[:, -self.cfg.max_length :])


    def top_k(self, items: torch.Tensor, k: int, exclude_seen: bool = False,
              timestamps: torch.Tensor | None = None, pointer_op: str = "standard",
              catalog_block: int = CATALOG_BLOCK) -> tuple[torch.Tensor, torch.Tensor]:
        """items (B, L) left padded -> the k best next items (B, K) and their logits (B, K), best first.

        Equal to ``forward`` + ``topk`` (ties aside); ``exclude_seen`` drops the items of the model's
        window (the last ``max_length`` of ``items``). Where a row has fewer than k eligible items, the
        rest of it is id 0 with -inf, whichever head or candidate kernel (and in exported graphs).
        ``catalog_block``: items the standard-op path (what an export traces) scores at once.
        """
        check_k(k, self.cfg.num_items)
        _check_choice("pointer_op", pointer_op, POINTER_OPS)  # the softmax head has no scatter, but a typo is one
        check_catalog_block(catalog_block)
        items = checked_items(items, self.cfg.num_items)
        layers = self._encode_checked(items, timestamps)
        scores, ids = self.head.top_k(layers, items[:, -self.cfg.max_length :], k, exclude_seen, pointer_op,
                                      catalog_block)
        return scores, void_ineligible(scores, ids)

    def top_k_reference(self, items: torch.Tensor, k: int, exclude_seen: bool = False,
                        timestamps: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The slow path: full (B, N+1) logits, seen items (of the model's window) -inf, ``torch.topk``."""
        check_k(k, self.cfg.num_items)
        items = checked_items(items, self.cfg.num_items)
        logits = self.head.logits(self._encode_checked(items, timestamps), items[:, -self.cfg.max_length :])  # (B, N+1)
        if exclude_seen:
            logits = logits.scatter(1, items[:, -self.cfg.max_length :], float("-inf"))
        scores, ids = logits.topk(k, dim=1)  # (B, K) each
        return scores, void_ineligible(scores, ids)


def void_ineligible(scores: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """ids (B, K) with 0 wherever the score is -inf: an excluded or padding item, never a result."""
    return ids.masked_fill(scores == float("-inf"), 0)


def checked_items(items: torch.Tensor, num_items: int) -> torch.Tensor:
    """items as the model takes them: (B, L >= 1) int64 ids in 0..N, 0 = padding; ModelInputError otherwise.

    The id range is read on eager CPU tensors only: elsewhere it would cost a device sync per call or
    break a trace (the embedding lookup then fails on its own)."""
    if not isinstance(items, torch.Tensor) or items.dim() != 2 or items.shape[1] == 0:
        shape = tuple(items.shape) if isinstance(items, torch.Tensor) else type(items).__name__
        raise ModelInputError(received_expected("items", shape, "a (batch, length >= 1) tensor of item ids, "
                                                "left padded with 0"))
    if items.dtype == torch.bool or items.is_floating_point() or items.is_complex():
        raise ModelInputError(received_expected("items dtype", items.dtype, "an integer dtype (item ids)"))
    items = items.long()  # (B, L)
    if items.is_cpu and items.numel() and not (torch.compiler.is_compiling() or torch.jit.is_tracing()):
        low, high = int(items.min()), int(items.max())
        if low < 0 or high > num_items:
            raise ModelInputError(received_expected("item ids", f"ids from {low} to {high}",
                                                    f"ids in 0..{num_items} (0 = padding, {num_items} items)"))
    return items


def check_timestamps(timestamps: torch.Tensor | None, items: torch.Tensor) -> None:
    """timestamps, when given, are numbers of the items' shape (B, L): one per item, not broadcast."""
    if timestamps is None:
        return
    if not isinstance(timestamps, torch.Tensor) or timestamps.dtype == torch.bool or timestamps.is_complex():
        kind = timestamps.dtype if isinstance(timestamps, torch.Tensor) else type(timestamps).__name__
        raise ModelInputError(received_expected("timestamps", kind, "a tensor of seconds, the shape of items"))
    if timestamps.dim() != 2 or not (torch.compiler.is_compiling() or torch.jit.is_tracing()) and (
            timestamps.shape != items.shape):
        raise ModelInputError(received_expected("timestamps shape", tuple(timestamps.shape),
                                                f"one per item, the shape of items {tuple(items.shape)}"))


def check_k(k: int, num_items: int) -> None:
    """k best items of a catalog of N: 1 <= k <= N (beyond N only padding or repeats would fill the row)."""
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or not 1 <= k <= num_items:
        raise ModelInputError(received_expected("k", repr(k), f"an integer in 1..{num_items} (the catalog size)"))


def check_catalog_block(block: int) -> None:
    if isinstance(block, bool) or not isinstance(block, numbers.Integral) or block < 1:
        raise ModelInputError(received_expected("catalog_block", repr(block), "an integer >= 1 (items scored at once)"))


def build_model(cfg: ModelConfig, initialise: bool = True) -> SequentialRecommender:
    return SequentialRecommender(cfg, initialise)


def _lookup(table: dict[str, type[nn.Module]], name: str, what: str) -> type[nn.Module]:
    if name not in table:
        raise ConfigError(received_expected(what, repr(name), f"one of {', '.join(table)}"))
    return table[name]
