"""Shared fixtures: a tiny synthetic interactions file, a trained tiny checkpoint, and tiny checkpoints with
random weights for every registered model and head, exported once per session (no training needed: export
and batch scoring are about the graph, not the weights)."""

from pathlib import Path

import numpy as np
import pytest
import torch

from seqrec.config import ModelConfig, TrainConfig
from seqrec.data import SynthConfig, Vocabulary, generate_interactions, write_interactions
from seqrec.models import build_model
from seqrec.training.checkpoint import Checkpoint, save_checkpoint


@pytest.fixture(scope="session")
def synth_parquet(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "synth.parquet"
    write_interactions(generate_interactions(SynthConfig(users=300, items=60, repeat_prob=0.2, seed=3,
                                                         max_length=20)), path)
    return path


def tiny_configs(model: str = "sasrec", **train) -> tuple[ModelConfig, TrainConfig]:
    model_cfg = ModelConfig(model=model, dim=16, heads=2, layers=1, max_length=20, dropout=0.1)
    train_cfg = TrainConfig(**{"epochs": 3, "batch_size": 64, "lr": 5e-3, "seed": 0, **train})
    return model_cfg, train_cfg


@pytest.fixture(scope="session")
def make_configs():
    """The tiny (ModelConfig, TrainConfig) builder, as a fixture so test modules need no import."""
    return tiny_configs


@pytest.fixture(scope="session")
def tiny_checkpoint(synth_parquet, tmp_path_factory) -> Path:
    from seqrec.training import train

    out = tmp_path_factory.mktemp("ckpt") / "sasrec"
    train(synth_parquet, out, *tiny_configs(), progress=False)
    return out


NUM_ITEMS = 300


def write_tiny_checkpoint(directory: Path, model: str, head: str, time_bias: bool = True, **overrides) -> Path:
    """A tiny untrained checkpoint; HSTU / PCRec get a random time bias unless ``time_bias=False`` (the
    zero bias of a model trained on data without real times, which then takes no timestamps)."""
    torch.manual_seed(0)
    cfg = ModelConfig(**{"num_items": NUM_ITEMS, "dim": 16, "heads": 2, "layers": 2, "max_length": 12,
                         "dropout": 0.1, "cpr_variant": "CPR:20+Mi", **overrides}, model=model, head=head)
    net = build_model(cfg).eval()
    with torch.no_grad():  # move the CPR projections off their identity start
        for name, param in net.head.named_parameters():
            if name != "item_embedding.weight":
                param.add_(torch.randn_like(param) * 0.1)
        if time_bias and hasattr(net.encoder, "time_bias"):
            net.encoder.time_bias.normal_(0.0, 0.5)
    vocab = Vocabulary.from_items(np.arange(1000, 1000 + cfg.num_items))
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
