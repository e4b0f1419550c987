"""Catalog top-k in Triton: a kernel that keeps each user's running top-k over item tiles, and a merge.

Grid: (user blocks of BLOCK_M, item splits). A program loads its users' queries once, then walks
its split of the catalog BLOCK_N items at a time: one ``tl.dot`` gives the tile's fp32 scores,
the padding item and the items past the split get -inf, and each score is packed with its item id
into one int64 key:

    key = order(score) << 32 | (2**31 - 1 - id)

``order`` maps float32 bits to an int32 with the same order (negative floats have their magnitude
bits flipped), so comparing keys compares scores first and, among equal scores, prefers the
smaller id. Every NaN (a NaN row, inf - inf in a product; x86 makes NaNs with the sign bit set,
which would order below -inf) is first replaced by one positive quiet NaN, whose key is above
+inf's: NaN ranks highest, as in ``torch.topk``, and NaNs tie among themselves.

The tile's best BLOCK_K keys (``tl.topk``) are merged with the running BLOCK_K
(``tl.join`` + ``tl.topk``); a tile whose best key beats no user's running k-th key is skipped.
Each program writes its BLOCK_K keys; the launcher takes ``torch.topk`` over every split's keys
(int64, so the tie rule holds across splits too) and unpacks scores and ids.

Exclusions: a user's S excluded ids would cost a (BLOCK_M, BLOCK_N, S) comparison per tile, as
much as the scores themselves. The kernel keeps k + S candidates instead (at most S of them are
excluded), and the launcher drops excluded candidates before the final ``torch.topk``.

Registrations, as for cpr_scatter (torch 2.13, CPU build): ``seqrec::catalog_topk`` is a
``torch.library.triton_op`` whose body launches the kernel through ``wrap_triton``: torch.compile
sees the kernel on CUDA; called directly it runs on CPU tensors under TRITON_INTERPRET=1; tracing
it on CPU fails (the interpreter touches fake tensors' data). ``torch.export`` on any device should
use ``seqrec::catalog_topk_opaque`` from ``seqrec.kernels.catalog_topk``.

Not yet measured on a GPU: the block sizes are first guesses (a BLOCK_M x 2 BLOCK_K int64 merge
buffer is large for registers at BLOCK_K = 512).
"""

from __future__ import annotations

import torch

from seqrec.errors import received_expected
from seqrec.kernels.catalog_topk import (check_catalog_topk_inputs, choose_kernel, no_gradient,
                                         outputs_without_gradient, triton_candidates)
from seqrec.kernels.reference.pt_catalog_topk import common_dtype, eligible_exclusions, padding_where_ineligible
from seqrec.kernels.triton import require_triton

triton = require_triton()
import triton.language as tl  # noqa: E402  (after require_triton, so a missing triton names the install command)

BLOCK_M = 16  # users per program (tl.dot needs 16 or more)
MIN_BLOCK_N = 64  # items per tile, at least; BLOCK_N = max(MIN_BLOCK_N, BLOCK_K)
INTERPRETED_MIN_BLOCK_N = 16  # under the interpreter every tile's sort costs Python time: smallest tiles
TARGET_PROGRAMS = 1024  # item splits are added until the grid has about this many programs
ID_BITS = 2**31 - 1  # ids are stored as ID_BITS - id in the low half of a key
CANONICAL_NAN = 0x7FC00000  # the bits every NaN score is packed as: above +inf, as torch.topk ranks NaN


@triton.jit
def _pack(scores, ids):
    """fp32 scores and int64 ids (same shape) -> int64 keys ordered by score, then by smaller id."""
    bits = tl.where(scores != scores, 0x7FC00000, scores.to(tl.int32, bitcast=True))  # CANONICAL_NAN: above +inf
    order = tl.where(bits >= 0, bits, bits ^ 0x7FFFFFFF)  # negative floats: larger magnitude, smaller key
    return (order.to(tl.int64) << 32) | (2147483647 - ids)


@triton.jit
def _catalog_topk_kernel(
    queries_ptr,  # (B, D) float queries
    items_ptr,  # (N+1, D) float item table, row 0 the padding item
    keys_ptr,  # (B, SPLITS * BLOCK_K) int64 out: each split's best keys per user
    stride_queries_b,  # elements between users of queries
    stride_queries_d,  # elements between features of queries
    stride_items_n,  # elements between items of the table
    stride_items_d,  # elements between features of the table
    stride_keys_b,  # elements between users of keys
    users,  # B
    rows,  # N+1
    dim,  # D
    items_per_split,  # items each split walks (a multiple of BLOCK_N)
    BLOCK_M: tl.constexpr,  # users per program
    BLOCK_N: tl.constexpr,  # items per tile (>= BLOCK_K)
    BLOCK_D: tl.constexpr,  # features held (power of two >= D)
    BLOCK_K: tl.constexpr,  # candidates kept per user (power of two >= k + S)
    PRECISION: tl.constexpr,  # tl.dot input_precision: "ieee" keeps fp32 scores exact
    UPCAST: tl.constexpr,  # multiply in fp32 (Triton 3.9's interpreter gets tl.dot of bf16/fp16 wrong)
):
    user_block = tl.program_id(0)
    split = tl.program_id(1)
    users_here = user_block * BLOCK_M + tl.arange(0, BLOCK_M)  # (BLOCK_M,)
    features = tl.arange(0, BLOCK_D)  # (BLOCK_D,)
    queries = tl.load(queries_ptr + users_here[:, None].to(tl.int64) * stride_queries_b
                      + features[None, :] * stride_queries_d,
                      mask=(users_here[:, None] < users) & (features[None, :] < dim), other=0.0)  # (BLOCK_M, BLOCK_D)
    if UPCAST:
        queries = queries.to(tl.float32)
    best = _pack(tl.full((BLOCK_M, BLOCK_K), float("-inf"), tl.float32),
                 tl.zeros((BLOCK_M, BLOCK_K), tl.int64))  # (BLOCK_M, BLOCK_K) running best: -inf at id 0
    first = split * items_per_split
    last = tl.minimum(first + items_per_split, rows)
    for start in range(first, last, BLOCK_N):
        items = start + tl.arange(0, BLOCK_N).to(tl.int64)  # (BLOCK_N,) item ids
        table = tl.load(items_ptr + items[:, None] * stride_items_n + features[None, :] * stride_items_d,
                        mask=(items[:, None] < last) & (features[None, :] < dim), other=0.0)  # (BLOCK_N, BLOCK_D)
        if UPCAST:
            table = table.to(tl.float32)
        scores = tl.dot(queries, tl.trans(table), input_precision=PRECISION, out_dtype=tl.float32)  # (BLOCK_M, BLOCK_N)
        real = (users_here[:, None] < users) & ((items > 0) & (items < last))[None, :]  # (BLOCK_M, BLOCK_N)
        scores = tl.where(real, scores, float("-inf"))  # padding item, past the split, past the last user
        keys = _pack(scores, items[None, :])  # (BLOCK_M, BLOCK_N)
        if BLOCK_N > BLOCK_K:
            keys = tl.topk(keys, BLOCK_K, dim=1)  # (BLOCK_M, BLOCK_K)
        improves = tl.max(keys, axis=1) > tl.min(best, axis=1)  # (BLOCK_M,)
        if tl.max(improves.to(tl.int32), axis=0) > 0:
            merged = tl.reshape(tl.join(best, keys), (BLOCK_M, 2 * BLOCK_K))  # (BLOCK_M, 2 BLOCK_K)
            best = tl.topk(merged, BLOCK_K, dim=1)
    outputs = split * BLOCK_K + tl.arange(0, BLOCK_K)  # (BLOCK_K,)
    tl.store(keys_ptr + users_here[:, None].to(tl.int64) * stride_keys_b + outputs[None, :], best,
             mask=users_here[:, None] < users)


def launch_catalog_topk(queries: torch.Tensor, items_table: torch.Tensor, k: int,
                        exclude: torch.Tensor | None = None,
                        splits: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Checked launch + merge: queries (B, D), items_table (N+1, D) -> scores (B, k), ids (B, k), best first.

    ``splits`` fixes the number of item splits (tests); by default the grid gets about
    ``TARGET_PROGRAMS`` programs.
    """
    check_launch_inputs(queries, items_table, k, exclude)
    queries, items_table = common_dtype(queries, items_table)
    blocks = _blocks(queries.shape[1], triton_candidates(k, exclude))
    splits = splits or _splits(queries.shape[0], items_table.shape[0], blocks["BLOCK_N"])
    keys = split_keys(queries, items_table, blocks, splits)  # (B, splits * BLOCK_K)
    if exclude is not None:
        keys = _drop_excluded(keys, eligible_exclusions(exclude, items_table.shape[0]))
    scores, ids = unpack(keys.topk(k, dim=1).values)  # (B, k) each, best first
    return scores.to(queries.dtype), padding_where_ineligible(scores, ids)


def split_keys(queries: torch.Tensor, items_table: torch.Tensor, blocks: dict[str, int],
               splits: int) -> torch.Tensor:
    """Run the kernel: every split's best BLOCK_K keys per user, (B, splits * BLOCK_K) int64."""
    users, rows = queries.shape[0], items_table.shape[0]
    keys = torch.empty((users, splits * blocks["BLOCK_K"]), dtype=torch.int64, device=queries.device)
    per_split = triton.cdiv(triton.cdiv(rows, splits), blocks["BLOCK_N"]) * blocks["BLOCK_N"]
    # Products of bf16/fp16 numbers are exact in fp32, so the upcast computes what a GPU's bf16 dot
    # with fp32 accumulation does; "ieee" keeps fp32 inputs out of tf32.
    upcast = _INTERPRETED and queries.dtype != torch.float32
    precision = "ieee" if queries.dtype == torch.float32 or upcast else None
    if users:
        _wrap(_catalog_topk_kernel)[(triton.cdiv(users, BLOCK_M), splits)](
            queries, items_table, keys,
            queries.stride(0), queries.stride(1), items_table.stride(0), items_table.stride(1), keys.stride(0),
            users, rows, queries.shape[1], per_split,
            BLOCK_M=BLOCK_M, PRECISION=precision, UPCAST=upcast, **blocks)
    return keys


def pack(scores: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """The kernel's ``_pack`` in torch: fp32 scores, int64 ids -> int64 keys."""
    bits = scores.float().view(torch.int32).masked_fill(scores.isnan(), CANONICAL_NAN)
    order = torch.where(bits >= 0, bits, bits ^ 0x7FFFFFFF)
    return (order.to(torch.int64) << 32) | (ID_BITS - ids)


def unpack(keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """int64 keys -> fp32 scores, int64 ids: the inverse of ``pack``."""
    order = (keys >> 32).to(torch.int32)
    bits = torch.where(order >= 0, order, order ^ 0x7FFFFFFF)
    return bits.view(torch.float32), ID_BITS - (keys & 0xFFFFFFFF)


def check_launch_inputs(queries: torch.Tensor, items_table: torch.Tensor, k: int,
                        exclude: torch.Tensor | None) -> None:
    """Everything the kernel assumes, checked before anything is launched."""
    check_catalog_topk_inputs(queries, items_table, k, exclude)
    choose_kernel("triton", queries, items_table, k, exclude)  # dtype and k + S limits
    device = queries.device
    if device.type != "cuda" and not (device.type == "cpu" and _INTERPRETED):
        raise ValueError(received_expected("catalog_topk triton device", device,
                                           "CUDA tensors, or CPU tensors with TRITON_INTERPRET=1 set before "
                                           "seqrec.kernels.triton.triton_catalog_topk is imported"))
    if items_table.shape[0] > ID_BITS:
        raise ValueError(received_expected("catalog_topk triton catalog size", items_table.shape[0] - 1,
                                           f"fewer than {ID_BITS} items"))


def _blocks(dim: int, candidates: int) -> dict[str, int]:
    block_k = max(16, triton.next_power_of_2(candidates))
    min_block_n = INTERPRETED_MIN_BLOCK_N if _INTERPRETED else MIN_BLOCK_N
    return {"BLOCK_K": block_k, "BLOCK_N": max(min_block_n, block_k),
            "BLOCK_D": max(16, triton.next_power_of_2(dim))}


def _splits(users: int, rows: int, block_n: int) -> int:
    """Item splits: enough programs to fill a GPU, never a split without items."""
    wanted = triton.cdiv(TARGET_PROGRAMS, triton.cdiv(max(users, 1), BLOCK_M))
    return max(1, min(wanted, triton.cdiv(rows, block_n)))


def _drop_excluded(keys: torch.Tensor, exclude: torch.Tensor) -> torch.Tensor:
    """keys (B, C) with every candidate whose id is in its row of exclude (B, S) set to the empty key."""
    ids = unpack(keys)[1]  # (B, C)
    excluded = torch.zeros_like(ids, dtype=torch.bool)  # (B, C)
    for slot in range(exclude.shape[1]):  # S steps over (B, C), not one (B, C, S) comparison
        excluded |= ids == exclude[:, slot : slot + 1]
    return keys.masked_fill(excluded, EMPTY_KEY)  # padding (0) only matches the empty key itself


def _wrap(kernel):
    """The kernel as torch.library sees it: traceable on CUDA; interpreted kernels come back as they are."""
    wrap_triton = getattr(torch.library, "wrap_triton", None)  # torch >= 2.6
    return kernel if wrap_triton is None else wrap_triton(kernel)


def triton_catalog_topk(queries: torch.Tensor, items_table: torch.Tensor, k: int,
                        exclude: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """catalog_topk on the Triton kernel: the registered triton_op where torch has one."""
    if HAS_TRITON_OP:
        return torch.ops.seqrec.catalog_topk(queries, items_table, k, exclude)
    return launch_catalog_topk(queries, items_table, k, exclude)


def _registered_body(queries: torch.Tensor, items_table: torch.Tensor, k: int,
                     exclude: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    return launch_catalog_topk(queries, items_table, k, exclude)


EMPTY_KEY = int(pack(torch.tensor(float("-inf")), torch.tensor(0)))  # what an empty candidate slot holds
_INTERPRETED = not isinstance(_catalog_topk_kernel, triton.runtime.JITFunction)  # TRITON_INTERPRET=1 at import
HAS_TRITON_OP = hasattr(torch.library, "triton_op")  # torch >= 2.6
if HAS_TRITON_OP:
    torch.library.triton_op("seqrec::catalog_topk", _registered_body, mutates_args=()).register_autograd(
        no_gradient, setup_context=outputs_without_gradient)
