"""Triton versions of the public ops: ``@triton.jit`` kernels, their launchers and autograd rules.

Nothing here imports triton on ``import seqrec``: the kernel modules import it at their top, and
the public ops import those modules only when a Triton kernel is asked for. ``require_triton``
turns a missing triton into an error that names the install command.

On CPU tensors the kernels run under ``TRITON_INTERPRET=1``, which must be set before the first
kernel module is imported (``@triton.jit`` reads it when it decorates).
"""

from __future__ import annotations

import importlib.util
import os
from types import ModuleType

import torch

INSTALL_HINT = "pip install 'seqrec[triton]'"
MAX_TRITON_HISTORY = 4096  # longest history (S) a cpr_scatter program holds: BLOCK_S x BLOCK_K registers
FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)  # what the kernels load and store
MAX_TRITON_CANDIDATES = 512  # k + S a catalog_topk program keeps per user: BLOCK_M x 2 BLOCK_K int64 keys


def triton_available() -> bool:
    """Whether triton can be imported, without importing it."""
    return importlib.util.find_spec("triton") is not None


def triton_interpreting() -> bool:
    """Whether TRITON_INTERPRET asks Triton to run kernels on CPU tensors through its interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def require_triton() -> ModuleType:
    """Import and return triton, or raise an ImportError that names the install command."""
    try:
        import triton
    except ImportError as error:
        raise ImportError(f"the Triton kernels of seqrec need the triton package | received no importable "
                          f"triton ({error}), expected it installed: {INSTALL_HINT}") from error
    return triton
