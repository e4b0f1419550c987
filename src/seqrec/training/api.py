"""The library functions behind ``seqrec train`` and ``seqrec eval``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from seqrec.config import ModelConfig, TrainConfig, check_trainable
from seqrec.data import (EvalExamples, UserSequences, build_sequences, leave_one_out, read_interactions,
                         split_by_name)
from seqrec.data.sequences import known_only
from seqrec.data.vocab import Vocabulary, as_vocab_type
from seqrec.errors import DataError, SchemaError, received_expected
from seqrec.training.checkpoint import Checkpoint, load_checkpoint
from seqrec.training.evaluation import (by_repeat_metrics, rank_targets, ranks_and_repeat_shares,
                                         target_in_history)
from seqrec.training.loop import prepare_data, train_model
from seqrec.training.metrics import MISS, ranking_metrics


def train(data_path: str | Path, out: str | Path, model_cfg: ModelConfig, train_cfg: TrainConfig,
          progress: bool = True) -> Checkpoint:
    """Train on an interactions Parquet file and write the checkpoint directory ``out``."""
    check_trainable(model_cfg, train_cfg)  # before the data is read
    return train_model(prepare_data(data_path), model_cfg, train_cfg, out, progress)


def evaluate_checkpoint(checkpoint: str | Path, data_path: str | Path, split: str = "test",
                        exclude_history: bool = False, batch_size: int = 512,
                        by_repeat: bool = False) -> dict[str, Any]:
    """Full-ranking metrics of a saved model on one leave-one-out split of ``data_path``.

    With ``by_repeat`` the metrics come in three groups, ``all``, ``repeat`` (targets already in
    the user's history) and ``new``, each with the share of history items in the top 10.
    The split is the file's own (by position, whatever the checkpoint knows). Item ids are read in the
    vocabulary's id type as ``seqrec score`` reads them (integers of a string vocabulary as their text, text
    that is an integer as it prints for an integer one, other text, '01' included, unknown to it; the file's
    reader, as training's, refuses unsigned ids beyond int64). Items unknown to the checkpoint's vocabulary
    are left out of the histories the model reads (it has no embedding for them; counted in
    ``unknown_interactions``); a target the model cannot know, or one after a history without a single
    known item, is a miss (``unknown_targets``, ``no_known_history``).
    ``trained_on_targets``: the split is ``valid`` and the model was refit on those very targets.
    """
    ckpt = load_checkpoint(checkpoint)
    raw = _sequences_for(ckpt, data_path)  # unknown items: indices beyond the vocabulary
    examples = split_by_name(leave_one_out(raw), split)
    seqs, at = known_only(raw, len(ckpt.vocab))
    if len(seqs.items) == 0:
        raise DataError(received_expected(f"items of {data_path}", "none in the checkpoint's vocabulary",
                                          "interactions with items the model was trained on"))
    known = EvalExamples(examples.users, at[examples.history_start], at[examples.history_end], examples.targets)
    unknown_target = examples.targets > len(ckpt.vocab)  # (E,)
    no_history = known.history_end == known.history_start  # (E,)
    scorable = ~unknown_target & ~no_history  # (E,)
    ranks = np.full(len(examples), MISS, dtype=np.int64)  # (E,)
    if by_repeat:
        shares = np.full(len(examples), np.nan)  # (E,)
        ranks[scorable], shares[scorable] = ranks_and_repeat_shares(ckpt.model, seqs, _subset(known, scorable),
                                                                    batch_size, exclude_history)
        metrics = by_repeat_metrics(ranks, shares, target_in_history(raw.items, examples))
    else:
        ranks[scorable] = rank_targets(ckpt.model, seqs, _subset(known, scorable), batch_size, exclude_history)
        metrics = {**ranking_metrics(ranks), "users": int(len(ranks))}
    return {**metrics, "split": split, "exclude_history": exclude_history,
            "trained_on_targets": split == "valid" and refit_on_validation(ckpt),
            "unknown_interactions": int(np.count_nonzero(raw.items > len(ckpt.vocab))),
            "unknown_targets": int(unknown_target.sum()), "no_known_history": int((no_history & ~unknown_target).sum())}


def refit_on_validation(ckpt: Checkpoint) -> bool:
    """Whether the checkpoint's model trained on each user's validation item (``--refit`` that did not diverge)."""
    refit = ckpt.meta.get("training", {}).get("refit")
    return bool(ckpt.train_config.refit and isinstance(refit, dict) and "diverged" not in refit)


def _sequences_for(ckpt: Checkpoint, data_path: str | Path) -> UserSequences:
    """The file's sequences with every item kept (unknown ones beyond the vocabulary), its item ids read in the
    vocabulary's id type; a typed error when the file lacks the timestamps the model reads."""
    table, vocab = _in_vocab_type(read_interactions(data_path), ckpt.vocab)
    raw = build_sequences(table, vocab, unknown="keep")
    if ckpt.model.reads_timestamps() and not raw.has_times:  # scored without them, its time bias would be off
        raise SchemaError(received_expected(f"{data_path}", "interactions without timestamps",
                                            "a 'timestamp' column: the model reads timestamps"))
    return raw


def _in_vocab_type(table: pa.Table, vocab: Vocabulary) -> tuple[pa.Table, Vocabulary]:
    """``table`` with its item ids converted to the vocabulary's id type as ``seqrec score`` converts history
    items (``as_vocab_type``), and the vocabulary to encode them with. Integer ids become their decimal text
    for a string vocabulary (a RecBole import's tokens are always strings). For an integer vocabulary, text
    that is an int64 as it prints is that integer; other text ('01' as 'x1') is an unknown item, each distinct id
    its own, so the ids stay text (integers as their decimal text) and are looked up in the vocabulary's ids as
    text."""
    column = table.schema.get_field_index("item_id")
    ids = table.column(column).combine_chunks()
    if (vocab.raw_type == "int64") == pa.types.is_integer(ids.type):
        return table, vocab
    values, bad = as_vocab_type(ids, vocab.raw_type)
    if vocab.raw_type == "int64":  # "7" is 7, written "7" as the vocabulary's 7 is; "007" and "x7" stay, unknown
        values = pc.if_else(pa.array(bad), ids, values.cast(pa.string()))
        vocab = Vocabulary(vocab.items.cast(pa.string()))  # the same indices
    return table.set_column(column, "item_id", values), vocab


def _subset(examples: EvalExamples, pick: np.ndarray) -> EvalExamples:
    return EvalExamples(examples.users[pick], examples.history_start[pick], examples.history_end[pick],
                        examples.targets[pick])
