"""Measurements and how they are shown: progress lines, the table, the closing summary, profile.json.

profile.json holds every configuration of the sweep (backend x precision x catalog x batch), the
skipped ones with their reason, so a reader never has to guess whether a missing row was slow or
never ran; plus the resolved settings, the source and the machine.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from seqrec.profiling.source import Setup
from seqrec.profiling.timers import Timing

JSON_FILE = "profile.json"
PLOT_FILE = "profile.png"
HEADER = f"{'backend':12s}{'precision':10s}{'catalog':>11s}{'batch':>7s}{'p50 ms':>10s}{'p99 ms':>10s}" \
         f"{'users/s':>12s}{'calls':>7s}"


@dataclass
class Measurement:
    setup: Setup
    batch_size: int
    length: int  # longest history; lengths are uniform in 1..length
    weights: str  # "trained", or "trained, random item table (seed S)" for another catalog size
    timing: Timing | None = None  # None when skipped
    reason: str = ""  # why it was skipped

    @property
    def ok(self) -> bool:
        return self.timing is not None

    def to_dict(self) -> dict:
        result = self.timing.to_dict() if self.ok else {"reason": self.reason}
        return {"backend": self.setup.backend, "precision": self.setup.precision, "catalog_size": self.setup.catalog,
                "batch_size": self.batch_size, "length": self.length, "weights": self.weights,
                "status": "ok" if self.ok else "skipped", **result}


def row(measurement: Measurement) -> str:
    """One table line: a measurement, or a skipped setup (all its batch sizes at once)."""
    setup = measurement.setup
    start = f"{setup.backend:12s}{setup.precision:10s}{setup.catalog:>11,}"
    if not measurement.ok:
        return f"{start}{'all':>7s}  skipped: {measurement.reason}"
    timing = measurement.timing.to_dict()
    return (f"{start}{measurement.batch_size:>7,}{timing['p50_ms']:>10.3f}{timing['p99_ms']:>10.3f}"
            f"{timing['users_per_second']:>12,.0f}{timing['calls']:>7,}")


def table(measurements: list[Measurement]) -> str:
    lines, skipped = [HEADER], set()
    for measurement in measurements:
        if not measurement.ok and measurement.setup in skipped:
            continue
        skipped.update([] if measurement.ok else [measurement.setup])
        lines.append(row(measurement))
    return "\n".join(lines)


def summary_line(measurements: list[Measurement], wall_seconds: float, out: Path) -> str:
    done = [m for m in measurements if m.ok]
    skipped = ", ".join(sorted({f"{m.setup.backend} {m.setup.precision}" for m in measurements if not m.ok}))
    fastest = "; ".join(_fastest(done, catalog) for catalog in sorted({m.setup.catalog for m in done}))
    return (f"profiled {len(done)} configuration{'s' if len(done) != 1 else ''}, "
            f"skipped {len(measurements) - len(done)}"
            f"{f' ({skipped})' if skipped else ''} in {wall_seconds:.1f} s"
            f"{f'; fastest: {fastest}' if fastest else ''} -> {out / JSON_FILE}, {out / PLOT_FILE}")


def _fastest(done: list[Measurement], catalog: int) -> str:
    best = max((m for m in done if m.setup.catalog == catalog), key=lambda m: m.timing.users_per_second)
    return (f"catalog {catalog:,}: {best.setup.backend} {best.setup.precision} batch {best.batch_size:,} "
            f"{best.timing.users_per_second:,.0f} users/s")


def write_json(out: Path, report: dict) -> Path:
    path = out / JSON_FILE
    path.write_text(json.dumps(report, indent=2) + "\n")
    return path
