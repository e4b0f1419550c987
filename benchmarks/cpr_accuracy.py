"""softmax-CPR against the softmax head on synthetic data with and without repeats (issue 3).

For each encoder (SASRec, GRU4Rec) and each repeat probability (0.5 and 0), trains the softmax
head and the CPR head with the same encoder settings (the model's ``seqrec train`` defaults) on
the same synthetic log, and reports test NDCG@10 ranking every item (nothing excluded: with
repeats, copying is the point), the relative change, and the by-repeat breakdown.

Targets: with repeat probability 0.5, CPR >= +10% relative NDCG@10; with 0, no worse than -2%.
The CPR head is trained once per ``--poolings`` entry (how an item's repeated history slots
combine: the published mean, or logsumexp); without repeats the two are the same head, so only
the first is trained there.

    python benchmarks/cpr_accuracy.py --threads 1

Prints a table and writes benchmarks/out/cpr_accuracy.json. Not a test.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

from seqrec.config import resolve_configs
from seqrec.data import SynthConfig, generate_interactions
from seqrec.training import prepare_data, train_model
from seqrec.training.evaluation import evaluate_by_repeat

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from accuracy import parse_value  # noqa: E402  (one KEY=VALUE reader for the scripts' --set)

TARGET_GAIN = {0.5: 0.10, 0.0: -0.02}


def run_one(data, model: str, head: str, args, pooling: str = "mean") -> dict:
    cpr = {"cpr_variant": args.variant, "cpr_pooling": pooling, **args.cpr_options}  # read by the CPR head only
    options = {"epochs": args.epochs, "patience": args.patience, "eval_users": args.eval_users, "seed": 0,
               "precision": args.precision, "max_minutes": args.max_minutes, **(cpr if head == "cpr" else {})}
    model_cfg, train_cfg = resolve_configs(model, head, options)
    started = time.perf_counter()
    ckpt = train_model(data, model_cfg, train_cfg, progress=args.progress)
    seconds = time.perf_counter() - started
    groups = evaluate_by_repeat(ckpt.model, data.seqs, data.split.test)
    return {"model": model, "head": head, "pooling": pooling if head == "cpr" else None, "seconds": round(seconds, 1), "epochs": ckpt.meta["training"]["epochs"],
            **{group: groups[group] for group in ("all", "repeat", "new")}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["sasrec", "gru4rec"])
    parser.add_argument("--repeat-probs", nargs="+", type=float, default=[0.5, 0.0])
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--repeat-window", type=int, default=10, help="a repeat copies one of the last W items")
    parser.add_argument("--variant", default="CPR:100+Mi")
    parser.add_argument("--poolings", nargs="+", default=["logsumexp", "mean"], choices=["mean", "logsumexp"],
                        help="CPR head: how an item's repeated history slots combine (models/cpr.py)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", dest="cpr_set",
                        help="more options for the CPR runs only, e.g. --set cpr_base_weight=1 cpr_base_detach=1")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--patience", type=int, default=5)
    parser.add_argument("--eval-users", type=int, default=1000)
    parser.add_argument("--max-minutes", type=float, default=30.0, help="training budget per run (a safety net: runs stop early on validation)")
    parser.add_argument("--precision", default="bf16")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--progress", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "cpr_accuracy.json")
    args = parser.parse_args()
    args.cpr_options = {key: parse_value(value) for key, value in (item.split("=", 1) for item in args.cpr_set)}
    if args.threads:
        torch.set_num_threads(args.threads)
    results = []
    for repeat_prob in args.repeat_probs:
        synth = SynthConfig(users=args.users, items=args.items, repeat_prob=repeat_prob, seed=11,
                            repeat_window=args.repeat_window)
        data = prepare_data(generate_interactions(synth))
        for model in args.models:
            poolings = args.poolings if repeat_prob > 0 else args.poolings[:1]  # no duplicates: one head
            runs = {"softmax": run_one(data, model, "softmax", args),
                    "cpr": [run_one(data, model, "cpr", args, pooling) for pooling in poolings]}
            results.append({"repeat_prob": repeat_prob, "data": dataclasses.asdict(synth), **runs})
            _print_row(results[-1])
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps({"variant": args.variant, "cpr_options": args.cpr_options, "results": results}, indent=2) + "\n")


def _print_row(result: dict) -> None:
    soft = result["softmax"]
    target = TARGET_GAIN.get(result["repeat_prob"])
    print(f"\nrepeat_prob {result['repeat_prob']}, {soft['model']}: softmax NDCG@10 {soft['all']['ndcg@10']:.4f} "
          f"({soft['seconds']:.0f}s, {soft['epochs']} ep); repeat targets {soft['repeat']['ndcg@10']:.4f}, "
          f"new {soft['new']['ndcg@10']:.4f}, history share of top-10 {soft['all']['top10_repeat_share']:.3f}")
    for cpr in result["cpr"]:
        gain = cpr["all"]["ndcg@10"] / soft["all"]["ndcg@10"] - 1
        verdict = "" if target is None else ("  meets target" if gain >= target else f"  MISSES target {target:+.0%}")
        print(f"  cpr ({cpr['pooling']:9s}) NDCG@10 {cpr['all']['ndcg@10']:.4f} ({cpr['seconds']:.0f}s, "
              f"{cpr['epochs']} ep) change {gain:+.1%}{verdict}; repeat targets {cpr['repeat']['ndcg@10']:.4f}, "
              f"new {cpr['new']['ndcg@10']:.4f}, history share of top-10 {cpr['all']['top10_repeat_share']:.3f}")


if __name__ == "__main__":
    main()
