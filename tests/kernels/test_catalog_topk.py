"""catalog_topk: the blocked path and the Triton kernel against the reference (full product + topk).

Ties are the one freedom the op has: ``assert_same_topk`` compares scores within the dtype's
tolerance everywhere and ids wherever a score is not within that tolerance of another score of
the row; it also checks what must hold at ties too (each returned id really has its score, no id
twice, no excluded or padding id with a finite score). Triton runs through its interpreter on CPU
tensors, where each tile's sort costs Python time, so its cases are tiny.
"""

from __future__ import annotations

import copy
import threading
import time

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from seqrec.errors import ConfigError
from seqrec.kernels import catalog_topk, register_catalog_topk_opaque
from seqrec.kernels.blocked_catalog_topk import TableCache, Tiling, blocked_catalog_topk
from seqrec.kernels.catalog_topk import choose_kernel
from seqrec.kernels.reference import pt_catalog_topk
from seqrec.kernels.triton import triton_available

from kernel_devices import INTERPRETING, TRITON_DEVICE, requires_gpu, requires_triton

SMALL_TILES = Tiling(item_tile=24, user_block=5, group=8)  # many tiles, blocks and a ragged tail at tiny N
TOLERANCE = {torch.float32: {"atol": 1e-5, "rtol": 1e-5}, torch.float64: {"atol": 1e-12, "rtol": 1e-12},
             torch.bfloat16: {"atol": 2e-2, "rtol": 2e-2}, torch.float16: {"atol": 2e-3, "rtol": 2e-3}}


def make_inputs(users: int, items: int, dim: int, history: int, seed: int = 0, dtype=torch.float32,
                device: str = "cpu"):
    """queries (B, D), table (N+1, D) with a zero padding row, exclude (B, S) or None.

    Exclusion rows cycle through: random ids with repeats and padding, one id over and over, all
    padding, and (if S >= N) every item of the catalog, which leaves that row nothing eligible.
    """
    gen = torch.Generator().manual_seed(seed)
    queries = torch.randn(users, dim, generator=gen)
    table = torch.randn(items + 1, dim, generator=gen)
    table[0] = 0
    exclude = None
    if history:
        exclude = torch.randint(0, items + 1, (users, history), generator=gen)  # (B, S), 0 = padding
        exclude[1::4] = exclude[1::4, :1]
        exclude[2::4] = 0
        if history >= items:
            exclude[3::4, :items] = torch.arange(1, items + 1)
        exclude = exclude.to(device)
    return queries.to(device, dtype), table.to(device, dtype), exclude


def assert_same_topk(actual, queries, table, k, exclude=None):
    """actual (scores, ids) is the reference's answer, ties aside (see the module docstring)."""
    scores, ids = actual
    expected_scores, expected_ids = pt_catalog_topk(queries.cpu(), table.cpu(), k,
                                                    None if exclude is None else exclude.cpu())
    scores, ids = scores.cpu(), ids.cpu()
    tolerance = TOLERANCE[expected_scores.dtype]
    assert scores.dtype == expected_scores.dtype and ids.dtype == torch.int64
    torch.testing.assert_close(scores, expected_scores, **tolerance)
    tied = _tied(queries.cpu(), table.cpu(), exclude, expected_scores, **tolerance)
    assert torch.equal(ids[~tied], expected_ids[~tied]), "ids differ where no score is tied"
    _assert_valid(scores, ids, queries.cpu(), table.cpu(), exclude, tolerance)


def _tied(queries, table, exclude, top_scores, atol, rtol) -> torch.Tensor:
    """(B, k) bool: a finite top-k score within tolerance of another eligible score of its row."""
    every = _eligible_scores(queries, table, exclude).float().sort(dim=1).values  # (B, N+1) ascending
    top = top_scores.float()
    width = atol + rtol * top.abs()
    near = torch.searchsorted(every, top + width, side="right") - torch.searchsorted(every, top - width)
    return (near > 1) & top.isfinite()


def _eligible_scores(queries, table, exclude) -> torch.Tensor:
    every = queries.double() @ table.double().T  # (B, N+1)
    every[:, 0] = float("-inf")
    if exclude is not None:
        every.scatter_(1, exclude.cpu().clamp(0, table.shape[0] - 1), float("-inf"))
    return every


def _assert_valid(scores, ids, queries, table, exclude, tolerance) -> None:
    finite = scores.isfinite()
    assert torch.equal(ids[~finite], torch.zeros_like(ids[~finite])), "an empty slot is not id 0"
    true_scores = _eligible_scores(queries, table, exclude).gather(1, ids)  # (B, k)
    torch.testing.assert_close(true_scores[finite].to(scores.dtype), scores[finite], **tolerance)
    for row in ids.masked_fill(~finite, -1):
        real = row[row >= 0]
        assert real.unique().numel() == real.numel(), "an id twice in one row"
    assert (scores[:, :-1] >= scores[:, 1:]).all(), "not best first"


# (B, N, D, S, k): N = 1, N below a tile, k = 1, k = N, k close to N, rows with nothing eligible
SHAPES = [(1, 1, 1, 0, 1), (3, 1, 5, 2, 1), (5, 37, 7, 4, 36), (7, 40, 13, 50, 40), (6, 23, 3, 30, 5),
          (33, 1000, 13, 9, 160), (17, 300, 64, 50, 1), (9, 257, 6, 0, 100), (0, 20, 4, 3, 4), (4, 20, 4, 3, 0)]


@pytest.mark.parametrize("tiling", [SMALL_TILES, Tiling()], ids=["small-tiles", "default-tiles"])
@pytest.mark.parametrize("users,items,dim,history,k", SHAPES)
def test_blocked_matches_reference(users, items, dim, history, k, tiling):
    queries, table, exclude = make_inputs(users, items, dim, history, seed=users + items + k)
    assert_same_topk(blocked_catalog_topk(queries, table, k, exclude, tiling), queries, table, k, exclude)


@pytest.mark.parametrize("kernel", ["pytorch", "blocked", "int8", "auto"])
def test_public_op_matches_reference(kernel):
    queries, table, exclude = make_inputs(11, 20_001, 24, 30, seed=3)  # more than one default tile
    for k, excluded in ((10, exclude), (160, None)):
        assert_same_topk(catalog_topk(queries, table, k, excluded, kernel=kernel), queries, table, k, excluded)


def test_blocked_large_k():
    queries, table, exclude = make_inputs(3, 20_000, 8, 50, seed=12)
    assert_same_topk(blocked_catalog_topk(queries, table, 4096, exclude), queries, table, 4096, exclude)


@given(users=st.integers(0, 9), items=st.integers(1, 80), dim=st.integers(1, 9), history=st.integers(0, 12),
       seed=st.integers(0, 2**16), data=st.data())
@settings(max_examples=60, deadline=None)
def test_fuzz_blocked(users, items, dim, history, seed, data):
    k = data.draw(st.integers(0, items), label="k")
    tiling = Tiling(item_tile=data.draw(st.sampled_from([8, 20, 24, 32, 64])),  # 32, 64: two levels of maxima
                    user_block=data.draw(st.integers(1, 4)), group=data.draw(st.sampled_from([4, 8])),
                    by_norm=data.draw(st.booleans()))
    queries, table, exclude = make_inputs(users, items, dim, history, seed=seed)
    assert_same_topk(blocked_catalog_topk(queries, table, k, exclude, tiling), queries, table, k, exclude)


def test_blocked_norm_order_follows_the_table():
    """The cached norm order is rebuilt when the table changes in place or another table comes."""
    queries, table, exclude = make_inputs(6, 3000, 8, 20, seed=21)
    tiling = Tiling(item_tile=256, group=4)
    assert_same_topk(blocked_catalog_topk(queries, table, 30, exclude, tiling), queries, table, 30, exclude)
    table[1:].mul_(torch.rand(3000, 1) * 3)  # new norms, same tensor
    assert_same_topk(blocked_catalog_topk(queries, table, 30, exclude, tiling), queries, table, 30, exclude)
    other = table.flip(1).contiguous()
    assert_same_topk(blocked_catalog_topk(queries, other, 30, exclude, tiling), queries, other, 30, exclude)
    plain = Tiling(item_tile=256, group=4, by_norm=False)
    assert_same_topk(blocked_catalog_topk(queries, table, 30, exclude, plain), queries, table, 30, exclude)


@pytest.mark.parametrize("kernel", ["blocked", "int8"])
def test_weights_replaced_through_data_are_followed(kernel):
    """``param.data = new`` keeps the object and its version, and once the old storage is freed the allocator
    may hand its address to the new one: a stale norm order (or int8 copy) then scored the old table. Two
    storages over one NumPy buffer stand for that reuse without depending on the allocator."""
    buffer = np.random.default_rng(0).standard_normal((3001, 16), dtype=np.float32)
    weight, queries = torch.nn.Parameter(torch.from_numpy(buffer)), torch.randn(4, 16)
    catalog_topk(queries, weight, 5, kernel=kernel)  # caches this table's norm order
    buffer[:] = np.random.default_rng(1).standard_normal((3001, 16), dtype=np.float32)
    weight.data = torch.from_numpy(buffer)  # another storage at the address the cache saw, same version
    assert_same_topk(catalog_topk(queries, weight, 5, kernel=kernel), queries, weight.detach(), 5)


def test_table_cache_builds_once_for_threads_sharing_it():
    """Threads asking for one table at once wait for a single build and all get its value."""
    builds, table = [], torch.randn(50, 4)

    def build(items: torch.Tensor) -> tuple:
        builds.append(items)
        time.sleep(0.05)  # releases the GIL: without a lock the other thread starts its own build
        return (items, len(builds))

    cache, got, start = TableCache(build), [], threading.Barrier(2)

    def work() -> None:
        start.wait()
        got.append(cache.get(table))

    threads = [threading.Thread(target=work) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(builds) == 1 and got[0] is got[1]


def test_table_cache_copies_empty():
    cache = TableCache(lambda table: table.sum())
    table = torch.ones(3, 2)
    assert cache.get(table) == 6
    assert copy.deepcopy(cache).get(table) == 6


@pytest.mark.parametrize("kernel", ["blocked", "int8"])
def test_a_table_made_under_inference_mode_is_scored_and_followed(kernel):
    """Batch scoring builds its (l2-normalised) table under inference_mode: no version counter to read."""
    queries, weight, exclude = make_inputs(4, 3000, 8, 20, seed=23)
    tiling = Tiling(item_tile=256, group=4)
    with torch.inference_mode():
        for scale in (1.0, -1.0):  # a new table object each time, as a head normalising its weight makes
            table = torch.nn.functional.normalize(weight * scale, dim=1)
            got = (blocked_catalog_topk(queries, table, 30, exclude, tiling) if kernel == "blocked"
                   else catalog_topk(queries, table, 30, exclude, kernel="int8"))
            assert_same_topk(got, queries, table, 30, exclude)


def assert_same_topk_with_nan(actual, expected) -> None:
    """Scores equal, NaN where the reference has NaN; ids equal, those of NaN scores as a set (NaNs tie)."""
    (scores, ids), (expected_scores, expected_ids) = actual, expected
    torch.testing.assert_close(scores.cpu(), expected_scores, equal_nan=True, atol=1e-5, rtol=1e-5)
    nan = expected_scores.isnan()  # (B, k): a prefix of each row, NaN ranking highest
    assert torch.equal(ids.cpu().masked_fill(nan, -1), expected_ids.masked_fill(nan, -1))
    nan_ids = ids.cpu().masked_fill(~nan, -1).sort(1).values  # (B, k): the ids of NaN scores, in order
    assert torch.equal(nan_ids, expected_ids.masked_fill(~nan, -1).sort(1).values)


def non_finite_table(items: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """queries (7, 6), table (N+1, 6), exclude (7, 4): item 37 holds a NaN, item 5 [inf, inf, 0, ...] (inf - inf
    is NaN for a query of mixed signs, +-inf otherwise); users 1 and 3 exclude item 37."""
    queries, table, exclude = make_inputs(7, items, 6, 4, seed=seed)
    table[37, 2] = float("nan")
    table[5, :2] = float("inf")
    exclude[1, 0], exclude[3, 2] = 37, 37
    return queries, table, exclude


@pytest.mark.parametrize("tiling", [SMALL_TILES, Tiling(item_tile=64, group=4, by_norm=False), Tiling()],
                         ids=["small-tiles", "natural-order", "default-tiles"])
def test_blocked_ranks_nan_as_the_reference_does(tiling):
    """NaN ranks above every number in torch.topk; a NaN group maximum fails ``> threshold``, so the blocked
    path must not let one decide (it lost finite items of every user before)."""
    queries, table, exclude = non_finite_table(300, seed=15)
    expected = pt_catalog_topk(queries, table, 10, exclude)
    assert expected[0].isnan().any() and expected[0][:, 1:].isfinite().any()
    assert_same_topk_with_nan(blocked_catalog_topk(queries, table, 10, exclude, tiling), expected)


@pytest.mark.parametrize("kernel", ["blocked", "int8", "auto"])
def test_public_op_ranks_nan_as_the_reference_does(kernel):
    """On a catalog of more than one tile "auto" takes int8, which hands a non-finite table to the blocked path."""
    queries, table, exclude = non_finite_table(20_000, seed=16)
    assert_same_topk_with_nan(catalog_topk(queries, table, 10, exclude, kernel=kernel),
                              pt_catalog_topk(queries, table, 10, exclude))


def test_blocked_nan_query_row_leaves_the_other_rows_exact():
    queries, table, exclude = make_inputs(9, 500, 6, 4, seed=17)
    queries[4, 1] = float("nan")
    scores, ids = blocked_catalog_topk(queries, table, 8, exclude, SMALL_TILES)
    assert scores[4].isnan().all() and ids[4].unique().numel() == 8 and (ids[4] > 0).all()
    others = torch.arange(9) != 4
    assert_same_topk((scores[others], ids[others]), queries[others], table, 8, exclude[others])


def test_known_rows():
    table = torch.tensor([[0.0], [1.0], [3.0], [-2.0], [2.0]])  # items 1..4; row 0 padding
    queries = torch.tensor([[1.0], [-1.0], [1.0]])
    exclude = torch.tensor([[2, 0, 2], [0, 0, 0], [1, 2, 4]])
    expected_scores = torch.tensor([[2.0, 1.0, -2.0], [2.0, -1.0, -2.0], [-2.0, float("-inf"), float("-inf")]])
    expected_ids = torch.tensor([[4, 1, 3], [3, 1, 4], [3, 0, 0]])
    for kernel in ("pytorch", "blocked", "triton") if triton_available() and INTERPRETING else ("pytorch", "blocked"):
        scores, ids = catalog_topk(queries, table, 3, exclude, kernel=kernel)
        torch.testing.assert_close(scores, expected_scores)
        assert torch.equal(ids, expected_ids), kernel


def test_ties_keep_the_k_largest_scores():
    table = torch.ones(41, 3)  # every item scores the same
    table[7] = 2.0
    queries = torch.ones(2, 3)
    for kernel in ("pytorch", "blocked"):
        scores, ids = catalog_topk(queries, table, 4, kernel=kernel)
        torch.testing.assert_close(scores, torch.tensor([[6.0, 3.0, 3.0, 3.0]] * 2))
        assert (ids[:, 0] == 7).all() and ((ids[:, 1:] > 0) & (ids[:, 1:] != 7)).all()


@pytest.mark.parametrize("kernel", ["pytorch", "blocked", pytest.param("triton", marks=requires_triton)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision(kernel, dtype):
    device = TRITON_DEVICE if kernel == "triton" else "cpu"
    queries, table, exclude = make_inputs(9, 45, 8, 3, seed=4, dtype=dtype, device=device)
    scores, ids = catalog_topk(queries, table, 6, exclude, kernel=kernel)
    assert_same_topk((scores, ids), queries, table, 6, exclude)
    mixed = catalog_topk(queries, table.float(), 6, exclude, kernel=kernel)  # promoted: fp32 scores
    assert_same_topk(mixed, queries, table.float(), 6, exclude)


def test_autocast_does_not_lower_the_scores():
    queries, table, _ = make_inputs(5, 30_000, 16, 0, seed=5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        actual = catalog_topk(queries, table, 20)
    assert_same_topk(actual, queries, table, 20)


@pytest.mark.parametrize("kernel", ["pytorch", "blocked"])
def test_inputs_that_require_grad(kernel):
    queries, table, exclude = make_inputs(4, 100, 6, 3, seed=13)
    scores, ids = catalog_topk(queries.requires_grad_(), table.requires_grad_(), 5, exclude, kernel=kernel)
    assert not scores.requires_grad
    assert_same_topk((scores, ids), queries.detach(), table.detach(), 5, exclude)


def test_blocked_never_holds_users_by_catalog_scores():
    queries, table, exclude = make_inputs(64, 200_000, 8, 20, seed=6)
    tiling = Tiling(item_tile=4096)
    blocked_catalog_topk(queries, table, 50, exclude, tiling)  # builds the table's norm order (N x D), cached
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as profile:
        blocked_catalog_topk(queries, table, 50, exclude, tiling)
    largest = max(event.cpu_memory_usage for event in profile.events())
    assert 0 < largest <= 4 * 64 * tiling.item_tile  # bytes: one tile of scores, never 64 x 200k
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as profile:
        pt_catalog_topk(queries, table, 50, exclude)
    assert max(event.cpu_memory_usage for event in profile.events()) >= 4 * 64 * 200_001  # what it avoids


def test_the_reference_scores_a_block_of_users_at_a_time():
    """"auto" takes the reference for a catalog of one tile, whatever B: it must not hold (B, N+1) scores."""
    users = 3 * Tiling().user_block + 7
    queries, table, exclude = make_inputs(users, 2000, 4, 5, seed=14)
    assert choose_kernel("auto", queries, table, 10, exclude) == "pytorch"
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as profile:
        actual = catalog_topk(queries, table, 10, exclude)
    largest = max(event.cpu_memory_usage for event in profile.events())
    assert 0 < largest <= 4 * Tiling().user_block * 2001 < 4 * users * 2001  # bytes: one block of users' scores
    assert_same_topk(actual, queries, table, 10, exclude)


def test_meta_tensors_give_the_output_shapes():
    """Meta tensors hold no values: "auto" took the blocked path beyond one tile, which read them (its NaN check)."""
    queries, table = torch.empty(3, 8, device="meta"), torch.empty(Tiling().item_tile + 2, 8, device="meta")
    exclude = torch.empty(3, 4, dtype=torch.long, device="meta")
    assert choose_kernel("auto", queries, table, 5, exclude) == "pytorch"
    scores, ids = catalog_topk(queries, table, 5, exclude)
    assert scores.shape == ids.shape == (3, 5) and scores.is_meta and ids.dtype == torch.long


def test_auto_chooses_by_device_and_catalog_size():
    queries, table, _ = make_inputs(3, 100, 4, 0)
    assert choose_kernel("auto", queries, table, 5, None) == "pytorch"  # one tile: nothing to gain
    big = torch.zeros(Tiling().item_tile + 1, 4)
    assert choose_kernel("auto", queries, big, 5, None) == "int8"  # float32 on the CPU, numba installed
    assert choose_kernel("auto", queries.double(), big.double(), 5, None) == "blocked"
    assert choose_kernel("auto", queries, big.bfloat16(), 5, None) == "blocked"


# --- Triton, interpreted on CPU ---------------------------------------------------------------


TRITON_CASES = [(1, 1, 3, 0, 1, None), (5, 37, 7, 4, 3, None), (17, 60, 13, 5, 7, 3), (6, 19, 5, 20, 6, 2),
                (3, 30, 20, 0, 30, 1)]


@requires_triton
@pytest.mark.parametrize("users,items,dim,history,k,splits", TRITON_CASES)
def test_triton_matches_reference(users, items, dim, history, k, splits):
    from seqrec.kernels.triton.triton_catalog_topk import launch_catalog_topk

    queries, table, exclude = make_inputs(users, items, dim, history, seed=users * items + k, device=TRITON_DEVICE)
    assert_same_topk(launch_catalog_topk(queries, table, k, exclude, splits=splits), queries, table, k, exclude)


@requires_triton
def test_triton_keys_order_scores_then_smaller_ids():
    from seqrec.kernels.triton.triton_catalog_topk import pack, unpack

    scores = torch.tensor([float("-inf"), -3.5, -1e-30, -0.0, 0.0, 1e-30, 2.0, 2.0, float("inf")])
    ids = torch.tensor([0, 9, 4, 5, 6, 7, 3, 1, 2])
    keys = pack(scores, ids)
    assert torch.equal(keys.argsort(), torch.arange(len(scores)))  # by score; at 2.0 id 1 above id 3
    back_scores, back_ids = unpack(keys)
    assert torch.equal(back_scores.view(torch.int32), scores.view(torch.int32)) and torch.equal(back_ids, ids)


@requires_triton
def test_triton_packs_every_nan_above_inf():
    """x86's default NaN has the sign bit set: packed as it is, it ordered below -inf and was dropped."""
    from seqrec.kernels.triton.triton_catalog_topk import pack

    nans = torch.tensor([0x7FC00000, -0x00400000, 0x7F800001, -1], dtype=torch.int32).view(torch.float32)
    assert nans.isnan().all()
    keys = pack(nans, torch.full((4,), 3))
    assert (keys == keys[0]).all() and (keys > pack(torch.tensor([float("inf")]), torch.tensor([1]))).all()


@requires_triton
@pytest.mark.parametrize("k", [2, 4])
def test_triton_ranks_nan_as_the_reference_does(k):
    from seqrec.kernels.triton.triton_catalog_topk import launch_catalog_topk

    table = torch.tensor([[0.0, 0.0], [1.0, 0.0], [float("inf"), float("inf")], [2.0, 0.0], [-1.0, 0.0],
                          [0.5, float("nan")]], device=TRITON_DEVICE)
    queries = torch.tensor([[1.0, -1.0], [1.0, 1.0], [-1.0, 0.0]], device=TRITON_DEVICE)  # item 2: NaN, inf, NaN
    exclude = torch.tensor([[0], [5], [0]], device=TRITON_DEVICE)
    expected = pt_catalog_topk(queries.cpu(), table.cpu(), k, exclude.cpu())
    assert_same_topk_with_nan(launch_catalog_topk(queries, table, k, exclude), expected)


@requires_triton
def test_triton_registered_op_matches_launcher():
    from seqrec.kernels import register_catalog_topk_triton

    queries, table, exclude = make_inputs(4, 20, 6, 3, seed=7, device=TRITON_DEVICE)
    assert_same_topk(register_catalog_topk_triton()(queries, table, 5, exclude), queries, table, 5, exclude)


# --- errors at the boundary -------------------------------------------------------------------


def test_public_op_errors():
    queries, table, exclude = make_inputs(3, 10, 4, 5)
    with pytest.raises(ValueError, match=r"catalog_topk k \| received 11, expected an int in 0\.\.10, the "
                                         r"catalog size N \(items_table has N\+1 rows, row 0 the padding item\)"):
        catalog_topk(queries, table, 11)
    for bad_k in (-1, True, 2.0):
        with pytest.raises(ValueError, match=rf"catalog_topk k \| received {bad_k!r}, expected an int"):
            catalog_topk(queries, table, bad_k)
    with pytest.raises(ValueError, match=r"catalog_topk shapes \| received queries \(3, 4\), items_table \(11, 5\), "
                                         r"exclude None, expected queries \(B, D\), items_table \(N\+1, D\)"):
        catalog_topk(queries, torch.zeros(11, 5), 2)
    with pytest.raises(ValueError, match=r"catalog_topk shapes \| received .* exclude \(2, 5\)"):
        catalog_topk(queries, table, 2, exclude[:2])
    with pytest.raises(TypeError, match=r"catalog_topk exclude dtype \| received torch.int32, expected torch.int64"):
        catalog_topk(queries, table, 2, exclude.int())
    with pytest.raises(TypeError, match=r"catalog_topk queries dtype \| received torch.int64, expected a floating"):
        catalog_topk(exclude[:, :4], table, 2)
    with pytest.raises(ValueError, match=r"catalog_topk devices \| received \['cpu', 'meta'\]"):
        catalog_topk(queries, table.to("meta"), 2)
    with pytest.raises(ConfigError, match=r"catalog_topk kernel \| received 'cuda', expected one of auto, "
                                          r"pytorch, blocked, int8, triton"):
        catalog_topk(queries, table, 2, kernel="cuda")


@pytest.mark.parametrize("kernel", ["pytorch", "blocked", "int8"])
def test_any_integer_k_is_taken_as_an_int(kernel):
    queries, table, exclude = make_inputs(3, 40, 4, 5)
    expected = catalog_topk(queries, table, 4, exclude, kernel=kernel)
    for k in (np.int64(4), np.int32(4), torch.tensor(4)):
        scores, ids = catalog_topk(queries, table, k, exclude, kernel=kernel)
        assert scores.shape == (3, 4) and torch.equal(ids, expected[1])
    for bad_k in (np.bool_(True), torch.tensor(4.0), np.int64(41)):
        with pytest.raises(ValueError, match=r"catalog_topk k \| received"):
            catalog_topk(queries, table, bad_k, kernel=kernel)


def test_tiling_errors():
    with pytest.raises(ConfigError, match=r"catalog_topk tiling group \| received 0, expected at least 1"):
        Tiling(group=0)


def test_triton_on_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    queries, table, _ = make_inputs(3, 10, 4, 0)
    with pytest.raises(ConfigError, match=r"catalog_topk kernel 'triton' on CPU tensors \| received "
                                          r"TRITON_INTERPRET unset, expected CUDA tensors"):
        catalog_topk(queries, table, 2, kernel="triton")


@requires_triton
def test_triton_limits():
    queries, table, exclude = make_inputs(3, 600, 4, 5, device=TRITON_DEVICE)
    with pytest.raises(ValueError, match=r"catalog_topk triton candidates k \+ S \| received 513, expected at most "
                                         r"512 \(use kernel='blocked'\)"):
        catalog_topk(queries, table, 508, exclude, kernel="triton")
    with pytest.raises(ValueError, match=r"catalog_topk triton dtype \| received torch.float64, expected "
                                         r"torch.float32, torch.bfloat16 or torch.float16 \(use kernel='blocked'\)"):
        catalog_topk(queries.double(), table, 5, kernel="triton")
    assert choose_kernel("auto", queries, table, 508, exclude) != "triton"  # auto falls back instead


# --- registered operator: torch.export --------------------------------------------------------


class ScoreHead(torch.nn.Module):
    """A scoring graph's last step: the opaque op on a learned table."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = torch.nn.Parameter(table)

    def forward(self, queries: torch.Tensor, exclude: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.ops.seqrec.catalog_topk_opaque(queries, self.table, 7, exclude)


def test_export_keeps_one_opaque_node():
    register_catalog_topk_opaque()
    queries, table, exclude = make_inputs(4, 50, 6, 5, seed=8)
    head = ScoreHead(table)
    batch = torch.export.Dim("batch")
    program = torch.export.export(head, (queries, exclude), dynamic_shapes=({0: batch}, {0: batch}))
    seqrec_nodes = [str(node.target) for node in program.graph.nodes
                    if node.op == "call_function" and getattr(node.target, "namespace", None) == "seqrec"]
    assert seqrec_nodes == ["seqrec.catalog_topk_opaque.default"]
    queries, _, exclude = make_inputs(9, 50, 6, 5, seed=9)  # another batch size
    with torch.no_grad():
        assert_same_topk(program.module()(queries, exclude), queries, table, 7, exclude)


def test_compile_with_grad_enabled_on_a_learned_table():
    """A model's table requires grad; torch.compile traces autograd when grad is enabled, which a custom op
    without an autograd rule refused. The outputs carry no gradient, as in eager."""
    register_catalog_topk_opaque()
    queries, table, exclude = make_inputs(5, 40, 6, 4, seed=12)
    head = ScoreHead(table)
    torch._dynamo.reset()
    scores, ids = torch.compile(head, backend="aot_eager", fullgraph=True)(queries, exclude)
    assert not scores.requires_grad
    assert_same_topk((scores, ids), queries, table, 7, exclude)


def test_opcheck_opaque_op():
    queries, table, exclude = make_inputs(4, 30, 5, 3, seed=10)
    torch.library.opcheck(register_catalog_topk_opaque(), (queries, table, 5, exclude))
    torch.library.opcheck(register_catalog_topk_opaque(), (queries, table, 5, None))


# --- on a GPU, compiled kernel -------------------------------------------------------------------


@requires_gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_at_scale(dtype):
    pytest.importorskip("triton")
    queries, table, exclude = make_inputs(1031, 100_003, 64, 50, seed=11, dtype=dtype, device="cuda")
    for kernel in ("auto", "blocked"):
        scores, ids = catalog_topk(queries, table, 160, exclude, kernel=kernel)
        expected = pt_catalog_topk(queries, table, 160, exclude)
        torch.testing.assert_close(scores, expected[0], **TOLERANCE[dtype])
        assert (ids == expected[1]).float().mean() > 0.99  # equal but for ties
