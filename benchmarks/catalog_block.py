"""ONNX Runtime scoring by catalog block against the whole catalog at once: time and memory per batch.

    python benchmarks/catalog_block.py --items 1000000 --blocks 131072 262144 --threads 2

One checkpoint with random weights (``--model`` / ``--head``, d ``--dim``, L 50; speed and memory do not
depend on the weights) is exported once per block size (``seqrec export --catalog-block``), and once with a
block larger than the catalog: the whole (B, N + 1) scores at once, the baseline. Each bundle is then timed
in its own process (peak RSS is per process), in turn, ``--rounds`` times: session start (``OnnxRuntimeRunner``,
as ``seqrec score`` opens it), the median of ``--repeats`` batches of ``--batch`` left-padded random
histories, and the process's peak RSS. Prints each block's seconds per batch and peak memory against the
baseline's as ratios, and checks that every bundle returns the baseline's items.

Writes benchmarks/out/catalog_block.json. Not a test.
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


def write_random_checkpoint(directory: Path, model: str, head: str, items: int, dim: int, length: int) -> Path:
    """A checkpoint with random weights (speed and memory do not depend on them), items 1..``items``."""
    from seqrec.config import ModelConfig, TrainConfig, resolve_configs
    from seqrec.data import Vocabulary
    from seqrec.models import build_model
    from seqrec.training.checkpoint import Checkpoint, save_checkpoint

    cfg, _ = resolve_configs(model, head, {"max_length": length, "dim": dim})
    cfg = ModelConfig.from_dict({**cfg.to_dict(), "num_items": items})
    vocab = Vocabulary.from_items(np.arange(1, items + 1))
    return save_checkpoint(directory, Checkpoint(build_model(cfg).eval(), cfg, TrainConfig(), vocab, {"data": {}}))


def random_histories(items: int, batch: int, length: int) -> np.ndarray:
    """(batch, length) int64 histories of random items, left padded to lengths 1..length, seed 0."""
    rng = np.random.default_rng(0)
    histories = rng.integers(1, items + 1, (batch, length))
    lengths = rng.integers(1, length + 1, batch)
    histories[np.arange(length) < (length - lengths)[:, None]] = 0
    return histories


def build(work: Path, args) -> dict[str, Path]:
    """Checkpoint and one bundle per block; the baseline's block is one more than the catalog's rows."""
    from seqrec.config import ExportConfig
    from seqrec.exporter import export_checkpoint

    shutil.rmtree(work, ignore_errors=True)
    write_random_checkpoint(work / "ckpt", args.model, args.head, args.items, args.dim, args.length)
    bundles = {}
    for block in [args.items + 2, *args.blocks]:
        name = "at once" if block > args.items + 1 else f"block {block:,}"
        bundles[name] = work / f"bundle_{block}"
        export_checkpoint(work / "ckpt", bundles[name], ExportConfig(top_k=args.top_k, catalog_block=block,
                                                                     validation_users=20), echo=lambda line: None)
    return bundles


def child(args) -> None:
    """Time one bundle in this process; print one JSON line."""
    from seqrec.exporter import OnnxRuntimeRunner

    items = random_histories(args.items, args.batch, args.length)
    started = time.perf_counter()
    with OnnxRuntimeRunner(Path(args.child) / "model.onnx", ("items",), threads=args.threads) as runner:
        start_seconds = time.perf_counter() - started
        top = runner.infer({"items": items})["top_items"]  # warm-up
        seconds = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            runner.infer({"items": items})
            seconds.append(time.perf_counter() - started)
    print(json.dumps({"start_seconds": start_seconds, "batch_seconds": float(np.median(seconds)),
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "top_items": top.tolist()}))


def measure(bundle: Path, args) -> dict:
    command = [sys.executable, __file__, "--child", str(bundle), "--items", str(args.items), "--batch",
               str(args.batch), "--length", str(args.length), "--repeats", str(args.repeats)]
    if args.threads:
        command += ["--threads", str(args.threads)]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--blocks", nargs="+", type=int, default=[131_072, 262_144])
    parser.add_argument("--model", default="sasrec")
    parser.add_argument("--head", default="cpr")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--length", type=int, default=50)
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--work", type=Path, default=None, help="checkpoint and bundles [default: beside --out]")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "catalog_block.json")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    bundles = build(args.work or args.out.parent / "catalog_block_work", args)
    runs: dict[str, list[dict]] = {name: [] for name in bundles}
    for _ in range(args.rounds):  # in turn, so a busy spell on a shared machine does not fall on one side
        for name, bundle in bundles.items():
            runs[name].append(measure(bundle, args))
    report = summarise(runs, args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


def summarise(runs: dict[str, list[dict]], args) -> dict:
    base = runs["at once"]
    base_seconds = min(run["batch_seconds"] for run in base)
    base_rss = max(run["peak_rss_mb"] for run in base)
    expected = [sorted(row) for row in base[0]["top_items"]]
    print(f"{args.model}-{args.head}, {args.items:,} items, d {args.dim}, batch {args.batch}, "
          f"best of {args.rounds} rounds")
    print(f"{'graph':16s} {'start s':>8s} {'s/batch':>8s} {'users/s':>8s} {'peak MB':>8s} {'x time':>7s} "
          f"{'x memory':>8s} same items")
    report = {"settings": {k: v for k, v in vars(args).items() if k not in ("work", "out", "child")}, "graphs": {}}
    for name, measured in runs.items():
        seconds = min(run["batch_seconds"] for run in measured)
        rss = max(run["peak_rss_mb"] for run in measured)
        start = min(run["start_seconds"] for run in measured)
        same = all([sorted(row) for row in run["top_items"]] == expected for run in measured)
        print(f"{name:16s} {start:8.1f} {seconds:8.3f} {args.batch / seconds:8.0f} {rss:8.0f} "
              f"{seconds / base_seconds:7.2f} {rss / base_rss:8.2f} {same}")
        report["graphs"][name] = {"start_seconds": start, "batch_seconds": seconds, "peak_rss_mb": rss,
                                  "time_ratio": seconds / base_seconds, "memory_ratio": rss / base_rss,
                                  "same_items": same}
    return report


if __name__ == "__main__":
    main()
