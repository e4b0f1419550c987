"""``seqrec demo``: the main job end to end on built-in synthetic data, in a couple of minutes."""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from seqrec.batchinfer import score
from seqrec.config import ExportConfig, ScoreConfig, resolve_configs
from seqrec.exporter import export_checkpoint
from seqrec.data import SynthConfig, generate_interactions, interaction_stats, write_interactions
from seqrec.batchinfer.ledger import LEDGER_FILE, STAGING_DIR
from seqrec.batchinfer.outputs import REJECTS_DIR, REJECTS_FILE, TEMP_SUFFIX
from seqrec.batchinfer.summary import SUMMARY_FILE
from seqrec.directories import checked_output, foreign_entries, named_entries, unusable_path
from seqrec.errors import ConfigError, received_expected
from seqrec.exporter.bundle import BUNDLE_FILES, MANIFEST_FILE
from seqrec.interrupts import interrupts_deferred
from seqrec.training import evaluate_checkpoint, train
from seqrec.training.evaluation import ranges_to_indices
from seqrec.training.checkpoint import checked_checkpoint_output
from seqrec.training.loop import prepare_data
from seqrec.training.metrics import ranking_metrics


@dataclass
class DemoConfig:
    out: str = "demo"
    users: int = 3000
    items: int = 500
    repeat_prob: float = 0.2
    model: str = "sasrec"
    head: str = "cpr"
    epochs: int = 15
    seed: int = 0


DEMO_MARKER = ".seqrec-demo"
DEMO_SUMMARY = "demo_summary.json"
DEMO_FILES = (DEMO_SUMMARY, "interactions.parquet")  # with DEMO_DIRECTORIES, all a demo writes beside its marker
DEMO_DIRECTORIES = ("checkpoint", "bundle", "bundle.failed", "scored")  # bundle.failed: a failed export over a bundle
SCORED_ENTRIES = (LEDGER_FILE, STAGING_DIR, SUMMARY_FILE, REJECTS_FILE, REJECTS_DIR, "interactions.parquet")  # the
# scoring job's files for its one input part (the demo's interactions.parquet)


def run_demo(cfg: DemoConfig, echo=print) -> dict[str, Any]:
    """Generate data, train, evaluate against a popularity baseline, export to ONNX with a parity
    check, score every user with the exported bundle; write everything to ``cfg.out``, where an earlier demo's
    outputs are removed first."""
    started = time.perf_counter()
    out = checked_output(cfg.out, "demo output", DEMO_MARKER)  # a demo's own directory is replaced part by part
    _check_replaceable(out)
    model_cfg, train_cfg = resolve_configs(cfg.model, cfg.head, {"epochs": cfg.epochs, "seed": cfg.seed,
                                                                  "patience": 3})  # bad options: before any write
    synth = SynthConfig(users=cfg.users, items=cfg.items, repeat_prob=cfg.repeat_prob, seed=cfg.seed)  # ... these too
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / DEMO_MARKER).write_text("written by seqrec demo: a later demo may replace this directory's contents\n")
    except OSError as err:  # under a file, no permission, a read-only file system
        raise unusable_path("--out", out, err) from err
    _remove_earlier_outputs(out)
    data_path = out / "interactions.parquet"
    table = generate_interactions(synth)
    write_interactions(table, data_path)
    echo(f"[1/5] data     {data_path}: {json.dumps(interaction_stats(table))}")
    echo(f"[2/5] train    {cfg.model} with the {cfg.head} head, {cfg.epochs} epochs max -> {out / 'checkpoint'}")
    train(data_path, out / "checkpoint", model_cfg, train_cfg)
    metrics = evaluate_checkpoint(out / "checkpoint", data_path, split="test")
    baseline = popularity_baseline(data_path)
    echo("[3/5] evaluate test split, full ranking over the catalog")
    echo(f"      {'':12s}{'ndcg@10':>10s}{'hr@10':>10s}{'mrr@10':>10s}")
    for name, row in ((cfg.model, metrics), ("popularity", baseline)):
        echo(f"      {name:12s}{row['ndcg@10']:10.4f}{row['hr@10']:10.4f}{row['mrr@10']:10.4f}")
    echo(f"[4/5] export   ONNX scoring graph with top-10 inside -> {out / 'bundle'}")
    bundle = export_checkpoint(out / "checkpoint", out / "bundle", ExportConfig(top_k=10), echo=lambda line: echo(f"      {line}"))
    echo(f"[5/5] score    every user's history with the bundle (onnxruntime) -> {out / 'scored'}")
    scored = score(ScoreConfig(model=str(out / "bundle"), input=str(data_path), output=str(out / "scored"),
                               progress=False), echo=lambda line: echo(f"      {line}"))
    summary = {"model": metrics, "popularity": baseline, "export": {"valid": bundle.manifest["valid"],
               "parity": bundle.manifest["parity"]}, "score": scored, "seconds": round(time.perf_counter() - started, 1)}
    (out / DEMO_SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
    echo(f"done in {summary['seconds']}s; summary in {out / DEMO_SUMMARY}")
    return summary


def _check_replaceable(out: Path) -> None:
    """ConfigError, before any work, where an earlier demo's checkpoint, bundle or scored output holds anything
    a demo does not write: each is replaced whole, so a user's file there would be deleted (or, in the bundle,
    would stop the demo at its export, after the data and checkpoint were rewritten)."""
    checked_checkpoint_output(out / "checkpoint")
    for bundle in ("bundle", "bundle.failed"):
        checked_output(out / bundle, "bundle", MANIFEST_FILE, own=BUNDLE_FILES)
    scored = out / "scored"
    if scored.is_dir():
        foreign = [name for name in foreign_entries(scored, SCORED_ENTRIES) if not name.endswith(TEMP_SUFFIX)]
        if foreign:
            raise ConfigError(received_expected(f"--out '{out}'", f"an earlier demo whose scored/ also holds "
                                                f"{named_entries(foreign)}, which the demo would delete",
                                                "a demo's own files only: move the others out"))
    elif scored.exists():
        raise ConfigError(received_expected(f"--out '{out}'", "an earlier demo whose scored is a file",
                                            "a demo's own scored/ directory"))


def _remove_earlier_outputs(out: Path) -> None:
    """Remove what an earlier demo wrote in ``out`` (``_check_replaceable`` found only a demo's files there) before
    this one writes anything: a rerun stopped half way then holds this run's outputs so far and no summary, where
    it held its new data beside the earlier run's checkpoint, bundle, scores and summary, which read as one run.
    (Building the demo beside ``out`` and renaming it into place, as training and export do, would keep the earlier
    demo whole, but the bundle's manifest and the scoring ledger record the absolute paths they were made from.)"""
    with interrupts_deferred():  # all of them or none
        for name in DEMO_FILES + DEMO_DIRECTORIES:  # the summary first
            path = out / name
            try:
                if name in DEMO_FILES or path.is_symlink():  # a link goes, never what it points to
                    path.unlink(missing_ok=True)
                elif path.exists():
                    shutil.rmtree(path)  # a directory holding only a demo's files: _check_replaceable said so
            except OSError as err:  # no permission; a directory where a demo writes a file
                raise unusable_path("--out", path, err) from err


def after_interrupt(out: str | Path) -> str:
    """What a demo stopped by Ctrl-C or SIGTERM leaves in ``out``, for the CLI's last line."""
    out = Path(out)
    if (out / DEMO_SUMMARY).is_file():
        return f"'{out}' holds one whole demo's outputs, described by its {DEMO_SUMMARY}"
    if not out.is_dir():
        return "nothing was written"
    return (f"'{out}' holds no {DEMO_SUMMARY}: what it holds is one run's outputs up to where it stopped (a demo "
            "removes an earlier demo's outputs before it writes any); run the demo again for all of them")


def popularity_baseline(data_path: str | Path, split: str = "test") -> dict[str, float]:
    """Rank every item by its training-interaction count: the floor any model must clear."""
    data = prepare_data(data_path)
    _, positions = ranges_to_indices(data.seqs.offsets[:-1], data.split.train_end)
    train_items = data.seqs.items[positions]
    counts = np.bincount(train_items, minlength=len(data.vocab) + 1).astype(np.float64)
    counts[0] = -np.inf
    examples = data.split.test if split == "test" else data.split.valid
    target_counts = counts[examples.targets]
    ranks = (counts[None, :] >= target_counts[:, None]).sum(1) - 1
    return ranking_metrics(ranks)
