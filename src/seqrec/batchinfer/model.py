"""What scores: an export bundle or a checkpoint, opened behind the one Runner interface.

``open_model(cfg)`` reads the model source once (vocabulary, window, top-K, seen-item exclusion,
graph inputs) and checks the backend against it before any data is read:

- a bundle (``manifest.json``): top_k and exclude_seen are baked into its graph; onnxruntime runs
  ``model.onnx`` (CPU, or CUDA with IOBinding where present), tensorrt runs ``model.plan``. It holds
  no PyTorch weights, so the torch backend needs the checkpoint it was exported from.
- a checkpoint (``config.json``): the torch backend runs the model's own kernels eagerly through a
  ScoringGraph that cuts histories to the model's window but does not pad shorter batches up to
  it, so length-bucketed batches cost what their length costs. onnxruntime and tensorrt need a
  bundle (``seqrec export``).

``ScoringModel.runner()`` builds a fresh runner: each Ray actor calls it once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from seqrec.config import ATTENTION_ENCODERS, ModelConfig, ScoreConfig
from seqrec.data import Vocabulary
from seqrec.errors import ConfigError, received_expected
from seqrec.exporter.bundle import MANIFEST_FILE, Bundle, load_bundle
from seqrec.exporter.graph import ScoringGraph
from seqrec.exporter.onnx_export import require_module
from seqrec.exporter.runners import OnnxRuntimeRunner, Runner, TorchRunner
from seqrec.training.checkpoint import CONFIG_FILE

DEFAULT_TOP_K = 10
DEFAULT_SCORE_BATCH = 512  # users per model call
ATTENTION_BUDGET = 2**28  # float32 attention scores of one layer a default batch may hold: 1 GiB


@dataclass
class ScoringModel:
    """A model source resolved for one backend; ``runner()`` makes the thing that scores."""

    source: Path
    kind: str  # "bundle" or "checkpoint"
    backend: str
    vocab: Vocabulary
    window: int  # the history length the graph sees: longer histories keep their most recent items
    top_k: int
    exclude_seen: bool
    inputs: tuple[str, ...]  # graph inputs: "items", and "timestamps" where the model reads times
    threads: int | None = None
    bundle: Bundle | None = None
    graph: torch.nn.Module | None = None
    model_config: ModelConfig | None = None

    def default_batch_size(self) -> int:
        """DEFAULT_SCORE_BATCH, or fewer users where their attention scores at the full window would pass
        ATTENTION_BUDGET per layer: 512 users of a 2,048-item window hold 8 GiB per attention tensor."""
        cfg = self.model_config
        if cfg is None or cfg.model not in ATTENTION_ENCODERS:
            return DEFAULT_SCORE_BATCH
        return max(1, min(DEFAULT_SCORE_BATCH, ATTENTION_BUDGET // (cfg.heads * self.window ** 2)))

    def runner(self) -> Runner:
        if self.backend == "torch":
            if self.threads:
                torch.set_num_threads(self.threads)
            device = "cuda" if torch.cuda.is_available() else "cpu"
            return TorchRunner(self.graph, self.inputs, device=device)
        if self.backend == "onnxruntime":
            return BoundOnnxRuntimeRunner(self.bundle.onnx_path, self.inputs, threads=self.threads,
                                          custom_ops=self.bundle.export_config.pointer_op == "custom")
        from seqrec.exporter.tensorrt import TensorRTRunner

        return TensorRTRunner(self.bundle.plan_path, self.inputs)

    def describe(self) -> dict:
        precision = "bf16" if getattr(self.graph, "bf16", False) else "fp32"
        return {"model": str(self.source.resolve()), "kind": self.kind, "backend": self.backend, "top_k": self.top_k,
                "exclude_seen": self.exclude_seen, "window": self.window, "inputs": list(self.inputs),
                "precision": precision if self.kind == "checkpoint" else self.bundle.export_config.precision}


class WindowGraph(ScoringGraph):
    """ScoringGraph that keeps the last ``length`` slots but never pads up to them.

    A batch of short histories runs the encoder at its own length: padding is nothing, so the
    top-K is the same as at the full window, and length-bucketed batches cost less. ``bf16``
    autocasts the matrix products (as ``seqrec train --precision bf16`` does); scores come out fp32.
    """

    def __init__(self, model: torch.nn.Module, top_k: int, exclude_seen: bool, length: int, bf16: bool = False):
        super().__init__(model, top_k, exclude_seen, length)
        self.bf16 = bf16

    def forward(self, items: torch.Tensor, timestamps: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        if timestamps is not None:
            timestamps = timestamps[:, -self.length:]  # (B, L')
        with torch.autocast(items.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            scores, top_items = self.model.top_k(items[:, -self.length:], self.top_k, self.exclude_seen, timestamps)
        return top_items, scores.float()


class BoundOnnxRuntimeRunner(OnnxRuntimeRunner):
    """ONNX Runtime with IOBinding: on CUDA the feed is copied once and outputs come back once; on
    the CPU the binding is the same calls. CUDA is used when this onnxruntime build has it."""

    def __init__(self, path: Path, inputs: tuple[str, ...], threads: int | None = None,
                 custom_ops: bool = False) -> None:
        ort = require_module("onnxruntime", "the onnxruntime backend", "pip install 'seqrec[onnx]'")
        cuda = "CUDAExecutionProvider" in ort.get_available_providers() and torch.cuda.is_available()
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if cuda else ["CPUExecutionProvider"]
        super().__init__(path, inputs, providers=providers, custom_ops=custom_ops, threads=threads)
        self.device = "cuda" if cuda else "cpu"

    def session_options(self, ort):
        options = super().session_options(ort)
        # Memory patterns pre-plan one block for a run's intermediates beside the arena; with (B, N) logits
        # that held 1.6 GB instead of 1.0 GB at B = 512, N = 100k, for the same speed.
        options.enable_mem_pattern = False
        return options

    def infer_impl(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        binding = self.session.io_binding()
        for name in self.inputs:
            binding.bind_cpu_input(name, np.ascontiguousarray(feed[name]))
        for name in ("top_items", "top_scores"):
            binding.bind_output(name, self.device)
        self.session.run_with_iobinding(binding)
        top_items, top_scores = binding.copy_outputs_to_cpu()
        return {"top_items": top_items, "top_scores": top_scores}


def open_model(cfg: ScoreConfig) -> ScoringModel:
    """Resolve ``cfg.model`` for ``cfg.backend``; ConfigError / ExportError / CheckpointError when they
    do not fit together, before any data is read."""
    source = Path(cfg.model)
    if model_kind(source) == "bundle":
        return _open_bundle(source, cfg)
    return _open_checkpoint(source, cfg)


def model_kind(source: Path) -> str:
    """Whether ``source`` is a "bundle" (manifest.json) or a "checkpoint" (config.json); ConfigError otherwise."""
    if (source / MANIFEST_FILE).is_file():
        return "bundle"
    if (source / CONFIG_FILE).is_file():
        return "checkpoint"
    raise ConfigError(received_expected(f"model '{source}'", "a path with neither manifest.json nor config.json",
                                        "an export bundle (seqrec export) or a checkpoint directory (seqrec train)"))


def _open_bundle(source: Path, cfg: ScoreConfig) -> ScoringModel:
    backend = cfg.backend or "onnxruntime"
    if backend == "torch":
        raise ConfigError(received_expected(
            "--backend torch", f"the export bundle '{source}' (an ONNX graph, no PyTorch weights)",
            "the checkpoint directory it was exported from (config.json + weights.safetensors), "
            "or --backend onnxruntime / tensorrt for the bundle"))
    if cfg.precision != "fp32":
        raise ConfigError(received_expected("--precision", cfg.precision, f"fp32 for the bundle '{source}' (its "
                                            "precision is set at export: seqrec export --precision)"))
    bundle = load_bundle(source)
    baked = bundle.export_config
    _refuse_conflict("--top-k", cfg.top_k, baked.top_k, source)
    _refuse_conflict("--exclude-seen", cfg.exclude_seen, baked.exclude_seen, source)
    if backend == "onnxruntime" and baked.precision == "bf16":
        raise ConfigError(received_expected(
            "--backend onnxruntime", f"the bf16 bundle '{source}' (ONNX Runtime has no bf16 kernels for its graph)",
            "--backend tensorrt for it (its model.plan), or a bundle exported with --precision fp32 or fp16"))
    if backend == "tensorrt":
        from seqrec.exporter.tensorrt import MAX_BATCH, require_tensorrt

        if (cfg.batch_size or DEFAULT_SCORE_BATCH) > MAX_BATCH:
            raise ConfigError(received_expected("--batch-size", cfg.batch_size, f"<= {MAX_BATCH} with --backend "
                                                "tensorrt (the largest batch of the engine's optimisation profile)"))
        require_tensorrt()
        if not bundle.plan_path.is_file():
            raise ConfigError(received_expected(f"--backend tensorrt on '{source}'", "a bundle without model.plan",
                                                "a bundle exported with seqrec export --format tensorrt"))
    return ScoringModel(source, "bundle", backend, bundle.vocab, int(bundle.manifest["window"]), baked.top_k,
                        baked.exclude_seen, bundle.inputs, cfg.threads, bundle=bundle, model_config=bundle.model_config)


def _open_checkpoint(source: Path, cfg: ScoreConfig) -> ScoringModel:
    backend = cfg.backend or "torch"
    if backend != "torch":
        raise ConfigError(received_expected(f"--backend {backend}", f"the checkpoint '{source}'",
                                            f"an export bundle for {backend}: run seqrec export {source} --out BUNDLE"
                                            f"{' --format tensorrt' if backend == 'tensorrt' else ''} first, "
                                            "or use --backend torch"))
    from seqrec.exporter.specs import spec_of_model
    from seqrec.training.checkpoint import load_checkpoint

    ckpt = load_checkpoint(source)
    top_k = cfg.top_k or min(DEFAULT_TOP_K, ckpt.model_config.num_items)  # as seqrec profile's default
    if top_k > ckpt.model_config.num_items:
        raise ConfigError(received_expected("--top-k", top_k, f"<= the catalog size {ckpt.model_config.num_items}"))
    window = ckpt.model_config.max_length
    exclude_seen = bool(cfg.exclude_seen)
    graph = WindowGraph(ckpt.model, top_k, exclude_seen, window, bf16=cfg.precision == "bf16")
    inputs = spec_of_model(ckpt.model).inputs
    return ScoringModel(source, "checkpoint", backend, ckpt.vocab, window, top_k, exclude_seen, inputs,
                        cfg.threads, graph=graph, model_config=ckpt.model_config)


def _refuse_conflict(option: str, asked: object, baked: object, source: Path) -> None:
    if asked is not None and asked != baked:
        raise ConfigError(received_expected(
            option, asked, f"{baked} as baked into the graph of '{source}' at export (omit the option, or "
                           "re-export with the value you want, or score the checkpoint with --backend torch)"))



def resolved_score_config(cfg: ScoreConfig) -> ScoreConfig:
    """``cfg`` with what its model decides filled in: backend, top-K, seen-item exclusion, and the Ray actors
    (``seqrec score --print-config``); checked against the model as a job checks it, without reading input."""
    import dataclasses

    model = open_model(cfg)
    actors = cfg.actors
    if cfg.engine == "ray" and actors is None:
        from seqrec.batchinfer.ray_engine import DEFAULT_ACTORS

        actors = DEFAULT_ACTORS
    return dataclasses.replace(cfg, backend=model.backend, top_k=model.top_k, exclude_seen=model.exclude_seen,
                               actors=actors, batch_size=cfg.batch_size or model.default_batch_size())
