"""Whether this machine can build TensorRT engines, as a reason to skip, and the skip marker."""

import importlib.util

import pytest
import torch


def tensorrt_missing() -> str | None:
    """Why TensorRT cannot run here, or None when it can (a CUDA device and the tensorrt package)."""
    if not torch.cuda.is_available():
        return "needs an NVIDIA GPU (TensorRT)"
    if importlib.util.find_spec("tensorrt") is None:
        return "needs tensorrt: pip install 'seqrec[gpu]'"
    return None


requires_tensorrt = pytest.mark.skipif(tensorrt_missing() is not None, reason=str(tensorrt_missing()))
