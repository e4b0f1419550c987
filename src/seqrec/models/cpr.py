"""The softmax-CPR output layer (Chang, Agarwal & McCallum, "To Copy, or not to Copy", WSDM 2024).

One hidden state cannot both point at the items a user is about to repeat and stay close to the
new items that suit them; softmax-CPR gives each partition of the catalog its own query:

- base: s = f_S(q) . E over the whole catalog (column 0, padding, is -inf);
- R (reranker partitions, k1 > k2 > ...): the top-k of the running logits get f_R(q) . E[v]
  instead, each stage ranking the logits the previous stage left;
- C (context partition): every item v of the history gets c(v) = f_C(q) . E[v] ...
- P (pointer network): ... plus the mean over v's occurrences j of p_j = f_P(q) . g_P(q_j),
  where q_j is the head input at history slot j;
- recency (ours, on by default): p_j also gets a learned bias by the distance t - j between the
  prediction point and the slot. RecBole's right-padded SASRec gives every state an absolute
  position, so q_t . g_P(q_j) can tell how far back slot j is; our states carry positions relative
  to the prediction point only, so the pointer gets that distance explicitly (``cpr_recency``);
- pooling of an item's occurrences (ours, on by default): the published head takes the mean of
  c(v) + p_j over v's slots (``cpr_pooling="mean"``); ``"logsumexp"`` takes log sum_j exp(c(v) + p_j),
  the logit of a copy distribution that adds the probabilities of every slot holding v (RepeatNet's
  repeat decoder does the same), so an item met three times in the recent window outranks one met
  once. The bias by distance trains at ``RECENCY_LR_SCALE`` x lr: it has to travel nats;
- history logits replace whatever the earlier partitions gave (merging by replacement);
- Mi (multiple input hidden states): q = [h_t ; GELU(W [h_t, h_t-1, h_t-2 of the top two layers])]
  instead of q = h_t.
- plain base (ours, off by default, ``cpr_base_projection=False``): s = h_t . E, the softmax head's
  logits, with no f_S and no Mi; with ``TrainConfig.cpr_base_detach`` the CPR loss takes s as
  constants (``base_gradient``), so the base learns from its own softmax loss only. On Beauty this
  helps CPR:100+Mi when no item repeats; on repeats it gives up part of the gain (RESULTS.md).
- second stage (ours, off by default, ``TrainConfig.cpr_detach_partitions``): every partition but the
  base reads detached encoder states and item vectors (``partition_gradient``), so their loss trains
  only the head's own layers. With the plain base and its own loss as well, the encoder and item
  table train exactly as a softmax model's do, and the head is a second stage on top of it.

The reference (RecBole 1.2 SASRecCPR / GRU4RecCPR) reads the last slot of a right-padded batch;
our batches are left padded, so the last slot is always the most recent item, as intended. Every
projection except the pointer's starts as the identity on h_t (zero on the Mi part), so a fresh
CPR head scores every item outside the history exactly like the softmax head and the partitions
only have to learn corrections (history items start from small random pointer scores).
The history scatter (mean over duplicates, replace) is the ``cpr_scatter`` kernel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from seqrec.config import CATALOG_BLOCK, ModelConfig, parse_cpr_variant
from seqrec.kernels import cpr_scatter
from seqrec.kernels.reference.pt_cpr_scatter import occurrence_sums
from seqrec.models.heads import catalog_candidates, causal_histories, mask_padding, select_rows

WINDOW = 3  # Mi reads h_t, h_t-1, h_t-2
MIXED_LAYERS = 2  # ... of the top two layers (fewer if the encoder returns fewer)
RECENCY_LR_SCALE = 20.0  # the bias by distance trains at 20 x lr: at lr 1e-3 Adam moves it ~0.02 a step


class CPRHead(nn.Module):
    def __init__(self, item_embedding: nn.Embedding, cfg: ModelConfig, mixed_layers: int = 1) -> None:
        super().__init__()
        self.item_embedding = item_embedding
        self.variant = parse_cpr_variant(cfg.cpr_variant)
        dim = cfg.dim
        self.mixed_layers = min(MIXED_LAYERS, mixed_layers)
        self.max_length = cfg.max_length
        self.scatter_kernel = "auto"  # cpr_scatter kernel: Triton on CUDA, the reference elsewhere
        self.topk_kernel = "auto"  # base candidates: matmul + topk when traced, else catalog_topk (see heads)
        self.mix = nn.Linear(dim * self.mixed_layers * WINDOW, dim) if self.variant.mixed_input else None
        width = 2 * dim if self.variant.mixed_input else dim
        self.dim = dim
        self.softmax_facet = _identity_on_hidden(width, dim) if cfg.cpr_base_projection else None
        self.base_gradient = True  # training switch (TrainConfig.cpr_base_detach): False = the base logits
        # enter the CPR logits as constants, so only the auxiliary base loss trains the base partition
        self.partition_gradient = True  # training switch (TrainConfig.cpr_detach_partitions): False = the
        # other partitions read detached states and item vectors, so they train only their own layers
        self.rerank_facets = nn.ModuleList(_identity_on_hidden(width, dim) for _ in self.variant.rerank)
        self.context_facet = _identity_on_hidden(width, dim) if self.variant.context else None
        self.pointer_query = _small_linear(width, dim) if self.variant.pointer else None
        self.pointer_key = _small_linear(width, dim) if self.variant.pointer else None
        self.pointer_recency = (nn.Parameter(torch.zeros(cfg.max_length))
                                if self.variant.pointer and cfg.cpr_recency else None)  # by distance t - j
        if self.pointer_recency is not None:
            self.pointer_recency.lr_scale = RECENCY_LR_SCALE  # read by training.loop.parameter_groups
        self.pooling = cfg.cpr_pooling  # mean (published) or logsumexp over an item's slots

    def logits(self, layers: list[torch.Tensor], items: torch.Tensor,
               rows: torch.Tensor | None = None) -> torch.Tensor:
        """Full-catalog logits (M, N + 1) at the chosen prediction points (see ``heads``)."""
        return self._full_logits(layers, items, rows, keep_base=False)[0]

    def logits_and_base(self, layers: list[torch.Tensor], items: torch.Tensor,
                        rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``logits`` and ``base_logits`` (M, N + 1) each from one base product: training's full softmax
        with the auxiliary base loss takes both."""
        return self._full_logits(layers, items, rows, keep_base=True)

    def _full_logits(self, layers: list[torch.Tensor], items: torch.Tensor, rows: torch.Tensor | None,
                     keep_base: bool) -> tuple[torch.Tensor, torch.Tensor]:
        queries = self.head_input(layers)  # (B, L, W)
        base = mask_padding(self.base_query(select_rows(queries, rows)) @ self.item_embedding.weight.T)  # (M, N+1)
        queries = self._partition_input(layers, queries)  # (B, L, W)
        logits = self._rerank(self._cut(base), select_rows(queries, rows), in_place=not keep_base)  # (M, N+1)
        if self.context_facet is not None:
            ids, values = self.history_scores(queries, items, rows)  # (M, L) each
            logits = cpr_scatter(logits, ids, values, kernel=self.scatter_kernel)
        return logits, base

    def rerank_inputs(self, layers: list[torch.Tensor]) -> list[torch.Tensor]:
        """The running logits (B, N + 1) each reranker stage takes its top-k from, at the last slot: the
        base logits for the first stage, the first stage's output for the second, and so on."""
        query = self.head_input(layers)[:, -1]  # (B, W)
        inputs: list[torch.Tensor] = []
        self._rerank(mask_padding(self.base_query(query) @ self.item_embedding.weight.T), query, inputs)
        return inputs

    def partition_scores(self, layers: list[torch.Tensor]) -> torch.Tensor:
        """(B, 1 + R, N + 1) at the last slot: every item scored by the base partition and by each reranker
        stage's facet. Which of them an item near a stage's boundary gets depends on how TopK breaks ties,
        so the parity check accepts any of them there (``exporter.validate``)."""
        query = self.head_input(layers)[:, -1]  # (B, W)
        facets = [self.base_query(query)] + [facet(query) for facet in self.rerank_facets]
        return mask_padding(torch.stack(facets, 1) @ self.item_embedding.weight.T)  # (B, 1+R, N+1)

    def _rerank(self, logits: torch.Tensor, query: torch.Tensor, record: list | None = None,
                in_place: bool = True) -> torch.Tensor:
        """Each reranker stage re-scores the top-k of the running logits (M, N+1) by its own facet;
        ``in_place=False`` leaves the given logits as they are even where no gradient needs them."""
        for k, facet in zip(self.variant.rerank, self.rerank_facets):
            if record is not None:
                record.append(logits.clone())  # _replace may write in place
            top = logits.topk(min(k, logits.shape[1] - 1), dim=1).indices  # (M, k)
            values = _score(facet(query), self._partition_vectors(top)).to(logits.dtype)  # (M, k)
            logits = _replace(logits, top, values) if in_place else logits.scatter(1, top, values)
            in_place = True  # later stages replace in the new tensor
        return logits

    def top_k(self, layers: list[torch.Tensor], items: torch.Tensor, k: int, exclude_seen: bool = False,
              pointer_op: str = "standard", catalog_block: int = CATALOG_BLOCK) -> tuple[torch.Tensor, torch.Tensor]:
        """The exact top-k of ``logits`` (+ seen-item exclusion) from few candidates (DESIGN.md).

        History items get their CPR logits (or, excluded, none); reranked items lie in the top-(k1 +
        k2 + ..) of the base logits; every other item keeps its base logit. So the top-k lies in the
        history items plus the top-(sum k_R + k) base candidates *among the other items*: the catalog
        step leaves the history out (``catalog_candidates`` with the history as exclusions; in eager
        PyTorch no (B, N) base logits at all) and takes sum k_R + k, a constant of the graph. The
        history's own base logits are appended (first slot of each item) because they still decide
        which items the reranker stages take: the top-k_R of the whole catalog lies in the union.
        ``pointer_op="custom"`` computes the history means with the ``cpr_scatter`` op (one custom
        node in an ONNX export) instead of standard ops; the result is the same (the model's ``top_k``,
        every caller's way in, refuses any other ``pointer_op``).
        """
        queries = self.head_input(layers)  # (B, L, W)
        query, base_query = queries[:, -1], self.base_query(queries[:, -1])  # (B, W), (B, D)
        seen = items if (self.context_facet is not None or exclude_seen) else None
        count = min(sum(self.variant.rerank) + k, self.item_embedding.num_embeddings - 1)
        scores, candidates = catalog_candidates(base_query, self.item_embedding.weight, count, seen,
                                                self.topk_kernel, catalog_block)  # (B, C), seen left out
        if seen is not None:  # their base logits too, for the reranker stages: columns C .. C + L
            candidates = torch.cat([candidates, items], dim=1)  # (B, C + L)
            history_base = _score(base_query, self.item_embedding(items)).to(scores.dtype)  # (B, L)
            scores = torch.cat([scores, history_base.masked_fill(~first_slots(items), float("-inf"))], dim=1)
        for j, (k_r, facet) in enumerate(zip(self.variant.rerank, self.rerank_facets)):
            slots = scores.topk(min(k_r, scores.shape[1]), dim=1).indices  # (B, k_R) positions among the candidates
            chosen = candidates.gather(1, slots)  # (B, k_R)
            # a row with fewer items than k_R fills its slots with nothing: id 0, a seen item left out of the
            # catalog candidates (-inf), a repeated history slot (-inf); none of them may gain a score
            empty = scores.gather(1, slots).isneginf() | (chosen == 0)  # (B, k_R)
            rescored = _score(facet(query), self.item_embedding(chosen)).masked_fill(empty, float("-inf"))
            scores = scores.scatter(1, slots, rescored.to(scores.dtype))
        if seen is not None:  # a history item is scored by its history column (or not at all)
            scores = scores[:, :count]  # (B, C)
            if self.context_facet is None:
                scores = torch.cat([scores, scores.new_full(items.shape, float("-inf"))], dim=1)  # (B, C + L)
        if self.context_facet is not None:
            ids, values = self.history_scores(queries, items, None)  # (B, L): ids are items
            if pointer_op == "custom" and not exclude_seen:
                scores = _scatter_history(scores, candidates[:, :count], ids, values)  # (B, C + L)
            else:
                means, first = slot_means(ids, values)
                history = means.to(scores.dtype).masked_fill(~first | exclude_seen, float("-inf"))  # (B, L)
                scores = torch.cat([scores, history], dim=1)  # (B, C + L)
        best = scores.topk(k, dim=1)  # (B, K)
        return best.values, candidates.gather(1, best.indices)

    def sampled_logits(self, layers: list[torch.Tensor], items: torch.Tensor, rows: torch.Tensor | None,
                       targets: torch.Tensor, negatives: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """CPR logits of the target, the shared negatives and the history items: (M, 1 + S + L).

        A negative that is a history item is void (its history column scores it); a history column
        is void if it repeats an earlier slot or the target. Reranker membership needs the base
        logits of the whole catalog, computed without gradient when the variant has an R part.
        """
        queries = self.head_input(layers)  # (B, L, W)
        base_query = self.base_query(select_rows(queries, rows))  # (M, D)
        queries = self._partition_input(layers, queries)  # (B, L, W)
        query = select_rows(queries, rows)  # (M, W)
        facets = torch.stack([base_query] + [f(query) for f in self.rerank_facets], 1)  # (M, 1+R, D)
        stage = self._rerank_stages(facets)  # (M, N+1) or None
        targets_vectors = self.item_embedding(targets).unsqueeze(1)  # (M, 1, D)
        positive = _staged(self._cut_base(self._facet_scores(facets, targets_vectors, _score)), stage,
                           targets.unsqueeze(1))
        negative = _staged(self._cut_base(self._facet_scores(facets, self.item_embedding(negatives),
                                                             lambda f, v: f @ v.T)), stage,
                           negatives.expand(len(targets), -1))
        columns = torch.cat([targets.unsqueeze(1), negatives.expand(len(targets), -1)], dim=1)  # (M, 1+S)
        logits = torch.cat([positive, negative], dim=1)  # (M, 1+S)
        if self.context_facet is None:
            return logits, columns
        ids, values = self.history_scores(queries, items, rows)  # (M, L)
        return _with_history_columns(logits, columns, ids, values)

    def base_logits(self, layers: list[torch.Tensor], rows: torch.Tensor | None,
                    columns: torch.Tensor | None = None) -> torch.Tensor:
        """The base partition alone, s = f_S(q) . E, before any replacement: over the whole catalog
        (M, N + 1), or at ``columns`` (M, C) item ids (0 = void: -inf). Training's auxiliary loss."""
        query = self.base_query(select_rows(self.head_input(layers), rows))  # (M, D)
        if columns is None:
            return mask_padding(query @ self.item_embedding.weight.T)  # (M, N+1)
        scores = _score(query, self.item_embedding(columns))  # (M, C)
        return scores.masked_fill(columns == 0, float("-inf"))

    def base_query(self, query: torch.Tensor) -> torch.Tensor:
        """The base partition's query (..., D): f_S(q), or h itself when the head has no f_S."""
        if self.softmax_facet is None:
            return query[..., : self.dim]  # h: the first D channels of q
        return self.softmax_facet(query)

    def _partition_input(self, layers: list[torch.Tensor], queries: torch.Tensor) -> torch.Tensor:
        """The head input (B, L, W) the partitions other than the base read: ``queries`` itself, or with
        ``partition_gradient`` off the same values from detached layers (so Mi's own layer still learns)."""
        if self.partition_gradient:
            return queries
        return self.head_input([layer.detach() for layer in layers])

    def _partition_vectors(self, ids: torch.Tensor) -> torch.Tensor:
        """Item vectors (..., D) for the partitions other than the base, detached if asked."""
        vectors = self.item_embedding(ids)
        return vectors if self.partition_gradient else vectors.detach()

    def _facet_scores(self, facets: torch.Tensor, vectors: torch.Tensor, score) -> torch.Tensor:
        """score(facets (M, 1+R, D), vectors): the reranker facets (rows 1..R) read detached vectors if asked."""
        if self.partition_gradient or facets.shape[1] == 1:
            return score(facets, vectors)
        return torch.cat([score(facets[:, :1], vectors), score(facets[:, 1:], vectors.detach())], dim=1)

    def _cut(self, base: torch.Tensor) -> torch.Tensor:
        return base if self.base_gradient else base.detach()

    def _cut_base(self, scores: torch.Tensor) -> torch.Tensor:
        """Scores (M, 1+R, C) of every facet with the base facet's row cut from the graph if asked."""
        if self.base_gradient:
            return scores
        return torch.cat([scores[:, :1].detach(), scores[:, 1:]], dim=1)

    def head_input(self, layers: list[torch.Tensor]) -> torch.Tensor:
        """q at every slot: h (B, L, D), or with Mi [h ; GELU(W window)] (B, L, 2D)."""
        hidden = layers[-1]  # (B, L, D)
        if self.mix is None:
            return hidden
        window = [_shift(layer, back) for layer in reversed(layers[-self.mixed_layers:]) for back in range(WINDOW)]
        return torch.cat([hidden, F.gelu(self.mix(torch.cat(window, dim=-1)))], dim=-1)  # (B, L, 2D)

    def history_scores(self, queries: torch.Tensor, items: torch.Tensor,
                       rows: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Per prediction point, its history ids (M, L) (0 = none) and their scores c_j + p_j (M, L)."""
        asking = queries[:, -1:] if rows is None else queries  # (B, R, W): R = 1 or L prediction points
        values = self.context_facet(asking) @ self._partition_vectors(items).transpose(1, 2)  # (B, R, L)
        if self.pointer_query is not None:
            values = values + self.pointer_query(asking) @ self.pointer_key(queries).transpose(1, 2)  # (B, R, L)
        if self.pointer_recency is not None:
            values = values + self.pointer_recency[_distances(asking.shape[1], items.shape[1], items.device)]
        ids, values = (items, values[:, 0]) if rows is None else (causal_histories(items)[rows], values[rows])
        if self.pooling == "logsumexp":  # every slot of an item then holds the pooled value: its mean is that value
            values = pool_occurrences(ids, values).to(values.dtype)
        return ids, values  # (M, L): later slots of each prefix are id 0

    @torch.no_grad()
    def _rerank_stages(self, facets: torch.Tensor) -> torch.Tensor | None:
        """Which facet scores each (row, item): 0 = base, j = the last reranker stage holding it."""
        if not self.variant.rerank:
            return None
        weight = self.item_embedding.weight
        running = mask_padding(facets[:, 0] @ weight.T)  # (M, N+1)
        stage = torch.zeros(running.shape, dtype=torch.long, device=running.device)
        for j, k in enumerate(self.variant.rerank, start=1):
            top = running.topk(min(k, running.shape[1] - 1), dim=1).indices  # (M, k)
            running.scatter_(1, top, _score(facets[:, j], weight[top]).to(running.dtype))
            stage.scatter_(1, top, j)
        return stage


def _scatter_history(scores: torch.Tensor, candidates: torch.Tensor, ids: torch.Tensor,
                     values: torch.Tensor) -> torch.Tensor:
    """History means written by ``cpr_scatter`` onto local columns [pad, C candidates, L slots].

    A history item among the candidates goes to its candidate column, any other to the column of
    its first slot; column 0 stands for padding. Returns (B, C + L) scores: candidates, then slots.
    """
    from seqrec.exporter.custom_ops import cpr_scatter_node

    batch, count = scores.shape
    in_candidates = ids.unsqueeze(-1) == candidates.unsqueeze(1)  # (B, L, C)
    first_slot = (ids.unsqueeze(2) == ids.unsqueeze(1)).int().argmax(-1)  # (B, L) first occurrence
    local = torch.where(in_candidates.any(-1), 1 + in_candidates.int().argmax(-1), 1 + count + first_slot)
    local = local.masked_fill(ids == 0, 0)  # (B, L) column per slot, 0 = padding
    empty = scores.new_full((batch, 1 + ids.shape[1]), float("-inf"))
    columns = torch.cat([empty[:, :1], scores, empty[:, 1:]], dim=1)  # (B, 1 + C + L)
    return cpr_scatter_node(columns, local, values.to(columns.dtype))[:, 1:]


def _with_history_columns(logits: torch.Tensor, columns: torch.Tensor, ids: torch.Tensor,
                          values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply the history replacement to sampled columns and append one column per history slot."""
    means, first = slot_means(ids, values)  # (M, L)
    targets = columns[:, :1]  # (M, 1)
    is_target = ids == targets  # (M, L)
    matches = is_target.sum(1, keepdim=True)  # (M, 1)
    target_value = torch.where(is_target, means, 0).sum(1, keepdim=True) / matches.clamp_min(1)  # (M, 1): one
    # mean per id; reads the target's slots only, so another id's non-finite mean cannot reach it
    logits = torch.cat([torch.where(matches > 0, target_value.to(logits.dtype), logits[:, :1]),
                        logits[:, 1:]], dim=1)
    in_history = (columns[:, 1:].unsqueeze(-1) == ids.unsqueeze(1)).any(-1)  # (M, S)
    logits[:, 1:] = logits[:, 1:].masked_fill(in_history, float("-inf"))
    keep = first & ~is_target  # (M, L)
    history = means.to(logits.dtype).masked_fill(~keep, float("-inf"))  # (M, L)
    void = torch.cat([torch.zeros_like(targets, dtype=torch.bool), in_history], dim=1)  # (M, 1+S)
    return torch.cat([logits, history], dim=1), torch.cat([columns.masked_fill(void, 0), ids * keep], dim=1)


def pool_occurrences(ids: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Each slot's value -> log-sum-exp of the values of every slot of its row holding the same id (M, L).

    Computed in float32 at least (float64 stays). Padding slots (id 0) pool among themselves; callers ignore them.
    """
    same = ids.unsqueeze(2) == ids.unsqueeze(1)  # (M, L, L): [m, j, k] = slots j and k hold one id
    spread = values.to(torch.promote_types(values.dtype, torch.float32)).unsqueeze(1).expand(same.shape)  # (M, L, L): [m, j, k] = values[m, k]
    return spread.masked_fill(~same, float("-inf")).logsumexp(-1)  # (M, L)


def slot_means(ids: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean of each slot's id over its row (M, L), and whether the slot is the id's first occurrence.

    Summed and returned in float32 at least (float64 stays; callers cast): an fp16 sum overflows where
    the mean does not. A slot reads only its own id's slots, so a non-finite value (padding's included)
    reaches no other id: ``same @ values`` would add 0 * inf = NaN from every slot.
    """
    same = (ids.unsqueeze(2) == ids.unsqueeze(1)) & (ids > 0).unsqueeze(1)  # (M, L, L)
    means = occurrence_sums(same, values) / same.sum(2).clamp_min(1)  # (M, L)
    return means, first_slots(ids, same)


def first_slots(ids: torch.Tensor, same: torch.Tensor | None = None) -> torch.Tensor:
    """(M, L) bool: the slot holds a real id that no earlier slot of its row holds."""
    same = (ids.unsqueeze(2) == ids.unsqueeze(1)) if same is None else same  # (M, L, L)
    earlier = same.new_ones(same.shape[-2:]).tril(-1)  # (L, L): [j, k] = k < j (same[0] fails on an empty batch)
    return (ids > 0) & ~(same & earlier).any(2)


def _replace(logits: torch.Tensor, index: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """logits.scatter(1, index, values), in place when no gradient needs the old values."""
    if logits.requires_grad or values.requires_grad:
        return logits.scatter(1, index, values)
    return logits.scatter_(1, index, values)


def _staged(scores: torch.Tensor, stage: torch.Tensor | None, columns: torch.Tensor) -> torch.Tensor:
    """scores (M, 1+R, C) of every facet -> (M, C) of the facet each column's item falls in."""
    if stage is None:
        return scores[:, 0]
    return scores.gather(1, stage.gather(1, columns).unsqueeze(1)).squeeze(1)  # (M, C)


def _score(query: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
    """query (M, [F,] D) . vectors (M, C, D) -> (M, [F,] C)."""
    if query.dim() == 2:
        return (query.unsqueeze(1) * vectors).sum(-1)  # (M, C)
    return query @ vectors.transpose(1, 2)  # (M, F, C)


def _distances(queries: int, length: int, device: torch.device) -> torch.Tensor:
    """(R, L) distance t - j from each prediction point (the last R slots) back to slot j, clamped to [0, L)."""
    steps = torch.arange(length, device=device)
    return (steps[length - queries :].unsqueeze(1) - steps.unsqueeze(0)).clamp(0, length - 1)


def _shift(hidden: torch.Tensor, back: int) -> torch.Tensor:
    """The state ``back`` slots earlier at every slot, zeros before the first slot: (B, L, D)."""
    if back == 0:
        return hidden
    return F.pad(hidden, (0, 0, back, 0))[:, : hidden.shape[1]]


def _identity_on_hidden(width: int, dim: int) -> nn.Linear:
    """A projection (width -> dim) that starts as the identity on the first dim inputs, h_t."""
    linear = nn.Linear(width, dim)
    with torch.no_grad():
        linear.weight.zero_()
        linear.weight[:, :dim].copy_(torch.eye(dim))
        linear.bias.zero_()
    return linear


def _small_linear(width: int, dim: int) -> nn.Linear:
    linear = nn.Linear(width, dim)
    with torch.no_grad():
        linear.weight.normal_(0.0, 0.02)
        linear.bias.zero_()
    return linear
