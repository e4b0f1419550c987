"""Public op: the k best items of a catalog for each user, without a (B, N) score matrix.

``catalog_topk(queries, items_table, k, exclude)`` returns, for each query row, the k largest
scores ``queries @ items_table.T`` and their item ids, best first, where row 0 of the table is the
padding item (never a result) and each row's ``exclude`` ids (seen items; 0 = padding, ignored)
are left out. It equals the reference (full product, -inf at the padding column and the
exclusions, ``torch.topk``; ``seqrec.kernels.reference.pt_catalog_topk``) with these rules:

* ties: the returned scores are the k largest; which of several items with the k-th score is
  returned, and the order of equal scores, is unspecified, as with ``torch.topk``;
* a row with fewer than k eligible items (k <= N always; exclusions can leave fewer) fills the
  rest with score -inf and id 0, the padding item;
* scores are computed and returned in ``torch.promote_types`` of the two inputs' dtypes, with
  autocast switched off inside the op; fast paths sum the products in another order than one
  large matrix product, so scores agree to rounding, not bit for bit;
* exclusion ids outside 1..N are ignored like padding.

Kernels (``kernel=``): "pytorch" is the reference, run on ``Tiling().user_block`` users at a time
(a (user_block, N+1) score matrix, never (B, N+1)); "blocked" tiles the catalog in plain PyTorch
(``seqrec.kernels.blocked_catalog_topk``; any device); "int8" generates candidates from int8
products with a proven error bound and rescores them in float32 (``seqrec.kernels.int8_catalog_topk``;
float32 on the CPU, needs numba; the CPU fast path); "triton" runs the Triton kernel (CUDA, or CPU
tensors under TRITON_INTERPRET=1 for tests; k + S at most ``MAX_TRITON_CANDIDATES``); "auto" picks
Triton on CUDA, on the CPU the int8 path when the catalog spans more than one tile (the blocked
path if numba is missing or the inputs are not float32), and the reference for smaller catalogs
(one tile: its blocks of users hold no more scores than the blocked path's tile buffer) and for
tensors on the "meta" device (shapes only: the other paths read values).

NaN scores (a NaN in a query or an item row, inf - inf in a product) rank above every number, as
``torch.topk`` ranks them in the reference, on every path.

Cached copy of the table: the "blocked" and "int8" paths (so "auto" on the CPU for catalogs over one
tile) build a prepared copy of ``items_table`` on the first call (its rows sorted by norm; for "int8"
also an int8 copy) and keep it, with a reference to the table and its storage, until a call with
another table: one extra table in memory, and a replaced table's storage stays alive until then. It
is rebuilt when the table is another tensor object, has another storage (``param.data = new``
included), was updated in place through autograd's version counter (``mul_``, an optimizer step),
or has another offset, shape, stride, dtype or device. Writes that bypass the version counter into
the same storage (through ``tensor.data``, a NumPy view, or under ``torch.inference_mode`` on a
table made there) are not seen: pass ``items_table.clone()`` after such writes.

Registered operators, as for ``cpr_scatter``:

* ``register_catalog_topk_opaque()`` -> ``torch.ops.seqrec.catalog_topk_opaque``: a plain
  ``custom_op`` with a fake kernel, which ``torch.export`` keeps as one node; it runs "auto".
* ``register_catalog_topk_triton()`` -> ``torch.ops.seqrec.catalog_topk``, a ``triton_op`` (see
  ``seqrec.kernels.triton.triton_catalog_topk``) for torch.compile on CUDA.

There is no gradient: the op selects items for scoring and runs under ``torch.no_grad`` (inputs
that require grad, such as a model's embedding table, are fine; the outputs do not).
"""

from __future__ import annotations

import contextlib
import functools
import operator

import torch

from seqrec.errors import ConfigError, received_expected
from seqrec.kernels.blocked_catalog_topk import Tiling, blocked_catalog_topk
from seqrec.kernels.int8_catalog_topk import check_int8_can_run, int8_catalog_topk, int8_refusal
from seqrec.kernels.reference.pt_catalog_topk import pt_catalog_topk_in_blocks
from seqrec.kernels.triton import FLOAT_DTYPES, MAX_TRITON_CANDIDATES, triton_available, triton_interpreting

KERNELS = ("auto", "pytorch", "blocked", "int8", "triton")


def catalog_topk(queries: torch.Tensor, items_table: torch.Tensor, k: int, exclude: torch.Tensor | None = None,
                 kernel: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """queries (B, D), items_table (N+1, D), k <= N, exclude (B, S) int64 or None -> scores (B, k), ids (B, k)."""
    k = check_catalog_topk_inputs(queries, items_table, k, exclude)
    chosen = choose_kernel(kernel, queries, items_table, k, exclude)
    with torch.no_grad(), _without_autocast(queries.device):
        if chosen == "triton":
            from seqrec.kernels.triton.triton_catalog_topk import triton_catalog_topk

            return triton_catalog_topk(queries, items_table, k, exclude)
        if chosen == "blocked":
            return blocked_catalog_topk(queries, items_table, k, exclude)
        if chosen == "int8":
            return int8_catalog_topk(queries, items_table, k, exclude)
        return pt_catalog_topk_in_blocks(queries, items_table, k, exclude, Tiling().user_block)


def check_catalog_topk_inputs(queries: torch.Tensor, items_table: torch.Tensor, k: int,
                              exclude: torch.Tensor | None) -> int:
    """The checks every implementation shares: shapes, dtypes, devices and the range of k; returns k as an int."""
    excluded = "None" if exclude is None else tuple(exclude.shape)
    if (queries.dim() != 2 or items_table.dim() != 2 or queries.shape[1] != items_table.shape[1]
            or items_table.shape[0] == 0 or (exclude is not None and (exclude.dim() != 2
                                                                       or exclude.shape[0] != queries.shape[0]))):
        raise ValueError(received_expected("catalog_topk shapes", f"queries {tuple(queries.shape)}, items_table "
                                           f"{tuple(items_table.shape)}, exclude {excluded}",
                                           "queries (B, D), items_table (N+1, D), exclude (B, S) or None"))
    for name, tensor in (("queries", queries), ("items_table", items_table)):
        if not tensor.is_floating_point():
            raise TypeError(received_expected(f"catalog_topk {name} dtype", tensor.dtype, "a floating dtype"))
    if exclude is not None and exclude.dtype != torch.int64:
        raise TypeError(received_expected("catalog_topk exclude dtype", exclude.dtype, "torch.int64"))
    devices = {str(t.device) for t in (queries, items_table, exclude) if t is not None}
    if len(devices) > 1:
        raise ValueError(received_expected("catalog_topk devices", sorted(devices), "all inputs on one device"))
    return checked_k(k, items_table.shape[0] - 1)


def checked_k(k: int, catalog: int) -> int:
    """k as a Python int (any integer type: int, np.int64, a 0-d integer tensor), in 0..catalog; ValueError else."""
    try:
        index = operator.index(k) if not isinstance(k, bool) else None
    except TypeError:
        index = None
    if index is None or not 0 <= index <= catalog:
        raise ValueError(received_expected("catalog_topk k", repr(k), f"an int in 0..{catalog}, the catalog size N "
                                           "(items_table has N+1 rows, row 0 the padding item)"))
    return index


def choose_kernel(kernel: str, queries: torch.Tensor, items_table: torch.Tensor, k: int,
                  exclude: torch.Tensor | None) -> str:
    """The implementation ``kernel`` stands for with these inputs; raises if it cannot run them."""
    if kernel not in KERNELS:
        raise ConfigError(received_expected("catalog_topk kernel", repr(kernel), f"one of {', '.join(KERNELS)}"))
    if kernel == "triton":
        _check_triton_can_run(queries, items_table, k, exclude)
    if kernel == "int8":
        check_int8_can_run(queries, items_table)
    if kernel != "auto":
        return kernel
    if queries.is_meta:  # shapes only: the tiled paths read values (NaN checks, the int8 scales)
        return "pytorch"
    if queries.is_cuda and triton_available() and _triton_refusal(queries, items_table, k, exclude) is None:
        return "triton"
    if queries.is_cuda or items_table.shape[0] <= Tiling().item_tile:
        return "blocked" if queries.is_cuda else "pytorch"
    return "int8" if int8_refusal(queries, items_table) is None else "blocked"


def triton_candidates(k: int, exclude: torch.Tensor | None) -> int:
    """Candidates the Triton kernel keeps per user and split: k, plus one per exclusion slot."""
    return k + (exclude.shape[1] if exclude is not None else 0)


def _triton_refusal(queries: torch.Tensor, items_table: torch.Tensor, k: int,
                    exclude: torch.Tensor | None) -> str | None:
    """Why the Triton kernel cannot take these inputs (an error message), or None if it can."""
    dtype = torch.promote_types(queries.dtype, items_table.dtype)
    if dtype not in FLOAT_DTYPES:
        return received_expected("catalog_topk triton dtype", dtype,
                                 "torch.float32, torch.bfloat16 or torch.float16 (use kernel='blocked')")
    if triton_candidates(k, exclude) > MAX_TRITON_CANDIDATES:
        return received_expected("catalog_topk triton candidates k + S", triton_candidates(k, exclude),
                                 f"at most {MAX_TRITON_CANDIDATES} (use kernel='blocked')")
    return None


def _check_triton_can_run(queries: torch.Tensor, items_table: torch.Tensor, k: int,
                          exclude: torch.Tensor | None) -> None:
    if queries.device.type == "cpu" and not triton_interpreting():
        raise ConfigError(received_expected("catalog_topk kernel 'triton' on CPU tensors", "TRITON_INTERPRET unset",
                                            "CUDA tensors, or TRITON_INTERPRET=1 (Triton's interpreter, "
                                            "for tests) set before the first Triton kernel is imported"))
    refusal = _triton_refusal(queries, items_table, k, exclude)
    if refusal is not None:
        raise ValueError(refusal)


def _without_autocast(device: torch.device):
    """Autocast off inside the op: scores come out in the inputs' promoted dtype on every path."""
    if device.type in ("cpu", "cuda") and torch.is_autocast_enabled(device.type):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


def register_catalog_topk_triton() -> torch._ops.OpOverloadPacket:
    """Import the Triton kernel (registering ``seqrec::catalog_topk``) and return the op."""
    from seqrec.kernels.triton import triton_catalog_topk  # noqa: F401  (registers on import)

    return torch.ops.seqrec.catalog_topk


@functools.cache
def register_catalog_topk_opaque() -> torch._ops.OpOverloadPacket:
    """Register ``seqrec::catalog_topk_opaque`` once and return it; call before tracing or
    before ``torch.export.load`` of a program that holds it."""
    op = torch.library.custom_op("seqrec::catalog_topk_opaque", _opaque_forward, mutates_args=())
    op.register_fake(_fake_forward)
    op.register_autograd(no_gradient, setup_context=outputs_without_gradient)
    return torch.ops.seqrec.catalog_topk_opaque


def outputs_without_gradient(ctx, inputs: tuple, output: tuple[torch.Tensor, torch.Tensor]) -> None:
    """setup_context of the catalog_topk ops: scores and ids carry no gradient, as in eager (the op runs
    under no_grad). Without a rule, torch.compile with grad enabled refused a table that requires grad."""
    ctx.mark_non_differentiable(*output)


def no_gradient(ctx, grad_scores: torch.Tensor, grad_ids: torch.Tensor) -> tuple[None, None, None, None]:
    return None, None, None, None


def _opaque_forward(queries: torch.Tensor, items_table: torch.Tensor, k: int,
                    exclude: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    return catalog_topk(queries, items_table, k, exclude)


def _fake_forward(queries: torch.Tensor, items_table: torch.Tensor, k: int,
                  exclude: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    k = check_catalog_topk_inputs(queries, items_table, k, exclude)
    dtype = torch.promote_types(queries.dtype, items_table.dtype)
    scores = queries.new_empty((queries.shape[0], k), dtype=dtype)  # (B, k)
    return scores, queries.new_empty((queries.shape[0], k), dtype=torch.long)  # (B, k)
