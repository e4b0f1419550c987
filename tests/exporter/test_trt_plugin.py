"""The TensorRT plugin for seqrec::CprScatter: its AOT Triton compile (CPU is enough), its wiring into
build_engine, and (GPU + tensorrt only) an engine holding the node against the PyTorch reference."""

import re

import pytest
import torch

from seqrec.kernels.triton import triton_available

from tensorrt_devices import requires_tensorrt, tensorrt_missing


requires_triton = pytest.mark.skipif(not triton_available(), reason="needs triton: pip install 'seqrec[triton]'")


def entry_params(ptx: str, name: str) -> list[str]:
    """The parameter kinds of the PTX entry ``name``: 'ptr' for global pointers, else the PTX type."""
    body = re.search(rf"\.entry {name}\((.*?)\)", ptx, re.S)
    assert body is not None, f"no .entry {name} in the PTX"
    params = re.findall(r"\.param (\.u64 \.ptr|\.\w+)", body.group(1))
    return ["ptr" if ".ptr" in kind else kind.lstrip(".") for kind in params]


@requires_triton
@pytest.mark.parametrize("capability", [80, 90])
def test_aot_compile_gives_ptx_the_plugin_can_launch(capability):
    # triton 3.9 ships ptxas: checked here on a machine without a GPU, where this compile succeeds
    from seqrec.exporter.trt_plugin import INPUT_POINTERS, OUTPUT_POINTERS, SCALARS, compile_cpr_scatter_aot

    kernel = compile_cpr_scatter_aot(capability, history=50)
    assert re.search(rf"^\.target sm_{capability}a?\b", kernel.ptx, re.M)
    assert kernel.blocks == {"BLOCK_N": 1024, "BLOCK_S": 64, "BLOCK_K": 32}
    assert kernel.num_warps == 4 and kernel.shared_bytes >= 0
    launched = ["ptr"] * len(INPUT_POINTERS) + ["u32"] * len(SCALARS) + ["ptr"] * len(OUTPUT_POINTERS)
    params = entry_params(kernel.ptx, kernel.name)
    assert params[:len(launched)] == launched  # TensorRT passes inputs, SymInt32 extras, outputs, in order
    assert params[len(launched):] == ["ptr", "ptr"]  # triton's global/profile scratch: unused, TensorRT passes null


@requires_triton
def test_aot_compile_caps_the_ptx_isa_for_older_drivers():
    from seqrec.exporter.trt_plugin import compile_cpr_scatter_aot, ptx_isa

    assert ptx_isa(compile_cpr_scatter_aot(90, history=5, ptx_version=85).ptx) == 85

@requires_triton
def test_aot_compile_refuses_a_history_it_cannot_hold():
    from seqrec.exporter.trt_plugin import compile_cpr_scatter_aot

    with pytest.raises(ValueError, match=r"CprScatter plugin history length \| received 4097, expected 1\.\.4096"):
        compile_cpr_scatter_aot(90, history=4097)


@pytest.mark.parametrize("pointer_op,registers", [("custom", True), ("standard", False)])
def test_build_engine_registers_the_plugin_only_for_seqrec_nodes(exported, monkeypatch, pointer_op, registers):
    import seqrec.exporter.trt_plugin as trt_plugin
    from seqrec.exporter.tensorrt import register_plugins

    calls = []
    monkeypatch.setattr(trt_plugin, "register_cpr_scatter_plugin", lambda **kwargs: calls.append(kwargs))
    out, _ = exported("sasrec", "cpr", pointer_op=pointer_op)
    assert register_plugins(out / "model.onnx", window=12) is registers
    assert calls == ([{"history": 12}] if registers else [])


@pytest.mark.skipif(tensorrt_missing() is None, reason="this machine has TensorRT and a GPU")
def test_registering_without_tensorrt_is_one_clear_line():
    from seqrec.errors import MissingDependencyError
    from seqrec.exporter.trt_plugin import register_cpr_scatter_plugin

    with pytest.raises(MissingDependencyError, match="the TensorRT backend"):
        register_cpr_scatter_plugin(history=12)


def cpr_scatter_model(history: int):
    """An ONNX model of one seqrec::CprScatter node, as cpr_scatter_node emits it; rows and items dynamic."""
    import onnx
    from onnx import TensorProto, helper

    from seqrec.exporter.custom_ops import DOMAIN, OP_TYPE, TENSORRT_ATTRIBUTES

    node = helper.make_node(OP_TYPE, ["logits", "ids", "values"], ["out"], domain=DOMAIN, **TENSORRT_ATTRIBUTES)
    inputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["M", "N"]),
              helper.make_tensor_value_info("ids", TensorProto.INT64, ["M", history]),
              helper.make_tensor_value_info("values", TensorProto.FLOAT, ["M", history])]
    output = helper.make_tensor_value_info("out", TensorProto.FLOAT, ["M", "N"])
    graph = helper.make_graph([node], "cpr_scatter", inputs, [output])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid(DOMAIN, 1)])


@requires_tensorrt
def test_engine_with_the_plugin_matches_the_reference(tmp_path):
    import tensorrt as trt

    from seqrec.exporter.trt_plugin import register_cpr_scatter_plugin
    from seqrec.kernels.reference import pt_cpr_scatter

    history, rows, width = 21, 37, 5003
    register_cpr_scatter_plugin(history=history)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    assert parser.parse(cpr_scatter_model(history).SerializeToString()), parser.get_error(0)
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    profile.set_shape("logits", (1, 2), (rows, width), (64, 10_000))
    for name in ("ids", "values"):
        profile.set_shape(name, (1, history), (rows, history), (64, history))
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    assert plan is not None
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 12, (rows, history), generator=gen)  # duplicates and padding
    ids[::5] = 0  # all-padding rows
    feed = {"logits": torch.randn(rows, width, generator=gen), "ids": ids,
            "values": torch.randn(rows, history, generator=gen)}
    out = _run_plan(trt, bytes(plan), {name: tensor.cuda() for name, tensor in feed.items()}, logger)
    torch.testing.assert_close(out.cpu(), pt_cpr_scatter(feed["logits"], feed["ids"], feed["values"]))


def _run_plan(trt, plan: bytes, feed: dict, logger) -> torch.Tensor:
    engine = trt.Runtime(logger).deserialize_cuda_engine(plan)
    context = engine.create_execution_context()
    out = torch.empty_like(feed["logits"])
    for name, tensor in feed.items():
        context.set_input_shape(name, tuple(tensor.shape))
        context.set_tensor_address(name, tensor.data_ptr())
    context.set_tensor_address("out", out.data_ptr())
    stream = torch.cuda.Stream()
    assert context.execute_async_v3(stream.cuda_stream)
    stream.synchronize()
    return out


def test_import_of_trt_plugin_imports_neither_triton_nor_tensorrt():
    import subprocess
    import sys

    code = "import sys, seqrec.exporter.trt_plugin; sys.exit('triton' in sys.modules or 'tensorrt' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
