"""Output heads: turn the encoder's per-layer hidden states into item logits.

Every head scores chosen *prediction points* of a batch of left-padded histories:

- ``logits(layers, items, rows)`` gives full-catalog logits (M, N + 1), column 0 (padding) -inf.
  ``rows`` (B, L) bool picks the slots to predict after (training: every real slot of a packed
  causal pass); ``None`` means the last slot of every row (evaluation, export, scoring).
- ``top_k(layers, items, k, exclude_seen)`` gives the k best items (B, k) and their logits at the
  last slot, exactly as ``logits`` + ``topk`` would, without any (B, N) scatter: what the exported
  scoring graph and batch scoring run.
- ``sampled_logits(layers, items, rows, targets, negatives)`` gives the logits of a small set of
  columns per row for sampled softmax: column 0 is the target, then the shared negatives, then any
  head-specific extra columns. It also returns the item id of every column, 0 where a column is
  void (its logit is then -inf), so the loss can mask accidental hits and seen items generically.

Heads are tied to the input item embedding (one (N + 1, D) matrix whose padding row is zero).
With ``ModelConfig.l2_normalize`` the softmax head scores the cosine of the hidden state and the item
embedding (HSTU's recipe, used with a small training temperature).

``top_k`` takes its catalog candidates (the best items of h E^T, seen items left out where asked)
in one of two ways, set per head by ``head.topk_kernel``:

- "matmul": the product with the catalog, -inf at padding and exclusions, ``topk``. Standard ops only:
  what an ONNX export must hold (Gemm + TopK; ONNX Runtime and TensorRT run them natively). A table
  of more than ``catalog_block`` rows (items + padding; ``top_k``'s argument, ``seqrec export
  --catalog-block``) is scored one block at a time, so a graph holds (B, block) scores, not (B, N + 1).
- "fused": ``seqrec.kernels.catalog_topk``, which never holds (B, N + 1) scores (blocked on the
  CPU, Triton on CUDA); traced (torch.export / torch.compile), it is one opaque
  ``seqrec::catalog_topk_opaque`` node that only PyTorch can run.
- "auto" (default): "matmul" while being traced, so exports keep standard ops, and "fused" in
  eager PyTorch (``seqrec score`` with the torch backend, evaluation scripts).

Both give the same items (ties aside); "fused" computes the candidate scores in the inputs' dtype
even under autocast, and gives id 0 with -inf where a row has fewer eligible items than asked.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from seqrec.config import CATALOG_BLOCK
from seqrec.errors import ConfigError, received_expected
from seqrec.kernels import catalog_topk, register_catalog_topk_opaque
from seqrec.kernels.blocked_catalog_topk import TableCache

TOPK_KERNELS = ("auto", "matmul", "fused")
NORMALIZE_EPS = 1e-12  # F.normalize's; in fp16 it is 0 and a zero row would be 0 / 0, so at least fp16's tiny


class SoftmaxHead(nn.Module):
    """logits = h E^T over the whole catalog, h the top layer's state at the prediction point."""

    def __init__(self, item_embedding: nn.Embedding, mixed_layers: int = 1, cfg=None, **_: object) -> None:
        super().__init__()
        self.item_embedding = item_embedding
        self.l2_normalize = bool(cfg is not None and cfg.l2_normalize)
        self.topk_kernel = "auto"  # see the module docstring
        self._unit_tables = TableCache(self._unit)  # the unit table of the last weights scored
        self._fixed_table: torch.Tensor | None = None  # set by ``scoring_table`` (an export's constant)

    def logits(self, layers: list[torch.Tensor], items: torch.Tensor,
               rows: torch.Tensor | None = None) -> torch.Tensor:
        hidden = self._unit(select_rows(layers[-1], rows))  # (M, D)
        return mask_padding(hidden @ self._unit(self.item_embedding.weight).T)  # [M, D] x [D, N+1] -> [M, N+1]

    def top_k(self, layers: list[torch.Tensor], items: torch.Tensor, k: int, exclude_seen: bool = False,
              pointer_op: str = "standard", catalog_block: int = CATALOG_BLOCK) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self._unit(layers[-1][:, -1])  # (B, D)
        exclude = items if exclude_seen else None
        return catalog_candidates(hidden, self._scored_table(), k, exclude, self.topk_kernel, catalog_block)

    def sampled_logits(self, layers: list[torch.Tensor], items: torch.Tensor, rows: torch.Tensor | None,
                       targets: torch.Tensor, negatives: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self._unit(select_rows(layers[-1], rows))  # (M, D)
        positive = (hidden * self._unit(self.item_embedding(targets))).sum(-1, keepdim=True)  # (M, 1)
        negative = hidden @ self._unit(self.item_embedding(negatives)).T  # [M, D] x [D, S] -> [M, S]
        columns = torch.cat([targets.unsqueeze(1), negatives.expand(len(targets), -1)], dim=1)  # (M, 1+S)
        return torch.cat([positive, negative], dim=1), columns

    def _scored_table(self) -> torch.Tensor:
        """The item table that ``top_k`` scores (N + 1, D): the weights, or with ``l2_normalize`` their unit
        rows, built once per version of the weights when no gradient is wanted. catalog_topk's caches
        (norm order, int8 copy) key on the tensor object, so a new unit table per call rebuilt them."""
        weight = self.item_embedding.weight
        if not self.l2_normalize:
            return weight
        if self._fixed_table is not None:
            return self._fixed_table
        if torch.compiler.is_compiling() or (torch.is_grad_enabled() and weight.requires_grad):
            return self._unit(weight)
        return self._unit_tables.get(weight)

    def export_table(self) -> torch.Tensor | None:
        """The table ``top_k`` scores where it is not the weights themselves (the unit rows, with
        ``l2_normalize``), detached, else None: an exported graph stores it as a constant (``scoring_table``)
        instead of normalising the whole table at every call, which the runtime would have to fold."""
        return self._unit(self.item_embedding.weight).detach() if self.l2_normalize else None

    @contextlib.contextmanager
    def scoring_table(self, table: torch.Tensor | None):
        """While inside, ``top_k`` scores ``table`` (from ``export_table``; None: as usual)."""
        previous, self._fixed_table = self._fixed_table, table
        try:
            yield
        finally:
            self._fixed_table = previous

    def _unit(self, vectors: torch.Tensor) -> torch.Tensor:
        """Unit rows with ``l2_normalize`` (a zero row stays zero, in fp16 too), else unchanged."""
        if not self.l2_normalize:
            return vectors
        return F.normalize(vectors, dim=-1, eps=max(NORMALIZE_EPS, torch.finfo(vectors.dtype).tiny))


def catalog_candidates(query: torch.Tensor, table: torch.Tensor, count: int, exclude: torch.Tensor | None,
                       kernel: str, block: int = CATALOG_BLOCK) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``count`` best items of query (B, D) . table (N+1, D): scores (B, count), ids (B, count).

    Padding (id 0) and each row's ``exclude`` (B, S) ids are never among them; ``kernel`` is a
    head's ``topk_kernel`` and ``block`` the ``catalog_block`` of ``top_k`` (see the module docstring).
    """
    if not uses_catalog_topk(kernel):
        padding = query.new_zeros((query.shape[0], 1), dtype=torch.long)  # (B, 1): one more exclusion
        exclusions = padding if exclude is None else torch.cat([padding, exclude], dim=1)  # (B, E)
        if table.shape[0] <= block:
            return _catalog_candidates_at_once(query, table, count, exclusions)
        return _catalog_candidates_by_block(query, table, count, exclusions, block)
    if torch.compiler.is_compiling():
        return register_catalog_topk_opaque()(query, table, count, exclude)
    return catalog_topk(query, table, count, exclude)


def _catalog_candidates_at_once(query: torch.Tensor, table: torch.Tensor, count: int, exclusions: torch.Tensor
                                ) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, N+1) scores, one scatter of -inf at the exclusions (B, E), ``topk``. ``F.linear`` is a Gemm
    that reads the table as it is stored; ``query @ table.T`` exported a Transpose of the table, which
    ONNX Runtime folds into a copy at load, or beyond 1 GB recomputes at every call."""
    logits = F.linear(query, table).scatter(1, exclusions, float("-inf"))  # (B, N+1)
    return logits.topk(count, dim=1)  # (B, count) each


def _catalog_candidates_by_block(query: torch.Tensor, table: torch.Tensor, count: int, exclusions: torch.Tensor,
                                 block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The same answer, scoring ``block`` items at a time: a block's best eligible ``count`` lie among its
    best count + E (at most E exclusions fall in it), so each block keeps those, voids its excluded ones
    by comparison (no scatter into the block), and keeps its best ``count``; the best ``count`` of all the
    blocks' are the answer. A static unrolled loop: the exclusion width E and the table are fixed."""
    scores, ids = [], []
    for start in range(0, table.shape[0], block):
        part = table[start:start + block]  # (n, D)
        wide = F.linear(query, part).topk(min(count + exclusions.shape[1], part.shape[0]), dim=1)  # (B, w) each
        part_ids = wide.indices + start  # (B, w)
        excluded = (part_ids.unsqueeze(-1) == exclusions.unsqueeze(1)).any(-1)  # (B, w)
        best = wide.values.masked_fill(excluded, float("-inf")).topk(min(count, part_ids.shape[1]), dim=1)
        scores.append(best.values)
        ids.append(part_ids.gather(1, best.indices))  # (B, <= count)
    best = torch.cat(scores, dim=1).topk(count, dim=1)  # (B, count)
    return best.values, torch.cat(ids, dim=1).gather(1, best.indices)


def uses_catalog_topk(kernel: str) -> bool:
    """Whether a head's ``topk_kernel`` means catalog_topk here and now: "auto" does unless traced."""
    if kernel not in TOPK_KERNELS:
        raise ConfigError(received_expected("head topk_kernel", repr(kernel), f"one of {', '.join(TOPK_KERNELS)}"))
    return kernel == "fused" or (kernel == "auto" and not torch.compiler.is_compiling())


def select_rows(per_slot: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
    """(B, L, ...) -> (M, ...): the chosen prediction points, or the last slot of every row."""
    return per_slot[:, -1] if rows is None else per_slot[rows]


def causal_histories(items: torch.Tensor) -> torch.Tensor:
    """For every slot t, the items of slots <= t (later slots zeroed): (B, L) -> (B, L, L)."""
    steps = torch.arange(items.shape[1], device=items.device)
    upto = steps.view(1, -1) <= steps.view(-1, 1)  # (L, L): [t, s] = s <= t
    return items.unsqueeze(1) * upto  # (B, L, L)


def mask_padding(logits: torch.Tensor) -> torch.Tensor:
    """Item 0 is padding and never a result: its column becomes -inf (in place: callers pass
    fresh products, and no backward needs the value it overwrites). Not for exported graphs: there
    ``index_fill`` on the last dimension becomes a Transpose of the whole scores, a ScatterND and a
    Transpose back; ``catalog_candidates`` makes padding one of its exclusions instead."""
    zero = torch.zeros(1, dtype=torch.long, device=logits.device)
    return logits.index_fill_(-1, zero, float("-inf"))
