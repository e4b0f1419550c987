"""``seqrec::CprScatter`` as a TensorRT plugin with an ahead-of-time Triton implementation.

The engine carries the kernel as PTX, so a plan runs without Python. Pieces:

* ``compile_cpr_scatter_aot``: Triton's AOT compile (``triton.compile`` of an ``ASTSource``) of
  ``_cpr_scatter_copy_kernel`` for one CUDA target. Needs triton only, no GPU: triton 3.9's
  bundled ptxas compiled it for sm_80 and sm_90 on a CPU-only machine (tests/exporter).
  Triton appends two scratch pointers to the parameters; TensorRT passes null for them, so the
  compile refuses a kernel that needs scratch. The PTX ISA is capped at what the driver loads.
* ``register_cpr_scatter_plugin``: the plugin in ``tensorrt.plugin`` (descriptor: output like
  logits; formats FP32, INT64, FP32 -> FP32 linear; AOT implementation: one program per row,
  ``num_warps`` x 32 threads, N+1 and S as SymInt32 extra arguments). The ONNX parser finds it by
  the node's op type and ``plugin_namespace``, and takes the AOT implementation for ``aot`` = 1
  (attributes ``cpr_scatter_node`` emits). Written against the documented TensorRT 10.x API; it
  has not run here (no GPU, no tensorrt): registration, engine build and the plan's parity are
  unverified until ``benchmarks/gpu_check.py`` (check 4) runs on a GPU.

No ``from __future__ import annotations`` here: ``tensorrt.plugin`` reads the annotations of the
functions it registers and needs them as objects, not strings.
"""

import ctypes
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from typing import List, NamedTuple, Tuple

from seqrec.errors import ExportError, received_expected
from seqrec.exporter.custom_ops import DOMAIN, OP_TYPE

PLUGIN_ID = f"{DOMAIN}::{OP_TYPE}"
INPUT_POINTERS = ("logits_ptr", "ids_ptr", "values_ptr")  # TensorRT passes inputs, extra scalars, outputs
SCALARS = ("num_items", "history")  # int32: TensorRT's extra kernel arguments are SymInt32
OUTPUT_POINTERS = ("out_ptr",)
SIGNATURE = {"logits_ptr": "*fp32", "ids_ptr": "*i64", "values_ptr": "*fp32", "num_items": "i32",
             "history": "i32", "out_ptr": "*fp32", "BLOCK_N": "constexpr", "BLOCK_S": "constexpr",
             "BLOCK_K": "constexpr"}
NUM_WARPS = 4


class AotKernel(NamedTuple):
    """A compiled kernel and what a launch needs to know about it."""

    name: str  # the PTX entry
    ptx: str
    num_warps: int  # block = num_warps x 32 threads
    shared_bytes: int
    capability: int  # e.g. 90 for sm_90
    blocks: dict  # BLOCK_N, BLOCK_S, BLOCK_K it was specialised for


def compile_cpr_scatter_aot(capability: int = 90, history: int = 50, ptx_version: int | None = None) -> AotKernel:
    """PTX of the one-launch CprScatter kernel for sm_<capability>, for histories of up to ``history`` slots.

    ``ptx_version`` (e.g. 85) caps the PTX ISA for drivers older than triton's bundled ptxas. Under
    TRITON_INTERPRET=1 this process's triton.language is the interpreter's, which cannot compile,
    so the compile runs in a child process without it.
    """
    from seqrec.kernels.triton import MAX_TRITON_HISTORY, triton_interpreting

    if not 1 <= history <= MAX_TRITON_HISTORY:
        raise ValueError(received_expected("CprScatter plugin history length", history,
                                           f"1..{MAX_TRITON_HISTORY}"))
    if triton_interpreting():
        return _compile_in_child(capability, history, ptx_version)
    return _compile(capability, history, ptx_version)


def _compile(capability: int, history: int, ptx_version: int | None) -> AotKernel:
    from seqrec.kernels.triton import require_triton

    triton = require_triton()
    from seqrec.kernels.triton import triton_cpr_scatter as kernels

    blocks = {"BLOCK_N": kernels.PLUGIN_BLOCK_N, **kernels._blocks(history)}
    source = triton.compiler.ASTSource(fn=kernels._cpr_scatter_copy_kernel, signature=SIGNATURE, constexprs=blocks)
    options = {"num_warps": NUM_WARPS, **({} if ptx_version is None else {"ptx_version": ptx_version})}
    compiled = triton.compile(source, target=triton.backends.compiler.GPUTarget("cuda", capability, 32),
                              options=options)
    _check_no_scratch(compiled.metadata)
    return AotKernel(compiled.metadata.name, compiled.asm["ptx"], compiled.metadata.num_warps,
                     compiled.metadata.shared, capability, blocks)


def _compile_in_child(capability: int, history: int, ptx_version: int | None) -> AotKernel:
    code = ("import json, sys; from seqrec.exporter.trt_plugin import _compile; "
            f"json.dump(_compile({capability}, {history}, {ptx_version})._asdict(), sys.stdout)")
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(path for path in sys.path if path)
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False)
    if result.returncode:
        raise ExportError(received_expected("CprScatter AOT compile (child process)",
                                            result.stderr.strip().splitlines()[-1:], "PTX"))
    return AotKernel(**json.loads(result.stdout))


def _check_no_scratch(metadata) -> None:
    """TensorRT passes null for triton's trailing scratch pointers, so the kernel must not use them."""
    for name in ("global_scratch_size", "profile_scratch_size"):
        size = getattr(metadata, name, 0)
        if size:
            raise ExportError(received_expected(f"CprScatter kernel {name}", size,
                                                "0 (TensorRT's AOT launch provides no scratch buffer)"))


@dataclass
class _PluginSettings:
    """What the AOT implementation compiles for: set by every ``register_cpr_scatter_plugin`` call
    (tensorrt.plugin keeps one registration per process)."""

    history: int = 50
    capability: int | None = None  # None: the current CUDA device's
    ptx_version: int | None = None
    registered: bool = False
    compiled: dict = field(default_factory=dict)  # (capability, history, ptx_version) -> AotKernel


_settings = _PluginSettings()


def register_cpr_scatter_plugin(history: int, capability: int | None = None, ptx_version: int | None = None) -> str:
    """Register ``seqrec::CprScatter`` with tensorrt.plugin (once per process); returns the plugin id.

    ``history`` bounds the S the kernel is specialised for when the engine's S is not a constant.
    """
    from seqrec.exporter.tensorrt import require_tensorrt

    require_tensorrt()
    _settings.history, _settings.capability, _settings.ptx_version = history, capability, ptx_version
    if not _settings.registered:
        _define_plugin()
        _settings.registered = True
    return PLUGIN_ID


def _define_plugin() -> None:
    import tensorrt.plugin as trtp

    @trtp.register(PLUGIN_ID)
    def cpr_scatter_descriptor(logits: trtp.TensorDesc, ids: trtp.TensorDesc,
                               values: trtp.TensorDesc) -> trtp.TensorDesc:
        return logits.like()  # (M, N+1) float32

    @trtp.autotune(PLUGIN_ID)
    def cpr_scatter_formats(logits: trtp.TensorDesc, ids: trtp.TensorDesc, values: trtp.TensorDesc,
                            outputs: Tuple[trtp.TensorDesc]) -> List[trtp.AutoTuneCombination]:
        return [trtp.AutoTuneCombination("FP32, INT64, FP32, FP32", "LINEAR")]

    @trtp.aot_impl(PLUGIN_ID)
    def cpr_scatter_aot(logits: trtp.TensorDesc, ids: trtp.TensorDesc, values: trtp.TensorDesc,
                        outputs: Tuple[trtp.TensorDesc], tactic: int):
        kernel = _kernel_for(ids.shape_expr[1])
        launch = trtp.KernelLaunchParams()
        launch.grid_x = logits.shape_expr[0]  # one program per row (M)
        launch.block_x = kernel.num_warps * 32
        launch.shared_mem = kernel.shared_bytes
        extra_args = trtp.SymIntExprs.from_tuple([trtp.SymInt32(logits.shape_expr[1]),  # N+1
                                                  trtp.SymInt32(ids.shape_expr[1])])  # S
        return kernel.name, kernel.ptx, launch, extra_args


def _kernel_for(history_dim) -> AotKernel:
    """The compiled kernel for this engine: S from the graph when it is a constant, else the registered bound."""
    history = _settings.history
    if getattr(history_dim, "is_constant", False):
        history = int(history_dim.constant_value)
    capability = _settings.capability or _current_capability()
    key = (capability, history, _settings.ptx_version)
    if key not in _settings.compiled:
        _settings.compiled[key] = _compile_for_driver(capability, history, _settings.ptx_version)
    return _settings.compiled[key]


def _compile_for_driver(capability: int, history: int, ptx_version: int | None) -> AotKernel:
    """Compile; again with a lower PTX ISA when this machine's driver cannot load what triton emitted."""
    kernel = compile_cpr_scatter_aot(capability, history, ptx_version)
    newest = _driver_ptx_version() if ptx_version is None else None
    if newest is not None and ptx_isa(kernel.ptx) > newest:
        kernel = compile_cpr_scatter_aot(capability, history, newest)
    return kernel


def ptx_isa(ptx: str) -> int:
    """The PTX ISA a PTX text declares, as triton's ``ptx_version`` counts it: ``.version 8.5`` -> 85."""
    major, minor = re.search(r"^\.version (\d+)\.(\d+)", ptx, re.M).groups()
    return 10 * int(major) + int(minor)


def _driver_ptx_version() -> int | None:
    """The newest PTX ISA this machine's CUDA driver loads, or None when the driver cannot be asked."""
    from triton.backends.nvidia.compiler import ptx_get_version

    try:
        libcuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None
    version = ctypes.c_int()
    if libcuda.cuDriverGetVersion(ctypes.byref(version)):
        return None
    return ptx_get_version(f"{version.value // 1000}.{version.value % 1000 // 10}")


def _current_capability() -> int:
    import torch

    major, minor = torch.cuda.get_device_capability()
    return 10 * major + minor
