"""Trace a scoring graph into an ONNX file with dynamic batch and length (torch.onnx, dynamo).

The weights are always written beside the graph, in ``model.onnx.data`` (ONNX's external data), whatever
their size. ONNX Runtime maps that file into memory instead of copying it: a session costs no memory for
the item table until it runs, and then only page cache that every process scoring with the bundle shares
and the kernel can reclaim. A graph held in one protobuf (the default below 2 GB) was parsed into a copy
of the table and copied again into the session, and writing it serialised the table twice more.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import torch

from seqrec.errors import ExportError, MissingDependencyError, received_expected
from seqrec.exporter.graph import ScoringGraph
from seqrec.exporter.specs import ExportSpec


def export_onnx(graph: ScoringGraph, spec: ExportSpec, sample: dict[str, torch.Tensor], path: Path,
                opset: int) -> Path:
    """Write ``graph`` to ``path``; ``sample`` (B, L) tensors per input name; returns ``path``."""
    require_module("onnxscript", "the ONNX exporter", "pip install 'seqrec[onnx]'")
    batch, length = torch.export.Dim("batch", min=1), torch.export.Dim("length", min=1)
    dynamic = {name: {0: batch, 1: length} for name in spec.inputs}
    args = tuple(sample[name] for name in spec.inputs)
    try:
        with _quiet():
            program = torch.onnx.export(graph, args, dynamo=True, dynamic_shapes=dynamic, input_names=list(spec.inputs),
                                        output_names=list(spec.outputs), opset_version=opset, optimize=True)
    except Exception as error:  # the exporter raises many types; name the model and keep the cause
        raise_if_interrupted(error)
        raise ExportError(received_expected("torch.onnx.export of the scoring graph",
                                            f"{type(error).__name__}: {str(error).splitlines()[0][:300]}",
                                            "a traceable graph")) from error
    path.parent.mkdir(parents=True, exist_ok=True)
    program.save(str(path), external_data=True)  # weights in PATH.data: ONNX Runtime maps them, never copies
    return path


def raise_if_interrupted(error: BaseException) -> None:
    """Raise a KeyboardInterrupt (of the same class) when ``error`` is one or was caused by one (``__cause__`` / ``__context__``
    at any depth): torch.onnx.export wraps a Ctrl-C in its own TorchExportError, and an interrupt must
    stop the command as an interrupt, not be reported as a failed export."""
    seen: set[int] = set()
    links: list[BaseException | None] = [error]
    while links:
        link = links.pop()
        if link is None or id(link) in seen:
            continue
        if isinstance(link, KeyboardInterrupt):
            raise type(link)() from error  # the same kind: SIGTERM's subclass exits 143, not 130
        seen.add(id(link))
        links += [link.__cause__, link.__context__]


def require_module(name: str, purpose: str, install: str):
    """Import an optional dependency or raise one line naming the install command."""
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError:
        raise MissingDependencyError(received_expected(purpose, f"no module '{name}'", install)) from None


@contextlib.contextmanager
def _quiet():
    """The exporter prints progress lines and warns about unrelated optional packages."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)
