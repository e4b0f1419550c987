"""What the machine can do fast: a warning before a run asks for bf16 on a CPU that only emulates it."""

from __future__ import annotations

import torch


def native_bf16_on_cpu() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware (AVX-512 BF16 or AMX), as oneDNN sees it."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without the probe: no warning rather than a wrong one
        return True


def slow_bf16_warning(precision: str, device: str | None = None) -> str | None:
    """A line when bf16 autocast would run on a CPU without bf16 hardware, where PyTorch emulates the
    products: on an AVX2 EPYC a (2048 x 64) x (64 x 12k) product took 2.2 s in bf16 against 0.2 s in fp32.
    ``device`` None: where the torch backend of ``seqrec score`` runs (a GPU if torch finds one)."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if precision != "bf16" or torch.device(device).type != "cpu" or native_bf16_on_cpu():
        return None
    capability = torch.backends.cpu.get_cpu_capability()
    return (f"--precision bf16 on a CPU without bf16 hardware ({capability}): PyTorch emulates the bf16 "
            "products, several times slower than fp32 here (use --precision fp32)")
