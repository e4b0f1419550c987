"""cpr_scatter: the reference (S x S equality) against the literal scatter_add + count form, and Triton.

The literal form sums and counts every item's values in two (M, N+1) buffers before it divides;
the reference works on (M, S, S) per-row equalities and writes only the output. On CUDA the Triton
kernels are timed too. Times are medians of --repeats runs after one warm-up, forward alone and
forward + backward (gradients of logits and values).

    python benchmarks/cpr_scatter.py                 # M=4096, S=50, N in {10k, 100k}
    python benchmarks/cpr_scatter.py --items 10000 --repeats 3

On the project's 2-core CPU machine the default run takes about 4 minutes and peaks near 11 GB
(the literal form's forward + backward at N=100k holds several (M, N+1) float32 buffers of 1.6 GB).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from seqrec.kernels import cpr_scatter


def scatter_add_count(logits: torch.Tensor, ids: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """The op as defined: (M, N+1) sums and counts of every id's values, divided, replacing logits."""
    real = (ids > 0).to(values.dtype)  # (M, S)
    sums = torch.zeros_like(logits, dtype=values.dtype).scatter_add_(1, ids, values * real)  # (M, N+1)
    counts = torch.zeros_like(sums).scatter_add_(1, ids, real)  # (M, N+1)
    return torch.where(counts > 0, (sums / counts.clamp_min(1)).to(logits.dtype), logits)


def implementations(device: torch.device) -> dict:
    impls = {"literal": scatter_add_count,
             "reference": lambda logits, ids, values: cpr_scatter(logits, ids, values, kernel="pytorch")}
    if device.type == "cuda":
        impls["triton"] = lambda logits, ids, values: cpr_scatter(logits, ids, values, kernel="triton")
    return impls


def make_inputs(rows: int, history: int, items: int, device: torch.device, seed: int = 0):
    """Histories drawn from a popular tenth of the catalog (repeats happen), a quarter of slots padding."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, max(items // 10, 2), (rows, history), generator=gen)  # (M, S)
    ids[torch.rand(rows, history, generator=gen) < 0.25] = 0
    logits = torch.randn(rows, items + 1, generator=gen)  # (M, N+1)
    values = torch.randn(rows, history, generator=gen)  # (M, S)
    return logits.to(device), ids.to(device), values.to(device)


def median_ms(fn, repeats: int, device: torch.device) -> float:
    times = []
    for attempt in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if attempt:  # the first run warms up
            times.append(1e3 * (time.perf_counter() - start))
    return statistics.median(times)


def time_impl(op, logits, ids, values, repeats: int, device: torch.device) -> tuple[float, float]:
    """(forward ms, forward + backward ms) of op."""
    with torch.no_grad():
        forward = median_ms(lambda: op(logits, ids, values), repeats, device)
    logits = logits.detach().requires_grad_()
    values = values.detach().requires_grad_()

    def step():
        out = op(logits, ids, values)
        torch.autograd.grad(out, (logits, values), torch.ones_like(out))

    return forward, median_ms(step, repeats, device)


def run(rows: int, history: int, items_list: list[int], repeats: int, device: torch.device) -> list[dict]:
    rows_out = []
    for items in items_list:
        logits, ids, values = make_inputs(rows, history, items, device)
        timings = {name: time_impl(op, logits, ids, values, repeats, device)
                   for name, op in implementations(device).items()}
        base_fwd, base_both = timings["literal"]
        for name, (fwd, both) in timings.items():
            rows_out.append({"N": items, "impl": name, "fwd_ms": fwd, "fwd_bwd_ms": both,
                             "fwd_speedup": base_fwd / fwd, "fwd_bwd_speedup": base_both / both})
        del logits, ids, values
    return rows_out


def print_table(results: list[dict], rows: int, history: int, device: torch.device) -> None:
    print(f"cpr_scatter  M={rows} S={history} float32 on {device} ({torch.get_num_threads()} threads); "
          "speedup = literal time / this time")
    print(f"{'N':>8} {'impl':>10} {'fwd ms':>10} {'fwd+bwd ms':>11} {'fwd x':>7} {'fwd+bwd x':>10}")
    for r in results:
        print(f"{r['N']:>8} {r['impl']:>10} {r['fwd_ms']:>10.1f} {r['fwd_bwd_ms']:>11.1f} "
              f"{r['fwd_speedup']:>7.2f} {r['fwd_bwd_speedup']:>10.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=4096, help="M, histories per batch")
    parser.add_argument("--history", type=int, default=50, help="S, history length")
    parser.add_argument("--items", type=int, nargs="+", default=[10_000, 100_000], help="N, catalog sizes")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs after one warm-up")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    print_table(run(args.rows, args.history, args.items, args.repeats, device), args.rows, args.history, device)


if __name__ == "__main__":
    main()
