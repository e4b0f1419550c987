"""Checkpoint directories: config.json, weights.safetensors, vocab.parquet, meta.json.

Nothing here unpickles: the model is rebuilt from the JSON config and filled from safetensors,
so loading a checkpoint never executes code from it.
"""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import safetensors.torch

from seqrec.config import SCHEMA_VERSION, ModelConfig, TrainConfig
from seqrec.data import Vocabulary
from seqrec.errors import CheckpointError, received_expected
from seqrec.models import SequentialRecommender, build_model

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.safetensors"
VOCAB_FILE = "vocab.parquet"
META_FILE = "meta.json"


@dataclass
class Checkpoint:
    model: SequentialRecommender
    model_config: ModelConfig
    train_config: TrainConfig
    vocab: Vocabulary
    meta: dict[str, Any] = field(default_factory=dict)


def save_checkpoint(directory: str | Path, ckpt: Checkpoint) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = {"schema_version": SCHEMA_VERSION, "model": ckpt.model_config.to_dict(),
              "train": ckpt.train_config.to_dict()}
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    safetensors.torch.save_model(ckpt.model, str(directory / WEIGHTS_FILE))
    ckpt.vocab.save(directory / VOCAB_FILE)
    meta = {**ckpt.meta, "versions": library_versions()}
    (directory / META_FILE).write_text(json.dumps(meta, indent=2, default=str) + "\n")
    return directory


def load_checkpoint(directory: str | Path, device: str = "cpu") -> Checkpoint:
    directory = Path(directory)
    _require_files(directory)
    config = _read_json(directory / CONFIG_FILE)
    version = config.get("schema_version")
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise CheckpointError(received_expected(f"{directory / CONFIG_FILE} schema_version", version,
                                                f"an integer <= {SCHEMA_VERSION}"))
    model_config = ModelConfig.from_dict(config["model"])
    _refuse_changed_architecture(directory, version, model_config)
    model = build_model(model_config, initialise=False)  # every weight is loaded next
    missing, unexpected = safetensors.torch.load_model(model, str(directory / WEIGHTS_FILE), strict=False,
                                                       device=device)
    if missing or unexpected:
        raise CheckpointError(received_expected(f"{directory / WEIGHTS_FILE} tensors",
                                                f"missing {missing}, unexpected {unexpected}",
                                                "exactly the model's parameters"))
    return Checkpoint(model.to(device).eval(), model_config, TrainConfig.from_dict(config["train"]),
                      Vocabulary.load(directory / VOCAB_FILE), _read_json(directory / META_FILE))


def library_versions() -> dict[str, str]:
    import numpy
    import pyarrow
    import torch

    import seqrec

    return {"seqrec": seqrec.__version__, "torch": torch.__version__, "numpy": numpy.__version__,
            "pyarrow": pyarrow.__version__, "python": platform.python_version()}


def _refuse_changed_architecture(directory: Path, version: int, model_config: ModelConfig) -> None:
    """Schema 1 HSTU and PCRec divided Q K^T by sqrt(d): their weights would now compute other scores."""
    if version < 2 and model_config.model in ("hstu", "pcrec"):
        raise CheckpointError(received_expected(
            f"{directory / CONFIG_FILE} schema_version", f"{version} for a {model_config.model} model",
            "2 or later: since schema 2 HSTU no longer divides Q K^T by sqrt(d), so retrain this model"))


def _require_files(directory: Path) -> None:
    names = (CONFIG_FILE, WEIGHTS_FILE, VOCAB_FILE, META_FILE)
    missing = [name for name in names if not (directory / name).is_file()]
    if missing:
        raise CheckpointError(received_expected(f"checkpoint directory {directory}", f"missing {missing}",
                                                f"the files {', '.join(names)}"))


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise CheckpointError(received_expected(str(path), f"invalid JSON ({error})", "a JSON object")) from None
