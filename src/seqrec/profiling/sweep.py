"""``seqrec profile``: latency and throughput per backend x precision x catalog size x batch size.

The sweep runs catalog by catalog (one model in memory at a time), then backend by backend and
precision by precision (one runner, and at most one exported graph, at a time), then batch size by
batch size. Inputs are random histories of lengths uniform in 1..L, left padded to L, drawn once
per catalog and batch size from a fixed seed: every backend and precision scores the very same
arrays. Each configuration prints one progress line as it finishes (to ``progress``: stderr from the
CLI); the table and a summary line (to ``echo``: stdout), profile.json and profile.png follow at the end.

Outcomes: a configuration is measured ("ok"), skipped (its backend or precision does not run on this
machine, or from this source: a missing library or device counts as that) or failed (it should have
run, and its export, parity check or runner setup raised). The report is written either way, with each
reason; then ``profile`` raises when something failed (the failure's own error type) or when nothing
at all was measured (ConfigError), so a script sees a non-zero exit. An interrupt (Ctrl-C) stops the
sweep at once, whatever wrapped it, and writes no report.

Before any work the output directory is created and written to once, the history length is checked
against the model's window and the sweep's arrays against the machine's memory: a value that cannot
work is one line, not a traceback after minutes of measurements.

What a number means: the wall time of one ``runner.infer`` call as ``seqrec score`` makes it
(NumPy in, NumPy out), warm-up calls excluded; p50 / p99 over the timed calls, throughput = users
over the summed timed seconds. Note that the torch backend, like ``seqrec score``'s, runs a batch
at its own length (up to the window), while exported graphs always pad or cut to the window.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from seqrec.config import ATTENTION_ENCODERS, ProfileConfig
from seqrec.directories import unusable_path
from seqrec.errors import ConfigError, MissingDependencyError, SeqrecError, received_expected
from seqrec.exporter.bundle import MANIFEST_FILE
from seqrec.exporter.onnx_export import raise_if_interrupted
from seqrec.profiling.machine import machine_info, physical_memory
from seqrec.profiling.plots import require_matplotlib, write_plot
from seqrec.profiling.report import (JSON_FILE, PLOT_FILE, Measurement, outcome, row, summary_line, table,
                                     write_json)
from seqrec.profiling.source import (ProfileSource, Setup, checkpoint_for_catalog, open_runner, open_source,
                                     skip_reason)
from seqrec.profiling.timers import time_calls
from seqrec.training.checkpoint import CONFIG_FILE, WEIGHTS_FILE, Checkpoint

DEFAULT_SECONDS = 2.0  # timed seconds per configuration when neither --iterations nor --seconds is given

Echo = Callable[[str], None]


def profile(cfg: ProfileConfig, echo: Echo = print, progress: Echo | None = None) -> dict:
    """Run the sweep ``cfg`` describes; write ``cfg.out``/profile.json and profile.png; return the report.
    ``echo`` gets the table and the summary line, ``progress`` (default: ``echo``) a line per configuration
    and notes. After writing the report, raises when a configuration failed or none was measured."""
    progress = progress or echo
    require_matplotlib()
    _check_out(Path(cfg.out))
    started = time.perf_counter()
    source = open_source(cfg)
    cfg = _resolved(cfg, source)
    _check_memory(source, cfg)
    created = _missing_folders(Path(cfg.out))
    _check_writable(Path(cfg.out))
    try:
        measurements = _sweep(source, cfg, progress)
    except BaseException:  # Ctrl-C, or a sweep that could not go on: no empty --out left behind
        _remove_if_empty(created)
        raise
    report = _report(source, cfg, measurements, time.perf_counter() - started, echo)
    _check_outcome(measurements, Path(cfg.out))
    return report


def _sweep(source: ProfileSource, cfg: ProfileConfig, progress: Echo) -> list[Measurement]:
    if source.no_checkpoint:
        progress(f"{source.path}: {source.no_checkpoint}; profiling only the bundle's own graph "
                 f"(catalog {source.catalog:,}, {source.export_config.precision})")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    measurements = []
    for catalog in cfg.catalog_sizes:
        measurements += _profile_catalog(source, cfg, catalog, progress)
    return measurements


def _missing_folders(out: Path) -> list[Path]:
    """``out`` and those of its parents that do not exist yet, innermost first: what ``_check_writable`` makes."""
    missing = []
    for folder in (out.absolute(), *out.absolute().parents):
        if folder.exists():
            break
        missing.append(folder)
    return missing


def _remove_if_empty(folders: list[Path]) -> None:
    """Remove ``folders`` (innermost first) while each is empty: a stopped sweep's --out holds nothing, and a
    folder the user made, or one that holds anything, stays."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


def _check_out(out: Path) -> None:
    """ConfigError, before any work, for an --out that is a file, a checkpoint or an export bundle: the
    report's files would land among the model's (and a later export or train there would refuse it)."""
    held = [name for name in (MANIFEST_FILE, CONFIG_FILE, WEIGHTS_FILE) if (out / name).is_file()]
    if out.exists() and not out.is_dir() or held:
        found = "a file" if not out.is_dir() else f"a model's directory (it holds {', '.join(held)})"
        raise ConfigError(received_expected(f"--out '{out}'", found, f"a directory for {JSON_FILE} and {PLOT_FILE} "
                                            "(absent, or holding no checkpoint or bundle)"))


def _check_writable(out: Path) -> None:
    """Create ``out`` and write a file in it, before any measurement: an --out the file system refuses
    (under a file, in /proc, read-only) is one line now, not a traceback once the sweep is done."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as err:
        raise unusable_path("--out", out, err) from err


def _check_memory(source: ProfileSource, cfg: ProfileConfig) -> None:
    """ConfigError, before any work, for a sweep whose arrays cannot fit in this machine's memory. The
    estimate is a lower bound (never refuses a sweep that could run): per catalog, the item table
    (N + 1, D), the histories of every batch size (held for the whole catalog) and the encoder's
    hidden states (B, L, D) and, for an attention encoder, one layer's (B, heads, L, L) attention scores of the
    largest batch; float32 weights and states, int64 inputs."""
    memory = physical_memory()
    if memory is None:
        return
    model, largest = source.model_config, max(cfg.batch_sizes)
    inputs = sum(cfg.batch_sizes) * cfg.length * 8 * len(source.inputs)  # (B, L) int64 per input and batch size
    attention = largest * model.heads * cfg.length ** 2 * 4 if model.model in ATTENTION_ENCODERS else 0
    for catalog in cfg.catalog_sizes:
        parts = {"item table": (catalog + 1) * model.dim * 4, "histories": inputs,  # (N + 1, D) float32
                 "hidden states": largest * cfg.length * model.dim * 4,  # (B, L, D) float32
                 "attention scores": attention}  # (B, heads, L, L) float32, one layer
        need = sum(parts.values())
        if need > memory:
            detail = ", ".join(f"{name} {_gib(size)}" for name, size in parts.items())
            raise ConfigError(received_expected(
                "--catalog-sizes, --batch-sizes and --length",
                f"catalog {catalog:,}, batch sizes up to {largest:,}, histories of 1..{cfg.length}: at least "
                f"{_gib(need)} of arrays ({detail})", f"a sweep that fits in this machine's {_gib(memory)} of memory"))


def _gib(size: int) -> str:
    return f"{size / 2**30:,.1f} GiB"


def resolved_profile_config(cfg: ProfileConfig) -> ProfileConfig:
    """``cfg`` with what its model decides filled in (``seqrec profile --print-config``); checked as a run checks it."""
    return _resolved(cfg, open_source(cfg))


def _resolved(cfg: ProfileConfig, source: ProfileSource) -> ProfileConfig:
    """Fill what the source decides: catalog sizes, history length, top-K; and the default time budget."""
    seconds = DEFAULT_SECONDS if cfg.iterations is None and cfg.seconds is None else cfg.seconds
    return dataclasses.replace(cfg, catalog_sizes=cfg.catalog_sizes or (source.catalog,),
                               length=cfg.length or source.window, top_k=source.top_k, seconds=seconds)


def _profile_catalog(source: ProfileSource, cfg: ProfileConfig, catalog: int, progress: Echo) -> list[Measurement]:
    ckpt = checkpoint_for_catalog(source, catalog, cfg.seed)
    feeds = {batch: _histories(source, catalog, batch, cfg) for batch in cfg.batch_sizes}
    weights = "trained" if catalog == source.catalog else f"trained, random item table (seed {cfg.seed})"
    measurements = []
    for backend in cfg.backends:
        for precision in cfg.precisions:
            setup = Setup(backend, precision, catalog)
            measurements += _profile_setup(source, ckpt, setup, feeds, cfg, weights, progress)
    return measurements


def _histories(source: ProfileSource, catalog: int, batch: int, cfg: ProfileConfig) -> dict[str, np.ndarray]:
    """Left-padded random histories of lengths uniform in 1..L (and increasing timestamps where read)."""
    from seqrec.exporter.specs import ExportSpec

    sample = ExportSpec(inputs=source.inputs).sample_inputs(catalog, batch, cfg.length, cfg.seed)  # (B, L) each
    return {name: tensor.numpy() for name, tensor in sample.items()}


def _profile_setup(source: ProfileSource, ckpt: Checkpoint | None, setup: Setup, feeds: dict[int, dict],
                   cfg: ProfileConfig, weights: str, progress: Echo) -> list[Measurement]:
    """One measurement per batch size, or every batch size skipped (or failed) with the one reason."""
    reason, error = skip_reason(source, setup), None
    if reason is None:
        try:
            with open_runner(source, ckpt, setup, Path(cfg.out), cfg.threads, progress) as runner:
                return [_measure(runner, setup, feeds[batch], cfg, weights, progress) for batch in cfg.batch_sizes]
        except MissingDependencyError as missing:  # a library or device the backend needs: it does not run here
            raise_if_interrupted(missing)
            reason = str(missing)
        except SeqrecError as failure:  # an export whose parity failed, a provider that would not start
            raise_if_interrupted(failure)  # a Ctrl-C that a library wrapped stops the sweep, as any other
            reason, error = str(failure), failure
    unmeasured = [Measurement(setup, batch, cfg.length, weights, reason=reason, error=error)
                  for batch in cfg.batch_sizes]
    progress(row(unmeasured[0]))
    return unmeasured


def _measure(runner, setup: Setup, feed: dict[str, np.ndarray], cfg: ProfileConfig, weights: str,
             progress: Echo) -> Measurement:
    batch = len(next(iter(feed.values())))
    timing = time_calls(lambda: runner.infer(feed), batch, cfg.warmup, cfg.iterations, cfg.seconds)
    measurement = Measurement(setup, batch, cfg.length, weights, timing)
    progress(row(measurement))
    return measurement


def _report(source: ProfileSource, cfg: ProfileConfig, measurements: list[Measurement], wall_seconds: float,
            echo: Echo) -> dict:
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    machine = machine_info()
    report = {"source": source.describe(), "settings": cfg.to_dict(), "machine": machine,
              "outcome": outcome(measurements), "measurements": [m.to_dict() for m in measurements],
              "wall_seconds": round(wall_seconds, 2)}
    write_json(out, report)
    title = f"seqrec profile: {source.model_config.model}/{source.model_config.head}, top-{cfg.top_k}, " \
            f"histories 1..{cfg.length}, on {machine['gpu'] or machine['cpu_model']}"
    write_plot(measurements, out / PLOT_FILE, title)
    echo(table(measurements))
    echo(summary_line(measurements, wall_seconds, out))
    return report


def _check_outcome(measurements: list[Measurement], out: Path) -> None:
    """After the report is written: the first failure's error type when a configuration that runs here
    failed; ConfigError when nothing at all was measured."""
    failed = [m for m in measurements if m.failed]
    if failed:
        names = ", ".join(dict.fromkeys(_setup_name(m) for m in failed))
        first = failed[0]
        raise type(first.error)(received_expected(
            "seqrec profile", f"{names} failed ({_setup_name(first)}: {(first.reason.splitlines() or [''])[0]})",
            f"every backend and precision this machine runs measured; the results are in {out / JSON_FILE}")) \
            from first.error
    if not any(m.ok for m in measurements):
        names = ", ".join(dict.fromkeys(_setup_name(m) for m in measurements))
        raise ConfigError(received_expected("seqrec profile", f"nothing measured: {names} skipped (reasons in "
                                            f"{out / JSON_FILE})", "at least one backend and precision that runs "
                                            "on this machine from this model"))


def _setup_name(measurement: Measurement) -> str:
    setup = measurement.setup
    return f"{setup.backend} {setup.precision} catalog {setup.catalog:,}"
