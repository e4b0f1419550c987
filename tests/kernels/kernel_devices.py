"""Where the kernel tests run Triton: its interpreter on CPU tensors, or CUDA; and the skip markers."""

import pytest
import torch

from seqrec.kernels.triton import triton_available, triton_interpreting

INTERPRETING = triton_interpreting()
TRITON_DEVICE = "cpu" if INTERPRETING else "cuda"
requires_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
requires_triton = pytest.mark.skipif(
    not triton_available() or (not INTERPRETING and not torch.cuda.is_available()),
    reason="needs triton (pip install 'seqrec[triton]') and CUDA or TRITON_INTERPRET=1")
