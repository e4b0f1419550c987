"""Catalog top-k on the CPU from int8 candidates, rescored exactly in float32.

The blocked float32 path (``seqrec.kernels.blocked_catalog_topk``) spends most of its time in the
(user_block, item_tile) products and in ~30 small PyTorch ops per tile that select the scores
beating each user's running k-th. This path does the same walk over the norm-ordered table with:

1. **int8 products.** The table is quantised once (cached with its norm order) with one scale for
   the whole table, s_i = max |v| / 127, and each query row with its own, s_u = max |u| / 127;
   ``torch._int_mm`` (oneDNN, AVX-512 VNNI) multiplies a block of users by a tile of items into
   exact int32 sums. On this project's CPU that runs 3x the float32 rate.
2. **A bound, not a guess.** With u = s_u q_u + e_u and v = s_i q_v + e_v,

       |u.v - s_u s_i (q_u . q_v)| <= |e_u| |v| + |s_u q_u| |e_v| <= |e_u| max|v| + |s_u q_u| max|e_v|

   (Cauchy-Schwarz twice), so in int units each approximate score is within E_u of the exact one,
   with E_u computed per user from its actual rounding residual and the table's largest row norm
   and residual norm. If A_k is a user's k-th largest approximate score, every item of the exact
   top-k has an approximate score >= A_k - 2 E_u (k items have exact scores >= A_k - E_u, so the
   k-th exact score is at least that, and each top-k item's approximate score is within E_u of its
   exact one). Each user keeps every item with approximate score >= (running k-th) - slack,
   slack = 2 E_u rounded up with a margin for float rounding; the running k-th only rises, so no
   item of the final top-k is ever dropped.
3. **One compiled pass per tile** (``seqrec.kernels.cpu.numba_candidates``): group maxima as in the
   blocked path (``amax`` over strided groups, vectorised by torch), then, per user on its own
   thread, only the groups at or above the user's floor are read and their scores appended;
   a buffer that is full, or at the end of a tile has grown by half since its last compaction,
   is compacted to the k-th largest minus the slack, which raises the floor. The first tile
   seeds each floor from the k-th largest group maximum (k groups hold a score at least that
   large). Steady tile at N = 1M (256 x 16,384): product 0.7-0.9 ms, maxima 0.35-0.45 ms, scan
   0.3-0.5 ms on this project's 2 cores.
4. **Exact rescoring.** The candidates (about 4.3 k at k = 110, N = 1M, Gaussian data) are
   scored in float32 against the table's float rows and ``torch.topk`` picks the k best. Scores are
   float32 dot products like the reference's, summed in another order: equal to rounding.

A user whose candidates do not fit (more than half the buffer within the slack of the k-th: the
approximate scores cannot separate its items, as with a zero query or a table of near-duplicate
rows), or whose bound is not finite, is scored by the blocked float32 path instead, so the result
never depends on the bound being tight, only on it being true. Nothing is lost against the
reference: same ids, ties aside.

Memory: the int8 table (N + 1 rows of D bytes, D rounded up to 8: 64 MB at N = 1M, D = 64) next
to the norm-ordered float copy the blocked path caches; a tile of int32 scores; the candidate
buffers (user_block x capacity). No term in B x N.

What did not pay (benchmarks/RESULTS.md, issue 7): computing the group maxima inside the numba
loop (as fast as torch's ``amax``, and the scan got slower), other tile shapes, groups and
buffer sizes, and tiles small enough for L2 (``_int_mm`` loses more at narrow shapes).

Measured (benchmarks/catalog_topk.py, B = 512, k = 110, 50 exclusions): 259-268 ms at N = 1M
against 601-651 for the blocked path and 2,255-2,810 for matmul + topk.
"""

from __future__ import annotations

import math
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, NamedTuple

import torch
import torch.nn.functional as F

from seqrec.errors import ConfigError, MissingDependencyError, received_expected
from seqrec.kernels.blocked_catalog_topk import NormOrder, TableCache, Tiling, blocked_catalog_topk, norm_order
from seqrec.kernels.reference.pt_catalog_topk import NEG_INF, eligible_exclusions, padding_where_ineligible

INT8_MAX = 127
SLACK_MARGIN = 1e-3  # relative margin on the bound for float rounding in the residuals and norms
MAX_SLACK = 2.0**40  # int units; int32 scores span 2**32: a wider slack would keep every item anyway
_LOCK = threading.Lock()  # numba's parallel loops are entered by one Python thread at a time


def numba_available() -> bool:
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass(frozen=True)
class Int8Tiling:
    """Block sizes of the int8 path; ``capacity`` is the candidate buffer per user (at least 4k)."""

    item_tile: int = 16384
    user_block: int = 256
    group: int = 16
    capacity: int = 2048

    def __post_init__(self) -> None:
        for name in ("item_tile", "user_block", "group", "capacity"):
            if getattr(self, name) < 1:
                raise ConfigError(received_expected(f"int8 catalog_topk tiling {name}", getattr(self, name),
                                                    "at least 1"))


class QuantizedTable(NamedTuple):
    """The norm-ordered table in int8 with one scale, and what the error bound needs."""

    order: NormOrder
    rows: torch.Tensor  # (N + 1, D') int8, order.rows / scale rounded, zero columns up to D' (padded_dim)
    scale: float
    max_norm: float  # the largest row norm of the table (float64: a float32 sum of squares of rows overflows)
    max_residual: float  # the largest norm of a row's rounding residual, row - scale * int8 row
    finite: bool  # False if a row holds inf or NaN, or a norm is not finite: no bound holds, the blocked path scores


def _quantize(items_table: torch.Tensor, chunk: int = 16384) -> QuantizedTable:
    """The table in int8 (float32 arithmetic: its rounding, ~1e-7 of a row, is far inside SLACK_MARGIN).

    Norms are taken in int8 units (entries at most 127) and scaled back in float64: in float32 a finite
    row of entries near 1e19 has an inf norm, and an inf bound has no int64 slack."""
    order = norm_order(items_table)
    low, high = torch.aminmax(order.rows)
    finite = bool(low.isfinite() & high.isfinite())  # inf or NaN anywhere reaches the extremes
    scale = max(-float(low), float(high)) / INT8_MAX if finite else 1.0
    scale = scale or 1.0
    quantized = torch.zeros((order.rows.shape[0], padded_dim(order.rows.shape[1])), dtype=torch.int8)  # (N + 1, D')
    max_norm = max_residual = 0.0
    for first in range(0, order.rows.shape[0] if finite else 0, chunk):  # a cache-sized chunk at a time
        scaled = order.rows[first : first + chunk] / scale  # (C, D) at most INT8_MAX in magnitude
        rounded = torch.round(scaled).clamp_(-INT8_MAX, INT8_MAX)  # (C, D) float32 integers
        quantized[first : first + chunk, : scaled.shape[1]] = rounded
        max_norm = max(max_norm, scale * float(torch.linalg.vector_norm(scaled, dim=1).max()))
        max_residual = max(max_residual, scale * float(torch.linalg.vector_norm(scaled - rounded, dim=1).max()))
    finite = finite and math.isfinite(max_norm) and math.isfinite(max_residual)
    return QuantizedTable(order, quantized, scale, max_norm, max_residual, finite)


_QUANTIZED = TableCache(_quantize)


def padded_dim(dim: int) -> int:
    """D rounded up to a multiple of 8: zero columns change no sum, and ``torch._int_mm`` (2.13, CPU)
    returns wrong sums when the inner dimension is 1."""
    return -(-dim // 8) * 8


class QuantizedQueries(NamedTuple):
    rows: torch.Tensor  # (M, D') int8, zero columns past D
    slack: torch.Tensor  # (M,) int64: 2 E_u in int units, rounded up, with a margin; 0 where not bounded
    bounded: torch.Tensor  # (M,) bool: False where 2 E_u is not finite or beyond MAX_SLACK (the blocked path scores)


def quantize_queries(queries: torch.Tensor, table: QuantizedTable) -> QuantizedQueries:
    """Each query row in int8 with its own scale, and its slack (the module docstring's 2 E_u).

    A slack that is not finite, or so wide that it keeps every item (beyond MAX_SLACK), would wrap
    round in int64 and drop every candidate: such rows are marked unbounded instead."""
    exact = queries.double()  # (M, D)
    scale = exact.abs().amax(1, keepdim=True) / INT8_MAX  # (M, 1)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    quantized = torch.round(exact / scale).clamp_(-INT8_MAX, INT8_MAX)  # (M, D)
    residual = torch.linalg.vector_norm(exact - scale * quantized, dim=1)  # (M,)
    rounded = torch.linalg.vector_norm(scale * quantized, dim=1)  # (M,)
    bound = (residual * table.max_norm + rounded * table.max_residual) / (scale[:, 0] * table.scale)  # (M,)
    slack = torch.ceil(2 * bound * (1 + SLACK_MARGIN) + 2)  # (M,) float64
    bounded = slack <= MAX_SLACK  # (M,) False for inf and NaN too
    quantized = F.pad(quantized, (0, padded_dim(quantized.shape[1]) - quantized.shape[1]))  # (M, D')
    return QuantizedQueries(quantized.to(torch.int8), slack.masked_fill(~bounded, 0).to(torch.int64), bounded)


def int8_catalog_topk(queries: torch.Tensor, items_table: torch.Tensor, k: int,
                      exclude: torch.Tensor | None = None,
                      tiling: Int8Tiling = Int8Tiling()) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 queries (B, D), items_table (N+1, D) on the CPU, exclude (B, S) or None
    -> scores (B, k) float32, ids (B, k), best first."""
    check_int8_can_run(queries, items_table)
    users = queries.shape[0]
    scores = queries.new_full((users, k), NEG_INF)  # (B, k)
    ids = torch.zeros((users, k), dtype=torch.long)  # (B, k)
    if k == 0 or users == 0:
        return scores, ids
    from seqrec.kernels.cpu import numba_candidates as loops

    table = _QUANTIZED.get(items_table)
    if not table.finite or not bool(queries.isfinite().all()):
        return blocked_catalog_topk(queries, items_table, k, exclude, Tiling(tiling.item_tile, tiling.user_block))
    with _LOCK, _on_torch_threads(loops):
        for first in range(0, users, tiling.user_block):
            block = slice(first, first + tiling.user_block)
            blocked = exclude[block] if exclude is not None else None
            scores[block], ids[block] = _block_topk(queries[block], items_table, table, k, blocked, tiling, loops)
    return scores, padding_where_ineligible(scores, ids)


@contextmanager
def _on_torch_threads(loops) -> Iterator[None]:
    """Run numba's loops on as many threads as torch's intra-op pool, and leave that pool as it was:
    numba's OpenMP layer, when it first starts, sets the process's OpenMP thread count to all cores,
    which torch reads as its own (``--threads 1`` was undone by the first int8 call)."""
    threads = torch.get_num_threads()
    loops.use_threads(threads)
    try:
        yield
    finally:
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)


def int8_refusal(queries: torch.Tensor, items_table: torch.Tensor) -> str | None:
    """Why this path cannot take these inputs (an error message), or None if it can."""
    if not numba_available():
        return received_expected("catalog_topk kernel 'int8'", "numba not installed",
                                 "numba (pip install numba), or kernel='blocked'")
    if queries.device.type != "cpu" or {queries.dtype, items_table.dtype} != {torch.float32}:
        return received_expected("catalog_topk int8 inputs", f"{queries.dtype} queries, {items_table.dtype} table on "
                                 f"{queries.device}", "float32 queries and table on the CPU (use kernel='blocked')")
    return None


def check_int8_can_run(queries: torch.Tensor, items_table: torch.Tensor) -> None:
    """MissingDependencyError without numba, ValueError for inputs this path does not take."""
    refusal = int8_refusal(queries, items_table)
    if refusal is not None:
        raise MissingDependencyError(refusal) if not numba_available() else ValueError(refusal)


class Candidates(NamedTuple):
    """Each row's candidates: approximate scores, positions in the norm order, how many, the floor."""

    values: torch.Tensor  # (M, capacity) int32
    positions: torch.Tensor  # (M, capacity) int64
    counts: torch.Tensor  # (M,) int64
    floors: torch.Tensor  # (M,) int64
    overflow: torch.Tensor  # (M,) bool
    kept: torch.Tensor  # (M,) int64: the count after the row's last compaction


def _block_topk(queries: torch.Tensor, items_table: torch.Tensor, table: QuantizedTable, k: int,
                exclude: torch.Tensor | None, tiling: Int8Tiling, loops) -> tuple[torch.Tensor, torch.Tensor]:
    """The sorted top-k of one block of users: (M, k) scores, (M, k) ids."""
    quantized = quantize_queries(queries, table)
    found = _candidates(quantized, table, k, _excluded_positions(exclude, table.order, queries.shape[0]),
                        tiling, loops)
    scores, ids = _rescored_topk(queries, table.order, found, k, loops)
    overflow = (found.overflow | ~quantized.bounded).nonzero()[:, 0]  # (O,) rows the bound could not narrow
    if overflow.numel():
        again = exclude[overflow] if exclude is not None else None
        scores[overflow], ids[overflow] = blocked_catalog_topk(queries[overflow], items_table, k, again,
                                                               Tiling(tiling.item_tile, tiling.user_block))
    return scores, ids


def _excluded_positions(exclude: torch.Tensor | None, order: NormOrder, rows: int) -> torch.Tensor:
    """(M, S + 1) positions in the norm order of each row's exclusions and of the padding item."""
    padding = torch.full((rows, 1), order.position[0].item(), dtype=torch.long)  # (M, 1)
    if exclude is None:
        return padding
    eligible = eligible_exclusions(exclude, order.position.shape[0])  # (M, S), 0 where not an item
    return torch.cat([order.position[eligible], padding], dim=1).contiguous()  # (M, S + 1)


def _candidates(quantized: QuantizedQueries, table: QuantizedTable, k: int, excluded: torch.Tensor,
                tiling: Int8Tiling, loops) -> Candidates:
    """Walk the tiles of the int8 table and keep, for each row, every item within its slack of its
    running k-th approximate score."""
    rows = quantized.rows.shape[0]
    capacity = max(tiling.capacity, 4 * k)
    found = Candidates(torch.empty((rows, capacity), dtype=torch.int32), torch.empty((rows, capacity), dtype=torch.long),
                       torch.zeros(rows, dtype=torch.long), torch.full((rows,), loops.FIRST_FLOOR, dtype=torch.long),
                       torch.zeros(rows, dtype=torch.bool), torch.zeros(rows, dtype=torch.long))
    arrays = [t.numpy() for t in found]
    slack = quantized.slack.numpy()
    buffer = torch.empty(rows * tiling.item_tile, dtype=torch.int32)
    for start in range(0, table.rows.shape[0], tiling.item_tile):
        scores = _tile_scores(quantized.rows, table.rows[start : start + tiling.item_tile], tiling.group, buffer)
        loops.exclude_in_tile(scores.numpy(), excluded.numpy(), start)
        maxima = scores.view(rows, tiling.group, -1).amax(1)  # (M, W / G): strided groups
        if start == 0:
            _seed_floors(found.floors, maxima, k, quantized.slack, loops)
        loops.scan_tile(scores.numpy(), maxima.numpy(), start, arrays[3], arrays[0], arrays[1], arrays[2], arrays[5],
                        k, slack, arrays[4])
    loops.finish_rows(arrays[0], arrays[1], arrays[2], k, slack)
    return found


def _tile_scores(queries: torch.Tensor, items: torch.Tensor, group: int, buffer: torch.Tensor) -> torch.Tensor:
    """(M, W rounded up to the group) int32 exact sums of int8 products; INT32_MIN in the ragged tail."""
    rows, width = queries.shape[0], items.shape[0]
    scores = buffer[: rows * width].view(rows, width)  # (M, W)
    torch._int_mm(queries, items.T, out=scores)  # [M, D] x [D, W] -> [M, W] int32
    short = -width % group
    return F.pad(scores, (0, short), value=torch.iinfo(torch.int32).min) if short else scores


def _seed_floors(floors: torch.Tensor, maxima: torch.Tensor, k: int, slack: torch.Tensor, loops) -> None:
    """Start each floor at the first tile's k-th largest group maximum minus the slack: k groups
    each hold a score at least that large, so the k-th largest approximate score is too."""
    if maxima.shape[1] < k:
        return
    kth = maxima.topk(k, dim=1, sorted=False).values.amin(1).to(torch.long)  # (M,)
    seeded = torch.where(kth > loops.INT32_MIN, kth - slack, torch.full_like(kth, loops.FIRST_FLOOR))
    torch.maximum(floors, seeded.clamp(min=loops.FIRST_FLOOR), out=floors)


def _rescored_topk(queries: torch.Tensor, order: NormOrder, found: Candidates, k: int,
                   loops) -> tuple[torch.Tensor, torch.Tensor]:
    """The k best candidates of each row by their exact float32 scores: (M, k) scores and ids, best first."""
    width = max(int(found.counts.max()), k)
    exact = torch.empty((queries.shape[0], width), dtype=torch.float32)  # (M, C)
    loops.rescore(queries.contiguous().numpy(), order.rows.numpy(), found.positions.numpy(), found.counts.numpy(),
                  exact.numpy())
    best = exact.topk(k, dim=1)  # (M, k) sorted
    positions = found.positions[:, :width].gather(1, best.indices)  # (M, k), unset past a row's count
    return best.values, order.ids[positions.masked_fill_(best.values == NEG_INF, 0)]


def candidates_per_row(queries: torch.Tensor, items_table: torch.Tensor, k: int,
                       tiling: Int8Tiling = Int8Tiling()) -> torch.Tensor:
    """(B,) how many candidates each row rescored: the price of the bound (for benchmarks)."""
    from seqrec.kernels.cpu import numba_candidates as loops

    table = _QUANTIZED.get(items_table)
    counts = []
    with _LOCK, _on_torch_threads(loops):
        for first in range(0, queries.shape[0], tiling.user_block):
            block = queries[first : first + tiling.user_block]
            found = _candidates(quantize_queries(block, table), table, k,
                                _excluded_positions(None, table.order, block.shape[0]), tiling, loops)
            counts.append(found.counts)
    return torch.cat(counts) if counts else torch.zeros(0, dtype=torch.long)

