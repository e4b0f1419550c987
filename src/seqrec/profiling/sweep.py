"""``seqrec profile``: latency and throughput per backend x precision x catalog size x batch size.

The sweep runs catalog by catalog (one model in memory at a time), then backend by backend and
precision by precision (one runner, and at most one exported graph, at a time), then batch size by
batch size. Inputs are random histories of lengths uniform in 1..L, left padded to L, drawn once
per catalog and batch size from a fixed seed: every backend and precision scores the very same
arrays. Each configuration prints one progress line as it finishes; the table, profile.json,
profile.png and a summary line follow at the end.

What a number means: the wall time of one ``runner.infer`` call as ``seqrec score`` makes it
(NumPy in, NumPy out), warm-up calls excluded; p50 / p99 over the timed calls, throughput = users
over the summed timed seconds. Note that the torch backend, like ``seqrec score``'s, runs a batch
at its own length (up to the window), while exported graphs always pad or cut to the window.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from seqrec.config import ProfileConfig
from seqrec.errors import ConfigError, SeqrecError, received_expected
from seqrec.exporter.bundle import MANIFEST_FILE
from seqrec.profiling.machine import machine_info
from seqrec.profiling.plots import require_matplotlib, write_plot
from seqrec.profiling.report import JSON_FILE, PLOT_FILE, Measurement, row, summary_line, table, write_json
from seqrec.profiling.source import (ProfileSource, Setup, checkpoint_for_catalog, open_runner, open_source,
                                     skip_reason)
from seqrec.profiling.timers import time_calls
from seqrec.training.checkpoint import CONFIG_FILE, WEIGHTS_FILE, Checkpoint

DEFAULT_SECONDS = 2.0  # timed seconds per configuration when neither --iterations nor --seconds is given

Echo = Callable[[str], None]


def profile(cfg: ProfileConfig, echo: Echo = print) -> dict:
    """Run the sweep ``cfg`` describes; write ``cfg.out``/profile.json and profile.png; return the report."""
    require_matplotlib()
    _check_out(Path(cfg.out))
    started = time.perf_counter()
    source = open_source(cfg)
    cfg = _resolved(cfg, source)
    if source.no_checkpoint:
        echo(f"{source.path}: {source.no_checkpoint}; profiling only the bundle's own graph "
             f"(catalog {source.catalog:,}, {source.export_config.precision})")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    measurements = []
    for catalog in cfg.catalog_sizes:
        measurements += _profile_catalog(source, cfg, catalog, echo)
    return _report(source, cfg, measurements, time.perf_counter() - started, echo)


def _check_out(out: Path) -> None:
    """ConfigError, before any work, for an --out that is a file, a checkpoint or an export bundle: the
    report's files would land among the model's (and a later export or train there would refuse it)."""
    held = [name for name in (MANIFEST_FILE, CONFIG_FILE, WEIGHTS_FILE) if (out / name).is_file()]
    if out.exists() and not out.is_dir() or held:
        found = "a file" if not out.is_dir() else f"a model's directory (it holds {', '.join(held)})"
        raise ConfigError(received_expected(f"--out '{out}'", found, f"a directory for {JSON_FILE} and {PLOT_FILE} "
                                            "(absent, or holding no checkpoint or bundle)"))


def _resolved(cfg: ProfileConfig, source: ProfileSource) -> ProfileConfig:
    """Fill what the source decides: catalog sizes, history length, top-K; and the default time budget."""
    seconds = DEFAULT_SECONDS if cfg.iterations is None and cfg.seconds is None else cfg.seconds
    return dataclasses.replace(cfg, catalog_sizes=cfg.catalog_sizes or (source.catalog,),
                               length=cfg.length or source.window, top_k=source.top_k, seconds=seconds)


def _profile_catalog(source: ProfileSource, cfg: ProfileConfig, catalog: int, echo: Echo) -> list[Measurement]:
    ckpt = checkpoint_for_catalog(source, catalog, cfg.seed)
    feeds = {batch: _histories(source, catalog, batch, cfg) for batch in cfg.batch_sizes}
    weights = "trained" if catalog == source.catalog else f"trained, random item table (seed {cfg.seed})"
    measurements = []
    for backend in cfg.backends:
        for precision in cfg.precisions:
            setup = Setup(backend, precision, catalog)
            measurements += _profile_setup(source, ckpt, setup, feeds, cfg, weights, echo)
    return measurements


def _histories(source: ProfileSource, catalog: int, batch: int, cfg: ProfileConfig) -> dict[str, np.ndarray]:
    """Left-padded random histories of lengths uniform in 1..L (and increasing timestamps where read)."""
    from seqrec.exporter.specs import ExportSpec

    sample = ExportSpec(inputs=source.inputs).sample_inputs(catalog, batch, cfg.length, cfg.seed)  # (B, L) each
    return {name: tensor.numpy() for name, tensor in sample.items()}


def _profile_setup(source: ProfileSource, ckpt: Checkpoint | None, setup: Setup, feeds: dict[int, dict],
                   cfg: ProfileConfig, weights: str, echo: Echo) -> list[Measurement]:
    """One measurement per batch size, or every batch size skipped with the one reason."""
    reason = skip_reason(source, setup)
    if reason is None:
        try:
            with open_runner(source, ckpt, setup, Path(cfg.out), cfg.threads, echo) as runner:
                return [_measure(runner, setup, feeds[batch], cfg, weights, echo) for batch in cfg.batch_sizes]
        except SeqrecError as error:  # an export whose parity failed, a provider that would not start
            reason = str(error)
    skipped = [Measurement(setup, batch, cfg.length, weights, reason=reason) for batch in cfg.batch_sizes]
    echo(row(skipped[0]))
    return skipped


def _measure(runner, setup: Setup, feed: dict[str, np.ndarray], cfg: ProfileConfig, weights: str,
             echo: Echo) -> Measurement:
    batch = len(next(iter(feed.values())))
    timing = time_calls(lambda: runner.infer(feed), batch, cfg.warmup, cfg.iterations, cfg.seconds)
    measurement = Measurement(setup, batch, cfg.length, weights, timing)
    echo(row(measurement))
    return measurement


def _report(source: ProfileSource, cfg: ProfileConfig, measurements: list[Measurement], wall_seconds: float,
            echo: Echo) -> dict:
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    machine = machine_info()
    report = {"source": source.describe(), "settings": cfg.to_dict(), "machine": machine,
              "measurements": [m.to_dict() for m in measurements], "wall_seconds": round(wall_seconds, 2)}
    write_json(out, report)
    title = f"seqrec profile: {source.model_config.model}/{source.model_config.head}, top-{cfg.top_k}, " \
            f"histories 1..{cfg.length}, on {machine['gpu'] or machine['cpu_model']}"
    write_plot(measurements, out / PLOT_FILE, title)
    echo(table(measurements))
    echo(summary_line(measurements, wall_seconds, out))
    return report
