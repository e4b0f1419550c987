"""``seqrec score``: the one library function the command calls."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import sys
import time
from contextlib import ExitStack, closing
from pathlib import Path
from typing import Callable

from tqdm.auto import tqdm

from seqrec.batchinfer.core import BatchScorer
from seqrec.batchinfer.inputs import LIST_FORM, InputPlan, item_id_type, plan_input
from seqrec.batchinfer.ledger import LEDGER_FILE, Ledger
from seqrec.batchinfer.model import DEFAULT_SCORE_BATCH, ScoringModel, open_model
from seqrec.batchinfer.outputs import REJECTS_DIR, REJECTS_FILE, merge_rejects
from seqrec.batchinfer.summary import SUMMARY_FILE, build_summary, summary_line, write_summary
from seqrec.batchinfer.writer import PartWriter, output_writes
from seqrec.config import ScoreConfig
from seqrec.errors import DataError, received_expected


def score(cfg: ScoreConfig, echo: Callable[[str], None] = print) -> dict:
    """Score ``cfg.input`` into ``cfg.output``; returns the summary (also in ``_summary.json``).

    Everything that can be checked before scoring is checked first: the model against the
    backend and options, every input part's schema, the model opened (the local engine's session;
    under Ray, in one actor placed as the pool's are), the output directory (or its ledger with ``--resume``). Parts
    already in the ledger are skipped; the others are scored by the engine.
    """
    started = time.perf_counter()
    model = open_model(cfg)
    cfg = _with_batch_size(cfg, model)
    plan = plan_input(cfg.input, cfg.output, "timestamps" in model.inputs)
    if not any(part.rows for part in plan.parts):  # scored as asked, but a nightly job fed nothing should say so
        _stderr_line(f"warning: the input '{cfg.input}' has no rows (in {len(plan.parts)} "
                     f"part{'s' if len(plan.parts) != 1 else ''}): nothing to score")
    out = Path(cfg.output)
    identity = job_identity(model, plan, cfg.layout)
    with ExitStack() as stack:
        ledger = None
        if (out / LEDGER_FILE).is_file():  # a job's own output: its ledger decides first (a finished job, or one
            # without --resume, needs no session, no Ray cluster); nothing is created that was not there
            ledger = stack.enter_context(closing(Ledger.open(out, identity, cfg.resume)))
            if ledger.finished:
                echo(f"{out}: the job is already complete (its ledger says finished); nothing to do")
                return _finished_summary(out)
        scorer = _open_engine(stack, cfg, model)
        if ledger is None:  # a new job's ledger is written once the engine is open: a wrong --address, or a model
            # that does not load, leaves nothing behind, so the rerun after its fix needs no --resume, no cleanup
            ledger = stack.enter_context(closing(Ledger.open(out, identity, cfg.resume)))
        return _run(cfg, model, plan, ledger, scorer, started, echo)


def _finished_summary(out: Path) -> dict:
    """A finished job's ``_summary.json``; DataError where it is gone (a copy that skipped ``_*`` files, a
    monitor that took it), rather than a traceback: its figures are not in the ledger alone."""
    try:
        return json.loads((out / SUMMARY_FILE).read_text())
    except (OSError, ValueError) as err:
        raise DataError(received_expected(f"'{out / SUMMARY_FILE}'", f"an unreadable file ({err})",
                                          "the summary of the finished job in --output (restore it, or score into "
                                          "a new --output)")) from err


def _open_engine(stack: ExitStack, cfg: ScoreConfig, model: ScoringModel) -> BatchScorer | None:
    """The local engine's session, opened once (None under Ray, whose actors open their own: tried first in one
    actor placed as theirs are), held open by ``stack``."""
    if cfg.engine == "ray":
        from seqrec.batchinfer.ray_engine import check_actors_open, ray_cluster

        stack.enter_context(ray_cluster(cfg))
        check_actors_open(cfg)
        return None
    return stack.enter_context(BatchScorer(model, cfg.batch_size))


def _with_batch_size(cfg: ScoreConfig, model: ScoringModel) -> ScoreConfig:
    """``cfg`` with its batch size: the one asked, or the model's default, said on stderr where a long window
    lowers it (its users' attention scores would otherwise run the machine out of memory, with no message)."""
    if cfg.batch_size is not None:
        return cfg
    batch_size = model.default_batch_size()
    if batch_size < DEFAULT_SCORE_BATCH:
        _stderr_line(f"batch size {batch_size} (the default {DEFAULT_SCORE_BATCH} at this model's window of "
                     f"{model.window:,} would hold {DEFAULT_SCORE_BATCH * model.window ** 2 * 4 / 2**30:,.1f} GiB of "
                     "attention scores per head and layer); --batch-size sets it")
    return dataclasses.replace(cfg, batch_size=batch_size)


def _run(cfg: ScoreConfig, model: ScoringModel, plan: InputPlan, ledger: Ledger, scorer: BatchScorer | None,
         started: float, echo: Callable[[str], None]) -> dict:
    """The parts the ledger lacks, scored by the engine (``scorer``: the local one's, None under Ray); then
    rejects, summary and the ledger's end."""
    out = Path(cfg.output)
    done = ledger.done
    todo = [part for part in plan.parts if part.name not in done]
    if done:
        echo(f"resuming: {len(done)} of {len(plan.parts)} parts already scored, {len(todo)} to go")
    if ledger.rewritten:
        echo(f"input parts rewritten since the job began, not yet scored: {', '.join(ledger.rewritten)} "
             "(scored from their new contents)")
    bar = tqdm(total=sum(p.rows for p in todo) if plan.form == LIST_FORM else None, unit="user", desc="score",
               disable=None if cfg.progress else True, smoothing=0.1)
    log = _stderr_line if cfg.progress and bar.disable else None  # no terminal for the bar: a line per part
    writer = PartWriter(out, plan, cfg.layout, model.vocab.items.type, ledger, bar, log)
    try:
        if todo and scorer is not None:
            from seqrec.batchinfer.local import run_local

            run_local(scorer, plan, todo, writer)
        elif todo:
            from seqrec.batchinfer.ray_engine import run_ray

            run_ray(cfg, plan, todo, writer)
    except BaseException:
        writer.abort()  # a part the Ray engine left open (the local engine aborts its own): no .inprogress stays
        raise
    finally:
        bar.close()
    with output_writes(out / REJECTS_FILE, writer.kept):
        merge_rejects(out, [part.name for part in plan.parts], plan.user_type)
    run = {**model.describe(), "engine": cfg.engine, "layout": cfg.layout, "form": plan.form, "input": cfg.input,
           "output": str(out), "resumed_parts": len(done)}
    summary = build_summary(ledger.entries, run, writer.users, time.perf_counter() - started)
    summary["warnings"] = _warnings(summary, plan, model)
    with output_writes(out / SUMMARY_FILE, writer.kept):
        write_summary(out, summary)
    with output_writes(ledger.path, writer.kept):
        ledger.finish()
    shutil.rmtree(out / REJECTS_DIR, ignore_errors=True)
    echo(summary_line(summary))
    return summary


def _warnings(summary: dict, plan: InputPlan, model: ScoringModel) -> list[str]:
    """What a monitor should look at in a job that ran to its end (``_summary.json``'s ``warnings``):
    ``empty_input`` (no rows, said on stderr before the job began) and ``no_user_scored`` (users met, every one
    rejected; said here on stderr, naming the input's item id type against the vocabulary's, the usual cause:
    a model trained on other ids). The exit status stays 0 for both: the job did what it was asked and its
    output is complete and final (a rerun gives the same rejects, so a scheduler retrying a failed job gains
    nothing), and a part of only new items, all unknown to the model, is a day's data, not a fault."""
    if summary["input_rows"] == 0:
        return ["empty_input"]
    if summary["users_scored"] or not summary["input_users"]:
        return []
    reasons = ", ".join(f"{reason} {count:,}" for reason, count in summary["rejected_by_reason"].items())
    _stderr_line(f"warning: no user of the input '{summary['input']}' was scored: all {summary['input_users']:,} "
                 f"rejected ({reasons}){_id_types(summary, plan, model)}")
    return ["no_user_scored"]


def _id_types(summary: dict, plan: InputPlan, model: ScoringModel) -> str:
    """The input's item id type against the vocabulary's, where the rejects are unknown or mistyped ids (null
    ids or empty histories are the rows' fault, not the ids')."""
    if not {"all_unknown", "wrong_type"} & set(summary["rejected_by_reason"]):
        return ""
    vocab = model.vocab.items
    return (f"; its item ids are {item_id_type(plan)}, the model's vocabulary holds {vocab.type} ids (such as "
            f"{', '.join(repr(item) for item in vocab.slice(0, 3).to_pylist())}): is the input meant for this model?")


def _stderr_line(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def job_identity(model: ScoringModel, plan: InputPlan, layout: str) -> dict:
    """What the output depends on; a resumed run must match it exactly (JSON types: lists, not tuples)."""
    return {**model.describe(), "model_fingerprint": model_fingerprint(model), "layout": layout, "form": plan.form,
            "parts": [[part.name, part.path, part.rows, part.fingerprint] for part in plan.parts]}


def model_fingerprint(model: ScoringModel) -> str:
    """Changes when the bundle is re-exported or the checkpoint retrained in place."""
    names = ("manifest.json", "model.onnx", "model.onnx.data") if model.kind == "bundle" else (
        "config.json", "weights.safetensors")
    digest = hashlib.sha256()
    for name in names:
        if not (model.source / name).exists():  # a bundle exported before its weights had their own file
            continue
        stat = (model.source / name).stat()
        digest.update(f"{name}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    digest.update((model.source / names[0]).read_bytes())
    return digest.hexdigest()[:16]
