"""Profiling: latency / throughput sweeps of a bundle or checkpoint across backends, precisions,
catalog sizes and batch sizes, written as a table, profile.json and profile.png (``seqrec profile``)."""

from seqrec.profiling.sweep import profile

__all__ = ["profile"]
