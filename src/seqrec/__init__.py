"""seqrec: sequential recommenders from training to nightly offline scoring."""

__version__ = "0.1.0"
