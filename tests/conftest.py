"""Shared fixtures: a tiny synthetic interactions file and a trained tiny checkpoint."""

from pathlib import Path

import pytest

from seqrec.config import ModelConfig, TrainConfig
from seqrec.data import SynthConfig, generate_interactions, write_interactions


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
