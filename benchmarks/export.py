"""Export cost and ONNX Runtime CPU throughput against PyTorch eager, per model x head (issue 5).

For each registered model/head: a checkpoint with random weights (sizes below; throughput does not
depend on the weights) is exported with ``seqrec export`` (validation included in the export time),
then the same batches of left-padded histories are scored by the exported graph in ONNX Runtime
and by the same scoring graph in PyTorch eager (``SequentialRecommender.top_k``), taking turns,
best of ``--repeats``; users/s of each and the ratio are printed.

    python benchmarks/export.py --items 100000 --batch 256
    python benchmarks/export.py --models pcrec --heads cpr   # one pair

Writes benchmarks/out/export.json. Not a test.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from seqrec.config import ExportConfig, ModelConfig, TrainConfig, resolve_configs
from seqrec.data import Vocabulary
from seqrec.exporter import EXPORT_SPECS, OnnxRuntimeRunner, ScoringGraph, TorchRunner, export_checkpoint, spec_for
from seqrec.models import build_model
from seqrec.training.checkpoint import Checkpoint, load_checkpoint, save_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def write_checkpoint(directory: Path, model: str, head: str, items: int, length: int) -> ModelConfig:
    cfg, _ = resolve_configs(model, head, {"max_length": length})
    cfg = ModelConfig.from_dict({**cfg.to_dict(), "num_items": items})
    vocab = Vocabulary.from_items(np.arange(1, items + 1))
    save_checkpoint(directory, Checkpoint(build_model(cfg).eval(), cfg, TrainConfig(), vocab, {"data": {}}))
    return cfg


def histories(model: str, head: str, batch: int, length: int, items: int, seed: int,
              inputs: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The feed of a graph with ``inputs`` (a bundle's): left-padded random histories, and timestamps where
    the graph reads them (an HSTU / PCRec export drops them while its time bias is zero, as at init)."""
    sample = spec_for(model, head).sample_inputs(items, batch, length, seed)
    return {name: tensor.numpy() for name, tensor in sample.items() if name in inputs}


def throughput(runners: dict, feed: dict[str, np.ndarray], repeats: int) -> dict[str, float]:
    best = {name: float("inf") for name in runners}
    for runner in runners.values():
        runner.infer(feed)  # warm-up
    for _ in range(repeats):
        for name, runner in runners.items():
            started = time.perf_counter()
            runner.infer(feed)
            best[name] = min(best[name], time.perf_counter() - started)
    users = len(next(iter(feed.values())))
    return {name: users / seconds for name, seconds in best.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--length", type=int, default=50)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--models", nargs="+", default=None, help="only these models (default: every one)")
    parser.add_argument("--heads", nargs="+", default=None, help="only these heads (default: every one)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "export.json")
    args = parser.parse_args()
    pairs = [(model, head) for model, head in sorted(EXPORT_SPECS)
             if (args.models is None or model in args.models) and (args.heads is None or head in args.heads)]
    if not pairs:
        parser.error(f"no registered model/head among --models {args.models} --heads {args.heads}; "
                     f"registered: {', '.join('/'.join(pair) for pair in sorted(EXPORT_SPECS))}")
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    print(f"{'model/head':18s}{'export s':>10s}{'onnx MB':>9s}{'torch u/s':>11s}{'ort u/s':>10s}{'ort/torch':>11s}")
    for model, head in pairs:
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = Path(tmp) / "ckpt"
            cfg = write_checkpoint(ckpt, model, head, args.items, args.length)
            started = time.perf_counter()
            bundle = export_checkpoint(ckpt, Path(tmp) / "bundle", ExportConfig(top_k=args.top_k), echo=lambda s: None)
            seconds = time.perf_counter() - started
            size = sum(path.stat().st_size for path in bundle.directory.glob("model.onnx*")) / 2**20  # graph + weights
            graph = ScoringGraph(load_checkpoint(ckpt).model, args.top_k, False, args.length)
            feed = histories(model, head, args.batch, args.length, args.items, seed=1, inputs=bundle.inputs)
            inputs = tuple(feed)
            with TorchRunner(graph, inputs) as eager, OnnxRuntimeRunner(bundle.onnx_path, inputs,
                                                                        threads=args.threads) as ort_runner:
                rates = throughput({"torch": eager, "onnxruntime": ort_runner}, feed, args.repeats)
        rows.append({"model": model, "head": head, "export_seconds": round(seconds, 1), "onnx_mb": round(size, 2),
                     "users_per_s": rates, "ratio": rates["onnxruntime"] / rates["torch"]})
        print(f"{model + '/' + head:18s}{seconds:10.1f}{size:9.1f}{rates['torch']:11.0f}{rates['onnxruntime']:10.0f}"
              f"{rows[-1]['ratio']:11.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
