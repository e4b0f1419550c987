"""Tiny checkpoints with random weights for every registered model and head (no training needed:
parity is about the graph, not the weights)."""

from pathlib import Path

import numpy as np
import pytest
import torch

from seqrec.config import ModelConfig, TrainConfig
from seqrec.data import Vocabulary
from seqrec.models import build_model
from seqrec.training.checkpoint import Checkpoint, save_checkpoint

NUM_ITEMS = 300


def write_tiny_checkpoint(directory: Path, model: str, head: str, **overrides) -> Path:
    torch.manual_seed(0)
    cfg = ModelConfig(model=model, head=head, num_items=NUM_ITEMS, dim=16, heads=2, layers=2, max_length=12,
                      dropout=0.1, cpr_variant="CPR:20+Mi", **overrides)
    net = build_model(cfg).eval()
    with torch.no_grad():  # move the CPR projections off their identity start
        for name, param in net.head.named_parameters():
            if name != "item_embedding.weight":
                param.add_(torch.randn_like(param) * 0.1)
    vocab = Vocabulary.from_items(np.arange(1000, 1000 + NUM_ITEMS))
    meta = {"data": {"fingerprint": "tiny"}, "metrics": {}}
    return save_checkpoint(directory, Checkpoint(net, cfg, TrainConfig(), vocab, meta))


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory):
    """(model, head, **overrides) -> checkpoint directory, cached per session."""
    cache: dict = {}

    def make(model: str, head: str, **overrides) -> Path:
        key = (model, head, tuple(sorted(overrides.items())))
        if key not in cache:
            directory = tmp_path_factory.mktemp(f"ckpt_{model}_{head}")
            cache[key] = write_tiny_checkpoint(directory, model, head, **overrides)
        return cache[key]

    return make


@pytest.fixture(scope="session")
def exported(tiny_checkpoints, tmp_path_factory):
    """(model, head, **export options) -> (bundle directory, echoed lines), each exported once per session."""
    from seqrec.config import ExportConfig
    from seqrec.exporter import export_checkpoint

    cache: dict = {}

    def make(model: str, head: str, **options):
        key = (model, head, tuple(sorted(options.items())))
        if key not in cache:
            out = tmp_path_factory.mktemp(f"bundle_{model}_{head}") / "bundle"
            lines: list[str] = []
            config = ExportConfig(**{"top_k": 7, "validation_users": 40, **options})
            export_checkpoint(tiny_checkpoints(model, head), out, config, echo=lines.append)
            cache[key] = (out, lines)
        return cache[key]

    return make
