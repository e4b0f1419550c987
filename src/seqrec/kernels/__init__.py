"""Custom ops: one public entry point per op, a plain-PyTorch reference, a Triton kernel."""

from seqrec.kernels.cpr_scatter import cpr_scatter

__all__ = ["cpr_scatter"]
