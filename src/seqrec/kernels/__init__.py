"""Custom ops: one public entry point per op, a plain-PyTorch reference, a Triton kernel."""

from seqrec.kernels.cpr_scatter import cpr_scatter, register_cpr_scatter_opaque, register_cpr_scatter_triton

__all__ = ["cpr_scatter", "register_cpr_scatter_opaque", "register_cpr_scatter_triton"]
