"""The int8 catalog top-k (candidates from int8 products within a proven bound, rescored in float32)
against the reference, on irregular shapes, adversarial tables and the rows the bound cannot narrow."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from seqrec.kernels import catalog_topk
from seqrec.kernels.blocked_catalog_topk import blocked_catalog_topk
from seqrec.kernels.int8_catalog_topk import (Int8Tiling, _QUANTIZED, candidates_per_row, int8_catalog_topk,
                                              quantize_queries)
from seqrec.kernels.reference import pt_catalog_topk

from test_catalog_topk import SHAPES, assert_same_topk, make_inputs

SMALL = Int8Tiling(item_tile=24, user_block=5, group=8, capacity=16)  # many tiles, blocks, compactions


@pytest.mark.parametrize("tiling", [SMALL, Int8Tiling()], ids=["small-tiles", "default-tiles"])
@pytest.mark.parametrize("users,items,dim,history,k", SHAPES)
def test_matches_reference(users, items, dim, history, k, tiling):
    queries, table, exclude = make_inputs(users, items, dim, history, seed=users + items + k)
    assert_same_topk(int8_catalog_topk(queries, table, k, exclude, tiling), queries, table, k, exclude)


@given(users=st.integers(0, 9), items=st.integers(1, 90), dim=st.integers(1, 11), history=st.integers(0, 12),
       seed=st.integers(0, 2**16), data=st.data())
@settings(max_examples=60, deadline=None)
def test_fuzz(users, items, dim, history, seed, data):
    k = data.draw(st.integers(0, items), label="k")
    tiling = Int8Tiling(item_tile=data.draw(st.sampled_from([8, 20, 24, 64])), user_block=data.draw(st.integers(1, 4)),
                        group=data.draw(st.sampled_from([2, 4, 8])), capacity=data.draw(st.sampled_from([4, 16, 64])))
    queries, table, exclude = make_inputs(users, items, dim, history, seed=seed)
    assert_same_topk(int8_catalog_topk(queries, table, k, exclude, tiling), queries, table, k, exclude)


def _heavy_tailed(users: int, items: int, dim: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Item norms over three orders of magnitude and a few huge coordinates: one int8 scale for the
    whole table leaves most rows a handful of levels, so the bound has real work to do."""
    gen = torch.Generator().manual_seed(seed)
    table = torch.randn(items + 1, dim, generator=gen) * torch.logspace(-3, 0, items + 1)[torch.randperm(items + 1,
                                                                                                   generator=gen)][:, None]
    table[torch.randint(1, items + 1, (5,), generator=gen), 0] = 40.0
    table[0] = 0
    return torch.randn(users, dim, generator=gen) * 3, table


def test_heavy_tailed_table_and_near_ties():
    queries, table = _heavy_tailed(40, 30_000, 20, seed=1)
    near = table[1:2] + 1e-4 * torch.randn(300, 20)  # 300 items whose scores differ below the int8 step
    table = torch.cat([table, near])
    assert_same_topk(int8_catalog_topk(queries, table, 50, None, Int8Tiling(item_tile=4096)), queries, table, 50)


def test_the_bound_holds_for_every_pair():
    """|u.v - s_u s_i (q_u . q_v)| <= slack / 2 (in int units) on adversarial data, pair by pair."""
    queries, table = _heavy_tailed(64, 5000, 33, seed=2)
    quantized = _QUANTIZED.get(table)
    users = quantize_queries(queries, quantized)
    user_scale = queries.double().abs().amax(1, keepdim=True) / 127  # (B, 1) as quantize_queries sets it
    exact = queries.double() @ quantized.order.rows.double().T  # (B, N + 1)
    approx = users.rows.double() @ quantized.rows.double().T  # (B, N + 1) int sums (zero columns past D)
    error = (exact / (user_scale * quantized.scale) - approx).abs()  # int units
    assert (error <= users.slack[:, None] / 2).all()
    assert (error.amax(1) > users.slack / 20).all(), "the bound should not be slack by orders of magnitude"


def test_int_mm_sums_with_any_dim():
    """The int8 copies are padded to a multiple of 8 columns: torch 2.13's CPU ``_int_mm`` gets
    inner dimension 1 wrong, and every D must work."""
    for dim in (1, 2, 3, 9):
        queries, table, exclude = make_inputs(4, 40, dim, 3, seed=dim)
        assert_same_topk(int8_catalog_topk(queries, table, 5, exclude, SMALL), queries, table, 5, exclude)


def test_rows_the_bound_cannot_narrow_are_scored_exactly():
    """A zero query (every score 0) and a catalog of one row repeated: all candidates tie, the
    buffer overflows, and those rows go to the blocked float32 path."""
    gen = torch.Generator().manual_seed(3)
    table = torch.randn(1, 12, generator=gen).repeat(500, 1) + 1e-6 * torch.randn(500, 12, generator=gen)
    table[0] = 0
    queries = torch.randn(6, 12, generator=gen)
    queries[2] = 0
    scores, ids = int8_catalog_topk(queries, table, 5, None, Int8Tiling(item_tile=64, capacity=32))
    expected_scores, _ = pt_catalog_topk(queries, table, 5)
    torch.testing.assert_close(scores, expected_scores, atol=1e-5, rtol=1e-5)
    assert ((ids > 0) & (ids < 500)).all()


def test_candidates_stay_a_few_times_k():
    queries, table, _ = make_inputs(64, 50_000, 64, 0, seed=4)
    counts = candidates_per_row(queries, table, 50)
    assert (counts >= 50).all() and counts.float().mean() < 8 * 50


def test_non_finite_inputs_take_the_blocked_path():
    queries, table, exclude = make_inputs(5, 2000, 8, 4, seed=5)
    table[17, 3] = float("inf")
    actual = int8_catalog_topk(queries, table, 10, exclude, Int8Tiling(item_tile=256))
    expected = blocked_catalog_topk(queries, table, 10, exclude)
    torch.testing.assert_close(actual[0], expected[0])


def test_a_finite_table_whose_norms_overflow_float32():
    """Rows of entries near -1e19: their float32 sum of squares is inf, and an inf bound wrapped round in
    int64 and dropped every candidate (every score came back -inf)."""
    gen = torch.Generator().manual_seed(8)
    table = -torch.rand(3001, 16, generator=gen) * 1e19
    table[0] = 0
    queries = torch.rand(5, 16, generator=gen) * 1e-19  # every score a finite number in -8..0
    assert_same_topk(int8_catalog_topk(queries, table, 10, None, Int8Tiling(item_tile=256)), queries, table, 10)
    quantized = _QUANTIZED.get(table)  # norms summed in float64: a finite bound, the int8 path keeps these rows
    assert quantized.finite and 1e19 < quantized.max_norm < 1e21 and quantize_queries(queries, quantized).bounded.all()


def test_products_that_overflow_rescore_to_nan_as_the_reference():
    """Finite inputs whose float32 products overflow: inf - inf is NaN (ranked first) in the reference; the
    rescoring loop compiled with fastmath=True (no NaN, no inf assumed) gave inf and -inf and lost item 3."""
    queries = torch.tensor([[1e20, 1e20]])
    table = torch.tensor([[0.0, 0.0], [3e20, -3e20], [1e19, 1e19], [-1e19, 2e19]])
    scores, ids = catalog_topk(queries, table, 3, kernel="int8")
    expected_scores, expected_ids = catalog_topk(queries, table, 3, kernel="pytorch")
    torch.testing.assert_close(scores, expected_scores, equal_nan=True)  # [[nan, nan, inf]]
    assert set(ids[0, :2].tolist()) == set(expected_ids[0, :2].tolist()) == {1, 3} and ids[0, 2] == 2


def test_rows_without_a_finite_bound_take_the_blocked_path(monkeypatch):
    """Whatever makes the bound inf (here a table whose largest norm is set to inf), those rows are scored
    by the blocked path, not with a slack that wraps round in int64."""
    import seqrec.kernels.int8_catalog_topk as module

    queries, table, exclude = make_inputs(6, 500, 8, 4, seed=9)
    unbounded = _QUANTIZED.get(table)._replace(max_norm=float("inf"))
    quantized = quantize_queries(queries, unbounded)
    assert not quantized.bounded.any() and (quantized.slack == 0).all()
    monkeypatch.setattr(module, "_QUANTIZED", module.TableCache(lambda items: unbounded))
    assert_same_topk(int8_catalog_topk(queries, table, 10, exclude, SMALL), queries, table, 10, exclude)


def test_the_quantized_table_follows_the_table():
    queries, table, exclude = make_inputs(6, 3000, 8, 20, seed=6)
    tiling = Int8Tiling(item_tile=256, group=4)
    assert_same_topk(int8_catalog_topk(queries, table, 30, exclude, tiling), queries, table, 30, exclude)
    table[1:].mul_(torch.rand(3000, 1) * 3)  # new norms and scale, same tensor
    assert_same_topk(int8_catalog_topk(queries, table, 30, exclude, tiling), queries, table, 30, exclude)


def test_refuses_what_it_cannot_run():
    queries, table, _ = make_inputs(3, 50, 4, 0)
    with pytest.raises(ValueError, match="float32"):
        int8_catalog_topk(queries.double(), table.double(), 3)
    with pytest.raises(ValueError, match="float32"):
        catalog_topk(queries, table.bfloat16(), 3, kernel="int8")


def test_never_holds_users_by_catalog_scores():
    queries, table, exclude = make_inputs(64, 200_000, 8, 20, seed=7)
    tiling = Int8Tiling(item_tile=4096)
    int8_catalog_topk(queries, table, 50, exclude, tiling)  # builds and caches the int8 table
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as profile:
        int8_catalog_topk(queries, table, 50, exclude, tiling)
    largest = max(event.cpu_memory_usage for event in profile.events())
    assert 0 < largest <= 4 * 64 * tiling.item_tile  # bytes: one tile of int32 scores, never 64 x 200k


def test_the_first_call_leaves_torch_on_its_threads():
    """numba's OpenMP pool, started by the first int8 call of a process, set torch to every core: a fresh
    interpreter is the only place that first call happens."""
    script = ("import torch\n"
              "from seqrec.kernels.int8_catalog_topk import int8_catalog_topk\n"
              "torch.set_num_threads(1)\n"
              "int8_catalog_topk(torch.randn(8, 16), torch.randn(3001, 16), 5)\n"
              "print(torch.get_num_threads())\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "2"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[-1] == "1"
