"""Catalog top-k in blocked plain PyTorch: the fast path on the CPU, no (B, N) buffer.

Users go in blocks of ``user_block`` rows; for each block the catalog goes by in tiles of
``item_tile`` items, by decreasing row norm (below). A tile's scores, (user_block, item_tile)
floats, are one matrix product into a buffer reused for every tile (it stays in cache; the (B, N)
product of the reference is written to and read back from memory). The padding item (id 0) and
each user's excluded ids are set to -inf in the tile. The running top-k of each user (scores and
ids, unsorted) is merged with the tile's best as follows, exact up to ties:

1. Maxima of groups of ``group`` scores: (block, item_tile / group), one cheap reduction. A group
   is strided (columns c, c + item_tile / group, ...), so the reduction runs over whole rows of
   a (group, item_tile / group) view, which vectorises; a reduction over 16 consecutive scores
   does not and cost 8 times more here.
2. Only a group whose maximum beats the user's running k-th score can contribute.
   - While some row's k-th score is -inf (the first tile), only the k groups with the largest
     maxima can (k other groups each hold a score at least as large as every score of any other
     group): ``topk`` over the maxima picks them, and the picked groups' scores (block, k * group)
     and the running top-k go through one ``topk`` (``_merge_tile``).
   - From then on (``_merge_sparse``) few groups beat it: ``nonzero`` on (maxima > k-th) gives one
     flat list of (row, group), ``take`` reads their scores through flat indices, a second
     ``nonzero`` keeps those above the k-th score (row-major, so each row's stay together), and
     they are placed into a (block, most per row) matrix next to the running top-k for one
     ``topk``.

``torch.topk`` over whole rows of scores was the cost to beat: on this project's CPU it takes
longer than the matrix product that makes the scores (k = 160: about 5 ns per score against
0.6 ns). Step 1 reads each score once; the selection work after it is proportional to the groups
that beat the running k-th score, so the sooner that rises, the less there is.

NaN: the reference's ``torch.topk`` ranks a NaN score above every number, and the selection above
compares with ``>``, which a NaN fails. A group's maximum is NaN when any of its scores is (``amax``
propagates NaN), so a NaN among a block's eligible scores (a NaN in a query or an item row, inf -
inf in a product, an overflow) shows in one ``amax`` over the tile's maxima (a few microseconds);
such a block is scored by the reference instead (``pt_catalog_topk_in_blocks``), on as many users
at a time as hold the whole catalog's scores within one tile's buffer. A table with a NaN row sends
every block there: right, and slower.

Norm order (``Tiling.by_norm``, on by default): items with large rows are the likeliest to score
high, so the tiles visit a copy of the table sorted by decreasing row norm (padding item last).
The first tile then holds the highest-norm items, the k-th score after it is higher than after an
arbitrary tile, and the last tiles (small norms) rarely have a group above it. Exactness does not
depend on the order. The sorted copy, its item ids and each item's position (N + 1 rows: D floats
and two int64) are built on the first call for a table and cached for the last table seen, keyed on
the tensor object and its storage (both held, so neither id nor address can be reused), its
``_version`` (in-place updates such as an optimizer step), offset, shape, stride, dtype and device
(``TableCache``): one extra copy of the table in memory (256 MB at
N = 1M, D = 64), no term in B x N. Exclusions are mapped to positions once per block.

Measured on this project's 2-core machine (D = 64, B = 512, k = 110, a (B, 50) exclusion, random
Gaussian table; single figures move by 10-20% between runs, and other jobs shared the machine for
part of this work), interleaved with the previous version in one process: N = 1M 697-745 ms ->
558-591 ms, N = 100k 95-122 ms -> 82-86 ms. What was tried and did not pay:

- Seeding each user's threshold from the exact k-th of a probe of the P highest-norm items
  (P = 4096, with a provable rounding margin) instead of reordering the whole catalog: the probe's
  k-th was lower than the first tile's, and its ``topk`` cost about as much as a tile; N = 100k got
  slower (0.89x), 1M barely faster (1.04x).
- The highest-norm 16,384 items as an extra first tile, the rest in natural order with those items
  masked: helped, but scores one tile more than the full order.
- A second level of maxima (maxima of ``group`` group maxima) to shorten the first ``nonzero``:
  4% slower at N = 1M; most super-groups were live.
- ``masked_select`` for the survivors: slower than ``nonzero`` and 1-D indexing. Checking each
  surviving score against the user's (S,) exclusions instead of setting them in the tile: up to
  2 ms a tile in the first tiles, against a fixed ~0.1 ms.
- Other tilings (item_tile 8k-64k, user_block 128-512, group 8-32): none beat 16,384 x 256 x 16
  beyond this machine's noise at N = 100k and 1M.

Threads: torch's intra-op threads parallelise each product, reduction and topk over the block's
rows; nothing else is spawned. Two worker threads with one intra-op thread each, taking half the
users, measured the same within this shared machine's noise (B = 1024, N = 1M).

Lower float precision does not pay here: on this CPU (AVX-512 bf16, no AMX) a bf16 product runs at
0.7x the float32 rate, and fp16 at 1.1-1.3x on the product alone (benchmarks/catalog_topk.py
prints all three). int8 does: ``torch._int_mm`` runs about 3x the float32 rate, and
``seqrec.kernels.int8_catalog_topk`` builds on this module's norm order with int8 candidates, a
proven error bound and float32 rescoring; ``kernel="auto"`` takes it on the CPU for float32 inputs.

``kernel="auto"`` used this path on the CPU when the catalog spans more than one tile (it still
does for other dtypes, or without numba): with
B = 256, D = 64 it took 0.6-0.7x the reference's time at N = 16k, the same at 12k, and up to 4x
the reference's time at 2k with k = 160 (the first tile's k x group candidates cover the catalog)
(measured before the norm order and the sparse merge).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

import torch
import torch.nn.functional as F

from seqrec.errors import ConfigError, received_expected
from seqrec.kernels.reference.pt_catalog_topk import (NEG_INF, common_dtype, eligible_exclusions,
                                                      padding_where_ineligible, pt_catalog_topk_in_blocks)


@dataclass(frozen=True)
class Tiling:
    """Block sizes of the blocked path. An ``item_tile`` that is not a multiple of ``group`` works
    but pads a copy of every tile."""

    item_tile: int = 16384  # items scored per matrix product
    user_block: int = 256  # users per block: a tile's buffer is user_block x item_tile scores
    group: int = 16  # scores per maximum in the selection step
    by_norm: bool = True  # visit the items by decreasing norm (a sorted copy of the table, cached)

    def __post_init__(self) -> None:
        for name in ("item_tile", "user_block", "group"):
            if getattr(self, name) < 1:
                raise ConfigError(received_expected(f"catalog_topk tiling {name}", getattr(self, name), "at least 1"))


def blocked_catalog_topk(queries: torch.Tensor, items_table: torch.Tensor, k: int,
                         exclude: torch.Tensor | None = None,
                         tiling: Tiling = Tiling()) -> tuple[torch.Tensor, torch.Tensor]:
    """queries (B, D), items_table (N+1, D), exclude (B, S) or None -> scores (B, k), ids (B, k), best first."""
    queries, items_table = common_dtype(queries, items_table)
    users = queries.shape[0]
    scores = queries.new_full((users, k), NEG_INF)  # (B, k)
    ids = torch.zeros((users, k), dtype=torch.long, device=queries.device)  # (B, k)
    if k == 0 or users == 0:
        return scores, ids
    buffer = queries.new_empty(min(tiling.user_block, users) * tiling.item_tile)  # one tile of scores
    order = norm_order(items_table) if tiling.by_norm else None
    for first in range(0, users, tiling.user_block):
        block = slice(first, first + tiling.user_block)
        blocked = exclude[block] if exclude is not None else None
        scores[block], ids[block] = _block_topk(queries[block], items_table, k, blocked, tiling, buffer, order)
    return scores, padding_where_ineligible(scores, ids)


class NormOrder(NamedTuple):
    """The table's rows by decreasing norm, the padding item last: the running k-th score rises sooner."""

    rows: torch.Tensor  # (N + 1, D) the table's rows in this order
    ids: torch.Tensor  # (N + 1,) int64: the item at each position
    position: torch.Tensor  # (N + 1,) int64: the position of each item


class TableCache:
    """One value derived from the last items table seen (a model scores with its own table), rebuilt
    when the table changes: another tensor object (held here, so its id cannot pass to another),
    another storage (held too, so its address cannot pass to another: ``param.data = new`` keeps the
    object and its version), an in-place update (``_version``, as after an optimizer step), another
    offset, shape, stride, dtype or device. Holding the storage keeps a replaced table's memory
    alive until the next call with a changed table.

    Not seen: writes that bypass the version counter into the same storage (through ``.data``, a
    NumPy view, or inside ``torch.inference_mode`` on a table made there, which has no counter);
    such a table needs a new tensor object (``clone()``) to be re-read.

    ``get`` holds a lock, build included: threads sharing a cache build a table once and never read
    an entry another thread is replacing. A copy (``copy.deepcopy`` of a model) starts empty.
    """

    def __init__(self, build: Callable[[torch.Tensor], Any]) -> None:
        self._build = build
        self._lock = threading.Lock()
        self._entry: tuple[torch.Tensor, torch.UntypedStorage, tuple, Any] | None = None

    def get(self, items_table: torch.Tensor) -> Any:
        storage = items_table.untyped_storage()
        key = _table_key(items_table, storage)
        with self._lock:
            if self._entry is None or self._entry[0] is not items_table or self._entry[2] != key:
                self._entry = None  # one table at a time: free the old value before building the new one
                self._entry = (items_table, storage, key, self._build(items_table))  # held: key[1] stays unique
            return self._entry[3]

    def __getstate__(self) -> dict[str, Any]:
        return {"_build": self._build}  # a lock does not copy; the copy rebuilds its entry

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["_build"])


def _table_key(items_table: torch.Tensor, storage: torch.UntypedStorage) -> tuple:
    """What must match for a cached value to stand: version counter, storage (the address of its
    StorageImpl, unique while the cache holds it), layout, dtype, device."""
    counter = None if items_table.is_inference() else items_table._version  # inference tensors have none
    return (counter, storage._cdata, items_table.storage_offset(), tuple(items_table.shape), items_table.stride(),
            items_table.dtype, items_table.device)


def _build_norm_order(items_table: torch.Tensor) -> NormOrder:
    norms = torch.linalg.vector_norm(items_table.float(), dim=1)  # (N + 1,)
    norms[0] = NEG_INF
    ids = norms.argsort(descending=True)  # (N + 1,) item 0 last
    position = torch.empty_like(ids)
    position[ids] = torch.arange(ids.shape[0], device=ids.device)
    return NormOrder(items_table[ids], ids, position)


_NORM_ORDERS = TableCache(_build_norm_order)


def norm_order(items_table: torch.Tensor) -> NormOrder:
    """The table sorted by row norm, the padding item last; cached for the last table seen."""
    return _NORM_ORDERS.get(items_table)


class Tile(NamedTuple):
    items: torch.Tensor  # (W, D) rows of the table
    start: int  # column c is position start + c
    order: NormOrder | None  # the order of positions (None: position = item id)


def _block_topk(queries: torch.Tensor, items_table: torch.Tensor, k: int, exclude: torch.Tensor | None,
                tiling: Tiling, buffer: torch.Tensor, order: NormOrder | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The sorted top-k of one block of users over the whole catalog: (M, k) scores, (M, k) ids."""
    rows = queries.shape[0]
    exclude = eligible_exclusions(exclude, items_table.shape[0]) if exclude is not None else None
    best_scores = queries.new_full((rows, k), NEG_INF)  # (M, k) unsorted running top-k
    best_ids = torch.zeros((rows, k), dtype=torch.long, device=queries.device)  # (M, k)
    lanes = torch.arange(tiling.group, device=queries.device)  # (G,)
    table = order.rows if order is not None else items_table
    excluded = None if exclude is None else order.position[exclude] if order is not None else exclude  # positions
    for start in range(0, table.shape[0], tiling.item_tile):
        tile = Tile(table[start : start + tiling.item_tile], start, order)
        threshold = best_scores.amin(1, keepdim=True)  # (M, 1) running k-th score
        scores = _tile_scores(queries, tile, excluded, tiling, buffer)
        maxima = scores.view(rows, tiling.group, -1).amax(1)  # (M, W / G): strided groups reduce fast
        if bool(maxima.amax().isnan()):  # amax propagates NaN: some eligible score of the block is NaN
            return _reference_block(queries, items_table, k, exclude, tiling)
        if bool((threshold == NEG_INF).any()):  # the first tile(s): many groups beat -inf
            best_scores, best_ids = _merge_tile(best_scores, best_ids, scores, maxima, tile, lanes)
        else:
            best_scores, best_ids = _merge_sparse(best_scores, best_ids, scores, maxima, tile, lanes, threshold)
    order = best_scores.argsort(dim=1, descending=True)  # (M, k)
    return best_scores.gather(1, order), best_ids.gather(1, order)


def _reference_block(queries: torch.Tensor, items_table: torch.Tensor, k: int, exclude: torch.Tensor | None,
                     tiling: Tiling) -> tuple[torch.Tensor, torch.Tensor]:
    """The block's top-k from the reference, on as many users at a time as one tile's buffer holds
    scores of the whole catalog: the answer for blocks whose scores hold NaN (see the module docstring)."""
    users = max(1, tiling.user_block * tiling.item_tile // items_table.shape[0])
    return pt_catalog_topk_in_blocks(queries, items_table, k, exclude, users)  # (M, k) each, best first


def _item_ids(columns: torch.Tensor, tile: Tile) -> torch.Tensor:
    return tile.order.ids[columns + tile.start] if tile.order is not None else columns + tile.start


def _tile_scores(queries: torch.Tensor, tile: Tile, exclude: torch.Tensor | None, tiling: Tiling,
                 buffer: torch.Tensor) -> torch.Tensor:
    """Scores of one tile (M, W) with W a multiple of the group; -inf at padding and the tail, and at
    the exclusions if given."""
    rows, width = queries.shape[0], tile.items.shape[0]
    scores = buffer[: rows * width].view(rows, width)  # (M, W)
    torch.mm(queries, tile.items.T, out=scores)  # [M, D] x [D, W] -> [M, W]
    padding = tile.order.position.shape[0] - 1 - tile.start if tile.order is not None else -tile.start
    if 0 <= padding < width:
        scores[:, padding] = NEG_INF  # the padding item
    if exclude is not None:  # positions; padding and out-of-range ids are the padding item, -inf already
        _exclude_in_tile(scores, exclude - tile.start)
    short = -width % tiling.group
    return F.pad(scores, (0, short), value=NEG_INF) if short else scores  # (M, W rounded up to the group)


def _exclude_in_tile(tile: torch.Tensor, local: torch.Tensor) -> None:
    """Set tile[row, local[row, s]] = -inf wherever local (M, S) falls inside the tile.

    Padding ids become -start: outside every tile but the first, where column 0 is -inf already.
    """
    inside = (local >= 0) & (local < tile.shape[1])  # (M, S)
    rows, slots = inside.nonzero(as_tuple=True)
    tile[rows, local[rows, slots]] = NEG_INF


def _merge_tile(best_scores: torch.Tensor, best_ids: torch.Tensor, tile: torch.Tensor, maxima: torch.Tensor,
                where: Tile, lanes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Running top-k (M, k) merged with one tile's scores (M, W) and group maxima (M, W / G); see the
    module docstring."""
    rows, width = tile.shape
    stride = width // lanes.shape[0]  # group c holds columns c, c + stride, c + 2 stride, ...
    threshold = best_scores.amin(1, keepdim=True)  # (M, 1) running k-th score
    pick = _promising_groups(maxima, threshold, best_scores.shape[1])
    if pick is None:
        return best_scores, best_ids
    columns = (pick.groups.unsqueeze(2) + lanes * stride).flatten(1)  # (M, take * G)
    scores = tile.gather(1, columns)  # (M, take * G)
    if pick.real is not None:  # slots that pad a row repeat group 0: their scores must not enter
        scores.view(rows, -1, lanes.shape[0]).masked_fill_(~pick.real.unsqueeze(2), NEG_INF)
    cutoff = torch.maximum(pick.floor, torch.nextafter(threshold, threshold.new_tensor(float("inf"))))  # (M, 1)
    entering, real = _compact(scores >= cutoff)  # (M, C) each: above the running k-th and the floor
    scores = scores.gather(1, entering).masked_fill_(~real, NEG_INF)  # (M, C)
    scores = torch.cat([best_scores, scores], dim=1)  # (M, k + C)
    ids = torch.cat([best_ids, _item_ids(columns.gather(1, entering), where)], dim=1)  # (M, k + C)
    top = scores.topk(best_scores.shape[1], dim=1, sorted=False)  # (M, k)
    return top.values, ids.gather(1, top.indices)


def _merge_sparse(best_scores: torch.Tensor, best_ids: torch.Tensor, tile: torch.Tensor, maxima: torch.Tensor,
                  where: Tile, lanes: torch.Tensor, threshold: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Running top-k (M, k) merged with one tile's scores (M, W) and group maxima (M, W / G) once every
    row's k-th score is finite.

    Few groups beat it, so they are found as one flat list of (row, group) (``nonzero`` on the
    maxima above the k-th score), their G scores read with ``take``, and those above it merged. The
    exclusions are -inf in the tile already (set through their positions). A second level (maxima
    of G group maxima) to shorten the ``nonzero`` measured slower: most super-groups were live.
    """
    rows, width = tile.shape
    group = lanes.shape[0]
    stride = width // group  # group c holds columns c, c + stride, ...
    groups = (maxima > threshold).view(-1).nonzero()[:, 0]  # (L,) flat indices into maxima, row-major
    row = groups.div(stride, rounding_mode="floor")  # (L,)
    flat = (groups + row * (width - stride)).unsqueeze(1) + lanes * stride  # (L, G) flat indices into the tile
    scores = tile.take(flat)  # (L, G)
    entering = scores > threshold.view(-1)[row].unsqueeze(1)  # (L, G)
    entering = entering.view(-1).nonzero()[:, 0]  # (C,) rows still sorted
    scores, flat = scores.view(-1)[entering], flat.view(-1)[entering]  # (C,) each
    if flat.numel() == 0:
        return best_scores, best_ids
    row = flat.div(width, rounding_mode="floor")  # (C,)
    ids = _item_ids(flat - row * width, where)  # (C,)
    counts = torch.bincount(row, minlength=rows)  # (M,)
    slots = torch.arange(row.shape[0], device=row.device) - (counts.cumsum(0) - counts)[row]  # (C,)
    wide_scores = best_scores.new_full((rows, int(counts.max())), NEG_INF)  # (M, most per row)
    wide_scores[row, slots] = scores
    wide_ids = best_ids.new_zeros((rows, wide_scores.shape[1]))
    wide_ids[row, slots] = ids
    top = torch.cat([best_scores, wide_scores], dim=1).topk(best_scores.shape[1], dim=1, sorted=False)  # (M, k)
    return top.values, torch.cat([best_ids, wide_ids], dim=1).gather(1, top.indices)


class GroupPick(NamedTuple):
    """The groups of a tile that one merge looks into."""

    groups: torch.Tensor  # (M, take) group indices
    real: torch.Tensor | None  # (M, take) bool: False where a slot only pads a row (None: no padding)
    floor: torch.Tensor  # (M, 1) no score below it can enter the row's top-k


def _promising_groups(maxima: torch.Tensor, threshold: torch.Tensor, k: int) -> GroupPick | None:
    """The groups each row must look into, or None if no row has any.

    A group matters if its maximum beats the row's running k-th score (``threshold`` (M, 1)), and
    only the k largest such. While some row has k of them or more, ``topk`` picks k per row, and
    the k-th largest maximum is a floor: k groups hold a score at least that large. After the
    first tiles no row has k, and the few are compacted with ``nonzero`` instead: a ``topk`` over
    all maxima would cost more than the rest of the tile.
    """
    live = maxima > threshold  # (M, W / G)
    take = int(live.sum(1).max()) if live.numel() else 0
    if take == 0:
        return None
    if take >= k:
        top = maxima.topk(k, dim=1, sorted=False)  # (M, k)
        return GroupPick(top.indices, None, top.values.amin(1, keepdim=True))
    groups, real = _compact(live)  # (M, take) each
    return GroupPick(groups, real, threshold)


def _compact(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The columns where mask (M, C) is True, row by row, left aligned: (M, most per row) columns,
    and a (M, most per row) bool that is False in the slots that pad shorter rows (column 0)."""
    counts = mask.sum(1)  # (M,)
    width = int(counts.max()) if counts.numel() else 0
    rows, columns = mask.nonzero(as_tuple=True)  # row-major: each row's columns together, in order
    slots = torch.arange(rows.shape[0], device=mask.device) - (counts.cumsum(0) - counts)[rows]
    picked = torch.zeros((mask.shape[0], width), dtype=torch.long, device=mask.device)  # (M, width)
    picked[rows, slots] = columns
    real = torch.zeros((mask.shape[0], width), dtype=torch.bool, device=mask.device)  # (M, width)
    real[rows, slots] = True
    return picked, real
