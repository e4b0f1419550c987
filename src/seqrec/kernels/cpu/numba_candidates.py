"""Numba loops of the int8 catalog top-k (``seqrec.kernels.int8_catalog_topk``): one pass per tile
over the few groups of scores that can matter, each row on its own thread.

Everything here works on NumPy views of torch tensors (no copies) and in integers, except
``rescore``, which computes the exact float32 dot products of the surviving candidates. A row's
candidates are kept in its slice of ``values`` (int32 approximate scores) and ``positions`` (int64
positions in the norm-ordered table), ``counts[row]`` of them; ``floors[row]`` is the smallest
approximate score that may still enter (int64, so ``kth - slack`` cannot wrap).

Imported lazily: ``numba`` is needed only for this path (``pip install numba``).
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

INT32_MIN = np.iinfo(np.int32).min  # the score of padding, exclusions and a tile's ragged tail
FIRST_FLOOR = INT32_MIN + 1  # before any candidate: every real score enters, INT32_MIN never does
CLOSED = np.iinfo(np.int64).max  # the floor of a row that overflowed: nothing enters any more


@njit(cache=True, nogil=True)
def _keep_within_slack(values, positions, count, k, slack):  # pragma: no cover - compiled
    """Compact one row's candidates (count >= k) to those at least its k-th largest value minus
    slack; returns the new count and that floor."""
    kth = np.partition(values[:count], count - k)[count - k]
    floor = np.int64(kth) - slack
    kept = 0
    for i in range(count):
        if values[i] >= floor:
            values[kept] = values[i]
            positions[kept] = positions[i]
            kept += 1
    return kept, floor


@njit(parallel=True, cache=True)
def exclude_in_tile(scores, excluded, start):  # pragma: no cover - compiled
    """scores (M, W) int32: INT32_MIN at each row's excluded positions (M, S) that fall in the tile."""
    rows, width = scores.shape
    for row in prange(rows):
        for slot in range(excluded.shape[1]):
            column = excluded[row, slot] - start
            if 0 <= column < width:
                scores[row, column] = INT32_MIN


CHUNK = 64  # group maxima tested at once: a vectorised any() skips chunks with nothing live


@njit(parallel=True, cache=True)
def scan_tile(scores, maxima, start, floors, values, positions, counts, kept, k, slacks, overflow):  # pragma: no cover
    """Append to each row's candidates every score of the tile at or above its floor.

    scores (M, W) int32, maxima (M, W / G) int32: the maximum of each strided group (group g holds
    columns g, g + W / G, ...), so a group below the floor is skipped without reading its scores,
    and a chunk of CHUNK groups all below it with one vectorised test. A full row (capacity
    reached) is compacted to its k-th largest minus its slack, which raises the floor; if that
    still leaves more than half the capacity, the row is marked in ``overflow`` and closed (the
    caller scores it another way). At the end of the tile a row that has grown by half since its
    last compaction (``kept``) is compacted too, so the floor keeps up with the running k-th.
    """
    rows, width = scores.shape
    stride = maxima.shape[1]
    group = width // stride
    capacity = values.shape[1]
    for row in prange(rows):
        floor = floors[row]
        count = counts[row]
        for first in range(0, stride, CHUNK):
            last = min(first + CHUNK, stride)
            live = False
            for g in range(first, last):
                live |= maxima[row, g] >= floor
            if not live:
                continue
            for g in range(first, last):
                if maxima[row, g] < floor:
                    continue
                for lane in range(group):
                    column = g + lane * stride
                    value = scores[row, column]
                    if value < floor:
                        continue
                    if count == capacity:
                        count, floor = _keep_within_slack(values[row], positions[row], count, k, slacks[row])
                        kept[row] = count
                        if count > capacity // 2:
                            overflow[row] = True
                            floor = CLOSED
                        if value < floor:
                            continue
                    values[row, count] = value
                    positions[row, count] = start + column
                    count += 1
        if count >= k and 2 * count >= 3 * kept[row] + 16 and floor != CLOSED:
            count, floor = _keep_within_slack(values[row], positions[row], count, k, slacks[row])
            kept[row] = count
        floors[row] = floor
        counts[row] = count


@njit(parallel=True, cache=True)
def finish_rows(values, positions, counts, k, slacks):  # pragma: no cover - compiled
    """Compact every row with at least k candidates to its final k-th largest minus its slack."""
    for row in prange(values.shape[0]):
        if counts[row] >= k:
            counts[row], _ = _keep_within_slack(values[row], positions[row], counts[row], k, slacks[row])


# Only "reassoc": it lets LLVM vectorise the sum (another order, as the module docstring allows). Not
# fastmath=True: its "nnan"/"ninf" let LLVM assume no NaN or inf, and an overflowing product (inf - inf)
# came out inf or -inf instead of the reference's NaN (which ranks first), so an item was lost. Not
# "contract" either: a fused multiply-add does not round the product, so inf + (a finite -3e40) stayed
# inf where the reference's rounded products give inf - inf = NaN.
RESCORE_FASTMATH = {"reassoc"}


@njit(parallel=True, cache=True, fastmath=RESCORE_FASTMATH)
def rescore(queries, rows, positions, counts, out):  # pragma: no cover - compiled
    """out (M, C) float32: the exact dot product of each query with its candidates' rows of the
    (norm-ordered) float32 table, -inf past each row's count; NaN and inf as IEEE arithmetic gives them."""
    width = out.shape[1]
    dim = queries.shape[1]
    for row in prange(out.shape[0]):
        for i in range(width):
            if i >= counts[row]:
                out[row, i] = -np.inf
                continue
            item = rows[positions[row, i]]
            total = np.float32(0.0)
            for d in range(dim):
                total += queries[row, d] * item[d]
            out[row, i] = total


def use_threads(threads: int) -> None:
    """Run the loops on as many threads as torch's intra-op pool (within numba's own limit)."""
    numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))
