"""Export: checkpoint -> static scoring graph (ONNX, TensorRT) with top-K inside, parity proven."""

from seqrec.exporter.api import export_checkpoint
from seqrec.exporter.bundle import Bundle, load_bundle
from seqrec.exporter.graph import ScoringGraph
from seqrec.exporter.runners import OnnxRuntimeRunner, Runner, TorchRunner
from seqrec.exporter.specs import EXPORT_SPECS, ExportSpec, spec_for

__all__ = ["EXPORT_SPECS", "Bundle", "ExportSpec", "OnnxRuntimeRunner", "Runner", "ScoringGraph", "TorchRunner",
           "export_checkpoint", "load_bundle", "spec_for"]
