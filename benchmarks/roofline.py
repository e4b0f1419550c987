"""End-to-end scoring throughput as a fraction of the head's matrix-multiply roofline (issue 7).

    python benchmarks/roofline.py --items 100000,1000000 --users 100000 --threads 2 --backends torch

The head roofline is the work of the user-by-item product alone, 2 N d FLOP per user, at this
machine's float32 matrix-multiply rate. In one run, for each catalog size N:

1. the rate is measured on the head's product as the fused op tiles it ([256, d] x [d, 16384] into
   a preallocated output, the best of a few rounds: the same function and shape as
   benchmarks/catalog_topk.py) and on a large square product (the machine's peak), in float32
   and in bf16, before the first scoring run and again after each: the best of all counts, so a
   neighbour's burst on this shared machine can lower the roofline only by slowing every one;
2. a SASRec-CPR checkpoint (d ``--dim``, window ``--length``, random weights: speed does not
   depend on them) scores ``--users`` synthetic histories with ``seqrec score`` per backend
   (``torch``, ``torch-bf16``, ``onnxruntime``; each its own process, as a nightly job runs);
3. it prints users/s, the head roofline in users/s (rate / 2 N d), and the fraction
   users/s x 2 N d / rate against the head-shaped rate and against the square peak.

The fraction counts the encoder and the CPR extras (5-10 MFLOP per user at L = 50, d = 64) as
overhead, so at N = 100k (12.8 MFLOP per user in the head) only lower-precision candidate
generation can reach 1.0. Writes benchmarks/out/roofline.json. Not a test.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from catalog_topk import matmul_rate  # noqa: E402  (one definition of the rate for both benchmarks)
from score import build_model, generate, run_seqrec  # noqa: E402  (the same data and model as issue 6)


def measure_rates(dim: int) -> dict[str, float]:
    """The head's product as the fused op tiles it ((256 x d) x (d x 16384), the same rate
    benchmarks/catalog_topk.py reports) and a large square product (the machine's peak)."""
    import torch

    square = (2048, 2048)
    return {"fp32_head_shape": matmul_rate(dim, torch.float32),
            "fp32_square": matmul_rate(2048, torch.float32, square, repeats=2),
            "bf16_head_shape": matmul_rate(dim, torch.bfloat16),
            "bf16_square": matmul_rate(2048, torch.bfloat16, square, repeats=2)}


def child(args) -> None:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    work = Path(args.work) / f"n{args.child_items}"
    model = work / ("ckpt" if args.child.startswith("torch") else "bundle")
    print(json.dumps(run_seqrec(args.child, model, str(work / "histories"), work / "scored" / args.child, args)))


def measure(args, name: str, items: int) -> dict:
    command = [sys.executable, __file__, *sys.argv[1:], "--child", name, "--child-items", str(items)]
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["users_per_second"] = round(result["users"] / result["seconds"], 1)
    return result


def catalog(args, items: int) -> dict:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    work = Path(args.work) / f"n{items}"
    generate(work / "histories", args.users, items, args.length, args.users, args.seed)
    build_model(work, items, args.length, args.top_k, dim=args.dim, export="onnxruntime" in args.backends)
    rates = measure_rates(args.dim)
    head_flop = 2.0 * items * args.dim
    runs = {}
    for name in args.backends.split(","):
        runs[name] = measure(args, name, items)
        rates = {key: max(rate, again) for (key, rate), again in zip(rates.items(), measure_rates(args.dim).values())}
    for row in runs.values():
        row["fraction_of_head_shape_roofline"] = round(row["users_per_second"] * head_flop / rates["fp32_head_shape"], 3)
        row["fraction_of_square_roofline"] = round(row["users_per_second"] * head_flop / rates["fp32_square"], 3)
    return {"items": items, "head_mflop_per_user": head_flop / 1e6,
            "rates_gflops": {name: round(rate / 1e9, 1) for name, rate in rates.items()}, "runs": runs}


def report(result: dict) -> None:
    rates = result["rates_gflops"]
    print(f"N = {result['items']:,}: head {result['head_mflop_per_user']:.1f} MFLOP/user; float32 matmul "
          f"{rates['fp32_head_shape']:.0f} GFLOP/s at the head's shape ({rates['fp32_square']:.0f} square), bf16 "
          f"{rates['bf16_head_shape']:.0f} ({rates['bf16_square']:.0f} square); head roofline "
          f"{rates['fp32_head_shape'] * 1e3 / result['head_mflop_per_user']:,.0f} users/s")
    print(f"  {'backend':14s}{'users':>9s}{'users/s':>10s}{'peak RSS MB':>13s}{'of roofline':>13s}{'of square peak':>16s}")
    for name, row in result["runs"].items():
        print(f"  {name:14s}{row['users']:>9,d}{row['users_per_second']:>10,.0f}{row['peak_rss_mb']:>13,.0f}"
              f"{row['fraction_of_head_shape_roofline']:>13.3f}{row['fraction_of_square_roofline']:>16.3f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", default="100000,1000000", help="catalog sizes N, comma separated")
    parser.add_argument("--users", type=int, default=100_000,
                        help="users scored per run; users/s counts the whole run, including the model load and the "
                             "table's preparation (about 3 s at N = 1M), so small runs understate the steady rate")
    parser.add_argument("--length", type=int, default=50)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--backends", default="torch,torch-bf16", help="of torch, torch-bf16, onnxruntime")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", default=str(ROOT / "benchmarks" / "out" / "roofline_work"))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "roofline.json")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-items", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    results = []
    for items in [int(n) for n in args.items.split(",")]:
        results.append(catalog(args, items))
        report(results[-1])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": platform.processor() or platform.machine(),
                                    "settings": {k: v for k, v in vars(args).items() if k != "out"},
                                    "catalogs": results}, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
