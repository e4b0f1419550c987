"""Can the CPR reranker help on Beauty when it learns from targets the encoder never trained on?

Session 20 found the cost of CPR:100+Mi on Beauty (history excluded) in its first reranker stage: trained on
the same prefixes as the encoder, it learns to sharpen rankings the encoder has memorised (NDCG@10 +6% on
those targets) and loses 1.8% on held-out users. This script refits that stage's facet alone on held-out
targets and scores it on targets held out from both:

- the checkpoint is a *selection* run of ``benchmarks/accuracy.py`` (no refit): its encoder never trained on
  the validation items;
- with everything else frozen, the first stage's facet f_R is fitted to the validation targets by the full
  softmax over the catalog with the user's history removed, as the evaluation ranks (80% of the users; the
  other 20% choose the epoch);
- the test items (held out from the encoder and from the facet) are ranked with the stage as trained, the
  stage off (the base order) and the refitted stage, history excluded.

    python benchmarks/cpr_holdout_reranker.py benchmarks/out/beauty_sasrec_cpr_stage2_sel_s0 --threads 1 \
        --transplant benchmarks/out/beauty_sasrec_cpr_stage2_fixed37_s0

Prints a table and writes benchmarks/out/cpr_holdout_reranker_<checkpoint>.json. Not a test.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from seqrec.data import pad_left
from seqrec.models.heads import mask_padding
from seqrec.training import evaluate
from seqrec.training.evaluation import mask_history
from seqrec.training.metrics import ranking_metrics, target_ranks

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from accuracy import checkpoint_on_beauty  # noqa: E402
from cpr_partitions import _without_rerankers  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path, help="a CPR selection checkpoint (no refit) of benchmarks/accuracy.py")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--patience", type=int, default=6)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=0.0, help="L2 pull of the facet towards its start")
    parser.add_argument("--start", choices=("trained", "identity"), default="trained",
                        help="the facet as the checkpoint trained it, or the identity on h (the base order)")
    parser.add_argument("--transplant", type=Path, default=None, metavar="REFIT",
                        help="also score the refitted facet inside REFIT, the refit checkpoint of the same recipe and "
                             "seed (trained on the validation items too), against REFIT's own stage and none")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out")
    args = parser.parse_args()
    ckpt, data = checkpoint_on_beauty(args.checkpoint, args.threads, "head", "cpr")
    if ckpt.train_config.refit:
        raise SystemExit(f"{args.checkpoint} is a refit: its encoder trained on the validation items")
    model, head = ckpt.model.eval(), ckpt.model.head
    torch.manual_seed(0)
    valid = cached_examples(model, data, data.split.valid)
    users = np.random.default_rng(0).permutation(len(valid["targets"]))
    fit_rows, pick_rows = users[: int(0.8 * len(users))], users[int(0.8 * len(users)):]
    trained_facet = copy.deepcopy(head.rerank_facets[0])
    start = trained_facet if args.start == "trained" else identity_like(trained_facet, model.cfg.dim)
    started = time.perf_counter()
    facet, curve = fit_facet(head, valid, fit_rows, pick_rows, copy.deepcopy(start), args)
    fit_seconds = time.perf_counter() - started
    rows = {"as trained": split_scores(model, data), "stage off": None, "refitted on held-out targets": None}
    with _without_rerankers(head):
        rows["stage off"] = split_scores(model, data)
    head.rerank_facets[0] = facet
    rows["refitted on held-out targets"] = split_scores(model, data)
    head.rerank_facets[0] = trained_facet
    if args.transplant is not None:
        rows.update(transplanted(args.transplant, args.threads, facet))
    held = {name: facet_ndcg(head, valid, pick_rows, f) for name, f in
            (("as trained", trained_facet), ("refitted", facet))}
    print(f"\nCPR first reranker stage refitted on {len(fit_rows):,} validation targets ({fit_seconds:.0f} s, "
          f"start {args.start}, best epoch {curve['best_epoch']}); NDCG@10, history excluded")
    print(f"{'':56s}{'test':>9s}{'test HR@10':>12s}")
    for name, row in rows.items():
        print(f"{name:56s}{row['ndcg@10']:9.4f}{row['hr@10']:12.4f}")
    print(f"validation users held from the fit: as trained {held['as trained']:.4f}, refitted {held['refitted']:.4f}")
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"checkpoint": str(args.checkpoint), "settings": {k: v for k, v in vars(args).items()
                                                              if k not in ("checkpoint", "out")},
              "test_exclude_history": rows, "held_validation_ndcg": held, "fit": curve,
              "fit_seconds": round(fit_seconds, 1)}
    name = f"cpr_holdout_reranker_{args.checkpoint.name}_{args.start}.json"
    (args.out / name).write_text(json.dumps(report, indent=2, default=str) + "\n")


@torch.no_grad()
def cached_examples(model, data, examples, batch_size: int = 512) -> dict:
    """The head input q (E, W) at each example's last slot, its target (E,) and history range, for a frozen model."""
    queries = []
    for lo in range(0, len(examples.targets), batch_size):
        starts, ends = examples.history_start[lo:lo + batch_size], examples.history_end[lo:lo + batch_size]
        items = torch.from_numpy(pad_left(data.seqs.items, np.maximum(starts, ends - model.cfg.max_length), ends,
                                          model.cfg.max_length))  # (B, L)
        queries.append(model.head.head_input(model.encode_layers(items))[:, -1])  # (B, W)
    return {"queries": torch.cat(queries), "targets": torch.from_numpy(examples.targets),
            "starts": examples.history_start, "ends": examples.history_end, "items": data.seqs.items}


def stage_logits(head, facet: nn.Module, cached: dict, rows: np.ndarray) -> torch.Tensor:
    """(B, N+1) logits of the base with its top-k replaced by ``facet``'s scores, the history removed: what the
    head ranks with the history excluded when it has one reranker stage (Beauty has no repeats, so the history
    partitions touch only removed items)."""
    query = cached["queries"][rows]  # (B, W)
    weight = head.item_embedding.weight.detach()  # (N+1, D)
    base = mask_padding(head.base_query(query) @ weight.T)  # (B, N+1)
    top = base.topk(head.variant.rerank[0], dim=1).indices  # (B, k)
    values = (facet(query).unsqueeze(1) * weight[top]).sum(-1)  # (B, k)
    logits = base.scatter(1, top, values)
    return mask_history(logits, cached["items"], cached["starts"][rows], cached["ends"][rows])


def fit_facet(head, cached: dict, fit_rows: np.ndarray, pick_rows: np.ndarray, facet: nn.Module, args
              ) -> tuple[nn.Module, dict]:
    """Adam on the facet alone, full softmax on held-out targets; the epoch with the best NDCG@10 on ``pick_rows``."""
    start = [p.detach().clone() for p in facet.parameters()]
    optimizer = torch.optim.Adam(facet.parameters(), lr=args.lr)
    rng = np.random.default_rng(1)
    best, best_state, best_epoch, history = facet_ndcg(head, cached, pick_rows, facet), copy.deepcopy(facet), 0, []
    for epoch in range(1, args.epochs + 1):
        losses = []
        for batch in np.array_split(rng.permutation(fit_rows), max(1, len(fit_rows) // 256)):
            logits = stage_logits(head, facet, cached, batch)
            loss = F.cross_entropy(logits, cached["targets"][batch])
            if args.weight_decay:
                loss = loss + args.weight_decay * sum(((p - p0) ** 2).sum() for p, p0 in zip(facet.parameters(), start))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        score = facet_ndcg(head, cached, pick_rows, facet)
        history.append({"epoch": epoch, "loss": float(np.mean(losses)), "pick_ndcg@10": score})
        print(f"epoch {epoch:3d}  loss {np.mean(losses):.4f}  held ndcg@10 {score:.4f}"
              + ("  *" if score > best else ""), flush=True)
        if score > best:
            best, best_state, best_epoch = score, copy.deepcopy(facet), epoch
        elif epoch - best_epoch >= args.patience:
            break
    return best_state, {"best_epoch": best_epoch, "best_pick_ndcg@10": best, "epochs": history}


@torch.no_grad()
def facet_ndcg(head, cached: dict, rows: np.ndarray, facet: nn.Module) -> float:
    ranks = [target_ranks(stage_logits(head, facet, cached, batch), cached["targets"][batch]).numpy()
             for batch in np.array_split(rows, max(1, len(rows) // 512))]
    return ranking_metrics(np.concatenate(ranks))["ndcg@10"]


def transplanted(refit: Path, threads: int | None, facet: nn.Module) -> dict:
    """Test scores of the refit checkpoint ``refit`` as trained, without its stage, and with ``facet`` (fitted on
    another encoder's states) as its stage: whether a facet fitted on held-out targets carries over to the refit."""
    ckpt, data = checkpoint_on_beauty(refit, threads, "head", "cpr")
    model, head = ckpt.model.eval(), ckpt.model.head
    rows = {"refit: as trained": split_scores(model, data)}
    with _without_rerankers(head):
        rows["refit: stage off"] = split_scores(model, data)
    head.rerank_facets[0] = facet
    rows["refit: facet fitted on the selection's held-out targets"] = split_scores(model, data)
    return rows


def split_scores(model, data) -> dict:
    result = evaluate(model, data.seqs, data.split.test, exclude_history=True)
    return {"ndcg@10": result["ndcg@10"], "hr@10": result["hr@10"]}


def identity_like(facet: nn.Linear, dim: int) -> nn.Linear:
    """A copy of ``facet`` reset to the identity on h (the base order): the head's own start."""
    fresh = copy.deepcopy(facet)
    with torch.no_grad():
        fresh.weight.zero_()
        fresh.weight[:, :dim].copy_(torch.eye(dim))
        fresh.bias.zero_()
    return fresh


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
