"""Kernel tests: Triton kernels run on CPU tensors through Triton's interpreter where there is no GPU.

``@triton.jit`` reads TRITON_INTERPRET when it decorates, i.e. when a kernel module is first
imported; seqrec imports its kernel modules lazily, so setting the variable here, at collection,
is early enough even when the whole suite runs. On a machine with CUDA the variable is left alone
and the same tests launch the compiled kernels on the GPU (TRITON_INTERPRET=1 forces the
interpreter there too).
"""

import os

import torch

if "TRITON_INTERPRET" not in os.environ and not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"
