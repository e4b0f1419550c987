"""Measurements and how they are shown: progress lines, the table, the closing summary, profile.json.

profile.json holds every configuration of the sweep (backend x precision x catalog x batch), the
skipped ones (cannot run here) and the failed ones (should have run; the error's type too) with their
reason, so a reader never has to guess whether a missing row was slow, never ran or broke; the counts
of each; plus the resolved settings, the source and the machine.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
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
    timing: Timing | None = None  # None when skipped or failed
    reason: str = ""  # why it was skipped or failed
    error: Exception | None = field(default=None, repr=False, compare=False)  # what a failed setup raised

    @property
    def ok(self) -> bool:
        return self.timing is not None

    @property
    def failed(self) -> bool:
        """Attempted, and its export, parity check or runner raised: not a combination that cannot run here."""
        return self.error is not None

    @property
    def status(self) -> str:
        return "ok" if self.ok else "failed" if self.failed else "skipped"

    def to_dict(self) -> dict:
        result = self.timing.to_dict() if self.ok else {"reason": self.reason}
        if self.failed:
            result["error"] = type(self.error).__name__
        return {"backend": self.setup.backend, "precision": self.setup.precision, "catalog_size": self.setup.catalog,
                "batch_size": self.batch_size, "length": self.length, "weights": self.weights,
                "status": self.status, **result}


def row(measurement: Measurement) -> str:
    """One table line: a measurement, or a skipped or failed setup (all its batch sizes at once)."""
    setup = measurement.setup
    start = f"{setup.backend:12s}{setup.precision:10s}{setup.catalog:>11,}"
    if not measurement.ok:
        return f"{start}{'all':>7s}  {measurement.status}: {measurement.reason}"
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


def outcome(measurements: list[Measurement]) -> dict[str, int]:
    """Configurations (backend x precision x catalog x batch) measured, skipped and failed."""
    return {status: sum(m.status == status for m in measurements) for status in ("ok", "skipped", "failed")}


def summary_line(measurements: list[Measurement], wall_seconds: float, out: Path) -> str:
    done = [m for m in measurements if m.ok]
    counts = outcome(measurements)
    failed = f", failed {counts['failed']} ({_names(measurements, 'failed')})" if counts["failed"] else ""
    skipped = _names(measurements, "skipped")
    fastest = "; ".join(_fastest(done, catalog) for catalog in sorted({m.setup.catalog for m in done}))
    return (f"profiled {len(done)} configuration{'s' if len(done) != 1 else ''}, "
            f"skipped {counts['skipped']}"
            f"{f' ({skipped})' if skipped else ''}{failed} in {wall_seconds:.1f} s"
            f"{f'; fastest: {fastest}' if fastest else ''} -> {out / JSON_FILE}, {out / PLOT_FILE}")


def _names(measurements: list[Measurement], status: str) -> str:
    return ", ".join(sorted({f"{m.setup.backend} {m.setup.precision}" for m in measurements if m.status == status}))


def _fastest(done: list[Measurement], catalog: int) -> str:
    best = max((m for m in done if m.setup.catalog == catalog), key=lambda m: m.timing.users_per_second)
    return (f"catalog {catalog:,}: {best.setup.backend} {best.setup.precision} batch {best.batch_size:,} "
            f"{best.timing.users_per_second:,.0f} users/s")


def write_json(out: Path, report: dict) -> Path:
    path = out / JSON_FILE
    path.write_text(json.dumps(report, indent=2) + "\n")
    return path
