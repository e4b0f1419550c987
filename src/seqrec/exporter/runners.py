"""Runners: one interface over PyTorch, ONNX Runtime and TensorRT (Polygraphy's Runner pattern).

``with runner: outputs = runner.infer({"items": array, ...})`` -> ``{"top_items": (B, K) int64,
"top_scores": (B, K) float32}`` as NumPy arrays. The base class checks the feed and times calls;
subclasses implement ``activate_impl``, ``infer_impl`` and ``deactivate_impl``.
"""

from __future__ import annotations

import abc
import time
from pathlib import Path

import numpy as np
import torch

from seqrec.errors import ExportError, MissingDependencyError, received_expected
from seqrec.exporter.onnx_export import require_module


class Runner(abc.ABC):
    name = "runner"

    def __init__(self, inputs: tuple[str, ...]) -> None:
        self.inputs = inputs
        self.active = False
        self.seconds = 0.0
        self.calls = 0

    def __enter__(self) -> Runner:
        self.activate()
        return self

    def __exit__(self, *exc) -> None:
        self.deactivate()

    def activate(self) -> None:
        if not self.active:
            self.activate_impl()
            self.active = True

    def deactivate(self) -> None:
        if self.active:
            self.deactivate_impl()
            self.active = False

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self._check_feed(feed)
        started = time.perf_counter()
        outputs = self.infer_impl(feed)
        self.seconds += time.perf_counter() - started
        self.calls += 1
        return outputs

    def _check_feed(self, feed: dict[str, np.ndarray]) -> None:
        if not self.active:
            raise ExportError(f"{self.name} runner used before activate() (use it as a context manager)")
        if sorted(feed) != sorted(self.inputs):
            raise ExportError(received_expected(f"{self.name} inputs", sorted(feed), sorted(self.inputs)))
        for name, array in feed.items():
            if array.ndim != 2 or array.dtype != np.int64:
                raise ExportError(received_expected(f"{self.name} input '{name}'", f"{array.dtype} {array.shape}",
                                                    "int64 (batch, length)"))

    def activate_impl(self) -> None: ...
    def deactivate_impl(self) -> None: ...
    @abc.abstractmethod
    def infer_impl(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the backend on a checked feed: every subclass implements this."""


class TorchRunner(Runner):
    """Eager PyTorch on a scoring graph (the model's own kernels)."""

    name = "torch"

    def __init__(self, graph: torch.nn.Module, inputs: tuple[str, ...], device: str = "cpu") -> None:
        super().__init__(inputs)
        self.graph = graph.to(device).eval()
        self.device = device

    @torch.inference_mode()
    def infer_impl(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        # torch.from_numpy refuses negative strides (items[:, ::-1]), which ONNX Runtime takes: copy those
        tensors = [torch.from_numpy(np.ascontiguousarray(feed[name])).to(self.device) for name in self.inputs]
        top_items, top_scores = self.graph(*tensors)
        return {"top_items": top_items.cpu().numpy(), "top_scores": top_scores.float().cpu().numpy()}


# The exporter has folded the graph's small constants already. ONNX Runtime's own folding would turn each Slice
# of the item table (a catalog scored by blocks) into a copy made at load: at 4.5M items of 128 values, 54 s and
# twice the table's memory before the first batch, against 12% more time per batch to slice at run time.
UNWANTED_OPTIMIZERS = ["ConstantFolding"]


class OnnxRuntimeRunner(Runner):
    """An ONNX Runtime session; CUDA provider when asked and present, else CPU."""

    name = "onnxruntime"

    def __init__(self, path: str | Path, inputs: tuple[str, ...], providers: list[str] | None = None,
                 custom_ops: bool = False, threads: int | None = None) -> None:
        super().__init__(inputs)
        self.path = Path(path)
        self.providers = providers or ["CPUExecutionProvider"]
        self.custom_ops = custom_ops
        self.threads = threads
        self.session = None

    def session_options(self, ort):
        options = ort.SessionOptions()
        # ORT's pool threads spin after each run by default, starving whatever shares the cores next
        # (PyTorch, the reader and writer threads of a batch job); park them instead.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if self.threads:
            options.intra_op_num_threads = self.threads
        return options

    def activate_impl(self) -> None:
        ort = require_module("onnxruntime", "the onnxruntime backend", "pip install 'seqrec[onnx]'")
        missing = [p for p in self.providers if p not in ort.get_available_providers()]
        if missing:
            raise MissingDependencyError(received_expected("onnxruntime execution providers", f"{missing} unavailable",
                                                           f"one of {ort.get_available_providers()}"))
        options = self.session_options(ort)
        try:
            model = str(self.path)
            if self.custom_ops:
                from seqrec.exporter.custom_ops import (external_data_folder, model_for_onnxruntime,
                                                        register_onnxruntime_custom_ops)

                register_onnxruntime_custom_ops(options)
                external_data_folder(options, self.path)
                model = model_for_onnxruntime(self.path)
            self.session = ort.InferenceSession(model, options, providers=self.providers,
                                                disabled_optimizers=UNWANTED_OPTIMIZERS)
        except _load_errors(ort) as err:
            raise _unloadable(self.path, err) from err

    def deactivate_impl(self) -> None:
        self.session = None

    def infer_impl(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        top_items, top_scores = self.session.run(["top_items", "top_scores"], feed)
        return {"top_items": top_items, "top_scores": top_scores}


def _load_errors(ort) -> tuple[type[Exception], ...]:
    """What a model that cannot be loaded raises: ONNX Runtime's error classes (one per status code, not
    subclasses of one base; their set varies between versions) and protobuf's DecodeError, which
    ``onnx.load`` raises first on the custom-op path."""
    from google.protobuf.message import DecodeError

    state = ort.capi.onnxruntime_pybind11_state
    return (DecodeError,) + tuple(kind for kind in vars(state).values()
                                  if isinstance(kind, type) and issubclass(kind, Exception))


def _unloadable(path: Path, err: Exception) -> ExportError:
    """One line naming the file and what ONNX Runtime said, instead of its traceback from deep in a job."""
    cause = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return ExportError(received_expected(f"ONNX model '{path}'", f"a model ONNX Runtime could not load ({cause})",
                                         "model.onnx as seqrec export wrote it, with its model.onnx.data beside it "
                                         "(copy the whole bundle, or export it again)"))
