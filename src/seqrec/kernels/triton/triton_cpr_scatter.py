"""The softmax-CPR pointer/context scatter in Triton: kernels, launchers, autograd, registrations.

One program per row. It holds the row's history ids (BLOCK_S slots), compares them with the
history BLOCK_K slots at a time to get, for every slot, the number of slots with the same id, the
sum of their values and whether an earlier slot has the same id; only the first occurrence of a
real id stores the mean into ``out[row, id]``. ``out`` is a torch clone of ``logits`` made by the
launcher, so the kernel touches S elements of a row, never N. The backward kernel reads the
gradient at each history id, divides it by the id's count (d values) and zeroes those positions in
a clone of the gradient (d logits).

``_cpr_scatter_copy_kernel`` is the forward in one launch for the TensorRT plugin
(``exporter/trt_plugin.py``): each program copies its row of logits into a separate output, waits at
a barrier, then writes the means; float32 and contiguous only, parameters in TensorRT's AOT order.

Registrations, as checked with torch 2.13 (CPU build, triton 3.9):

* ``seqrec::cpr_scatter`` and ``seqrec::cpr_scatter_backward`` are ``torch.library.triton_op``s
  whose bodies launch the kernels through ``wrap_triton``, with ``register_autograd``: on CUDA
  torch.compile sees the kernels inside them. Called directly they also run on CPU tensors under
  TRITON_INTERPRET=1, gradients included. Anything that traces them on CPU fails, because
  ``wrap_triton`` hands an interpreted kernel back unwrapped and the interpreter then touches the
  data of fake tensors: torch.compile ("Dynamo failed to run FX node with fake tensors ... Cannot
  access data pointer of Tensor"), torch.export (same message) and opcheck's fake-tensor test
  ("Attempted to set the storage of a tensor on device "meta" to a storage on different device
  "cpu""). The opaque op in ``seqrec.kernels.cpr_scatter`` is the one to trace or export.
* ``TritonCprScatter`` is the same autograd rule as a ``torch.autograd.Function``; its
  ``setup_context`` and ``backward`` are what ``register_autograd`` installs on the triton_op.
"""

from __future__ import annotations

import torch

from seqrec.errors import received_expected
from seqrec.kernels.cpr_scatter import check_cpr_scatter_inputs, save_for_cpr_backward
from seqrec.kernels.triton import FLOAT_DTYPES, MAX_TRITON_HISTORY, require_triton

triton = require_triton()
import triton.language as tl  # noqa: E402  (after require_triton, so a missing triton names the install command)

CHUNK = 32  # BLOCK_K: history slots compared per step


@triton.jit
def _row_history(
    ids_ptr,  # (M, S) int64 item ids, 0 = padding
    values_ptr,  # (M, S) values (not read unless SUM_VALUES)
    stride_ids_m,  # elements between rows of ids
    stride_ids_s,  # elements between history slots of ids
    stride_values_m,  # elements between rows of values
    stride_values_s,  # elements between history slots of values
    history,  # S
    BLOCK_S: tl.constexpr,  # history slots held by the program (power of two >= S)
    BLOCK_K: tl.constexpr,  # history slots compared per step
    SUM_VALUES: tl.constexpr,  # also sum the values of matching slots
):
    """This program's row, its slots and ids, and per slot: how many slots hold its id (at least 1),
    the sum of their values, and how many of them come earlier."""
    row = tl.program_id(0).to(tl.int64)  # int64: row * stride overflows int32 for M x N in the billions
    offs = tl.arange(0, BLOCK_S)
    ids = tl.load(ids_ptr + row * stride_ids_m + offs * stride_ids_s, mask=offs < history, other=0)  # (BLOCK_S,)
    counts = tl.zeros((BLOCK_S,), dtype=tl.int32)
    sums = tl.zeros((BLOCK_S,), dtype=tl.float32)
    earlier = tl.zeros((BLOCK_S,), dtype=tl.int32)
    for start in range(0, history, BLOCK_K):
        others = start + tl.arange(0, BLOCK_K)  # (BLOCK_K,)
        in_history = others < history
        other_ids = tl.load(ids_ptr + row * stride_ids_m + others * stride_ids_s, mask=in_history, other=0)
        same = ids[:, None] == other_ids[None, :]  # (BLOCK_S, BLOCK_K); padding matches padding, never used
        counts += tl.sum(same.to(tl.int32), axis=1)
        earlier += tl.sum((same & (others[None, :] < offs[:, None])).to(tl.int32), axis=1)
        if SUM_VALUES:
            other_values = tl.load(values_ptr + row * stride_values_m + others * stride_values_s,
                                   mask=in_history, other=0.0)
            sums += tl.sum(tl.where(same, other_values.to(tl.float32)[None, :], 0.0), axis=1)
    return row, offs, ids, tl.maximum(counts, 1), sums, earlier


@triton.jit
def _cpr_scatter_fwd_kernel(
    out_ptr,  # (M, N+1) clone of logits; history items are overwritten
    ids_ptr,  # (M, S) int64 item ids, 0 = padding
    values_ptr,  # (M, S) values averaged per distinct id
    stride_out_m,  # elements between rows of out
    stride_out_n,  # elements between items of out
    stride_ids_m,  # elements between rows of ids
    stride_ids_s,  # elements between history slots of ids
    stride_values_m,  # elements between rows of values
    stride_values_s,  # elements between history slots of values
    num_items,  # N+1; ids outside 1..N are never written
    history,  # S
    BLOCK_S: tl.constexpr,  # history slots held by the program (power of two >= S)
    BLOCK_K: tl.constexpr,  # history slots compared per step
):
    row, offs, ids, counts, sums, earlier = _row_history(ids_ptr, values_ptr, stride_ids_m, stride_ids_s,
                                                         stride_values_m, stride_values_s, history,
                                                         BLOCK_S, BLOCK_K, True)
    first = (ids > 0) & (ids < num_items) & (earlier == 0)  # one writer per distinct real id
    means = sums / counts.to(tl.float32)
    tl.store(out_ptr + row * stride_out_m + ids * stride_out_n, means.to(out_ptr.dtype.element_ty), mask=first)


@triton.jit
def _cpr_scatter_bwd_kernel(
    d_logits_ptr,  # (M, N+1) clone of the output gradient; history items are zeroed in place
    d_values_ptr,  # (M, S) gradient of values, written for every slot
    ids_ptr,  # (M, S) int64 item ids, 0 = padding
    stride_d_logits_m,  # elements between rows of d_logits
    stride_d_logits_n,  # elements between items of d_logits
    stride_d_values_m,  # elements between rows of d_values
    stride_d_values_s,  # elements between history slots of d_values
    stride_ids_m,  # elements between rows of ids
    stride_ids_s,  # elements between history slots of ids
    num_items,  # N+1; ids outside 1..N get no gradient
    history,  # S
    BLOCK_S: tl.constexpr,  # history slots held by the program (power of two >= S)
    BLOCK_K: tl.constexpr,  # history slots compared per step
):
    # No values to sum: ids stand in for the values pointer, which SUM_VALUES=False never reads.
    row, offs, ids, counts, _, _ = _row_history(ids_ptr, ids_ptr, stride_ids_m, stride_ids_s, stride_ids_m,
                                                stride_ids_s, history, BLOCK_S, BLOCK_K, False)
    real = (ids > 0) & (ids < num_items)
    grad_ptrs = d_logits_ptr + row * stride_d_logits_m + ids * stride_d_logits_n
    grad = tl.load(grad_ptrs, mask=real, other=0.0).to(tl.float32)  # read before the zeroing below
    d_values = grad / counts.to(tl.float32)
    tl.store(d_values_ptr + row * stride_d_values_m + offs * stride_d_values_s,
             d_values.to(d_values_ptr.dtype.element_ty), mask=offs < history)
    tl.store(grad_ptrs, tl.zeros((BLOCK_S,), dtype=d_logits_ptr.dtype.element_ty), mask=real)


@triton.jit
def _cpr_scatter_copy_kernel(
    logits_ptr,  # (M, N+1) float32 contiguous, read only
    ids_ptr,  # (M, S) int64 contiguous item ids, 0 = padding
    values_ptr,  # (M, S) float32 contiguous values averaged per distinct id
    num_items,  # N+1 (int32: TensorRT passes extra kernel arguments as SymInt32)
    history,  # S
    out_ptr,  # (M, N+1) float32 contiguous output, a separate buffer
    BLOCK_N: tl.constexpr,  # items copied per step
    BLOCK_S: tl.constexpr,  # history slots held by the program (power of two >= S)
    BLOCK_K: tl.constexpr,  # history slots compared per step
):
    """The whole op in one launch for the TensorRT plugin: copy the row, barrier, write the means.

    Parameters follow TensorRT's AOT plugin order: input pointers, extra scalars, output pointers.
    """
    row, offs, ids, counts, sums, earlier = _row_history(ids_ptr, values_ptr, history, 1, history, 1, history,
                                                         BLOCK_S, BLOCK_K, True)
    row_start = row * num_items  # int64
    for start in range(0, num_items, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)  # (BLOCK_N,)
        in_row = cols < num_items
        tl.store(out_ptr + row_start + cols, tl.load(logits_ptr + row_start + cols, mask=in_row), mask=in_row)
    tl.debug_barrier()  # every copy of this row lands before a mean overwrites its column
    first = (ids > 0) & (ids < num_items) & (earlier == 0)  # one writer per distinct real id
    tl.store(out_ptr + row_start + ids, sums / counts.to(tl.float32), mask=first)


def check_launch_inputs(logits: torch.Tensor, ids: torch.Tensor, values: torch.Tensor) -> None:
    """Everything the kernels assume, checked before anything is launched."""
    check_cpr_scatter_inputs(logits, ids, values)
    for name, tensor in (("logits", logits), ("values", values)):
        if tensor.dtype not in FLOAT_DTYPES:
            raise TypeError(received_expected(f"cpr_scatter triton {name} dtype", tensor.dtype,
                                              "torch.float32, torch.bfloat16 or torch.float16"))
    _check_device(logits, ids, values)
    for name, tensor in (("logits", logits), ("ids", ids), ("values", values)):
        if not tensor.is_contiguous():
            raise ValueError(received_expected(f"cpr_scatter triton {name} layout",
                                               f"strides {tensor.stride()}", "a contiguous tensor"))
    if ids.shape[1] > MAX_TRITON_HISTORY:
        raise ValueError(received_expected("cpr_scatter triton history length", ids.shape[1],
                                           f"at most {MAX_TRITON_HISTORY} (use kernel='pytorch')"))


def _check_device(*tensors: torch.Tensor) -> None:
    devices = {tensor.device for tensor in tensors}
    if len(devices) > 1:
        raise ValueError(received_expected("cpr_scatter triton devices", sorted(map(str, devices)),
                                           "logits, ids and values on one device"))
    device = devices.pop()
    if device.type != "cuda" and not (device.type == "cpu" and _INTERPRETED):
        raise ValueError(received_expected("cpr_scatter triton device", device,
                                           "CUDA tensors, or CPU tensors with TRITON_INTERPRET=1 set before "
                                           "seqrec.kernels.triton.triton_cpr_scatter is imported"))


def _blocks(history: int) -> dict[str, int]:
    block_s = triton.next_power_of_2(max(history, 1))
    return {"BLOCK_S": block_s, "BLOCK_K": min(block_s, CHUNK)}


def _wrap(kernel):
    """The kernel as torch.library sees it: traceable on CUDA; interpreted kernels come back as they are."""
    wrap_triton = getattr(torch.library, "wrap_triton", None)  # torch >= 2.6
    return kernel if wrap_triton is None else wrap_triton(kernel)


def launch_cpr_scatter_fwd(logits: torch.Tensor, ids: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Checked forward: logits (M, N+1), ids (M, S), values (M, S) -> (M, N+1)."""
    check_launch_inputs(logits, ids, values)
    out = logits.clone()  # (M, N+1)
    rows, history = ids.shape
    if rows and history:
        _wrap(_cpr_scatter_fwd_kernel)[(rows,)](
            out, ids, values,
            out.stride(0), out.stride(1), ids.stride(0), ids.stride(1), values.stride(0), values.stride(1),
            out.shape[1], history, **_blocks(history))
    return out


def launch_cpr_scatter_bwd(grad: torch.Tensor, ids: torch.Tensor,
                           values_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Checked backward: grad (M, N+1) of the output -> (d logits (M, N+1), d values (M, S) in values_dtype)."""
    d_values = torch.empty(ids.shape, dtype=values_dtype, device=ids.device)  # (M, S)
    check_launch_inputs(grad, ids, d_values)
    d_logits = grad.clone()  # (M, N+1)
    rows, history = ids.shape
    if rows and history:
        _wrap(_cpr_scatter_bwd_kernel)[(rows,)](
            d_logits, d_values, ids,
            d_logits.stride(0), d_logits.stride(1), d_values.stride(0), d_values.stride(1),
            ids.stride(0), ids.stride(1),
            d_logits.shape[1], history, **_blocks(history))
    return d_logits, d_values


PLUGIN_BLOCK_N = 1024  # items a plugin program copies per step


def launch_cpr_scatter_copy(logits: torch.Tensor, ids: torch.Tensor, values: torch.Tensor,
                            block_n: int = PLUGIN_BLOCK_N) -> torch.Tensor:
    """The plugin kernel launched from Python (float32 only): logits (M, N+1), ids, values (M, S) -> (M, N+1)."""
    check_launch_inputs(logits, ids, values)
    for name, tensor in (("logits", logits), ("values", values)):
        if tensor.dtype != torch.float32:
            raise TypeError(received_expected(f"cpr_scatter plugin kernel {name} dtype", tensor.dtype,
                                              "torch.float32 (the seqrec::CprScatter node is float32)"))
    out = torch.empty_like(logits)  # (M, N+1)
    rows, history = ids.shape
    if rows:
        _cpr_scatter_copy_kernel[(rows,)](logits, ids, values, logits.shape[1], history, out,
                                          BLOCK_N=block_n, **_blocks(history))
    return out


class TritonCprScatter(torch.autograd.Function):
    """cpr_scatter through the Triton kernels, with gradients for logits and values."""

    @staticmethod
    def forward(logits: torch.Tensor, ids: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        return launch_cpr_scatter_fwd(logits, ids, values)

    setup_context = staticmethod(save_for_cpr_backward)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (ids,) = ctx.saved_tensors
        backward = torch.ops.seqrec.cpr_scatter_backward if HAS_TRITON_OP else launch_cpr_scatter_bwd
        d_logits, d_values = backward(grad.contiguous(), ids, ctx.values_dtype)
        return d_logits, None, d_values


def triton_cpr_scatter(logits: torch.Tensor, ids: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Differentiable cpr_scatter on the Triton kernels: the registered triton_op where torch has one."""
    if HAS_TRITON_OP:
        return torch.ops.seqrec.cpr_scatter(logits, ids, values)
    return TritonCprScatter.apply(logits, ids, values)


def _register_triton_ops() -> None:
    """seqrec::cpr_scatter and its backward as triton_ops, differentiable through TritonCprScatter's rule."""
    torch.library.triton_op("seqrec::cpr_scatter", launch_cpr_scatter_fwd, mutates_args=())
    torch.library.triton_op("seqrec::cpr_scatter_backward", launch_cpr_scatter_bwd, mutates_args=())
    torch.library.register_autograd("seqrec::cpr_scatter", TritonCprScatter.backward,
                                    setup_context=TritonCprScatter.setup_context)


_INTERPRETED = not isinstance(_cpr_scatter_fwd_kernel, triton.runtime.JITFunction)  # TRITON_INTERPRET=1 at import
HAS_TRITON_OP = hasattr(torch.library, "triton_op")  # torch >= 2.6; older ones get the autograd.Function alone
if HAS_TRITON_OP:
    _register_triton_ops()
