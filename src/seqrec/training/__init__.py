"""Training loop, losses, full-ranking evaluation, checkpoints."""

from seqrec.training.api import evaluate_checkpoint, train
from seqrec.training.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from seqrec.training.evaluation import evaluate
from seqrec.training.loop import TrainingData, prepare_data, train_model
from seqrec.training.metrics import ranking_metrics

__all__ = ["Checkpoint", "TrainingData", "evaluate", "evaluate_checkpoint", "load_checkpoint",
           "prepare_data", "ranking_metrics", "save_checkpoint", "train", "train_model"]
