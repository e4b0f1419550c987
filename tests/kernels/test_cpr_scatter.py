"""cpr_scatter: a literal scatter_add + count form vs the reference vs the Triton kernels.

Triton runs through its interpreter on CPU tensors (tests/kernels/conftest.py sets
TRITON_INTERPRET=1 where there is no GPU), so the Triton cases are small but irregular; with CUDA
and TRITON_INTERPRET unset the same cases launch the compiled kernels on the GPU.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from seqrec.errors import ConfigError
from seqrec.kernels import cpr_scatter, register_cpr_scatter_opaque, register_cpr_scatter_triton
from seqrec.kernels.cpr_scatter import _use_triton
from seqrec.kernels.reference import pt_cpr_scatter, pt_cpr_scatter_backward
from seqrec.kernels.triton import require_triton, triton_available

from kernel_devices import INTERPRETING, TRITON_DEVICE, requires_gpu, requires_triton



def literal_cpr_scatter(logits: torch.Tensor, ids: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """The op as its definition reads: sum and count every id's values over (M, N+1), divide, replace."""
    real = (ids > 0).to(values.dtype)  # (M, S)
    sums = torch.zeros(logits.shape, dtype=values.dtype, device=logits.device).scatter_add(1, ids, values * real)
    counts = torch.zeros(logits.shape, dtype=values.dtype, device=logits.device).scatter_add(1, ids, real)
    means = (sums / counts.clamp_min(1)).to(logits.dtype)  # (M, N+1)
    return torch.where(counts > 0, means, logits)  # padding counts nothing, so column 0 stays


def make_inputs(rows: int, history: int, width: int, seed: int = 0, dtype: torch.dtype = torch.float32,
                values_dtype: torch.dtype | None = None, device: str = "cpu"):
    """logits (M, N+1), ids (M, S), values (M, S), grad (M, N+1); rows cycle: mixed, all one id, all padding."""
    gen = torch.Generator().manual_seed(seed)
    pool = torch.randint(1, max(width, 2), (max(history // 2, 1),), generator=gen)  # few ids: duplicates
    pool = torch.cat([pool, torch.zeros(1, dtype=torch.long)]) if width > 1 else torch.zeros(1, dtype=torch.long)
    ids = pool[torch.randint(0, len(pool), (rows, history), generator=gen)]  # (M, S) mixed
    ids[1::3] = pool[0] if width > 1 else 0  # all duplicates of one id
    ids[2::3] = 0  # all padding
    logits = torch.randn(rows, width, generator=gen)
    values = torch.randn(rows, history, generator=gen)
    grad = torch.randn(rows, width, generator=gen)
    return (logits.to(device, dtype), ids.to(device), values.to(device, values_dtype or dtype),
            grad.to(device, dtype))


def run_with_grads(op, logits, ids, values, grad):
    """(out, d logits, d values) of op at (logits, ids, values) for the output gradient grad."""
    logits = logits.detach().requires_grad_()
    values = values.detach().requires_grad_()
    out = op(logits, ids, values)
    return (out, *torch.autograd.grad(out, (logits, values), grad))


def assert_all_close(actual, expected, **tolerance):
    for name, a, e in zip(("out", "d logits", "d values"), actual, expected):
        torch.testing.assert_close(a, e, msg=lambda m, name=name: f"{name}: {m}", **tolerance)


def on_kernel(kernel: str):
    return lambda logits, ids, values: cpr_scatter(logits, ids, values, kernel=kernel)


SHAPES = [(rows, history, width) for rows in (1, 3, 17) for history in (1, 5, 50, 51) for width in (2, 11, 1000, 50001)]


@pytest.mark.parametrize("rows,history,width", SHAPES)
def test_reference_matches_literal(rows, history, width):
    inputs = make_inputs(rows, history, width, seed=rows * history + width)
    assert_all_close(run_with_grads(pt_cpr_scatter, *inputs), run_with_grads(literal_cpr_scatter, *inputs),
                     atol=1e-5, rtol=1e-5)


@requires_triton
@pytest.mark.parametrize("rows,history,width", SHAPES)
def test_triton_matches_literal(rows, history, width):
    inputs = make_inputs(rows, history, width, seed=rows * history + width, device=TRITON_DEVICE)
    assert_all_close(run_with_grads(on_kernel("triton"), *inputs), run_with_grads(literal_cpr_scatter, *inputs),
                     atol=1e-5, rtol=1e-5)


def test_reference_backward_matches_autograd():
    logits, ids, values, grad = make_inputs(7, 23, 40, seed=5)
    _, d_logits, d_values = run_with_grads(pt_cpr_scatter, logits, ids, values, grad)
    assert_all_close(pt_cpr_scatter_backward(grad, ids, values.dtype), (d_logits, d_values), atol=1e-6, rtol=1e-6)


def test_known_row():
    logits = torch.full((1, 6), -1.0)  # (1, N+1)
    ids = torch.tensor([[3, 0, 3, 5, 3, 0]])
    values = torch.tensor([[1.0, 8.0, 2.0, 7.0, 9.0, 8.0]])  # id 3: (1 + 2 + 9) / 3; id 5: 7; padding: none
    expected = torch.tensor([[-1.0, -1.0, -1.0, 4.0, -1.0, 7.0]])
    for kernel in ("pytorch", "triton") if triton_available() and INTERPRETING else ("pytorch",):
        torch.testing.assert_close(cpr_scatter(logits, ids, values, kernel=kernel), expected)


@pytest.mark.parametrize("dtype,values_dtype", [(torch.bfloat16, None), (torch.float16, None),
                                                (torch.float32, torch.bfloat16)])
@pytest.mark.parametrize("kernel", ["pytorch", pytest.param("triton", marks=requires_triton)])
def test_low_precision_matches_literal_in_fp32(dtype, values_dtype, kernel):
    device = TRITON_DEVICE if kernel == "triton" else "cpu"
    inputs = make_inputs(5, 21, 301, seed=1, dtype=dtype, values_dtype=values_dtype, device=device)
    literal = run_with_grads(literal_cpr_scatter, *(t.float() if t.is_floating_point() else t for t in inputs))
    expected = [e.to(a.dtype) for e, a in zip(literal, (inputs[0], inputs[0], inputs[2]))]
    actual = run_with_grads(on_kernel(kernel), *inputs)
    assert [a.dtype for a in actual] == [e.dtype for e in expected]
    assert_all_close(actual, expected, atol=1e-2, rtol=2e-2)


NON_FINITE = [float("inf"), float("-inf"), float("nan")]
KERNELS_HERE = ["pytorch", pytest.param("triton", marks=requires_triton)]


@pytest.mark.parametrize("bad", NON_FINITE)
@pytest.mark.parametrize("kernel", KERNELS_HERE)
def test_a_non_finite_value_reaches_its_own_id_only(bad, kernel):
    """inf or NaN on a padding slot changes nothing; on a slot of id 3 it is id 3's mean and no other's."""
    device = TRITON_DEVICE if kernel == "triton" else "cpu"
    logits = torch.zeros(1, 6, device=device)
    ids = torch.tensor([[3, 5, 0, 3]], device=device)
    on_padding = torch.tensor([[1.0, 2.0, bad, 3.0]], device=device)
    expected = torch.tensor([[0.0, 0.0, 0.0, 2.0, 0.0, 2.0]], device=device)
    torch.testing.assert_close(cpr_scatter(logits, ids, on_padding, kernel=kernel), expected)
    on_id_3 = torch.tensor([[1.0, 2.0, 7.0, bad]], device=device)
    expected = torch.tensor([[0.0, 0.0, 0.0, bad, 0.0, 2.0]], device=device)
    torch.testing.assert_close(cpr_scatter(logits, ids, on_id_3, kernel=kernel), expected, equal_nan=True)


@pytest.mark.parametrize("kernel", KERNELS_HERE)
def test_fp16_values_are_summed_in_fp32(kernel):
    """50 slots of 2000: the fp16 sum (100,000) overflows, the mean does not."""
    device = TRITON_DEVICE if kernel == "triton" else "cpu"
    logits = torch.zeros(1, 4, dtype=torch.float16, device=device)
    ids = torch.full((1, 50), 2, device=device)
    values = torch.full((1, 50), 2000.0, dtype=torch.float16, device=device)
    expected = torch.tensor([[0.0, 0.0, 2000.0, 0.0]], dtype=torch.float16, device=device)
    torch.testing.assert_close(cpr_scatter(logits, ids, values, kernel=kernel), expected)


@given(rows=st.integers(0, 6), history=st.integers(0, 12), width=st.integers(1, 40), seed=st.integers(0, 2**16))
@settings(max_examples=40, deadline=None)
def test_fuzz_reference(rows, history, width, seed):
    inputs = make_inputs(rows, history, width, seed=seed)
    assert_all_close(run_with_grads(pt_cpr_scatter, *inputs), run_with_grads(literal_cpr_scatter, *inputs),
                     atol=1e-5, rtol=1e-5)


@requires_triton
@given(rows=st.integers(0, 6), history=st.integers(0, 40), width=st.integers(1, 70), seed=st.integers(0, 2**16))
@settings(max_examples=25, deadline=None)
def test_fuzz_triton(rows, history, width, seed):
    inputs = make_inputs(rows, history, width, seed=seed, device=TRITON_DEVICE)
    assert_all_close(run_with_grads(on_kernel("triton"), *inputs), run_with_grads(literal_cpr_scatter, *inputs),
                     atol=1e-5, rtol=1e-5)


@requires_triton
def test_autograd_function_matches_registered_op():
    from seqrec.kernels.triton.triton_cpr_scatter import TritonCprScatter

    inputs = make_inputs(4, 9, 30, seed=2, device=TRITON_DEVICE)
    assert_all_close(run_with_grads(TritonCprScatter.apply, *inputs),
                     run_with_grads(register_cpr_scatter_triton(), *inputs), atol=0, rtol=0)


@requires_triton
def test_triton_never_writes_ids_beyond_the_catalog():
    from seqrec.kernels.triton.triton_cpr_scatter import launch_cpr_scatter_fwd

    logits = torch.zeros(2, 4, device=TRITON_DEVICE)
    ids = torch.tensor([[1, 4, 9], [3, 0, 3]], device=TRITON_DEVICE)
    values = torch.ones(2, 3, device=TRITON_DEVICE)
    expected = torch.tensor([[0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]], device=TRITON_DEVICE)
    torch.testing.assert_close(launch_cpr_scatter_fwd(logits, ids, values), expected)


COPY_SHAPES = [(1, 1, 2, 16), (3, 5, 11, 4), (7, 21, 53, 16), (5, 50, 301, 64), (4, 0, 9, 4), (6, 33, 1000, 1024)]


@requires_triton
@pytest.mark.parametrize("rows,history,width,block_n", COPY_SHAPES)  # N+1 rarely a multiple of BLOCK_N
def test_plugin_kernel_copies_and_scatters_in_one_launch(rows, history, width, block_n):
    from seqrec.kernels.triton.triton_cpr_scatter import launch_cpr_scatter_copy

    logits, ids, values, _ = make_inputs(rows, history, width, seed=rows + history + width, device=TRITON_DEVICE)
    before = logits.clone()
    out = launch_cpr_scatter_copy(logits, ids, values, block_n=block_n)  # rows: mixed, one id, all padding
    torch.testing.assert_close(out, pt_cpr_scatter(logits, ids, values), atol=1e-6, rtol=1e-6)
    assert out.data_ptr() != logits.data_ptr() and torch.equal(logits, before)


@requires_triton
def test_plugin_kernel_takes_float32_only():
    from seqrec.kernels.triton.triton_cpr_scatter import launch_cpr_scatter_copy

    logits, ids, values, _ = make_inputs(2, 3, 7, dtype=torch.float16, device=TRITON_DEVICE)
    with pytest.raises(TypeError, match=r"cpr_scatter plugin kernel logits dtype \| received torch.float16, "
                                        r"expected torch.float32"):
        launch_cpr_scatter_copy(logits, ids, values)


def test_auto_runs_the_reference_on_cpu():
    logits, ids, values, _ = make_inputs(3, 5, 11)
    assert not _use_triton("auto", logits, ids, values.dtype)
    torch.testing.assert_close(cpr_scatter(logits, ids, values), pt_cpr_scatter(logits, ids, values))


# --- errors at the boundary -------------------------------------------------------------------


def test_public_op_errors():
    logits, ids, values, _ = make_inputs(3, 5, 11)
    with pytest.raises(TypeError, match=r"cpr_scatter ids dtype \| received torch.int32, expected torch.int64"):
        cpr_scatter(logits, ids.int(), values)
    with pytest.raises(ValueError, match=r"cpr_scatter shapes \| received logits \(3, 11\), ids \(3, 5\), "
                                         r"values \(3, 4\), expected logits \(M, N\+1\)"):
        cpr_scatter(logits, ids, values[:, :4])
    with pytest.raises(ValueError, match=r"cpr_scatter shapes \| received logits \(33,\)"):
        cpr_scatter(logits.flatten(), ids, values)
    with pytest.raises(ConfigError, match=r"cpr_scatter kernel \| received 'cuda', expected one of auto, "
                                          r"pytorch, triton"):
        cpr_scatter(logits, ids, values, kernel="cuda")
    beyond = ids.clone()
    beyond[1, 2] = 11  # logits have columns 0..10
    for kernel in ("auto", "pytorch"):
        with pytest.raises(ValueError, match=r"cpr_scatter ids \| received item id 11, expected ids in 0\.\.10"):
            cpr_scatter(logits, beyond, values, kernel=kernel)


def test_public_op_refuses_what_it_would_compute_wrongly():
    """Integer logits or values truncated the means, bool values counted as 0/1, a width-0 logits crashed
    with an IndexError deep inside, ids on another device failed later with an unrelated error."""
    logits, ids, values, _ = make_inputs(3, 5, 11)
    for name, call in (("logits", lambda: cpr_scatter(logits.long(), ids, values)),
                       ("values", lambda: cpr_scatter(logits, ids, values.long())),
                       ("values", lambda: cpr_scatter(logits, ids, values > 0))):
        with pytest.raises(TypeError, match=rf"cpr_scatter {name} dtype \| received torch\.\w+, expected a floating"):
            call()
    with pytest.raises(ValueError, match=r"cpr_scatter logits width \| received 0, expected at least 1 column"):
        cpr_scatter(logits[:, :0], torch.zeros_like(ids), values)
    with pytest.raises(ValueError, match=r"cpr_scatter devices \| received \['cpu', 'meta'\], expected logits, "
                                         r"ids and values on one device"):
        cpr_scatter(logits, ids.to("meta"), values)
    assert cpr_scatter(logits, ids, values.double()).dtype == logits.dtype  # mixed float dtypes stay allowed


def test_meta_tensors_give_the_output_shape():
    """Meta tensors hold no values: the id range check (``int(ids.max())``) crashed on them."""
    logits, ids, values, _ = (t.to("meta") for t in make_inputs(3, 5, 11))
    out = cpr_scatter(logits, ids, values, kernel="pytorch")
    assert out.shape == (3, 11) and out.is_meta


def test_opaque_op_checks_ids_as_the_public_op_does():
    op = register_cpr_scatter_opaque()
    logits, values = torch.zeros(2, 5), torch.ones(2, 3)
    ids = torch.tensor([[1, 2, 7], [0, 0, 0]])  # id 7 beyond 5 columns
    with pytest.raises(ValueError, match=r"cpr_scatter ids \| received item id 7, expected ids in 0\.\.4 "
                                         r"\(logits of 5 columns\)"):
        op(logits, ids, values)


def test_auto_takes_triton_only_for_what_its_launcher_accepts():
    """Which path "auto" picks for CUDA tensors, seen on fake ones (no GPU needed to decide)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        ids = torch.zeros(2, 5, dtype=torch.long, device="cuda")
        for logits_dtype, values_dtype, expected in [(torch.float32, torch.float32, True),
                                                     (torch.bfloat16, torch.float32, True),
                                                     (torch.float64, torch.float64, False),
                                                     (torch.float32, torch.float64, False)]:
            logits = torch.empty(2, 11, dtype=logits_dtype, device="cuda")
            chosen = _use_triton("auto", logits, ids, values_dtype)
            assert chosen == (expected and triton_available()), (logits_dtype, values_dtype)


def test_triton_on_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    logits, ids, values, _ = make_inputs(3, 5, 11)
    with pytest.raises(ConfigError, match=r"kernel 'triton' on CPU tensors \| received TRITON_INTERPRET unset, "
                                          r"expected CUDA tensors, or TRITON_INTERPRET=1"):
        cpr_scatter(logits, ids, values, kernel="triton")


@requires_triton
def test_launcher_errors():
    from seqrec.kernels.triton.triton_cpr_scatter import launch_cpr_scatter_fwd

    logits, ids, values, _ = make_inputs(3, 5, 11, device=TRITON_DEVICE)
    with pytest.raises(TypeError, match=r"cpr_scatter triton logits dtype \| received torch.float64, "
                                        r"expected torch.float32, torch.bfloat16 or torch.float16"):
        launch_cpr_scatter_fwd(logits.double(), ids, values)
    with pytest.raises(TypeError, match=r"cpr_scatter values dtype \| received torch.int64"):  # the shared check
        launch_cpr_scatter_fwd(logits, ids, ids)
    with pytest.raises(ValueError, match=r"cpr_scatter triton ids layout \| received strides \(1, 3\), "
                                         r"expected a contiguous tensor"):
        launch_cpr_scatter_fwd(logits, ids.t().contiguous().t(), values)
    with pytest.raises(ValueError, match=r"cpr_scatter triton history length \| received 4097, expected at most "
                                         r"4096 \(use kernel='pytorch'\)"):
        launch_cpr_scatter_fwd(logits, ids.new_zeros(3, 4097), values.new_zeros(3, 4097))
    with pytest.raises(ValueError, match=r"cpr_scatter devices \| received \['cpu', 'meta'\]"):  # the shared check
        launch_cpr_scatter_fwd(logits.cpu(), ids.cpu(), values.to("meta"))


@requires_triton
def test_public_op_makes_strided_inputs_contiguous_for_triton():
    logits, ids, values, grad = make_inputs(4, 6, 20, seed=3, device=TRITON_DEVICE)
    strided = (logits.t().contiguous().t(), ids.t().contiguous().t(), values.t().contiguous().t(), grad)
    assert_all_close(run_with_grads(on_kernel("triton"), *strided), run_with_grads(literal_cpr_scatter, *strided),
                     atol=1e-5, rtol=1e-5)


def test_missing_triton_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "triton", None)  # import triton -> ImportError
    with pytest.raises(ImportError, match=r"pip install 'seqrec\[triton\]'"):
        require_triton()


def test_import_seqrec_does_not_import_triton():
    code = ("import sys, seqrec, seqrec.kernels, seqrec.kernels.triton; "
            "sys.exit('triton' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


# --- registered operators: opcheck, torch.export, torch.compile --------------------------------


def test_opcheck_opaque_ops():
    op = register_cpr_scatter_opaque()
    logits, ids, values, grad = make_inputs(4, 7, 13, seed=4)
    torch.library.opcheck(op, (logits.requires_grad_(), ids, values.requires_grad_()))
    torch.library.opcheck(torch.ops.seqrec.cpr_scatter_opaque_backward, (grad, ids, torch.float32))


@requires_triton
def test_opcheck_triton_op():
    # Traced checks (fake tensors, AOT dispatch) need compiled kernels: the interpreter cannot run on
    # fake tensors, so on CPU only the schema and the autograd registration are checked.
    utils = ("test_schema", "test_autograd_registration") if INTERPRETING else None
    logits, ids, values, _ = make_inputs(4, 7, 13, seed=4, device=TRITON_DEVICE)
    args = (logits.requires_grad_(), ids, values.requires_grad_())
    if utils is None:
        torch.library.opcheck(register_cpr_scatter_triton(), args)
    else:
        torch.library.opcheck(register_cpr_scatter_triton(), args, test_utils=utils)


class OpaqueHead(torch.nn.Module):
    """Tiny module around the opaque op, as a scoring graph would hold it."""

    def forward(self, logits, ids, values):
        return torch.ops.seqrec.cpr_scatter_opaque(logits, ids, values).log_softmax(-1)


def test_export_keeps_one_opaque_node():
    register_cpr_scatter_opaque()
    logits, ids, values, _ = make_inputs(3, 8, 25, seed=6)
    batch = torch.export.Dim("batch")
    program = torch.export.export(OpaqueHead(), (logits, ids, values),
                                  dynamic_shapes=({0: batch}, {0: batch}, {0: batch}))
    seqrec_nodes = [node for node in program.graph.nodes
                    if node.op == "call_function" and getattr(node.target, "namespace", None) == "seqrec"]
    assert [str(node.target) for node in seqrec_nodes] == ["seqrec.cpr_scatter_opaque.default"]
    logits, ids, values, _ = make_inputs(5, 8, 25, seed=7)  # another batch size
    expected = literal_cpr_scatter(logits, ids, values).log_softmax(-1)
    torch.testing.assert_close(program.module()(logits, ids, values), expected)
    torch.testing.assert_close(OpaqueHead()(logits, ids, values), expected)


def test_compile_opaque_op_with_grads():
    register_cpr_scatter_opaque()
    inputs = make_inputs(4, 9, 31, seed=8)
    compiled = torch.compile(torch.ops.seqrec.cpr_scatter_opaque, backend="aot_eager", fullgraph=True)
    assert_all_close(run_with_grads(compiled, *inputs), run_with_grads(literal_cpr_scatter, *inputs),
                     atol=1e-5, rtol=1e-5)


# --- on a GPU, compiled kernels -----------------------------------------------------------------


@requires_gpu
def test_auto_runs_triton_on_cuda(monkeypatch):
    pytest.importorskip("triton")
    import seqrec.kernels.triton.triton_cpr_scatter as module

    calls = []
    monkeypatch.setattr(module, "triton_cpr_scatter", lambda *args: calls.append(args) or pt_cpr_scatter(*args))
    cpr_scatter(*make_inputs(3, 5, 11, device="cuda")[:3])
    assert len(calls) == 1


@requires_gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_at_scale(dtype):
    pytest.importorskip("triton")
    inputs = make_inputs(1031, 200, 100_003, seed=9, dtype=dtype, device="cuda")
    tolerance = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 1e-2, "rtol": 2e-2}
    expected = run_with_grads(literal_cpr_scatter, *inputs)
    assert_all_close(run_with_grads(on_kernel("auto"), *inputs), expected, **tolerance)
    assert_all_close(run_with_grads(register_cpr_scatter_opaque(), *inputs), expected, **tolerance)


@requires_gpu
@pytest.mark.skipif(INTERPRETING, reason="needs compiled kernels: TRITON_INTERPRET unset")
def test_compile_triton_op_on_cuda():
    pytest.importorskip("triton")
    inputs = make_inputs(37, 50, 10_007, seed=10, device="cuda")
    compiled = torch.compile(on_kernel("triton"), fullgraph=True)
    assert_all_close(run_with_grads(compiled, *inputs), run_with_grads(literal_cpr_scatter, *inputs),
                     atol=1e-5, rtol=1e-5)
