"""Which partition of a trained softmax-CPR head moves its accuracy: the head with and without
its reranker stages, on the same weights.

Amazon Beauty has no repeats, so with the history excluded only the base partition and the
reranker stages rank anything; switching the stages off leaves the base partition's own ranking
(its query still reads the Mi input where the variant has one). Scored on the validation and the
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

from torch import nn

from seqrec.training import evaluate

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
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"checkpoint": str(args.checkpoint), "variant": ckpt.model.cfg.cpr_variant, "rows": rows}
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


def _score(model, data, name: str) -> dict:
    started = time.perf_counter()
    valid = evaluate(model, data.seqs, data.split.valid, exclude_history=True)["ndcg@10"]
    test = evaluate(model, data.seqs, data.split.test, exclude_history=True)["ndcg@10"]
    test_all = evaluate(model, data.seqs, data.split.test)["ndcg@10"]
    return {"head": name, "valid_excl": valid, "test_excl": test, "test_all": test_all,
            "seconds": round(time.perf_counter() - started, 1)}


if __name__ == "__main__":
    main()
