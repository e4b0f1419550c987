"""Inference cost of the softmax-CPR head against the softmax head, per user, on this CPU (issue 3).

Same SASRec encoder (d 64, 2 layers, L 50), same random left-padded histories with repeats. The
CPR head twice, with each pooling of an item's history slots (``logsumexp``, the default, and the
published ``mean``). Two paths per head, all six timed in the same run at each catalog size,
interleaved, best of ``--repeats``: ``logits`` (encoder + head, the full B x (N + 1) logits, what
evaluation uses) and ``top-10`` (``SequentialRecommender.top_k``: the exact top-10, what export
and scoring use; for CPR from the top-(k_R + K + L) candidates). The ratios CPR / softmax are printed for both poolings.

    python benchmarks/cpr_cost.py --threads 1 --repeats 10   # catalogs 10k, 100k, 1M

Writes benchmarks/out/cpr_cost.json. Not a test.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from seqrec.config import ModelConfig
from seqrec.models import build_model

ROOT = Path(__file__).resolve().parents[1]
HEADS = {"softmax": {"head": "softmax"}, "cpr": {"head": "cpr", "cpr_pooling": "logsumexp"},
         "cpr-mean": {"head": "cpr", "cpr_pooling": "mean"}}


def histories(batch: int, length: int, num_items: int, seed: int = 0) -> torch.Tensor:
    """Left padded, lengths 1..L, a third of the slots repeating an earlier item of the row."""
    gen = torch.Generator().manual_seed(seed)
    items = torch.randint(1, num_items + 1, (batch, length), generator=gen)
    repeat = torch.rand(batch, length, generator=gen) < 0.33
    items = torch.where(repeat, items.roll(3, dims=1), items)
    lengths = torch.randint(1, length + 1, (batch,), generator=gen)
    return items.masked_fill(torch.arange(length) < (length - lengths).unsqueeze(1), 0)


def best_seconds(calls: dict, repeats: int) -> dict[str, float]:
    """Best wall time per call, the calls taking turns so load changes hit all alike."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    with torch.inference_mode():
        for call in calls.values():
            call()  # warm-up
        for _ in range(repeats):
            for name, call in calls.items():
                started = time.perf_counter()
                call()
                times[name].append(time.perf_counter() - started)
    return {name: min(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--catalogs", nargs="+", type=int, default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--length", type=int, default=50)
    parser.add_argument("--variant", default="CPR:100+Mi")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "cpr_cost.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    print(f"{'items':>10s}{'path':>8s}{'softmax ms/user':>17s}{'cpr lse':>10s}{'cpr mean':>10s}"
          f"{'lse / softmax':>15s}{'mean / softmax':>16s}")
    for num_items in args.catalogs:
        models = {name: build_model(ModelConfig(num_items=num_items, cpr_variant=args.variant, max_length=args.length,
                                                **options)).eval() for name, options in HEADS.items()}
        items = histories(args.batch, args.length, num_items)
        calls = {(path, head): (lambda m=model: m(items)) if path == "logits" else (lambda m=model: m.top_k(items, 10))
                 for path in ("logits", "top-10") for head, model in models.items()}
        seconds = best_seconds(calls, args.repeats)
        for path in ("logits", "top-10"):
            per_user = {head: 1000 * seconds[(path, head)] / args.batch for head in models}
            rows.append({"items": num_items, "path": path, "batch": args.batch, "ms_per_user": per_user,
                         "ratio_logsumexp": per_user["cpr"] / per_user["softmax"],
                         "ratio_mean_pooling": per_user["cpr-mean"] / per_user["softmax"]})
            print(f"{num_items:10d}{path:>8s}{per_user['softmax']:17.4f}{per_user['cpr']:10.4f}"
                  f"{per_user['cpr-mean']:10.4f}{rows[-1]['ratio_logsumexp']:15.2f}{rows[-1]['ratio_mean_pooling']:16.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"variant": args.variant, "threads": torch.get_num_threads(), "rows": rows},
                                   indent=2) + "\n")


if __name__ == "__main__":
    main()
