"""The CPR history scatter as one custom ONNX node, ``seqrec::CprScatter``.

Semantics are those of ``seqrec.kernels.cpr_scatter(logits, ids, values)``: in each row, the
column of every distinct non-zero id gets the mean of that id's values. In PyTorch the node is the
op itself; during ``torch.onnx.export`` it is emitted as a single float32 node of the ``seqrec``
domain, with the attributes TensorRT's ONNX parser reads to find a plugin (``plugin_namespace``
"seqrec", the op type as the plugin name, ``aot`` 1 for its ahead-of-time implementation).

Who runs the node:
- ONNX Runtime (CPU here, tested): a Python kernel through onnxruntime-extensions, which serves
  custom ops only in its own domain ``ai.onnx.contrib``; the runner renames the domain in memory
  when it loads the model, so the bundle's file keeps ``seqrec``. The extra attributes are ignored.
- TensorRT: the plugin of ``exporter/trt_plugin.py``, a Triton kernel compiled to PTX and carried
  by the plan; ``build_engine`` registers it when the graph holds ``seqrec`` nodes. The PTX compile
  is tested on a CPU-only machine; registration, engine build and run need a GPU and are not yet
  verified (``benchmarks/gpu_check.py`` checks them against ONNX Runtime where a GPU is lent).
"""

from __future__ import annotations

import numpy as np
import torch

from seqrec.exporter.onnx_export import require_module
from seqrec.kernels import cpr_scatter
from seqrec.kernels.reference import pt_cpr_scatter

DOMAIN = "seqrec"
OP_TYPE = "CprScatter"
ORT_DOMAIN = "ai.onnx.contrib"
TENSORRT_ATTRIBUTES = {"plugin_namespace": DOMAIN, "aot": 1}  # how TensorRT's ONNX parser finds the plugin
_registered = False


def cpr_scatter_node(logits: torch.Tensor, ids: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``cpr_scatter`` eagerly; one ``seqrec::CprScatter`` node (float32) inside an ONNX export."""
    if not torch.onnx.is_in_onnx_export():
        return cpr_scatter(logits, ids, values)
    return torch.onnx.ops.symbolic(f"{DOMAIN}::{OP_TYPE}", (logits.float(), ids, values.float()), TENSORRT_ATTRIBUTES,
                                   dtype=torch.float32, shape=logits.shape, version=1).to(logits.dtype)


def register_onnxruntime_custom_ops(options) -> None:
    """Make ``options`` (an onnxruntime.SessionOptions) able to run CprScatter on the CPU."""
    extensions = require_module("onnxruntime_extensions", "the CprScatter custom op in ONNX Runtime",
                                "pip install onnxruntime-extensions")
    _define_python_kernel(extensions)
    options.register_custom_ops_library(extensions.get_library_path())


def model_for_onnxruntime(path) -> bytes:
    """The ONNX file with seqrec-domain nodes moved to onnxruntime-extensions' domain, serialized without its
    weights: they stay in the file's external data (the session needs ``external_data_folder(path)``)."""
    onnx = require_module("onnx", "loading an ONNX model", "pip install 'seqrec[onnx]'")
    model = onnx.load(str(path), load_external_data=False)
    for node in seqrec_nodes(model):
        node.domain = ORT_DOMAIN
    imports = {entry.domain for entry in model.opset_import}
    if ORT_DOMAIN not in imports:
        model.opset_import.append(onnx.helper.make_opsetid(ORT_DOMAIN, 1))
    return model.SerializeToString()


def external_data_folder(options, path) -> None:
    """Tell an ONNX Runtime session built from the bytes of ``model_for_onnxruntime(path)`` where the weights are:
    the directory ``path`` names (not where a linked ``model.onnx`` points), as ONNX Runtime reads them from a file."""
    from pathlib import Path

    options.add_session_config_entry("session.model_external_initializers_file_folder_path",
                                     str(Path(path).absolute().parent))


def seqrec_nodes(model) -> list:
    """The ``seqrec``-domain nodes of an onnx.ModelProto, in its graph and its local functions."""
    graphs = [model.graph] + list(model.functions)
    return [node for graph in graphs for node in graph.node if node.domain == DOMAIN]


def _define_python_kernel(extensions) -> None:
    global _registered
    if _registered:
        return
    types = extensions.PyCustomOpDef

    @extensions.onnx_op(op_type=OP_TYPE, inputs=[types.dt_float, types.dt_int64, types.dt_float],
                        outputs=[types.dt_float])
    def cpr_scatter_kernel(logits: np.ndarray, ids: np.ndarray, values: np.ndarray) -> np.ndarray:
        out = pt_cpr_scatter(torch.from_numpy(np.array(logits)), torch.from_numpy(np.array(ids)),
                             torch.from_numpy(np.array(values)))
        return out.numpy()

    _registered = True
