"""Plain-PyTorch references of the public ops: the ground truth every fast path is tested against."""

from seqrec.kernels.reference.pt_catalog_topk import pt_catalog_topk
from seqrec.kernels.reference.pt_cpr_scatter import pt_cpr_scatter, pt_cpr_scatter_backward

__all__ = ["pt_catalog_topk", "pt_cpr_scatter", "pt_cpr_scatter_backward"]
