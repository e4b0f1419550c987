"""Which partition of a trained softmax-CPR head moves its accuracy: the head with and without
its reranker stages, on the same weights.

Amazon Beauty has no repeats, so with the history excluded only the base partition and the
reranker stages rank anything; switching the stages off leaves the base partition's own ranking
(its query still reads the Mi input where the variant has one). For the first reranker stage it
also prints where it acts: the share of targets inside its top-k, the NDCG@10 of those users with
the stage on and off, and how many top-10 slots go to items outside it. Scored on the validation and the
test split, history excluded, and on test ranking all items. A refit checkpoint has trained on the
validation items, so its validation column is not a held-out figure; read its test columns:

    python benchmarks/cpr_partitions.py benchmarks/out/beauty_sasrec_cpr_base_refit --threads 1

Prints a table and writes benchmarks/out/cpr_partitions_<checkpoint>.json. Not a test.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch import nn

from seqrec.data import pad_left
from seqrec.training import evaluate
from seqrec.training.evaluation import mask_history
from seqrec.training.metrics import ranking_metrics, target_ranks

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from accuracy import checkpoint_on_beauty  # noqa: E402  (one loader for the scripts that re-score Beauty)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path, help="a CPR checkpoint trained on Beauty by benchmarks/accuracy.py")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out")
    args = parser.parse_args()
    ckpt, data = checkpoint_on_beauty(args.checkpoint, args.threads, "head", "cpr")
    rows = [_score(ckpt.model, data, "as trained")]
    with _without_rerankers(ckpt.model.head):
        rows.append(_score(ckpt.model, data, "without reranker stages"))
    print(f"\nsoftmax-CPR head {ckpt.model.cfg.cpr_variant} on {ckpt.model.cfg.model}: NDCG@10")
    print(f"{'':26s}{'valid excl.':>12s}{'test excl.':>12s}{'test all':>10s}{'seconds':>9s}")
    for row in rows:
        print(f"{row['head']:26s}{row['valid_excl']:12.4f}{row['test_excl']:12.4f}{row['test_all']:10.4f}"
              f"{row['seconds']:9.1f}")
    stage = {}
    if ckpt.model.head.variant.rerank:
        stage = {split: _first_stage(ckpt.model, data, split) for split in ("valid", "test")}
        k = ckpt.model.head.variant.rerank[0]
        print(f"\nthe first reranker stage (its top-{k} of the base logits), history excluded")
        print(f"{'':8s}{'targets in it':>15s}{'NDCG@10 on those, stage on':>28s}{'off':>8s}"
              f"{'top-10 from outside it':>24s}")
        for split, row in stage.items():
            print(f"{split:8s}{row['targets_inside']:15.4f}{row['ndcg_inside_on']:28.4f}{row['ndcg_inside_off']:8.4f}"
                  f"{row['top10_outside']:24.4f}")
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"checkpoint": str(args.checkpoint), "variant": ckpt.model.cfg.cpr_variant, "rows": rows,
              "first_stage": stage}
    (args.out / f"cpr_partitions_{args.checkpoint.name}.json").write_text(json.dumps(report, indent=2) + "\n")


@contextlib.contextmanager
def _without_rerankers(head: nn.Module) -> Iterator[None]:
    """The head's logits skip every reranker stage (``logits`` zips the stages with their facets)."""
    facets = head.rerank_facets
    head.rerank_facets = nn.ModuleList()
    try:
        yield
    finally:
        head.rerank_facets = facets


@torch.no_grad()
def _first_stage(model, data, split: str, batch_size: int = 512) -> dict:
    """Where the first reranker stage acts, history excluded: the share of targets inside its top-k of the base
    logits, NDCG@10 of those users with the stage and with the base logits kept there, and the share of top-10
    slots taken by items outside its top-k (reranked scores that fall below unreranked ones let them in)."""
    examples = getattr(data.split, split)
    head, k = model.head, model.head.variant.rerank[0]
    model.eval()
    inside, ranks_on, ranks_off, outside = [], [], [], []
    for lo in range(0, len(examples.targets), batch_size):
        starts, ends = examples.history_start[lo:lo + batch_size], examples.history_end[lo:lo + batch_size]
        items = torch.from_numpy(pad_left(data.seqs.items, np.maximum(starts, ends - model.cfg.max_length), ends,
                                          model.cfg.max_length))  # (B, L)
        targets = torch.from_numpy(examples.targets[lo:lo + batch_size])  # (B,)
        base = head.rerank_inputs(model.encode_layers(items))[0]  # (B, N+1)
        reranked = torch.zeros_like(base, dtype=torch.bool).scatter_(1, base.topk(k, dim=1).indices, True)
        logits = mask_history(model(items), data.seqs.items, starts, ends)  # (B, N+1)
        off = torch.where(reranked & ~logits.isneginf(), base, logits)  # (B, N+1)
        inside.append(reranked.gather(1, targets[:, None])[:, 0].numpy())
        ranks_on.append(target_ranks(logits, targets).numpy())
        ranks_off.append(target_ranks(off, targets).numpy())
        outside.append((~reranked.gather(1, logits.topk(10, dim=1).indices)).float().mean(1).numpy())
    inside = np.concatenate(inside)
    return {"targets_inside": float(inside.mean()),
            "ndcg_inside_on": ranking_metrics(np.concatenate(ranks_on)[inside])["ndcg@10"],
            "ndcg_inside_off": ranking_metrics(np.concatenate(ranks_off)[inside])["ndcg@10"],
            "top10_outside": float(np.concatenate(outside).mean())}


def _score(model, data, name: str) -> dict:
    started = time.perf_counter()
    valid = evaluate(model, data.seqs, data.split.valid, exclude_history=True)["ndcg@10"]
    test = evaluate(model, data.seqs, data.split.test, exclude_history=True)["ndcg@10"]
    test_all = evaluate(model, data.seqs, data.split.test)["ndcg@10"]
    return {"head": name, "valid_excl": valid, "test_excl": test, "test_all": test_all,
            "seconds": round(time.perf_counter() - started, 1)}


if __name__ == "__main__":
    main()
