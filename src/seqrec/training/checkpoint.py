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

from seqrec.config import SCHEMA_VERSION, ModelConfig, TrainConfig, _check_device_name, _check_device_present
from seqrec.data import Vocabulary
from seqrec.directories import checked_output, replace_directory, staging_directory
from seqrec.errors import CheckpointError, ConfigError, received_expected
from seqrec.models import SequentialRecommender, build_model

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.safetensors"
VOCAB_FILE = "vocab.parquet"
META_FILE = "meta.json"
CHECKPOINT_FILES = (CONFIG_FILE, WEIGHTS_FILE, VOCAB_FILE, META_FILE)  # all a checkpoint holds


@dataclass
class Checkpoint:
    model: SequentialRecommender
    model_config: ModelConfig
    train_config: TrainConfig
    vocab: Vocabulary
    meta: dict[str, Any] = field(default_factory=dict)


def checked_checkpoint_output(directory: str | Path, protect: str | None = None) -> Path:
    """``directory`` as a path training may replace (absent, empty, or a checkpoint, not holding ``protect``, the
    training data); ConfigError otherwise, before any training, so a bad ``--out`` costs nothing and nothing else
    there is ever deleted."""
    directory = checked_output(directory, "checkpoint", WEIGHTS_FILE, protect=protect,  # config.json: too common
                               own=CHECKPOINT_FILES)
    if directory.parent.exists() and not directory.parent.is_dir():
        raise ConfigError(received_expected(f"--out '{directory}'", f"a path under the file '{directory.parent}'",
                                            "a directory this user can create and write"))
    holder = next((parent for parent in directory.parents if (parent / WEIGHTS_FILE).is_file()), None)
    if holder is not None:  # retraining that checkpoint (replaced whole) would then be refused, or delete this one
        raise ConfigError(received_expected(f"--out '{directory}'", f"a path inside the checkpoint '{holder}'",
                                            "a checkpoint directory apart from any other"))
    return directory


def save_checkpoint(directory: str | Path, ckpt: Checkpoint) -> Path:
    """Write the checkpoint beside ``directory``, then rename it into place: a killed or failed save
    leaves the previous checkpoint as it was."""
    directory = checked_checkpoint_output(directory)
    with staging_directory(directory) as staging:  # removed unless the save ends in the rename
        config = {"schema_version": SCHEMA_VERSION, "model": ckpt.model_config.to_dict(),
                  "train": ckpt.train_config.to_dict()}
        (staging / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        safetensors.torch.save_model(ckpt.model, str(staging / WEIGHTS_FILE))
        ckpt.vocab.save(staging / VOCAB_FILE)
        meta = {**ckpt.meta, "versions": library_versions()}
        (staging / META_FILE).write_text(json.dumps(meta, indent=2, default=str) + "\n")
        replace_directory(staging, directory)
    return directory


def load_checkpoint(directory: str | Path, device: str = "cpu") -> Checkpoint:
    """The checkpoint in ``directory``, its model on ``device`` in eval mode. ConfigError for a device this
    machine lacks (before anything is read), CheckpointError naming the file for a missing or malformed one."""
    _check_device_name(device)
    _check_device_present(device)
    directory = Path(directory)
    _require_files(directory)
    config = _read_json(directory / CONFIG_FILE)
    version = config.get("schema_version")
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise CheckpointError(received_expected(f"{directory / CONFIG_FILE} schema_version", version,
                                                f"an integer <= {SCHEMA_VERSION}"))
    model_config, train_config = _configs(directory, config)
    _refuse_changed_architecture(directory, version, model_config)
    model = build_model(model_config, initialise=False)  # every weight is loaded next
    try:
        missing, unexpected = safetensors.torch.load_model(model, str(directory / WEIGHTS_FILE), strict=False,
                                                           device=device)
    except (safetensors.SafetensorError, RuntimeError, OSError) as err:  # truncated, or shapes of another model
        raise CheckpointError(received_expected(f"{directory / WEIGHTS_FILE}", f"weights that do not load "
                                                f"({str(err).splitlines()[0][:200]})",
                                                "the weights of the model config.json describes")) from err
    if missing or unexpected:
        raise CheckpointError(received_expected(f"{directory / WEIGHTS_FILE} tensors",
                                                f"missing {missing}, unexpected {unexpected}",
                                                "exactly the model's parameters"))
    return Checkpoint(model.to(device).eval(), model_config, train_config, _vocabulary(directory, model_config),
                      _read_json(directory / META_FILE))


def _vocabulary(directory: Path, model_config: ModelConfig) -> Vocabulary:
    """vocab.parquet, one raw id per item of the model; CheckpointError when it holds another number (a file copied
    from another checkpoint would map ids to the wrong items, or past the item table)."""
    vocab = Vocabulary.load(directory / VOCAB_FILE)
    if len(vocab) != model_config.num_items:
        raise CheckpointError(received_expected(f"{directory / VOCAB_FILE}", f"{len(vocab):,} items",
                                                f"{model_config.num_items:,}, the model's catalog (config.json)"))
    return vocab


def _configs(directory: Path, config: dict) -> tuple[ModelConfig, TrainConfig]:
    """The model and training configs of config.json; CheckpointError naming the file when malformed. A config
    without ``train_windows`` was written before that option, by runs that trained on each user's last window."""
    try:
        train = {"train_windows": "last", **config["train"]}  # written before the option: it trained on the last window
        return ModelConfig.from_dict(config["model"]), TrainConfig.from_dict(train)
    except (KeyError, TypeError, ValueError, ConfigError) as err:  # ConfigError: an unknown key or model name
        raise CheckpointError(received_expected(f"{directory / CONFIG_FILE}", f"a malformed config ({err!r})",
                                                "the 'model' and 'train' sections seqrec train writes")) from err


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
    if missing and (directory / "manifest.json").is_file():  # exporter.bundle's manifest
        raise CheckpointError(received_expected(f"checkpoint directory {directory}", "an export bundle (manifest.json)",
                                                "the checkpoint directory that `seqrec train --out` wrote (a bundle "
                                                "is for `seqrec score` and `seqrec profile`)"))
    if missing:
        raise CheckpointError(received_expected(f"checkpoint directory {directory}", f"missing {missing}",
                                                f"the files {', '.join(names)}"))


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(received_expected(str(path), f"invalid JSON ({error})", "a JSON object")) from None
    if not isinstance(data, dict):
        raise CheckpointError(received_expected(str(path), f"JSON {type(data).__name__}", "a JSON object"))
    return data
