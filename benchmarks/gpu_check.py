"""Everything a GPU can show, in one run, for sessions that get a GPU machine (issues 3, 5, 7).

1. The GPU-only tests: Triton kernels compiled for CUDA against their references, and TensorRT
   engines for every model x head against PyTorch (``pytest tests/kernels tests/exporter``).
2. cpr_scatter: Triton against the PyTorch reference on CUDA at M=4096, S=50, N=100k and 1M
   (forward, forward+backward), with the ratio.
3. TensorRT: for every registered model x head, build an engine (fp32 and fp16), check parity, and
   time users/s against ONNX Runtime (CUDA provider when present, else CPU) and PyTorch eager.
4. The seqrec::CprScatter plugin (issue 5): export sasrec/cpr with ``--pointer-op custom`` to
   TensorRT (registers the AOT Triton plugin, builds, checks parity with PyTorch), compare the
   engine with ONNX Runtime's custom op, run the plan again in a child process that never imports
   the plugin code (the PTX travels in the plan), and time both.

    python benchmarks/gpu_check.py            # prints the card, every figure and the verdicts
    python benchmarks/gpu_check.py --custom-op-only   # check 4 alone

Writes benchmarks/out/gpu_check.json. Exits with a one-line message on a machine without CUDA.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def card() -> dict:
    props = torch.cuda.get_device_properties(0)
    return {"name": props.name, "memory_gib": round(props.total_memory / 2**30, 1),
            "capability": [props.major, props.minor]}


def run_gpu_tests() -> dict:
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "tests/kernels", "tests/exporter"], cwd=ROOT,
                            capture_output=True, text=True)
    tail = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else result.stderr[-500:]
    print(f"[tests] {tail}")
    return {"returncode": result.returncode, "summary": tail, "seconds": round(time.perf_counter() - started, 1)}


def time_cuda(fn, repeats: int = 20) -> float:
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / repeats  # ms


def cpr_scatter_timings() -> list[dict]:
    from seqrec.kernels import cpr_scatter

    rows = []
    for n in (100_000, 1_000_000):
        logits = torch.randn(4096, n + 1, device="cuda")
        ids = torch.randint(0, n + 1, (4096, 50), device="cuda")
        values = torch.randn(4096, 50, device="cuda")
        ms = {kernel: time_cuda(lambda k=kernel: cpr_scatter(logits, ids, values, kernel=k))
              for kernel in ("pytorch", "triton")}
        rows.append({"n": n, "ms": ms, "speedup": ms["pytorch"] / ms["triton"]})
        print(f"[cpr_scatter] N={n:>9,d}  reference {ms['pytorch']:.3f} ms  triton {ms['triton']:.3f} ms  "
              f"x{rows[-1]['speedup']:.2f}")
    return rows


def tensorrt_rows(items: int, batch: int) -> list[dict]:
    from export import histories, write_checkpoint  # benchmarks/export.py

    from seqrec.config import ExportConfig
    from seqrec.exporter import EXPORT_SPECS, OnnxRuntimeRunner, export_checkpoint
    from seqrec.exporter.tensorrt import TensorRTRunner

    rows = []
    for model, head in sorted(EXPORT_SPECS):
        for precision in ("fp32", "fp16"):
            with tempfile.TemporaryDirectory() as tmp:
                write_checkpoint(Path(tmp) / "ckpt", model, head, items, 50)
                started = time.perf_counter()
                bundle = export_checkpoint(Path(tmp) / "ckpt", Path(tmp) / "b", ExportConfig(format="tensorrt",
                                           precision=precision), echo=lambda s: None)
                seconds = time.perf_counter() - started
                feed = histories(model, head, batch, 50, items, seed=2, inputs=bundle.inputs)
                with TensorRTRunner(bundle.plan_path, tuple(feed)) as trt, OnnxRuntimeRunner(
                        bundle.onnx_path, tuple(feed), providers=_ort_providers()) as ort_runner:
                    rates = {name: _users_per_s(runner, feed, batch)
                             for name, runner in (("tensorrt", trt), ("onnxruntime", ort_runner))}
            rows.append({"model": model, "head": head, "precision": precision, "valid": bundle.manifest["valid"],
                         "build_seconds": round(seconds, 1), "users_per_s": rates})
            print(f"[tensorrt] {model}/{head} {precision}: valid {bundle.manifest['valid']}, build {seconds:.0f}s, "
                  f"TRT {rates['tensorrt']:.0f} users/s, ORT {rates['onnxruntime']:.0f} users/s")
    return rows


def custom_pointer_op_check(items: int, batch: int) -> dict:
    """The CprScatter plugin's engine against ONNX Runtime's custom op, in this process and a fresh one."""
    from export import histories, write_checkpoint  # benchmarks/export.py

    from seqrec.config import ExportConfig
    from seqrec.exporter import OnnxRuntimeRunner, export_checkpoint
    from seqrec.exporter.tensorrt import TensorRTRunner

    with tempfile.TemporaryDirectory() as tmp:
        write_checkpoint(Path(tmp) / "ckpt", "sasrec", "cpr", items, 50)
        bundle = export_checkpoint(Path(tmp) / "ckpt", Path(tmp) / "b", ExportConfig(format="tensorrt",
                                   pointer_op="custom"), echo=lambda s: None)
        feed = histories("sasrec", "cpr", batch, 50, items, seed=3, inputs=bundle.inputs)
        with TensorRTRunner(bundle.plan_path, tuple(feed)) as trt, OnnxRuntimeRunner(
                bundle.onnx_path, tuple(feed), custom_ops=True) as ort_runner:
            outputs = {"tensorrt": trt.infer(feed), "onnxruntime": ort_runner.infer(feed)}
            rates = {name: _users_per_s(runner, feed, batch) for name, runner in (("tensorrt", trt),
                                                                                    ("onnxruntime", ort_runner))}
        fresh = _infer_in_child(bundle.plan_path, feed, Path(tmp))
    row = {"valid": bundle.manifest["valid"], "users_per_s": rates,
           **_agreement(outputs["tensorrt"], outputs["onnxruntime"], "vs_onnxruntime"),
           **_agreement(fresh, outputs["tensorrt"], "child_vs_parent")}
    print(f"[custom op] valid {row['valid']}, top-K agreement with ORT {row['vs_onnxruntime_top_k_agreement']:.4f}, "
          f"max |diff| {row['vs_onnxruntime_max_abs_diff']:.2e}, child process same: "
          f"{row['child_vs_parent_top_k_agreement'] == 1.0}, TRT {rates['tensorrt']:.0f} users/s, "
          f"ORT {rates['onnxruntime']:.0f} users/s")
    return row


def _users_per_s(runner, feed: dict, batch: int, repeats: int = 10) -> float:
    runner.infer(feed)
    started = time.perf_counter()
    for _ in range(repeats):
        runner.infer(feed)
    return repeats * batch / (time.perf_counter() - started)


def _agreement(mine: dict, theirs: dict, prefix: str) -> dict:
    same = (np.sort(mine["top_items"], 1) == np.sort(theirs["top_items"], 1)).mean()
    diff = float(np.abs(np.sort(mine["top_scores"], 1) - np.sort(theirs["top_scores"], 1)).max())
    return {f"{prefix}_top_k_agreement": float(same), f"{prefix}_max_abs_diff": diff}


def _infer_in_child(plan_path: Path, feed: dict, tmp: Path) -> dict:
    """Run the plan in a new interpreter that never imports the plugin module (nothing registers it)."""
    np.savez(tmp / "feed.npz", **feed)
    code = ("import sys, numpy as np; from seqrec.exporter.tensorrt import TensorRTRunner; "
            f"feed = dict(np.load({str(tmp / 'feed.npz')!r})); "
            f"runner = TensorRTRunner({str(plan_path)!r}, tuple(feed)); runner.activate(); "
            f"np.savez({str(tmp / 'out.npz')!r}, **runner.infer(feed)); "
            "assert 'seqrec.exporter.trt_plugin' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
    return dict(np.load(tmp / "out.npz"))


def _ort_providers() -> list[str]:
    import onnxruntime

    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in onnxruntime.get_available_providers()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--skip-tests", action="store_true")
    parser.add_argument("--custom-op-only", action="store_true", help="only check 4, the CprScatter plugin")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "gpu_check.json")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device on this machine; run it where the device tool lends a GPU")
    report = {"card": card(), "torch": torch.__version__}
    print(f"[card] {report['card']}")
    if not args.custom_op_only:
        if not args.skip_tests:
            report["tests"] = run_gpu_tests()
        report["cpr_scatter"] = cpr_scatter_timings()
        report["tensorrt"] = tensorrt_rows(args.items, args.batch)
    report["tensorrt_custom_pointer_op"] = custom_pointer_op_check(args.items, args.batch)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
