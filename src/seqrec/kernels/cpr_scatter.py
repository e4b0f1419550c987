"""Public op: the softmax-CPR pointer/context scatter onto item ids.

``cpr_scatter(logits, ids, values)`` returns ``logits`` with, in every row, the logit of each
distinct non-zero id in ``ids`` replaced by the mean of that id's ``values`` (DESIGN.md,
softmax-CPR). It validates its inputs and dispatches on ``kernel``: "pytorch" is the reference,
"triton" the Triton kernels (CUDA tensors, or CPU tensors under TRITON_INTERPRET=1 for tests),
"auto" the Triton kernels on CUDA when triton is installed and the reference everywhere else.

Two registered operators carry the op into graphs (torch 2.13, checked on CPU):

* ``register_cpr_scatter_triton()`` -> ``torch.ops.seqrec.cpr_scatter``, a ``triton_op`` that
  torch.compile traces into on CUDA (see ``seqrec.kernels.triton.triton_cpr_scatter``). Tracing
  it on CPU fails, since the interpreted kernel cannot run on fake tensors.
* ``register_cpr_scatter_opaque()`` -> ``torch.ops.seqrec.cpr_scatter_opaque``, a plain
  ``custom_op`` with a fake kernel and an autograd rule. ``torch.export`` keeps it as one node
  (a triton_op is traced into and fails on CPU), torch.compile calls it as a black box, and
  opcheck passes. It runs the reference on CPU and the Triton kernels on CUDA.
"""

from __future__ import annotations

import functools

import torch

from seqrec.errors import ConfigError, received_expected
from seqrec.kernels.reference import pt_cpr_scatter, pt_cpr_scatter_backward
from seqrec.kernels.triton import FLOAT_DTYPES, MAX_TRITON_HISTORY, triton_available, triton_interpreting

KERNELS = ("auto", "pytorch", "triton")


def cpr_scatter(logits: torch.Tensor, ids: torch.Tensor, values: torch.Tensor,
                kernel: str = "auto") -> torch.Tensor:
    """logits (M, N+1) float, ids (M, S) int64 in 0..N (0 = padding), values (M, S) -> (M, N+1)."""
    check_cpr_scatter_inputs(logits, ids, values)
    check_cpr_scatter_ids(ids, logits.shape[1])
    if _use_triton(kernel, logits, ids, values.dtype):
        from seqrec.kernels.triton.triton_cpr_scatter import triton_cpr_scatter

        return triton_cpr_scatter(logits.contiguous(), ids.contiguous(), values.contiguous())
    return pt_cpr_scatter(logits, ids, values)


def check_cpr_scatter_inputs(logits: torch.Tensor, ids: torch.Tensor, values: torch.Tensor) -> None:
    """The checks every implementation shares: shapes, dtypes and devices."""
    if logits.dim() != 2 or ids.dim() != 2 or values.shape != ids.shape or ids.shape[0] != logits.shape[0]:
        raise ValueError(received_expected("cpr_scatter shapes", f"logits {tuple(logits.shape)}, ids "
                                           f"{tuple(ids.shape)}, values {tuple(values.shape)}",
                                           "logits (M, N+1), ids (M, S), values (M, S)"))
    if logits.shape[1] == 0:  # column 0, the padding item, is always there (the reference keeps it)
        raise ValueError(received_expected("cpr_scatter logits width", logits.shape[1],
                                           "at least 1 column (N+1: the padding item and N items)"))
    if ids.dtype != torch.int64:
        raise TypeError(received_expected("cpr_scatter ids dtype", ids.dtype, "torch.int64"))
    for name, tensor in (("logits", logits), ("values", values)):  # means of integers were truncated
        if not tensor.is_floating_point():
            raise TypeError(received_expected(f"cpr_scatter {name} dtype", tensor.dtype, "a floating dtype"))
    devices = {str(tensor.device) for tensor in (logits, ids, values)}
    if len(devices) > 1:
        raise ValueError(received_expected("cpr_scatter devices", sorted(devices),
                                           "logits, ids and values on one device"))


def check_cpr_scatter_ids(ids: torch.Tensor, columns: int) -> None:
    """Ids beyond the catalog are a ValueError, checked where it costs no device sync and no trace
    break: eager CPU tensors. (On CUDA the Triton kernels skip such ids, as negative ids, padding;
    meta tensors hold no values.)"""
    if (ids.is_cuda or ids.is_meta or ids.numel() == 0 or torch.compiler.is_compiling()
            or torch.jit.is_tracing()):
        return
    largest = int(ids.max())
    if largest >= columns:
        raise ValueError(received_expected("cpr_scatter ids", f"item id {largest}",
                                           f"ids in 0..{columns - 1} (logits of {columns} columns)"))


def _use_triton(kernel: str, logits: torch.Tensor, ids: torch.Tensor, values_dtype: torch.dtype) -> bool:
    if kernel not in KERNELS:
        raise ConfigError(received_expected("cpr_scatter kernel", repr(kernel), f"one of {', '.join(KERNELS)}"))
    if kernel == "auto":  # Triton where its launcher accepts the inputs, the reference anywhere else
        return (logits.is_cuda and ids.is_cuda and logits.dtype in FLOAT_DTYPES and values_dtype in FLOAT_DTYPES
                and ids.shape[1] <= MAX_TRITON_HISTORY and triton_available())
    if kernel == "triton" and logits.device.type == "cpu" and not triton_interpreting():
        raise ConfigError(received_expected("cpr_scatter kernel 'triton' on CPU tensors", "TRITON_INTERPRET unset",
                                            "CUDA tensors, or TRITON_INTERPRET=1 (Triton's interpreter, "
                                            "for tests) set before the first Triton kernel is imported"))
    return kernel == "triton"


def register_cpr_scatter_triton() -> torch._ops.OpOverloadPacket:
    """Import the Triton kernels (registering ``seqrec::cpr_scatter``) and return the op."""
    from seqrec.kernels.triton import triton_cpr_scatter  # noqa: F401  (registers on import)

    return torch.ops.seqrec.cpr_scatter


@functools.cache
def register_cpr_scatter_opaque() -> torch._ops.OpOverloadPacket:
    """Register ``seqrec::cpr_scatter_opaque`` and its backward once; return the op.

    Call it before tracing or before ``torch.export.load`` of a program that holds the op.
    """
    forward = torch.library.custom_op("seqrec::cpr_scatter_opaque", _opaque_forward, mutates_args=())
    backward = torch.library.custom_op("seqrec::cpr_scatter_opaque_backward", _opaque_backward, mutates_args=())
    forward.register_fake(_fake_forward)
    backward.register_fake(_fake_backward)
    forward.register_autograd(_opaque_autograd_backward, setup_context=save_for_cpr_backward)
    return torch.ops.seqrec.cpr_scatter_opaque


def save_for_cpr_backward(ctx, inputs: tuple, output: torch.Tensor) -> None:
    """setup_context of every cpr_scatter autograd rule: the backward needs ids and the values' dtype."""
    _, ids, values = inputs
    ctx.save_for_backward(ids)
    ctx.values_dtype = values.dtype


def _opaque_forward(logits: torch.Tensor, ids: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    check_cpr_scatter_inputs(logits, ids, values)
    check_cpr_scatter_ids(ids, logits.shape[1])  # eager CPU only: export and compile trace the fake kernel
    if _use_triton("auto", logits, ids, values.dtype):
        from seqrec.kernels.triton.triton_cpr_scatter import launch_cpr_scatter_fwd

        return launch_cpr_scatter_fwd(logits.contiguous(), ids.contiguous(), values.contiguous())
    return pt_cpr_scatter(logits, ids, values)


def _opaque_backward(grad: torch.Tensor, ids: torch.Tensor,
                     values_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    if _use_triton("auto", grad, ids, values_dtype):
        from seqrec.kernels.triton.triton_cpr_scatter import launch_cpr_scatter_bwd

        return launch_cpr_scatter_bwd(grad.contiguous(), ids.contiguous(), values_dtype)
    return pt_cpr_scatter_backward(grad, ids, values_dtype)


def _fake_forward(logits: torch.Tensor, ids: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    check_cpr_scatter_inputs(logits, ids, values)
    return torch.empty_like(logits)  # (M, N+1)


def _fake_backward(grad: torch.Tensor, ids: torch.Tensor,
                   values_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.empty_like(grad), torch.empty(ids.shape, dtype=values_dtype, device=ids.device)


def _opaque_autograd_backward(ctx, grad: torch.Tensor):
    (ids,) = ctx.saved_tensors
    d_logits, d_values = torch.ops.seqrec.cpr_scatter_opaque_backward(grad, ids, ctx.values_dtype)
    return d_logits, None, d_values
