"""The export bundle on disk: model.onnx (+ model.plan), vocab.parquet, manifest.json.

The manifest describes the graph (inputs and outputs with dtypes and dynamic axes, opset), where it
came from (the checkpoint's data fingerprint, model config, library versions), how it was made
(the export config) and the parity report. ``valid`` is true only when every parity case passed;
loaders refuse a bundle that is not valid.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from seqrec.config import ExportConfig, ModelConfig
from seqrec.data import Vocabulary
from seqrec.errors import ExportError, received_expected

MANIFEST_FILE = "manifest.json"
ONNX_FILE = "model.onnx"
PLAN_FILE = "model.plan"
VOCAB_FILE = "vocab.parquet"
WEIGHTS_FILE = f"{ONNX_FILE}.data"  # the graph's weights (ONNX external data), mapped by ONNX Runtime
BUNDLE_FILES = (MANIFEST_FILE, ONNX_FILE, WEIGHTS_FILE, PLAN_FILE, VOCAB_FILE)
BUNDLE_VERSION = 1


@dataclass
class Bundle:
    directory: Path
    manifest: dict[str, Any]
    vocab: Vocabulary

    @property
    def onnx_path(self) -> Path:
        return self.directory / ONNX_FILE

    @property
    def plan_path(self) -> Path:
        return self.directory / PLAN_FILE

    @property
    def inputs(self) -> tuple[str, ...]:
        return tuple(entry["name"] for entry in self.manifest["inputs"])

    @property
    def export_config(self) -> ExportConfig:
        return ExportConfig.from_dict(self.manifest["export"])

    @property
    def model_config(self) -> ModelConfig:
        return ModelConfig.from_dict(self.manifest["model"])


def graph_signature(inputs: tuple[str, ...], outputs: tuple[str, ...], top_k: int) -> dict[str, list[dict]]:
    return {"inputs": [{"name": name, "dtype": "int64", "shape": ["batch", "length"]} for name in inputs],
            "outputs": [{"name": "top_items", "dtype": "int64", "shape": ["batch", top_k]},
                        {"name": "top_scores", "dtype": "float32", "shape": ["batch", top_k]}][: len(outputs)]}


def write_manifest(directory: Path, manifest: dict[str, Any]) -> Path:
    path = directory / MANIFEST_FILE
    path.write_text(json.dumps({"bundle_version": BUNDLE_VERSION, **manifest}, indent=2, default=str) + "\n")
    return path


def file_entry(directory: Path, name: str) -> dict[str, Any]:
    """The manifest's record of a bundle file, so a bundle copied without it, or cut short, is refused on load."""
    return {"file": name, "bytes": (directory / name).stat().st_size}


def weights_entry(directory: Path) -> dict[str, Any]:
    return file_entry(directory, WEIGHTS_FILE)


def _check_recorded(directory: Path, entry: dict[str, Any] | None, what: str) -> None:
    """ExportError when a file the manifest records (``what``: graph, weights) is missing or of another size, so
    a damaged copy is refused by every command before any work (under Ray the driver opens no session). Bundles
    written before a file was recorded record none: nothing to check."""
    if not entry:
        return
    path = directory / entry["file"]
    found = path.stat().st_size if path.is_file() else None
    if found != entry["bytes"]:
        received = "no such file" if found is None else f"{found:,} bytes"
        raise ExportError(received_expected(f"export bundle {what} {path}", received, f"{entry['bytes']:,} bytes, "
                                            f"as written by seqrec export (copy the whole bundle directory)"))


def load_bundle(directory: str | Path, require_valid: bool = True) -> Bundle:
    directory = Path(directory)
    missing = [name for name in (MANIFEST_FILE, ONNX_FILE, VOCAB_FILE) if not (directory / name).is_file()]
    if missing:
        raise ExportError(received_expected(f"export bundle {directory}", f"missing {missing}",
                                            f"{MANIFEST_FILE}, {ONNX_FILE} and {VOCAB_FILE} (from seqrec export)"))
    manifest = _read_manifest(directory / MANIFEST_FILE)
    if manifest.get("bundle_version", 0) > BUNDLE_VERSION:
        raise ExportError(received_expected(f"{directory / MANIFEST_FILE} bundle_version",
                                            manifest.get("bundle_version"), f"<= {BUNDLE_VERSION}"))
    _check_recorded(directory, manifest.get("graph"), "graph")
    _check_recorded(directory, manifest.get("weights"), "weights")
    if require_valid and not manifest.get("valid"):
        raise ExportError(received_expected(f"export bundle {directory}", "a bundle whose parity check failed",
                                            "a bundle with manifest valid: true (re-run seqrec export)"))
    return Bundle(directory, manifest, Vocabulary.load(directory / VOCAB_FILE))


REQUIRED_KEYS = ("inputs", "outputs", "export", "model", "window")  # what loading and scoring read


def _read_manifest(path: Path) -> dict[str, Any]:
    """The manifest as a dict holding ``REQUIRED_KEYS``; ExportError naming the file for a truncated, hand-edited
    or foreign one, instead of a JSON or key error deep in the scorer."""
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ExportError(received_expected(str(path), f"unreadable JSON ({err})",
                                            "the manifest seqrec export wrote (export the bundle again)")) from None
    missing = [key for key in REQUIRED_KEYS if key not in manifest] if isinstance(manifest, dict) else REQUIRED_KEYS
    if missing:
        raise ExportError(received_expected(str(path), f"a manifest without {', '.join(missing)}",
                                            "the manifest seqrec export wrote (export the bundle again)"))
    return manifest
