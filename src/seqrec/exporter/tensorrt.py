"""TensorRT: an engine built from the bundle's ONNX file, and a runner for it. Needs an NVIDIA GPU.

TensorRT 10+ networks are created strongly typed, so the precision is the one the ONNX graph
carries (``seqrec export --precision`` casts inside the graph). One optimisation profile covers
batch 1..``max_batch`` and history length 1..4 x window (the graph fits any length to its window).
A timing cache kept between exports (``timing_cache_path``) makes rebuilds faster. Imported lazily: without tensorrt or a GPU
every entry point raises one line saying so.

A ``--pointer-op custom`` graph holds one ``seqrec::CprScatter`` node: ``build_engine`` first
registers the ``tensorrt.plugin`` of ``exporter/trt_plugin.py``, whose ahead-of-time Triton kernel
(PTX) the plan is meant to carry, so the engine runs without Python. Verified so far only on a
machine without a GPU: the PTX compile. The registration, the parse of the node, the engine build
and its parity are unverified until ``benchmarks/gpu_check.py`` runs where a GPU is lent.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from seqrec.config import ExportConfig
from seqrec.errors import ConfigError, ExportError, MissingDependencyError, received_expected
from seqrec.exporter.graph import ScoringGraph
from seqrec.exporter.onnx_export import require_module
from seqrec.exporter.runners import Runner
from seqrec.exporter.specs import ExportSpec
from seqrec.exporter.validate import ParityReport, check_parity

TOPK_LIMIT = 3840  # TensorRT's largest TopK
OPT_BATCH, MAX_BATCH = 1024, 8192


def require_tensorrt():
    trt = require_module("tensorrt", "the TensorRT backend", "pip install 'seqrec[gpu]' on a machine with an NVIDIA GPU")
    if not torch.cuda.is_available():
        raise MissingDependencyError(received_expected("the TensorRT backend", "no CUDA device on this machine",
                                                       "an NVIDIA GPU with a CUDA driver"))
    return trt


def build_engine(onnx_path: Path, plan_path: Path, inputs: tuple[str, ...], window: int) -> Path:
    """Parse ``onnx_path``, build a strongly typed engine with one dynamic profile, write ``plan_path``."""
    trt = require_tensorrt()
    register_plugins(onnx_path, window)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):  # from the file: it finds model.onnx.data beside it
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(received_expected("TensorRT ONNX parser", errors, "a graph TensorRT supports"))
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    for name in inputs:
        profile.set_shape(name, (1, 1), (OPT_BATCH, window), (MAX_BATCH, 4 * window))
    config.add_optimization_profile(profile)
    cache_path = timing_cache_path(trt.__version__)
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.exists() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError(received_expected("TensorRT engine build", "no engine (see the TensorRT log above)", "an engine"))
    plan_path.write_bytes(bytes(serialized))
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    staged = cache_path.with_name(f".{cache_path.name}.{os.getpid()}")
    staged.write_bytes(bytes(config.get_timing_cache().serialize()))
    staged.replace(cache_path)  # atomic: a concurrent build reads the old cache or the new one
    return plan_path


def timing_cache_path(version: str) -> Path:
    """Where TensorRT's timing cache lives between exports: ``$SEQREC_CACHE`` (default ~/.cache/seqrec), one
    file per TensorRT version. A plan is built in a fresh staging directory, so a cache beside it was never
    found again."""
    root = Path(os.environ.get("SEQREC_CACHE", Path.home() / ".cache" / "seqrec"))
    return root / f"tensorrt-{version}.timing-cache"


def register_plugins(onnx_path: Path, window: int) -> bool:
    """Register the seqrec plugins before parsing when the graph holds seqrec-domain nodes; whether it did."""
    from seqrec.exporter.custom_ops import seqrec_nodes

    onnx = require_module("onnx", "reading an ONNX model", "pip install 'seqrec[onnx]'")
    if not seqrec_nodes(onnx.load(str(onnx_path), load_external_data=False)):
        return False
    from seqrec.exporter.trt_plugin import register_cpr_scatter_plugin

    register_cpr_scatter_plugin(history=window)
    return True


class TensorRTRunner(Runner):
    """Runs a plan on the current CUDA device with torch-allocated buffers."""

    name = "tensorrt"

    def __init__(self, plan_path: str | Path, inputs: tuple[str, ...]) -> None:
        super().__init__(inputs)
        self.plan_path = Path(plan_path)

    def activate_impl(self) -> None:
        trt = require_tensorrt()
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self.runtime.deserialize_cuda_engine(self.plan_path.read_bytes())
        if self.engine is None:  # TensorRT returns None, its reason in its log; the next line failed on None
            raise ExportError(received_expected(
                f"TensorRT engine '{self.plan_path}'", "a plan TensorRT could not deserialize (see the TensorRT log "
                "above: a damaged file, or a plan built by another TensorRT version or for another GPU)",
                f"model.plan as seqrec export --format tensorrt built it with TensorRT {trt.__version__} for this GPU "
                "(export the bundle again here)"))
        self.context = self.engine.create_execution_context()
        self.stream = torch.cuda.Stream()

    def deactivate_impl(self) -> None:
        self.context = self.engine = self.runtime = None

    def infer_impl(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        tensors = {name: torch.from_numpy(feed[name]).cuda() for name in self.inputs}
        for name, tensor in tensors.items():
            if not self.context.set_input_shape(name, tuple(tensor.shape)):
                raise ExportError(received_expected(f"TensorRT input '{name}' shape", tuple(tensor.shape),
                                                    f"batch <= {MAX_BATCH} and length <= 4 x the window (the "
                                                    "engine's optimisation profile)"))
            self.context.set_tensor_address(name, tensor.data_ptr())
        batch = next(iter(tensors.values())).shape[0]
        outputs = {}
        for name, dtype in (("top_items", torch.int64), ("top_scores", torch.float32)):
            shape = tuple(self.context.get_tensor_shape(name))
            outputs[name] = torch.empty((batch,) + shape[1:], dtype=dtype, device="cuda")
            self.context.set_tensor_address(name, outputs[name].data_ptr())
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise ExportError("TensorRT execution failed (see the TensorRT log)")
        self.stream.synchronize()
        return {name: tensor.cpu().numpy() for name, tensor in outputs.items()}


def check_topk_sizes(model: torch.nn.Module, top_k: int, window: int, catalog_block: int,
                     exclude_seen: bool = False) -> None:
    """ConfigError, before any work, when the graph's largest TopK would exceed TensorRT's: the catalog step
    takes sum(k_R) + K candidates (the reranker stages and the final top-K take fewer), and where the catalog is
    scored by blocks each block first takes that many plus its possible exclusions (padding, and the window
    where seen items are excluded or a CPR context partition scores them), at most the block's rows."""
    variant = getattr(model.head, "variant", None)
    candidates = min(top_k + (sum(variant.rerank) if variant is not None else 0), model.cfg.num_items)
    what = "top_k + the reranker k's"
    if model.cfg.num_items + 1 > catalog_block:
        history = exclude_seen or bool(variant is not None and variant.context)
        candidates = min(candidates + 1 + (window if history else 0), catalog_block)
        what += " + 1" + (" + the window" if history else "") + ", per catalog block"
    if candidates > TOPK_LIMIT:
        raise ConfigError(received_expected(f"TopK size in the graph ({what})", candidates,
                                            f"<= {TOPK_LIMIT} for TensorRT"))


def build_and_check_engine(onnx_path: Path, plan_path: Path, spec: ExportSpec, cfg: ExportConfig, window: int,
                           cases: dict, reference: ScoringGraph) -> ParityReport:
    """Build the engine and check it against PyTorch on the same cases as ONNX Runtime."""
    check_topk_sizes(reference.model, cfg.top_k, window, cfg.catalog_block, cfg.exclude_seen)
    build_engine(onnx_path, plan_path, spec.inputs, window)
    with TensorRTRunner(plan_path, spec.inputs) as runner:
        return check_parity(runner, reference, spec, cases)
