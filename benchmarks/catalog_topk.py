"""catalog_topk on the CPU: matmul + torch.topk (the reference) against the blocked and int8 paths, in one run.

For every (N, B, k): the reference (the (B, N+1) product, -inf at padding, ``torch.topk``), the
blocked float32 path (``kernel="blocked"``) and the int8 path (``kernel="int8"``: int8 candidates
within a proven bound, rescored in float32) run in turns, the order alternating between repeats so a busy
spell of this shared machine does not fall on one side; times are medians. The first run of each
path measures its peak memory: the rise of this process's peak RSS over the RSS before the call
(Linux: /proc/self/status VmHWM, reset through /proc/self/clear_refs), next to the analytical
bound of each fast path (one tile of scores plus the running candidates; N x B does not enter).
Linux with glibc only.

The same run measures this machine's matrix-product rate on a cache-resident shape,
(256 x D) x (D x 16384), in float32, bfloat16, float16 and int8 (``torch._int_mm``, int32 sums):
each path is then shown as a fraction of that float32 roofline (2 N D FLOP per user over the
measured rate). Lower-precision candidates pay only if the lower-precision product is faster,
which these rates say.

    python benchmarks/catalog_topk.py                    # D=64, N in {100k, 1M}, B in {256, 1024}, k in {10, 160}
    python benchmarks/catalog_topk.py --threads 2 --items 100000 --users 256 --repeats 2
    python benchmarks/catalog_topk.py --threads 2 --items 100000 1000000 --users 512 --k 110 --exclude 50  # CPR's call

``--exclude S`` passes each user S random ids to leave out (duplicates and padding included), as
the SASRec-CPR head does with the user's history.

The reference at N = 1M, B = 1024 holds a 4 GB score matrix; the default run takes about 75 s
on the project's 2-core machine.
"""

from __future__ import annotations

import argparse
import ctypes
import statistics
import time
from pathlib import Path

import torch

from seqrec.kernels import catalog_topk
from seqrec.kernels.blocked_catalog_topk import Tiling
from seqrec.kernels.int8_catalog_topk import Int8Tiling, padded_dim

MATMUL_SHAPE = (256, 16384)  # (users, items) of the roofline product: 16 MB of float32 scores
PATHS = ("matmul+topk", "blocked", "int8")
KERNELS = {"matmul+topk": "pytorch", "blocked": "blocked", "int8": "int8"}


def matmul_rate(dim: int, dtype: torch.dtype, shape: tuple[int, int] = MATMUL_SHAPE, rounds: int = 5,
                repeats: int = 10) -> float:
    """FLOP/s of (rows x D) x (D x columns) into a preallocated output; by default (256 x D) x (D x 16384),
    the product the blocked path tiles: the best of ``rounds`` rounds, since a neighbour's burst on
    this shared machine only slows a round. benchmarks/roofline.py takes its rates from here too."""
    users, items = shape
    if dtype == torch.int8:
        queries, table = torch.randint(-127, 128, (users, dim), dtype=dtype), torch.randint(-127, 128, (items, dim),
                                                                                               dtype=dtype)
        out = torch.empty(users, items, dtype=torch.int32)
        product = torch._int_mm
    else:
        queries, table = torch.randn(users, dim, dtype=dtype), torch.randn(items, dim, dtype=dtype)
        out = torch.empty(users, items, dtype=dtype)
        product = torch.mm
    product(queries, table.T, out=out)
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(repeats):
            product(queries, table.T, out=out)
        best = min(best, time.perf_counter() - start)
    return 2 * users * items * dim * repeats / best


def run_path(path: str, queries: torch.Tensor, table: torch.Tensor, k: int, exclude: torch.Tensor | None = None):
    return catalog_topk(queries, table, k, exclude, kernel=KERNELS[path])


def rss_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def peak_rise(fn):
    """(fn(), bytes by which the peak RSS rose above the RSS before the call).

    Freed memory is handed back to the system first (glibc ``malloc_trim``): memory that earlier
    calls freed but kept would otherwise be reused without raising the RSS.
    """
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")  # peak RSS := current RSS
    before = rss_bytes("VmRSS")
    result = fn()
    return result, rss_bytes("VmHWM") - before


def blocked_bound(users: int, k: int, tiling: Tiling, items: int, dim: int) -> int:
    """Bytes the blocked path can hold at once, counted generously: the tile buffer and a padded copy of
    the last tile, per-group maxima with their masks and nonzero indices, k gathered groups with their
    columns, masks and compacted copies (about 50 bytes a score), the sparse path's flat lists if every
    group of a tile were live (int64 indices, scores, mask: 21 bytes a score), the outputs, and the
    table's cached norm order (a sorted copy plus two int64 maps, built on the first call). No term in
    N x B."""
    block = min(users, tiling.user_block)
    tile = 2 * 4 * block * tiling.item_tile + 21 * block * tiling.item_tile
    maxima = block * (tiling.item_tile // tiling.group) * (4 + 1 + 16)
    gathered = block * k * tiling.group * 50
    order = (items + 1) * (4 * dim + 16) if getattr(tiling, "by_norm", False) else 0
    return tile + maxima + gathered + users * k * (4 + 8) + order


def int8_bound(users: int, k: int, tiling: Int8Tiling, items: int, dim: int) -> int:
    """Bytes the int8 path can hold at once: a tile of int32 scores and a padded copy of the last, the
    group maxima, the candidate buffers (int32 score, int64 position) and their float32 rescores, the
    outputs, and what it caches per table: the norm-ordered float copy, two int64 maps, the int8 copy."""
    block = min(users, tiling.user_block)
    capacity = max(tiling.capacity, 4 * k)
    tile = 2 * 4 * block * tiling.item_tile + block * (tiling.item_tile // tiling.group) * 4
    candidates = block * capacity * (4 + 8 + 4)
    cached = (items + 1) * (4 * dim + 16 + padded_dim(dim))
    return tile + candidates + users * k * (4 + 8) + cached


def measure(items: int, users: int, dim: int, k: int, repeats: int, history: int = 0) -> list[dict]:
    gen = torch.Generator().manual_seed(items + users + k)
    queries = torch.randn(users, dim, generator=gen)
    table = torch.randn(items + 1, dim, generator=gen)
    exclude = torch.randint(0, items + 1, (users, history), generator=gen) if history else None  # 0: padding
    outputs, peaks = {}, {}
    for path in PATHS:  # the first run: warm-up and peak memory
        outputs[path], peaks[path] = peak_rise(lambda path=path: run_path(path, queries, table, k, exclude))
    times = {path: [] for path in PATHS}
    for attempt in range(repeats):
        for path in PATHS[::-1] if attempt % 2 else PATHS:
            start = time.perf_counter()
            run_path(path, queries, table, k, exclude)
            times[path].append(time.perf_counter() - start)
    return [{"N": items, "B": users, "k": k, "path": path, "seconds": statistics.median(times[path]),
             "peak": peaks[path], "agree": (outputs[path][1] == outputs["matmul+topk"][1]).float().mean().item()}
            for path in PATHS]


def print_table(rows: list[dict], dim: int, rates: dict[str, float], tiling: Tiling, history: int) -> None:
    print(f"catalog_topk on cpu, D={dim}, float32, {torch.get_num_threads()} threads, tiling {tiling}, "
          f"{history} exclusions per user")
    print("matmul rate, (256 x D) x (D x 16384): "
          + ", ".join(f"{name} {rate / 1e9:.0f} G{'OP' if name == 'int8' else 'FLOP'}/s" for name, rate in rates.items()))
    print(f"{'N':>8} {'B':>5} {'k':>4} {'path':>12} {'ms':>9} {'users/s':>9} {'x base':>7} {'roofline':>8} "
          f"{'peak MB':>8} {'bound MB':>8} {'ids =':>6}")
    for row in rows:
        base = next(r for r in rows if (r["N"], r["B"], r["k"], r["path"]) == (row["N"], row["B"], row["k"],
                                                                               "matmul+topk"))
        flops = 2 * row["N"] * dim * row["B"]
        bound = {"blocked": lambda: blocked_bound(row["B"], row["k"], tiling, row["N"], dim) / 2**20,
                 "int8": lambda: int8_bound(row["B"], row["k"], Int8Tiling(), row["N"], dim) / 2**20,
                 }.get(row["path"], lambda: None)()
        print(f"{row['N']:>8} {row['B']:>5} {row['k']:>4} {row['path']:>12} {row['seconds'] * 1e3:>9.0f} "
              f"{row['B'] / row['seconds']:>9.0f} {base['seconds'] / row['seconds']:>7.2f} "
              f"{flops / row['seconds'] / rates['float32']:>8.0%} {row['peak'] / 2**20:>8.0f} "
              f"{'' if bound is None else f'{bound:.0f}':>8} {row['agree']:>6.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, nargs="+", default=[100_000, 1_000_000], help="N, catalog sizes")
    parser.add_argument("--users", type=int, nargs="+", default=[256, 1024], help="B, users per call")
    parser.add_argument("--k", type=int, nargs="+", default=[10, 160], help="k, items kept per user")
    parser.add_argument("--dim", type=int, default=64, help="D, embedding width")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per path after the first")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--exclude", type=int, default=0, help="S, random ids left out per user (default none)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rates = {str(dtype).removeprefix("torch."): matmul_rate(args.dim, dtype)
             for dtype in (torch.float32, torch.bfloat16, torch.float16, torch.int8)}
    catalog_topk(torch.randn(4, args.dim), torch.randn(17, args.dim), 3, kernel="int8")  # load the compiled loops:
    # numba's code (~100 MB) would otherwise count in the first int8 row's peak
    rows = [row for items in args.items for users in args.users for k in args.k
            for row in measure(items, users, args.dim, k, args.repeats, args.exclude)]
    print_table(rows, args.dim, rates, Tiling(), args.exclude)


if __name__ == "__main__":
    main()
