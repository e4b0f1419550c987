"""What ``seqrec profile`` measures: a bundle or a checkpoint, opened as one runner per backend,
precision and catalog size.

Catalog sizes. Latency depends on shapes, not on weights: the item table (N + 1, D), the (B, N)
logits and their top-K cost the same whatever the numbers in them. So for a catalog of N items
other than the model's own, the same architecture (the checkpoint's ModelConfig with
``num_items = N``) is built with a seeded random item table and the checkpoint's other weights (so
the graph is the one the checkpoint exports); the model's own catalog runs its trained weights. Graphs for ONNX Runtime and TensorRT are exported from that model through the same
``export_checkpoint`` as ``seqrec export`` (with the bundle's own export settings when profiling a
bundle), parity checked on a few users, into a temporary folder under the output directory.

A bundle holds an ONNX graph, not weights. Its own graph (its catalog, its precision) is profiled
as it is; anything else (torch, other catalogs, other precisions) is rebuilt from the checkpoint
that its manifest names (``source.checkpoint``, written by ``seqrec export``). Where the manifest
names none, or that checkpoint is gone or no longer matches the bundle's model, only the bundle's
own graph is profiled and every other combination is skipped with that reason.

Backends and precisions: torch runs fp32 or bf16 autocast (as ``seqrec score --precision``);
onnxruntime runs fp32 and fp16 graphs (ONNX Runtime has no bf16 kernels for them); tensorrt runs
all three and needs tensorrt and a CUDA device. A backend whose library or device is missing, and
a precision the backend does not run, are skipped with a one-line reason, never a crash.
"""

from __future__ import annotations

import contextlib
import dataclasses
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from seqrec.config import ExportConfig, ModelConfig, ProfileConfig
from seqrec.data import Vocabulary
from seqrec.errors import ConfigError, MissingDependencyError, received_expected
from seqrec.exporter.bundle import Bundle, load_bundle
from seqrec.exporter.runners import Runner
from seqrec.training.checkpoint import CONFIG_FILE, Checkpoint, load_checkpoint

DEFAULT_TOP_K = 10
VALIDATION_USERS = 16  # parity check of each export made for profiling: a guard, not the export's full check
PRECISIONS_RUN = {"torch": ("fp32", "bf16"), "onnxruntime": ("fp32", "fp16"), "tensorrt": ("fp32", "fp16", "bf16")}
PRECISION_NOTES = {"torch": "fp32 or bf16 (autocast)",
                   "onnxruntime": "fp32 or fp16 (ONNX Runtime has no bf16 kernels for this graph)",
                   "tensorrt": "fp32, fp16 or bf16"}
EXPORT_FORMAT = {"onnxruntime": "onnx", "tensorrt": "tensorrt"}


@dataclass(frozen=True)
class Setup:
    """One backend x precision x catalog size; measured at every batch size."""

    backend: str
    precision: str
    catalog: int


@dataclass
class ProfileSource:
    """A bundle or a checkpoint, read once."""

    path: Path
    model_config: ModelConfig  # of the source's own catalog
    window: int  # the history length the graph sees
    top_k: int
    inputs: tuple[str, ...]  # graph inputs: "items", and "timestamps" where the model reads times
    export_config: ExportConfig  # how graphs are (re-)exported: the bundle's settings, or defaults
    checkpoint: Checkpoint | None  # trained weights; None for a bundle without a usable checkpoint
    bundle: Bundle | None = None
    no_checkpoint: str = ""  # why a bundle has no checkpoint to rebuild from

    @property
    def catalog(self) -> int:
        return self.model_config.num_items

    def serves(self, setup: Setup) -> bool:
        """Whether the bundle's own files run ``setup`` without a re-export."""
        if self.bundle is None or setup.catalog != self.catalog or setup.backend == "torch":
            return False
        own = setup.precision == self.export_config.precision
        return own and (setup.backend == "onnxruntime" or self.bundle.plan_path.is_file())

    def describe(self) -> dict:
        return {"path": str(self.path.resolve()), "kind": "bundle" if self.bundle else "checkpoint",
                "model": self.model_config.to_dict(), "window": self.window, "top_k": self.top_k,
                "exclude_seen": self.export_config.exclude_seen, "inputs": list(self.inputs),
                "checkpoint": self._checkpoint_path(), "no_checkpoint": self.no_checkpoint or None}

    def _checkpoint_path(self) -> str | None:
        if self.checkpoint is None:
            return None
        return self.bundle.manifest["source"]["checkpoint"] if self.bundle else str(self.path.resolve())


def open_source(cfg: ProfileConfig) -> ProfileSource:
    """Read ``cfg.model`` (a bundle or a checkpoint) and check ``cfg.top_k``, catalog sizes and length against it."""
    from seqrec.batchinfer.model import model_kind

    path = Path(cfg.model)
    source = _open_bundle(path, cfg.top_k) if model_kind(path) == "bundle" else _open_checkpoint(path, cfg.top_k)
    smallest = min(cfg.catalog_sizes or (source.catalog,))
    if smallest < source.top_k:
        raise ConfigError(received_expected("catalog_sizes", smallest, f">= top_k {source.top_k}"))
    if cfg.length is not None and cfg.length > source.window:  # seqrec score cuts histories to the window first
        raise ConfigError(received_expected("length", cfg.length, f"<= the model's window {source.window} (a scoring "
                                            "job keeps only the last items of a longer history)"))
    return source


def _open_checkpoint(path: Path, top_k: int | None) -> ProfileSource:
    from seqrec.exporter.specs import spec_of_model

    ckpt = load_checkpoint(path)
    cfg = ckpt.model_config
    export = ExportConfig(top_k=top_k or min(DEFAULT_TOP_K, cfg.num_items), validation_users=VALIDATION_USERS)
    return ProfileSource(path, cfg, cfg.max_length, export.top_k, spec_of_model(ckpt.model).inputs, export, ckpt)


def _open_bundle(path: Path, top_k: int | None) -> ProfileSource:
    bundle = load_bundle(path)
    export = dataclasses.replace(bundle.export_config, validation_users=VALIDATION_USERS)
    if top_k is not None and top_k != export.top_k:
        raise ConfigError(received_expected("--top-k", top_k, f"{export.top_k} as baked into the graph of '{path}' "
                                            "(omit the option, or profile the checkpoint)"))
    ckpt, why_not = _bundle_checkpoint(bundle)
    return ProfileSource(path, bundle.model_config, int(bundle.manifest["window"]), export.top_k, bundle.inputs,
                         export, ckpt, bundle, why_not)


def _bundle_checkpoint(bundle: Bundle) -> tuple[Checkpoint | None, str]:
    """The checkpoint the bundle was exported from, or None and why not."""
    named = bundle.manifest.get("source", {}).get("checkpoint")
    if not named:
        return None, "its manifest names no checkpoint (exported before seqrec recorded one)"
    if not (Path(named) / CONFIG_FILE).is_file():
        return None, f"the checkpoint its manifest names, '{named}', is not there"
    ckpt = load_checkpoint(named)
    if ckpt.model_config != bundle.model_config:
        return None, f"the checkpoint '{named}' no longer holds the model the bundle was exported from"
    return ckpt, ""


def checkpoint_for_catalog(source: ProfileSource, catalog: int, seed: int) -> Checkpoint | None:
    """The trained model for its own catalog; otherwise the same model with a seeded random item table of
    ``catalog`` rows: every other weight is the checkpoint's, so the graph is the one it exports (an HSTU's
    trained time bias keeps its timestamps input, a CPR head its facets)."""
    if catalog == source.catalog or source.checkpoint is None:
        return source.checkpoint
    from seqrec.models import build_model

    cfg = dataclasses.replace(source.model_config, num_items=catalog)
    with torch.random.fork_rng():  # seeded weights without moving the caller's random state
        torch.manual_seed(seed)
        model = build_model(cfg).eval()
    trained = {name: value for name, value in source.checkpoint.model.state_dict().items()
               if not name.endswith("item_embedding.weight")}
    missing, unexpected = model.load_state_dict(trained, strict=False)
    assert not unexpected and all(name.endswith("item_embedding.weight") for name in missing), (missing, unexpected)
    vocab = Vocabulary.from_items(np.arange(1, catalog + 1))
    meta = {"data": {"fingerprint": None},
            "profile": f"the checkpoint's weights with a random item table (seed {seed}) of {catalog} items"}
    return Checkpoint(model, cfg, source.checkpoint.train_config, vocab, meta)


def skip_reason(source: ProfileSource, setup: Setup) -> str | None:
    """Why ``setup`` cannot be measured on this machine from this source, or None when it can."""
    if setup.precision not in PRECISIONS_RUN[setup.backend]:
        return received_expected(f"{setup.backend} precision", setup.precision, PRECISION_NOTES[setup.backend])
    missing = backend_missing(setup.backend)
    if missing:
        return missing
    if source.checkpoint is None and not source.serves(setup):
        own = f"catalog {source.catalog:,}, {source.export_config.precision}"
        return f"only the bundle's own graph ({own}) can be profiled: {source.no_checkpoint}"
    return None


def backend_missing(backend: str) -> str | None:
    """One line naming what this machine lacks for ``backend``, or None."""
    try:
        if backend == "onnxruntime":
            from seqrec.exporter.onnx_export import require_module

            require_module("onnxruntime", "the onnxruntime backend", "pip install 'seqrec[onnx]'")
        elif backend == "tensorrt":
            from seqrec.exporter.tensorrt import require_tensorrt

            require_tensorrt()
    except MissingDependencyError as error:
        return str(error)
    return None


@contextlib.contextmanager
def open_runner(source: ProfileSource, ckpt: Checkpoint | None, setup: Setup, workdir: Path, threads: int | None,
                echo: Callable[[str], None]) -> Iterator[Runner]:
    """An active runner for ``setup``; exports a graph into a temporary folder under ``workdir`` when needed."""
    if setup.backend == "torch":
        with _torch_runner(source, ckpt, setup.precision) as runner:
            yield runner
        return
    with contextlib.ExitStack() as stack:
        bundle = source.bundle if source.serves(setup) else _export(ckpt, source, setup, stack, workdir, echo)
        with _graph_runner(bundle, setup.backend, threads) as runner:
            yield runner


@contextlib.contextmanager
def _torch_runner(source: ProfileSource, ckpt: Checkpoint, precision: str) -> Iterator[Runner]:
    """The torch backend of ``seqrec score``: the model's own kernels, eager, fp32 or bf16 autocast."""
    from seqrec.batchinfer.model import WindowGraph
    from seqrec.exporter.runners import TorchRunner

    graph = WindowGraph(ckpt.model, source.top_k, source.export_config.exclude_seen, source.window,
                        bf16=precision == "bf16")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        with TorchRunner(graph, source.inputs, device=device) as runner:
            yield runner
    finally:
        ckpt.model.to("cpu")  # exports of the same model trace on the CPU


def _export(ckpt: Checkpoint, source: ProfileSource, setup: Setup, stack: contextlib.ExitStack, workdir: Path,
            echo: Callable[[str], None]) -> Bundle:
    from seqrec.exporter import export_checkpoint

    workdir.mkdir(parents=True, exist_ok=True)
    folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=".export-", dir=workdir)))
    cfg = dataclasses.replace(source.export_config, format=EXPORT_FORMAT[setup.backend], precision=setup.precision)
    echo(f"exporting {setup.backend} {setup.precision} graph for a catalog of {setup.catalog:,} ...")
    return export_checkpoint(ckpt, folder / "bundle", cfg, echo=lambda line: None)


def _graph_runner(bundle: Bundle, backend: str, threads: int | None) -> Runner:
    """The runner ``seqrec score`` uses for a bundle on ``backend`` (not yet active)."""
    if backend == "onnxruntime":
        from seqrec.batchinfer.model import BoundOnnxRuntimeRunner

        return BoundOnnxRuntimeRunner(bundle.onnx_path, bundle.inputs, threads=threads,
                                      custom_ops=bundle.export_config.pointer_op == "custom")
    from seqrec.exporter.tensorrt import TensorRTRunner

    return TensorRTRunner(bundle.plan_path, bundle.inputs)
