"""Batch scoring: Parquet histories -> top-K Parquet, streamed, resumable, local or on Ray.

``score(ScoreConfig)`` is the job (``seqrec score``); ``score_batches`` the core every engine
shares; ``open_model`` resolves a bundle or checkpoint for a backend.
"""

from seqrec.batchinfer.core import BatchScorer, result_schema, score_batches
from seqrec.batchinfer.job import score
from seqrec.batchinfer.model import ScoringModel, open_model, resolved_score_config

__all__ = ["BatchScorer", "ScoringModel", "open_model", "resolved_score_config", "result_schema", "score",
           "score_batches"]
