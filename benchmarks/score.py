"""Batch scoring throughput and memory (issue 6): ``seqrec score`` per backend against a naive baseline.

    python benchmarks/score.py --users 1000000 --items 100000 --threads 2

1. Streams a synthetic histories set to ``--data`` (list form, parts of ``--part-users`` users,
   histories of 1..``--length`` items over ``--items`` items with Zipf popularity), unless it is
   already there with the same settings.
2. Builds a SASRec-CPR checkpoint (d 64, the default softmax-CPR variant, random weights: speed
   does not depend on them) and exports it to an ONNX bundle with the top-``--top-k`` inside.
3. Throughput, in one run: on each of the first ``--compare-parts`` parts, in turn (the order
   rotating part after part, so a busy spell on this shared machine does not fall on one side):
   - ``baseline``: what a RecBole-style script does: read the whole input, map ids through a dict
     and pad every user to the full length in Python, PyTorch eager ``model(items)`` -> the full
     (B, N) logits -> ``torch.topk``, rows collected in Python lists, one Parquet write at the end;
   - ``seqrec score`` with each backend of ``--backends``: ``torch`` (the checkpoint),
     ``onnxruntime`` (the bundle), ``tensorrt`` (where a GPU exists).
   Each is its own process (peak RSS is per process); users/s = users / summed wall seconds.
4. Scale: one ``seqrec score`` job over the whole input with ``--scale-backend``: users/s and
   peak RSS for every user at once (the memory bound), unless ``--scale-backend none``.

Writes benchmarks/out/score.json. Not a test.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BACKENDS = ("torch", "torch-bf16", "onnxruntime", "tensorrt")  # torch-bf16: seqrec score --precision bf16


def generate(directory: Path, users: int, items: int, length: int, part_users: int, seed: int) -> None:
    """Write the histories part after part (never the whole set in memory)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    settings = {"users": users, "items": items, "length": length, "part_users": part_users, "seed": seed}
    marker = directory / "_settings.json"
    if marker.is_file() and json.loads(marker.read_text()) == settings:
        return
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    popularity = 1.0 / np.arange(1, items + 1) ** 0.8
    popularity /= popularity.sum()
    for part, first in enumerate(range(0, users, part_users)):
        count = min(part_users, users - first)
        lengths = rng.integers(1, length + 1, count)
        values = rng.choice(items, size=int(lengths.sum()), p=popularity) + 1  # raw ids 1..items
        offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))
        table = pa.table({"user_id": np.arange(first, first + count, dtype=np.int64),
                          "history": pa.ListArray.from_arrays(offsets, pa.array(values))})
        pq.write_table(table, directory / f"part-{part:05d}.parquet", row_group_size=20_000)
    marker.write_text(json.dumps(settings))


def build_model(directory: Path, items: int, length: int, top_k: int, dim: int = 64,
                export: bool = True) -> tuple[Path, Path]:
    from seqrec.config import ExportConfig, ModelConfig, TrainConfig, resolve_configs
    from seqrec.data import Vocabulary
    from seqrec.exporter import export_checkpoint
    from seqrec.models import build_model as build
    from seqrec.training.checkpoint import Checkpoint, save_checkpoint

    ckpt, bundle = directory / "ckpt", directory / "bundle"
    if (bundle / "manifest.json").is_file() or (not export and (ckpt / "config.json").is_file()):
        return ckpt, bundle
    cfg, _ = resolve_configs("sasrec", "cpr", {"max_length": length, "dim": dim})
    cfg = ModelConfig.from_dict({**cfg.to_dict(), "num_items": items})
    vocab = Vocabulary.from_items(np.arange(1, items + 1))
    save_checkpoint(ckpt, Checkpoint(build(cfg).eval(), cfg, TrainConfig(), vocab, {"data": {}}))
    if export:
        export_checkpoint(ckpt, bundle, ExportConfig(top_k=top_k, validation_users=50), echo=lambda line: None)
    return ckpt, bundle


def run_seqrec(name: str, model: Path, data: str, out: Path, args) -> dict:
    from seqrec.batchinfer import score
    from seqrec.config import ScoreConfig

    shutil.rmtree(out, ignore_errors=True)
    backend = name.split("-")[0]
    cfg = ScoreConfig(model=str(model), input=data, output=str(out), backend=backend,
                      top_k=args.top_k if backend == "torch" else None, batch_size=args.batch_size,
                      threads=args.threads, precision="bf16" if name.endswith("bf16") else "fp32", progress=False)
    summary = score(cfg, echo=lambda line: print(line, file=sys.stderr))
    return {"users": summary["users_this_run"], "seconds": summary["wall_seconds"],
            "peak_rss_mb": summary["peak_rss_mb"]}


def run_baseline(ckpt_dir: Path, data: str, out: Path, args) -> dict:
    """The naive way (see the module docstring), timed from loading the model to the written file."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch

    from seqrec.training.checkpoint import load_checkpoint

    started = time.perf_counter()
    ckpt = load_checkpoint(ckpt_dir)
    model, length = ckpt.model.eval(), ckpt.model_config.max_length
    raw_ids = ckpt.vocab.items.to_pylist()
    token_to_id = {raw: index + 1 for index, raw in enumerate(raw_ids)}
    id_to_token = np.array([0] + raw_ids)
    table = pq.read_table(data)  # the whole input in memory
    users, histories = table.column("user_id").to_pylist(), table.column("history").to_pylist()
    rows = []
    for first in range(0, len(users), args.batch_size):
        batch = []
        for history in histories[first:first + args.batch_size]:  # a Python loop per user
            known = [token_to_id[raw] for raw in history if raw in token_to_id][-length:]
            batch.append([0] * (length - len(known)) + known)
        with torch.no_grad():
            logits = model(torch.tensor(batch))  # (B, N + 1): the full catalog
            top = torch.topk(logits, args.top_k, dim=1)
        rows.extend(zip(users[first:first + args.batch_size], id_to_token[top.indices.numpy()].tolist(),
                        top.values.tolist()))
    out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"user_id": [row[0] for row in rows], "items": [row[1] for row in rows],
                             "scores": pa.array([row[2] for row in rows], pa.list_(pa.float32()))}), out)
    return {"users": len(rows), "seconds": round(time.perf_counter() - started, 3),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def child(args) -> None:
    """One measurement in this process (``--child NAME --child-input PATH``); prints one JSON line."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    work = Path(args.work)
    out = work / "scored" / args.child / Path(args.child_input).stem  # kept: the agreement is measured on it
    if args.child == "baseline":
        result = run_baseline(work / "ckpt", args.child_input, out / "baseline.parquet", args)
    else:
        model = work / ("ckpt" if args.child.startswith("torch") else "bundle")
        result = run_seqrec(args.child, model, args.child_input, out, args)
    print(json.dumps(result))


def agreement(work: Path, names: list[str], part: Path) -> dict[str, float]:
    """Mean share of each user's top-K that a run has in common with PyTorch fp32 (the baseline), on ``part``."""
    import pyarrow.parquet as pq

    def top_k(name: str) -> list[list]:
        directory = work / "scored" / name / part.stem
        table = pq.read_table(next(p for p in sorted(directory.glob("*.parquet")) if not p.name.startswith("_")))
        return table.sort_by("user_id").column("items").to_pylist()

    reference = top_k("baseline")
    return {name: round(float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(top_k(name), reference)])), 4)
            for name in names}


def measure(name: str, data: str) -> dict:
    command = [sys.executable, __file__, *sys.argv[1:], "--child", name, "--child-input", data]
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"  {name:12s} {data}: {result['users']:,} users in {result['seconds']:.1f} s, "
          f"peak RSS {result['peak_rss_mb']:.0f} MB", flush=True)
    return result


def compare(names: list[str], parts: list[Path]) -> dict[str, dict]:
    """Every run on every part, the order rotating per part; totals per run."""
    totals = {name: {"users": 0, "seconds": 0.0, "peak_rss_mb": 0.0} for name in names}
    for turn, part in enumerate(parts):
        for name in names[turn % len(names):] + names[:turn % len(names)]:
            result = measure(name, str(part))
            row = totals[name]
            row["users"] += result["users"]
            row["seconds"] += result["seconds"]
            row["peak_rss_mb"] = max(row["peak_rss_mb"], result["peak_rss_mb"])
    for row in totals.values():
        row["users_per_second"] = round(row["users"] / row["seconds"], 1)
    return totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--length", type=int, default=50)
    parser.add_argument("--part-users", type=int, default=100_000)
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads for every measurement")
    parser.add_argument("--backends", default="torch,torch-bf16,onnxruntime,tensorrt")
    parser.add_argument("--compare-parts", type=int, default=2, help="parts scored by every run, in turn")
    parser.add_argument("--scale-backend", default="onnxruntime", help="backend of the whole-input job, or none")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", default=str(ROOT / "benchmarks" / "out" / "score_work"))
    parser.add_argument("--data", default=None, help="histories directory [default: WORK/histories]")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "score.json")
    parser.add_argument("--child", choices=("baseline",) + BACKENDS, help=argparse.SUPPRESS)
    parser.add_argument("--child-input", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.data = args.data or str(Path(args.work) / "histories")
    if args.child:
        return child(args)
    started = time.perf_counter()
    generate(Path(args.data), args.users, args.items, args.length, args.part_users, args.seed)
    print(f"data: {args.users:,} users in {time.perf_counter() - started:.0f} s -> {args.data}", flush=True)
    build_model(Path(args.work), args.items, args.length, args.top_k)
    backends = [b for b in args.backends.split(",") if b != "tensorrt" or _has_gpu()]
    if "tensorrt" in args.backends and "tensorrt" not in backends:
        print("tensorrt: skipped, no NVIDIA GPU on this machine", flush=True)
    parts = sorted(Path(args.data).glob("part-*.parquet"))[: args.compare_parts]
    results = compare(["baseline"] + backends, parts)
    for name, share in agreement(Path(args.work), backends, parts[0]).items():
        results[name]["top_k_agreement"] = share
    scale = measure(args.scale_backend, args.data) if args.scale_backend != "none" else None
    if scale:
        scale["users_per_second"] = round(scale["users"] / scale["seconds"], 1)
    print(f"{'run':26s}{'users':>11s}{'seconds':>10s}{'users/s':>10s}{'peak RSS MB':>13s}{'x baseline':>12s}"
          f"{'top-K agreement':>17s}")
    base = results["baseline"]["users_per_second"]
    rows = list(results.items()) + ([(f"{args.scale_backend}, whole input", scale)] if scale else [])
    for name, row in rows:
        print(f"{name:26s}{row['users']:>11,d}{row['seconds']:>10.1f}{row['users_per_second']:>10.0f}"
              f"{row['peak_rss_mb']:>13.0f}{row['users_per_second'] / base:>12.2f}{row.get('top_k_agreement', ''):>17}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"settings": {k: v for k, v in vars(args).items() if k != "out"},
                                    "compare": results, "scale": scale}, indent=2, default=str) + "\n")


def _has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    main()
