"""profile.png: throughput against batch size, one line per backend/precision, one panel per catalog size.

matplotlib is optional and imported here only; ``require_matplotlib`` is called before a sweep
starts, so a missing install stops the command at once instead of after the measurements. The
figure is drawn with the Agg canvas directly, leaving pyplot's global state alone.
"""

from __future__ import annotations

from pathlib import Path

from seqrec.profiling.report import Measurement

PANEL_INCHES = (5.0, 4.0)


def require_matplotlib():
    from seqrec.exporter.onnx_export import require_module

    return require_module("matplotlib", "the plot of seqrec profile", "pip install matplotlib (or seqrec[dev])")


def write_plot(measurements: list[Measurement], path: Path, title: str) -> Path:
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    catalogs = sorted({m.setup.catalog for m in measurements})
    figure = Figure(figsize=(PANEL_INCHES[0] * len(catalogs), PANEL_INCHES[1]), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, len(catalogs), squeeze=False, sharey=True)[0]
    for axis, catalog in zip(axes, catalogs):
        _panel(axis, [m for m in measurements if m.setup.catalog == catalog], catalog)
    axes[0].set_ylabel("throughput (users/s)")
    figure.suptitle(title, fontsize="medium")
    unmeasured = sorted({f"{m.setup.backend} {m.setup.precision} ({m.status})" for m in measurements if not m.ok})
    if unmeasured:
        figure.supxlabel(f"not measured (reasons in profile.json): {', '.join(unmeasured)}", fontsize="small")
    figure.savefig(path, dpi=110)
    return path


def _panel(axis, measurements: list[Measurement], catalog: int) -> None:
    lines: dict[str, list[tuple[int, float]]] = {}
    for m in measurements:
        if m.ok:
            lines.setdefault(f"{m.setup.backend} {m.setup.precision}", []).append(
                (m.batch_size, m.timing.users_per_second))
    for label, points in lines.items():
        axis.plot(*zip(*sorted(points)), marker="o", label=label)
    batch_sizes = sorted({m.batch_size for m in measurements})
    axis.set_title(f"catalog {catalog:,} items")
    axis.set_xlabel("batch size (users)")
    axis.set_xscale("log", base=2)
    axis.set_xticks(batch_sizes, labels=[f"{size:,}" for size in batch_sizes])
    axis.minorticks_off()
    if lines:
        axis.set_yscale("log")
        axis.legend(fontsize="small")
    axis.grid(True, which="both", alpha=0.3)
