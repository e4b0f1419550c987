"""Fixtures for batch scoring: the tiny CPR checkpoint and its bundle, histories parts, configs."""

from pathlib import Path

import pytest

from seqrec.config import ScoreConfig

from histories import write_parts

@pytest.fixture(scope="session")
def bundle(exported) -> Path:
    return exported("sasrec", "cpr")[0]  # top_k 7, exclude_seen off


@pytest.fixture
def damaged_bundle(bundle, tmp_path) -> Path:
    """A copy of ``bundle`` whose model.onnx ONNX Runtime cannot load: as many bytes, all zero (a file damaged in
    place, whatever checks its size)."""
    import shutil

    damaged = tmp_path / "bundle"
    shutil.copytree(bundle, damaged)
    graph = damaged / "model.onnx"
    graph.write_bytes(bytes(graph.stat().st_size))
    return damaged


@pytest.fixture(scope="session")
def checkpoint(tiny_checkpoints) -> Path:
    return tiny_checkpoints("sasrec", "cpr")


@pytest.fixture(scope="session")
def parts_dir(tmp_path_factory) -> Path:
    return write_parts(tmp_path_factory.mktemp("histories"), parts=3, users=150)


@pytest.fixture(scope="session")
def run_config(tmp_path_factory):
    """ScoreConfig with small test defaults (one thread, no progress bar) and a fresh output directory."""

    def make(model: Path, input: Path | str = "unused", **options) -> ScoreConfig:
        defaults = {"batch_size": 32, "threads": 1, "progress": False,
                    "output": str(tmp_path_factory.mktemp("scored") / "out")}
        return ScoreConfig(model=str(model), input=str(input), **{**defaults, **options})

    return make
