"""The core every engine shares: ``score_batches(Iterator[RecordBatch]) -> Iterator[RecordBatch]``.

Input batches are in the list form (``user_id``, ``history`` [, ``timestamps``]); any other column
is carried through. Each result batch has one row per input row, in order: the carried columns,
then ``items`` (list of raw item ids, best first) and ``scores`` (list<float32>), both null for a
rejected row, ``reject_reason`` (null for a scored row, see ``preprocess``) and ``unknown_items``
(int32, unknown items dropped from a scored history). The same function runs in the local job,
inside each Ray actor, or in Spark's ``mapInArrow``; splitting results from rejects, duplicate
users and the output layout are the writer's business (``outputs``).

Scored rows are length bucketed (sorted by history length inside the batch, then cut into model
batches of ``batch_size``), each model batch left padded to its own longest history (at most the
window) into one reused buffer, and the results put back in row order.
"""

from __future__ import annotations

from typing import Iterable, Iterator

import numpy as np
import pyarrow as pa
from torch.profiler import record_function

from seqrec.batchinfer.model import ScoringModel
from seqrec.batchinfer.preprocess import EncodedBatch, encode_batch
from seqrec.data.sequences import pad_left

SEQUENCE_COLUMNS = ("history", "timestamps")
RESULT_COLUMNS = ("items", "scores", "reject_reason", "unknown_items")


def result_schema(input_schema: pa.Schema, item_type: pa.DataType) -> pa.Schema:
    """The schema of ``score_batches``' output for input batches of ``input_schema``."""
    carried = [field for field in input_schema if field.name not in SEQUENCE_COLUMNS]
    return pa.schema(carried + [pa.field("items", pa.list_(item_type)), pa.field("scores", pa.list_(pa.float32())),
                                pa.field("reject_reason", pa.string()), pa.field("unknown_items", pa.int32())])


class BatchScorer:
    """Scores list-form record batches with one activated runner (a context manager)."""

    def __init__(self, model: ScoringModel, batch_size: int = 512) -> None:
        self.model = model
        self.batch_size = batch_size
        self.runner = model.runner()
        self.timestamps = "timestamps" in model.inputs
        self.item_type = model.vocab.items.type
        self.buffers = {name: np.zeros(batch_size * model.window, dtype=np.int64) for name in model.inputs}

    def __enter__(self) -> BatchScorer:
        self.runner.activate()
        return self

    def __exit__(self, *exc) -> None:
        self.runner.deactivate()

    def score_batches(self, batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            yield self.score(batch)

    def score(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        with record_function("## score/encode ##"):
            encoded = encode_batch(batch, self.model.vocab, self.timestamps)
        with record_function("## score/infer ##"):
            top_items, top_scores = self._top_k(encoded)  # (U, K) each
        with record_function("## score/decode ##"):
            return self._assemble(batch, encoded, top_items, top_scores)

    def _top_k(self, encoded: EncodedBatch) -> tuple[np.ndarray, np.ndarray]:
        count, k = len(encoded.rows), self.model.top_k
        top_items = np.zeros((count, k), dtype=np.int64)  # (U, K)
        top_scores = np.zeros((count, k), dtype=np.float32)  # (U, K)
        order = np.argsort(encoded.ends - encoded.starts, kind="stable")  # length buckets
        for first in range(0, count, self.batch_size):
            chosen = order[first:first + self.batch_size]  # (b,)
            feed = {"items": pad_left(encoded.items, encoded.starts[chosen], encoded.ends[chosen], self.model.window,
                                      out=self.buffers["items"])}  # (b, L)
            if self.timestamps:
                feed["timestamps"] = pad_left(encoded.timestamps, encoded.starts[chosen], encoded.ends[chosen],
                                              self.model.window, out=self.buffers["timestamps"])  # (b, L)
            outputs = self.runner.infer(feed)
            top_items[chosen], top_scores[chosen] = outputs["top_items"], outputs["top_scores"]
        return top_items, top_scores

    def _assemble(self, batch: pa.RecordBatch, encoded: EncodedBatch, top_items: np.ndarray,
                  top_scores: np.ndarray) -> pa.RecordBatch:
        """One result row per input row. A -inf score is no item (fewer than K items outside the history
        with --exclude-seen): the list is cut there, so padding or a seen item never reaches the output."""
        lengths = np.zeros(batch.num_rows, dtype=np.int64)  # (rows,) 0 where rejected
        available = np.isfinite(top_scores)  # (U, K), a prefix of each row: top-K is sorted
        lengths[encoded.rows] = available.sum(1)
        offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))
        rejected = np.ones(batch.num_rows, dtype=bool)
        rejected[encoded.rows] = False
        rejected = pa.array(rejected)  # (rows,) null lists
        items = pa.ListArray.from_arrays(offsets, self.model.vocab.decode(top_items[available]), mask=rejected)
        scores = pa.ListArray.from_arrays(offsets, pa.array(top_scores[available], pa.float32()), mask=rejected)
        carried = [name for name in batch.schema.names if name not in SEQUENCE_COLUMNS]
        arrays = [batch.column(name) for name in carried] + [items, scores, encoded.reasons,
                                                             pa.array(encoded.unknown, pa.int32())]
        return pa.RecordBatch.from_arrays(arrays, schema=result_schema(batch.schema, self.item_type))


def score_batches(batches: Iterable[pa.RecordBatch], model: ScoringModel,
                  batch_size: int = 512) -> Iterator[pa.RecordBatch]:
    """Score a stream of list-form record batches (see the module docstring for both schemas)."""
    with BatchScorer(model, batch_size) as scorer:
        yield from scorer.score_batches(batches)
