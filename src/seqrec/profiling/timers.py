"""Timing one configuration: warm-up calls untimed, then per-call wall times.

Each timed call is one ``runner.infer`` on the same batch, from NumPy in to NumPy out: host-device
copies and the synchronisation they imply are inside, as they are for ``seqrec score``. Latency
percentiles come from the per-call times (with fewer than 100 calls p99 is close to the slowest
call; the JSON keeps the count); throughput is users scored over the summed timed seconds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

MIN_TIMED_CALLS = 3  # with a time budget, at least this many calls, so that p50 is not one sample


@dataclass
class Timing:
    batch_size: int
    seconds: list[float]  # wall time of each timed call

    @property
    def users_per_second(self) -> float:
        return self.batch_size * len(self.seconds) / sum(self.seconds)

    def to_dict(self) -> dict:
        p50, p99 = np.percentile(self.seconds, [50, 99]) * 1000.0
        return {"p50_ms": round(float(p50), 4), "p99_ms": round(float(p99), 4),
                "mean_ms": round(float(np.mean(self.seconds)) * 1000.0, 4),
                "users_per_second": round(self.users_per_second, 1), "calls": len(self.seconds),
                "timed_seconds": round(sum(self.seconds), 6)}


def time_calls(call: Callable[[], object], batch_size: int, warmup: int, iterations: int | None,
               seconds: float | None) -> Timing:
    """``warmup`` untimed calls, then ``iterations`` timed calls, or timed calls until ``seconds`` are spent."""
    for _ in range(warmup):
        call()
    timed: list[float] = []
    while not _finished(timed, iterations, seconds):
        started = time.perf_counter()
        call()
        timed.append(time.perf_counter() - started)
    return Timing(batch_size, timed)


def _finished(timed: list[float], iterations: int | None, seconds: float | None) -> bool:
    if iterations is not None:
        return len(timed) >= iterations
    return len(timed) >= MIN_TIMED_CALLS and sum(timed) >= (seconds or 0.0)
