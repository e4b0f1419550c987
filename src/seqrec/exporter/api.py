"""``seqrec export``: checkpoint -> validated scoring bundle."""

from __future__ import annotations

import copy
import dataclasses
import time
from pathlib import Path
from typing import Callable

import torch

from seqrec.config import ExportConfig
from seqrec.directories import checked_output, replace_directory, staging_directory
from seqrec.errors import ConfigError, ExportMismatchError, received_expected
from seqrec.exporter.bundle import (BUNDLE_FILES, MANIFEST_FILE, ONNX_FILE, PLAN_FILE, VOCAB_FILE, Bundle,
                                    file_entry, graph_signature, weights_entry, write_manifest)
from seqrec.exporter.custom_ops import DOMAIN, OP_TYPE
from seqrec.exporter.graph import ScoringGraph
from seqrec.exporter.onnx_export import export_onnx
from seqrec.exporter.runners import OnnxRuntimeRunner
from seqrec.exporter.specs import ExportSpec, spec_of_model
from seqrec.exporter.validate import VALIDATION_USERS, check_parity, edge_cases, parity_users, require_parity
from seqrec.training.checkpoint import Checkpoint, library_versions, load_checkpoint

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
TOLERANCE_SCALE = {"fp32": 1.0, "fp16": 50.0, "bf16": 400.0}  # scores of low-precision graphs vs fp32


def export_checkpoint(checkpoint: str | Path | Checkpoint, out: str | Path, cfg: ExportConfig,
                      echo: Callable[[str], None] = print) -> Bundle:
    """Export, validate against PyTorch, and write the bundle ``out`` (valid only if parity held).

    ``checkpoint`` is a checkpoint directory (recorded in the manifest as ``source.checkpoint``, so
    ``seqrec profile`` can rebuild the graph at other sizes) or a loaded ``Checkpoint`` (``seqrec
    profile`` exports models with random weights this way, without writing them to disk).
    ``out`` must be absent, empty, or a bundle (which a valid export replaces atomically); it may not
    be, hold or lie inside the checkpoint. When parity fails the bundle is written marked invalid, to
    ``out`` if it held no bundle, else to ``OUT.failed`` beside it, leaving the earlier bundle in
    service; then ExportMismatchError says where. ``OUT.failed`` is held to the rule of ``out`` before
    any work, so a failed export never deletes anything there but an earlier failed bundle.
    """
    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
    source = None if isinstance(checkpoint, Checkpoint) else str(Path(checkpoint).resolve())
    window = _window(ckpt, cfg)
    _check_pointer_op(ckpt, cfg)
    if cfg.format == "tensorrt":
        from seqrec.exporter.tensorrt import check_topk_sizes, require_tensorrt

        check_topk_sizes(ckpt.model, cfg.top_k, window, cfg.catalog_block, cfg.exclude_seen)
        require_tensorrt()  # fail in one line before any work when there is no GPU
    out = checked_output(out, "bundle", MANIFEST_FILE, protect=source, own=BUNDLE_FILES)
    checked_output(_failed_path(out), "bundle", MANIFEST_FILE, option="OUT.failed (where a failed export over "
                   "a bundle goes)", protect=source)
    with staging_directory(out) as staging:  # removed unless the export ends in a rename
        return _export_into(staging, out, ckpt, cfg, window, source, echo)


def _export_into(staging: Path, out: Path, ckpt: Checkpoint, cfg: ExportConfig, window: int, source: str | None,
                 echo: Callable[[str], None]) -> Bundle:
    spec = _scaled(spec_of_model(ckpt.model), cfg.precision)
    graph = ScoringGraph(_in_precision(ckpt.model, cfg.precision), cfg.top_k, cfg.exclude_seen, window, cfg.pointer_op,
                         cfg.catalog_block)
    reference = ScoringGraph(ckpt.model, cfg.top_k, cfg.exclude_seen, window)
    started = time.perf_counter()
    export_onnx(graph, spec, spec.sample_inputs(ckpt.model_config.num_items, 3, window, cfg.seed),
                staging / ONNX_FILE, cfg.opset)
    export_seconds = time.perf_counter() - started
    users, edge_users = _parity_users(ckpt, cfg, window, echo)
    cfg = dataclasses.replace(cfg, validation_users=users)  # the manifest records the users checked
    cases = edge_cases(spec, ckpt.model_config.num_items, window, users, cfg.seed, edge_users)
    reports = []
    if cfg.precision != "bf16":  # ONNX Runtime has no bf16 kernels for these graphs; TensorRT checks them
        with OnnxRuntimeRunner(staging / ONNX_FILE, spec.inputs, custom_ops=cfg.pointer_op == "custom") as runner:
            reports.append(check_parity(runner, reference, spec, cases))
    if cfg.format == "tensorrt":
        from seqrec.exporter.tensorrt import build_and_check_engine

        reports.append(build_and_check_engine(staging / ONNX_FILE, staging / PLAN_FILE, spec, cfg, window, cases,
                                              reference))
    for report in reports:
        for line in report.lines():
            echo(line)
    ckpt.vocab.save(staging / VOCAB_FILE)
    manifest = _manifest(ckpt, cfg, spec, window, reports, export_seconds, source, _custom_ops(staging / ONNX_FILE),
                         file_entry(staging, ONNX_FILE), weights_entry(staging))
    write_manifest(staging, manifest)
    if not manifest["valid"] and (out / MANIFEST_FILE).is_file():  # keep the bundle in service
        failed = _failed_path(out)
        replace_directory(staging, failed)
        _require_parity(reports, failed, kept=out)
    replace_directory(staging, out)
    _require_parity(reports, out, kept=None)
    return Bundle(out, manifest, ckpt.vocab)


def _parity_users(ckpt: Checkpoint, cfg: ExportConfig, window: int, echo: Callable[[str], None]) -> tuple[int, int]:
    """(random users, users per edge case) of the parity check: ``--validation-users`` if given, else the default,
    which a long attention window lowers (with a line saying so, since the check is then less thorough)."""
    users, edge_users = parity_users(ckpt.model_config, window)
    if cfg.validation_users is not None:
        return cfg.validation_users, edge_users
    if users < VALIDATION_USERS:
        echo(f"parity check on {users} random users and {edge_users} per edge case: each is scored at the full "
             f"window of {window:,} on both sides, so the default {VALIDATION_USERS} would take {VALIDATION_USERS // users}x "
             "as long (--validation-users sets any number)")
    return users, edge_users


def _failed_path(out: Path) -> Path:
    """Where an invalid bundle goes when ``out`` holds a bundle to keep in service."""
    return out.with_name(f"{out.name}.failed")


def _require_parity(reports: list, written: Path, kept: Path | None) -> None:
    """ExportMismatchError of the first failed report, saying where the invalid bundle went."""
    for report in reports:
        try:
            require_parity(report)
        except ExportMismatchError as err:
            where = f"the bundle, marked invalid, is in '{written}'"
            where += f"; '{kept}' keeps the bundle it held" if kept is not None else ""
            raise ExportMismatchError(f"{err} ({where})") from err


def _check_pointer_op(ckpt: Checkpoint, cfg: ExportConfig) -> None:
    """``--pointer-op custom`` only changes a graph that scatters history scores: a CPR head with a context
    partition, without --exclude-seen (which drops the history items instead)."""
    variant = getattr(ckpt.model.head, "variant", None)
    if cfg.pointer_op == "custom" and (variant is None or not variant.context or cfg.exclude_seen):
        received = (f"head {ckpt.model_config.head!r}, variant {ckpt.model_config.cpr_variant!r}, "
                    f"exclude_seen {cfg.exclude_seen}")
        raise ConfigError(received_expected("--pointer-op custom", received, "a CPR head with history partitions "
                                            "(C, CP or CPR:..) and no --exclude-seen: no other graph has the "
                                            "history scatter the custom node replaces"))


def _window(ckpt: Checkpoint, cfg: ExportConfig) -> int:
    trained = ckpt.model_config.max_length
    window = cfg.max_length or trained
    if window > trained:
        raise ConfigError(received_expected("export max_length", window, f"<= the model's max_length {trained}"))
    if cfg.precision == "bf16" and cfg.format != "tensorrt":
        raise ConfigError(received_expected("export precision", "bf16 with --format onnx",
                                            "fp32 or fp16 (ONNX Runtime has no bf16 kernels for this graph), "
                                            "or bf16 with --format tensorrt on a GPU"))
    if cfg.top_k > ckpt.model_config.num_items:
        raise ConfigError(received_expected("top_k", cfg.top_k, f"<= the catalog size {ckpt.model_config.num_items}"))
    return window


def _in_precision(model: torch.nn.Module, precision: str) -> torch.nn.Module:
    return model if precision == "fp32" else copy.deepcopy(model).to(DTYPES[precision])


def _scaled(spec: ExportSpec, precision: str) -> ExportSpec:
    scale = TOLERANCE_SCALE[precision]
    return dataclasses.replace(spec, score_atol=spec.score_atol * scale, score_rtol=spec.score_rtol * scale)


def _manifest(ckpt: Checkpoint, cfg: ExportConfig, spec: ExportSpec, window: int, reports: list,
              export_seconds: float, checkpoint: str | None, custom_ops: list[dict], graph: dict,
              weights: dict) -> dict:
    return {
        "valid": all(report.ok for report in reports),
        **graph_signature(spec.inputs, spec.outputs, cfg.top_k),
        "dynamic_axes": spec.dynamic_axes(),
        "opset": cfg.opset,
        "custom_ops": custom_ops,
        "graph": graph,
        "weights": weights,
        "window": window,
        "export": cfg.to_dict(),
        "model": ckpt.model_config.to_dict(),
        "source": {"checkpoint": checkpoint, "fingerprint": ckpt.meta.get("data", {}).get("fingerprint"),
                   "metrics": ckpt.meta.get("metrics")},
        "parity": [report.to_dict() for report in reports],
        "export_seconds": round(export_seconds, 2),
        "versions": {**library_versions(), **_onnx_versions()},
    }


CUSTOM_OP_RUNNERS = {  # (domain, op type) -> what runs the node; for the manifest, read before loading the graph
    (DOMAIN, OP_TYPE): {
        "onnxruntime": ("not plain onnxruntime, which refuses the graph ('seqrec:CprScatter(-1) is not a registered "
                        "function/op'): a Python kernel (PyTorch) served by onnxruntime-extensions (pip install "
                        "onnxruntime-extensions), registered with SessionOptions.register_custom_ops_library after "
                        "the node's domain is renamed to 'ai.onnx.contrib' in memory; "
                        "seqrec.exporter.custom_ops.register_onnxruntime_custom_ops and model_for_onnxruntime do "
                        "both, and seqrec score --backend onnxruntime does it for this bundle"),
        "tensorrt": ("the TensorRT plugin seqrec::CprScatter of seqrec.exporter.trt_plugin (a Triton kernel "
                     "compiled ahead of time to PTX, found by the parser through the node's plugin_namespace and "
                     "aot attributes), registered by seqrec's engine build; not yet verified on a GPU "
                     "(benchmarks/gpu_check.py)"),
    },
}
STANDARD_DOMAINS = ("", "ai.onnx")


def _custom_ops(onnx_path: Path) -> list[dict]:
    """The graph's nodes outside the standard ONNX domain, one entry per (domain, op type) with what runs it: a
    serving team reads from the manifest, before loading, whether plain ONNX Runtime can run the bundle ([]: yes)."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    versions = {entry.domain: entry.version for entry in model.opset_import}
    local = {(function.domain, function.name) for function in model.functions}  # calls of the graph's own functions
    nodes = [node for graph in [model.graph, *model.functions] for node in graph.node
             if node.domain not in STANDARD_DOMAINS and (node.domain, node.op_type) not in local]
    found = sorted({(node.domain, node.op_type) for node in nodes})
    unknown = {"onnxruntime": "no runner known to seqrec", "tensorrt": "no plugin known to seqrec"}
    return [{"domain": domain, "op_type": op_type, "version": versions.get(domain),
             "nodes": sum(1 for node in nodes if (node.domain, node.op_type) == (domain, op_type)),
             "runs_on": CUSTOM_OP_RUNNERS.get((domain, op_type), unknown)} for domain, op_type in found]


def _onnx_versions() -> dict[str, str]:
    import onnx
    import onnxruntime

    return {"onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}
