"""Accuracy of a trained PCRec checkpoint with a different number of PC steps at inference.

The weights stay those trained with the checkpoint's T; only the number of unrolled steps at
inference changes (T = 0 is the HSTU path on PCRec's weights). Each T is scored on the validation
and the test split of Amazon Beauty, history excluded, so T can be chosen on validation:

    python benchmarks/pc_steps.py benchmarks/out/beauty_pcrec_c_s1_full --steps 0 1 2 3 4 --threads 1

Prints a table and writes benchmarks/out/pc_steps.json. Not a test.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from seqrec.training import evaluate

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from accuracy import checkpoint_on_beauty  # noqa: E402  (one loader for the scripts that re-score Beauty)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path, help="a PCRec checkpoint trained on Beauty by benchmarks/accuracy.py")
    parser.add_argument("--steps", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "pc_steps.json")
    args = parser.parse_args()
    ckpt, data = checkpoint_on_beauty(args.checkpoint, args.threads, "model", "pcrec")
    rows = [_score(ckpt.model, data, steps) for steps in args.steps]
    trained = ckpt.model.cfg.pc_steps
    print(f"\nPCRec trained with T = {trained}, NDCG@10 with the history excluded, by T at inference")
    print(f"{'T':>3s}{'valid':>10s}{'test':>10s}{'seconds':>10s}")
    for row in rows:
        print(f"{row['steps']:3d}{row['valid_ndcg@10']:10.4f}{row['test_ndcg@10']:10.4f}{row['seconds']:10.1f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"checkpoint": str(args.checkpoint), "trained_steps": trained, "rows": rows},
                                   indent=2) + "\n")


def _score(model, data, steps: int) -> dict:
    for module in model.encoder.pc_steps:  # one PredictiveCoding module per layer
        module.steps = steps
    started = time.perf_counter()
    valid = evaluate(model, data.seqs, data.split.valid, exclude_history=True)["ndcg@10"]
    test = evaluate(model, data.seqs, data.split.test, exclude_history=True)["ndcg@10"]
    return {"steps": steps, "valid_ndcg@10": valid, "test_ndcg@10": test,
            "seconds": round(time.perf_counter() - started, 1)}


if __name__ == "__main__":
    main()
