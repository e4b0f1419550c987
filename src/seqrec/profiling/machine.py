"""The machine a profile ran on: CPU model and cores, library versions, GPU if any.

Nothing here imports an optional library that is not installed, and CUDA is only asked about
through ``torch.cuda.is_available()``.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
from pathlib import Path

import torch

from seqrec.training.checkpoint import library_versions

OPTIONAL_LIBRARIES = ("onnxruntime", "onnxruntime-gpu", "onnx", "tensorrt", "matplotlib")


def machine_info() -> dict:
    return {
        "cpu_model": cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "memory_bytes": physical_memory(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "versions": {**library_versions(), **_optional_versions()},
    }


def physical_memory() -> int | None:
    """Bytes of physical memory (POSIX sysconf), or None where the system does not say."""
    try:
        size = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None
    return size if size > 0 else None


def cpu_model() -> str:
    """The CPU's marketing name (/proc/cpuinfo on Linux), else what ``platform`` knows."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _optional_versions() -> dict[str, str]:
    versions = {}
    for name in OPTIONAL_LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions
