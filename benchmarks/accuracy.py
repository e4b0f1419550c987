"""Accuracy on Amazon Beauty (S3Rec preprocessing) against the published figures.

Protocol: leave-one-out (last item test, second last validation), full ranking over all 12,101
items, NDCG@10 / HR@10, early stopping on validation NDCG@10, each model with the defaults of
``seqrec train``. Reported both with and without excluding the user's history items from the
ranking (the S3Rec / FMLP-Rec evaluation code that produced the published figures excludes them;
Beauty has no repeats, so excluding them only removes impossible answers).

    python benchmarks/accuracy.py --model sasrec --max-minutes 45
    python benchmarks/accuracy.py --model gru4rec --max-minutes 45
    python benchmarks/accuracy.py --model pcrec --max-minutes 25 --threads 1
    python benchmarks/accuracy.py --model sasrec --head cpr --set cpr_variant=CPR:100+Mi
    python benchmarks/accuracy.py --model sasrec --refit-epochs 42 --set refit=1   # the refit alone

Prints a table and writes benchmarks/out/accuracy_<model>.json. Not a test.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

from seqrec.config import HEADS, resolve_configs
from seqrec.data import import_interactions
from seqrec.devices import slow_bf16_warning
from seqrec.training import Checkpoint, evaluate, load_checkpoint, prepare_data, save_checkpoint, train_model
from seqrec.training.loop import refit_or_keep

ROOT = Path(__file__).resolve().parents[1]
BEAUTY = ROOT.parent / "shared" / "data" / "amazon-beauty.txt"
PUBLISHED = {"sasrec": (0.0632, 0.1012), "gru4rec": (0.0510, 0.0797),  # PCRec paper, Table 2
             "hstu": (0.0649, 0.1078), "pcrec": (0.0727, 0.1012)}
TARGET = {"sasrec": 0.060, "gru4rec": 0.048, "hstu": 0.0649, "pcrec": 0.0649}  # pcrec: also above our HSTU


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(PUBLISHED), default="sasrec")
    parser.add_argument("--head", choices=HEADS, default="softmax")
    parser.add_argument("--max-minutes", type=float, default=45.0, help="training time budget")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="override a train option, e.g. --set dropout=0.3 lr=0.002")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out")
    parser.add_argument("--tag", default="", help="suffix for the output files")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    parser.add_argument("--refit-epochs", type=int, default=None, metavar="N",
                        help="no selection run: only the refit, N epochs on training + validation items (the epoch "
                             "count a recorded selection chose), to rebuild a refit checkpoint in half the time")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if not BEAUTY.exists():
        raise SystemExit(f"skipped: {BEAUTY} not found (the shared data sets are not beside this checkout)")
    overrides = {key: parse_value(value) for key, value in (item.split("=", 1) for item in args.set)}
    if args.refit_epochs:
        overrides["refit"] = 1  # the checkpoint and the report say it trained on the validation items
    model_cfg, train_cfg = resolve_configs(args.model, args.head, {"max_minutes": args.max_minutes, **overrides})
    if warning := slow_bf16_warning(train_cfg.precision, train_cfg.device):
        print(f"warning: {warning}", file=sys.stderr)
    started = time.perf_counter()
    data = prepare_data(import_interactions(BEAUTY, "s3rec"))
    out = args.out / f"beauty_{args.model}{args.tag}"
    if args.refit_epochs:
        ckpt = refit_only(data, model_cfg, train_cfg, args.refit_epochs, out)
    else:
        ckpt = train_model(data, model_cfg, train_cfg, out=out)
    wall = time.perf_counter() - started
    plain = ckpt.meta["metrics"]["test"]
    excluded = evaluate(ckpt.model, data.seqs, data.split.test, exclude_history=True)
    report = {"model": args.model, "head": args.head, "model_config": model_cfg.to_dict(), "train_config": train_cfg.to_dict(),
              "test": plain, "test_exclude_history": excluded, "training": ckpt.meta["training"],
              "wall_seconds": round(wall, 1), "published": PUBLISHED[args.model], "target": TARGET[args.model]}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"accuracy_{args.model}{args.tag}.json").write_text(json.dumps(report, indent=2) + "\n")
    _print_table(args.model, args.head, plain, excluded, wall, report["training"])


def refit_only(data, model_cfg, train_cfg, epochs: int, out: Path):
    """``train_model``'s refit alone (the same seeding, so the same weights as the refit of a selection that
    chose ``epochs``), evaluated on test and saved as ``train_model`` saves it."""
    model_cfg = dataclasses.replace(model_cfg, num_items=len(data.vocab))
    model, refit = refit_or_keep(None, data, model_cfg, train_cfg, epochs, progress=True)
    if model is None:
        raise SystemExit(f"the refit diverged: {refit['diverged']}")
    test = evaluate(model, data.seqs, data.split.test, exclude_history=train_cfg.exclude_history)
    meta = {"data": {"source": str(BEAUTY), "fingerprint": data.fingerprint, "users": len(data.seqs),
                     "items": len(data.vocab)},
            "metrics": {"test": test}, "training": {"epochs": epochs, "best_epoch": epochs, "refit": refit}}
    ckpt = Checkpoint(model.eval(), model_cfg, train_cfg, data.vocab, meta)
    save_checkpoint(out, ckpt)
    return ckpt


def checkpoint_on_beauty(checkpoint: Path, threads: int | None, field: str, expected: str):
    """A checkpoint this script trained and Beauty prepared as it was, for the scripts that re-score one.

    ``field`` of the model config must equal ``expected`` (e.g. model = pcrec, head = cpr).
    """
    if threads:
        torch.set_num_threads(threads)
    if not BEAUTY.exists():
        raise SystemExit(f"skipped: {BEAUTY} not found (the shared data sets are not beside this checkout)")
    ckpt = load_checkpoint(checkpoint)
    received = getattr(ckpt.model.cfg, field)
    if received != expected:
        raise SystemExit(f"{checkpoint} has {field} {received}; expected {expected}")
    return ckpt, prepare_data(import_interactions(BEAUTY, "s3rec"))


def _print_table(model: str, head: str, plain: dict, excluded: dict, wall: float, training: dict) -> None:
    ndcg_pub, hr_pub = PUBLISHED[model]
    print(f"\nAmazon Beauty, {model} with the {head} head: {training['epochs']} epochs (best {training['best_epoch']}), "
          f"wall {wall / 60:.1f} min")
    print(f"{'':28s}{'ndcg@10':>10s}{'hr@10':>10s}")
    print(f"{'published (PCRec Table 2)':28s}{ndcg_pub:10.4f}{hr_pub:10.4f}")
    print(f"{'seqrec, history excluded':28s}{excluded['ndcg@10']:10.4f}{excluded['hr@10']:10.4f}")
    print(f"{'seqrec, all items ranked':28s}{plain['ndcg@10']:10.4f}{plain['hr@10']:10.4f}")
    print(f"target ndcg@10 >= {TARGET[model]}: ratio to target {excluded['ndcg@10'] / TARGET[model]:.3f}")


def parse_value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


if __name__ == "__main__":
    main()
