"""Memory of a bundle whose weights are a file of their own, against the graph and weights in one protobuf.

    python benchmarks/bundle_memory.py --items 2000000 --dim 128 --processes 2 --threads 1

One checkpoint with random weights (SASRec, softmax head, d ``--dim``, L 50; memory does not depend on
the weights) is exported twice, each export in its own process: as ``seqrec export`` writes it now (the
graph in ``model.onnx``, its weights in ``model.onnx.data``, which ONNX Runtime maps) and, the baseline,
with graph and weights in one protobuf (the exporter's default below 2 GB, which seqrec wrote until
this change). Each export reports its peak private memory (RssAnon, sampled every 10 ms).

Then each bundle is scored by ``--processes`` processes at once, as the actors of ``seqrec score
--engine ray`` or several jobs on one machine would: each opens an ``OnnxRuntimeRunner`` and scores
``--repeats`` batches of ``--batch`` random histories; when all have scored, each reads its PSS
(proportional set size: shared pages split among the processes that map them, so the sum is what the
processes hold together) and its private memory, and reports the peak of its private memory (loading a
protobuf holds the weights twice for a while). Prints the sums and the seconds per batch of both
forms, the ratios, and checks that both return the same items.

Writes benchmarks/out/bundle_memory.json. Not a test.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from catalog_block import random_histories, write_random_checkpoint  # this directory: the same random model and users

ROOT = Path(__file__).resolve().parents[1]
FORMS = ("one protobuf", "weights file")  # the baseline first


def memory_mb(fields: tuple[str, ...], path: str = "/proc/self/status") -> dict[str, float]:
    found = {}
    for line in open(path):
        name, _, value = line.partition(":")
        if name in fields:
            found[name] = int(value.split()[0]) / 1024
    return found


class PeakAnon:
    """The peak of this process's private memory while the block runs."""

    def __enter__(self):
        self.peak, self.running = 0.0, True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self) -> None:
        while self.running:
            self.peak = max(self.peak, memory_mb(("RssAnon",))["RssAnon"])
            time.sleep(0.01)

    def __exit__(self, *exc):
        self.running = False
        self.thread.join()


def export_child(args) -> None:
    """Export ``--ckpt`` to ``--child`` in the form ``--form``; print one JSON line."""
    from torch.onnx._internal.exporter._onnx_program import ONNXProgram

    import seqrec.exporter.api
    from seqrec.config import ExportConfig
    from seqrec.exporter import export_checkpoint

    if args.form == FORMS[0]:  # the baseline: what the exporter writes by default below 2 GB
        save = ONNXProgram.save
        ONNXProgram.save = lambda self, path, **kwargs: save(self, path)
        seqrec.exporter.api.weights_entry = lambda directory: {}  # no weights file to record
    started = time.perf_counter()
    with PeakAnon() as peak:
        bundle = export_checkpoint(args.ckpt, args.child, ExportConfig(top_k=10, validation_users=20),
                                   echo=lambda line: None)
    print(json.dumps({"seconds": time.perf_counter() - started, "peak_anon_mb": peak.peak,
                      "valid": bundle.manifest["valid"],
                      "files": sorted(path.name for path in Path(args.child).glob("model.onnx*"))}))


def score_child(args) -> None:
    """Score with the bundle ``--child``, wait for the others (``--ready``), then print one JSON line."""
    from seqrec.exporter import OnnxRuntimeRunner

    items = random_histories(args.items, args.batch, args.length)
    with PeakAnon() as peak, OnnxRuntimeRunner(Path(args.child) / "model.onnx", ("items",),
                                                threads=args.threads) as runner:
        top = runner.infer({"items": items})["top_items"]  # warm-up
        seconds = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            runner.infer({"items": items})
            seconds.append(time.perf_counter() - started)
        print("scored", flush=True)
        sys.stdin.readline()  # every process has scored: now the shared pages are shared
        held = {**memory_mb(("Pss",), "/proc/self/smaps_rollup"), **memory_mb(("RssAnon", "RssFile"))}
        print(json.dumps({"batch_seconds": float(np.median(seconds)), "pss_mb": held["Pss"],
                          "anon_mb": held["RssAnon"], "file_mb": held["RssFile"], "peak_anon_mb": peak.peak,
                          "top_items": top.tolist()}),
              flush=True)
        sys.stdin.readline()  # every process has measured: a process gone early would leave its share to the others


def child_command(args, *extra: str) -> list[str]:
    command = [sys.executable, __file__, "--items", str(args.items), "--batch", str(args.batch), "--length",
               str(args.length), "--repeats", str(args.repeats), *extra]
    return command + (["--threads", str(args.threads)] if args.threads else [])


def export(ckpt: Path, bundle: Path, form: str, args) -> dict:
    done = subprocess.run(child_command(args, "--child", str(bundle), "--ckpt", str(ckpt), "--form", form,
                                        "--export"), capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def score_together(bundle: Path, args) -> list[dict]:
    """``--processes`` scoring processes on one bundle, measured while all of them hold it."""
    children = [subprocess.Popen(child_command(args, "--child", str(bundle)), stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, text=True) for _ in range(args.processes)]
    for process in children:
        if process.stdout.readline().strip() != "scored":
            raise RuntimeError(f"a scoring process of {bundle} failed")
    results = []
    for process in children:
        process.stdin.write("go\n")
        process.stdin.flush()
    for process in children:
        results.append(json.loads(process.stdout.readline()))
    for process in children:
        process.communicate("exit\n")
        if process.returncode:
            raise RuntimeError(f"a scoring process of {bundle} failed")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=2_000_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--length", type=int, default=50)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--work", type=Path, default=None, help="checkpoint and bundles [default: beside --out]")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "bundle_memory.json")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--ckpt", help=argparse.SUPPRESS)
    parser.add_argument("--form", help=argparse.SUPPRESS)
    parser.add_argument("--export", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return export_child(args) if args.export else score_child(args)
    work = args.work or args.out.parent / "bundle_memory_work"
    shutil.rmtree(work, ignore_errors=True)
    ckpt = write_random_checkpoint(work / "ckpt", "sasrec", "softmax", args.items, args.dim, args.length)
    report = {"settings": {k: v for k, v in vars(args).items() if k in ("items", "dim", "length", "batch", "repeats",
                                                                        "processes", "threads")}, "forms": {}}
    for form in FORMS:
        bundle = work / form.replace(" ", "_")
        report["forms"][form] = {"export": export(ckpt, bundle, form, args), "scoring": score_together(bundle, args)}
    summarise(report, args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


def summarise(report: dict, args) -> None:
    expected = [sorted(row) for row in report["forms"][FORMS[0]]["scoring"][0]["top_items"]]
    print(f"SASRec softmax, {args.items:,} items, d {args.dim}: table {(args.items + 1) * args.dim * 4 / 2**20:,.0f} MB; "
          f"{args.processes} scoring processes, batch {args.batch}")
    print(f"{'bundle':14s} {'export peak MB':>15s} {'scoring PSS MB':>15s} {'private MB':>11s} {'peak private':>13s} "
          f"{'s/batch':>8s} same items")
    for form, measured in report["forms"].items():
        scoring = measured["scoring"]
        measured["summary"] = {
            "export_peak_anon_mb": measured["export"]["peak_anon_mb"],
            "scoring_pss_mb": sum(run["pss_mb"] for run in scoring),
            "scoring_anon_mb": sum(run["anon_mb"] for run in scoring),
            "scoring_peak_anon_mb": sum(run["peak_anon_mb"] for run in scoring),
            "batch_seconds": float(np.median([run["batch_seconds"] for run in scoring])),
            "same_items": all([sorted(row) for row in run["top_items"]] == expected for run in scoring)}
        row = measured["summary"]
        print(f"{form:14s} {row['export_peak_anon_mb']:15,.0f} {row['scoring_pss_mb']:15,.0f} "
              f"{row['scoring_anon_mb']:11,.0f} {row['scoring_peak_anon_mb']:13,.0f} {row['batch_seconds']:8.3f} "
              f"{row['same_items']}")
    base, new = (report["forms"][form]["summary"] for form in FORMS)
    keys = ("export_peak_anon_mb", "scoring_pss_mb", "scoring_peak_anon_mb", "batch_seconds")
    ratios = {key: new[key] / base[key] for key in keys}
    report["ratios"] = ratios
    print(f"weights file / one protobuf: export peak x{ratios['export_peak_anon_mb']:.2f}, scoring memory "
          f"x{ratios['scoring_pss_mb']:.2f} (peaks x{ratios['scoring_peak_anon_mb']:.2f}), time per batch "
          f"x{ratios['batch_seconds']:.2f}")


if __name__ == "__main__":
    main()
