"""Custom ops: one public entry point per op, a plain-PyTorch reference, a Triton kernel."""

from seqrec.kernels.catalog_topk import catalog_topk, register_catalog_topk_opaque, register_catalog_topk_triton
from seqrec.kernels.cpr_scatter import cpr_scatter, register_cpr_scatter_opaque, register_cpr_scatter_triton

__all__ = ["catalog_topk", "cpr_scatter", "register_catalog_topk_opaque", "register_catalog_topk_triton",
           "register_cpr_scatter_opaque", "register_cpr_scatter_triton"]
