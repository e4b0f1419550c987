"""The library functions behind ``seqrec train`` and ``seqrec eval``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa

from seqrec.config import ModelConfig, TrainConfig
from seqrec.data import read_interactions, split_by_name
from seqrec.errors import DataError, received_expected
from seqrec.training.checkpoint import Checkpoint, load_checkpoint
from seqrec.training.evaluation import evaluate, evaluate_by_repeat
from seqrec.training.loop import prepare_data, train_model


def train(data_path: str | Path, out: str | Path, model_cfg: ModelConfig, train_cfg: TrainConfig,
          progress: bool = True) -> Checkpoint:
    """Train on an interactions Parquet file and write the checkpoint directory ``out``."""
    return train_model(prepare_data(data_path), model_cfg, train_cfg, out, progress)


def evaluate_checkpoint(checkpoint: str | Path, data_path: str | Path, split: str = "test",
                        exclude_history: bool = False, batch_size: int = 512,
                        by_repeat: bool = False) -> dict[str, Any]:
    """Full-ranking metrics of a saved model on one leave-one-out split of ``data_path``.

    With ``by_repeat`` the metrics come in three groups, ``all``, ``repeat`` (targets already in
    the user's history) and ``new``, each with the share of history items in the top 10.
    Items unknown to the checkpoint's vocabulary are dropped from the histories first (and
    counted in ``unknown_interactions``), since the model has no embedding for them.
    """
    ckpt = load_checkpoint(checkpoint)
    table = read_interactions(data_path)
    known = ckpt.vocab.encode(table.column("item_id")) > 0  # (rows,)
    unknown = int(len(table) - known.sum())
    table = table.filter(pa.array(known))
    if len(table) == 0:
        raise DataError(received_expected(f"items of {data_path}", "none in the checkpoint's vocabulary",
                                          "interactions with items the model was trained on"))
    data = prepare_data(table, vocab=ckpt.vocab)  # every item is known now
    examples = split_by_name(data.split, split)
    score = evaluate_by_repeat if by_repeat else evaluate
    metrics = score(ckpt.model, data.seqs, examples, batch_size, exclude_history)
    return {**metrics, "split": split, "exclude_history": exclude_history, "unknown_interactions": unknown}
