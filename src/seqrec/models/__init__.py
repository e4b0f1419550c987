"""Encoders (SASRec, GRU4Rec) and heads (softmax) behind one ``SequentialRecommender``."""

from seqrec.models.recommender import ENCODERS, HEADS, SequentialRecommender, build_model

__all__ = ["ENCODERS", "HEADS", "SequentialRecommender", "build_model"]
