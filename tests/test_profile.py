"""``seqrec profile`` on a tiny checkpoint and bundle: real PyTorch and ONNX Runtime runs, no mocks."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from seqrec.cli import main
from seqrec.config import ProfileConfig
from seqrec.errors import ConfigError
from seqrec.profiling import profile
from seqrec.profiling.source import Setup, backend_missing, open_source, skip_reason

BACKENDS, BATCHES, CATALOGS = ("torch", "onnxruntime", "tensorrt"), (1, 16), (300, 600)  # 300: the model's own
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run(*args):
    return CliRunner().invoke(main, ["profile", *map(str, args)])


@pytest.fixture(scope="module")
def profiled(tiny_checkpoints, tmp_path_factory):
    """One sweep through the CLI: 3 backends x fp32 x 2 catalogs x 2 batch sizes, 3 timed calls each."""
    out = tmp_path_factory.mktemp("profile")
    result = run(tiny_checkpoints("sasrec", "softmax"), "--backends", ",".join(BACKENDS), "--batch-sizes", "1,16",
                 "--catalog-sizes", "300,600", "--iterations", 3, "--warmup", 1, "--threads", 1, "--out", out)
    assert result.exit_code == 0, result.output
    return out, result.output, json.loads((out / "profile.json").read_text())


def test_every_configuration_is_in_the_json(profiled):
    _, _, report = profiled
    measured = [(m["backend"], m["catalog_size"], m["batch_size"]) for m in report["measurements"]]
    assert sorted(measured) == sorted((b, c, n) for b in BACKENDS for c in CATALOGS for n in BATCHES)
    assert {m["precision"] for m in report["measurements"]} == {"fp32"}
    for m in report["measurements"]:
        if m["backend"] != "tensorrt":
            assert m["status"] == "ok" and m["calls"] == 3, m
            assert 0 < m["p50_ms"] <= m["p99_ms"] and m["users_per_second"] > 0
            assert m["users_per_second"] == pytest.approx(m["batch_size"] * 3 / m["timed_seconds"], rel=0.01)
        assert m["weights"] == ("trained" if m["catalog_size"] == 300 else "trained, random item table (seed 0)")
        assert m["length"] == 12  # the model's window


def test_json_records_settings_source_and_machine(profiled):
    _, _, report = profiled
    assert report["settings"]["catalog_sizes"] == [300, 600] and report["settings"]["top_k"] == 10
    assert report["source"]["kind"] == "checkpoint" and report["source"]["model"]["num_items"] == 300
    machine = report["machine"]
    assert machine["cpu_model"] and machine["logical_cores"] >= 1
    assert {"torch", "onnxruntime"} <= machine["versions"].keys()
    assert machine["gpu"] == (torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)


def test_tensorrt_is_skipped_with_its_reason_here(profiled):
    _, output, report = profiled
    reason = backend_missing("tensorrt")
    if reason is None:
        pytest.skip("tensorrt and a CUDA device are present: tensorrt is measured here")
    skipped = [m for m in report["measurements"] if m["backend"] == "tensorrt"]
    assert len(skipped) == 4 and all(m["status"] == "skipped" and m["reason"] == reason for m in skipped)
    assert "TensorRT backend" in reason
    assert sum(line.startswith("tensorrt") and "skipped: the TensorRT backend" in line
               for line in output.splitlines()) == 2 * len(CATALOGS)  # progress line + table row per catalog


def test_progress_lines_table_and_summary(profiled):
    out, output, _ = profiled
    lines = output.splitlines()
    header = lines.index(next(line for line in lines if line.startswith("backend")))
    progress = [line for line in lines[:header] if line.startswith(BACKENDS)]
    assert len(progress) == 2 * 2 * 2 + 2  # torch and onnxruntime per catalog x batch; tensorrt once per catalog
    assert sum(line.startswith("exporting onnxruntime fp32") for line in lines[:header]) == len(CATALOGS)
    assert lines[-1].startswith("profiled 8 configurations, skipped 4") and str(out / "profile.png") in lines[-1]


def test_plot_is_a_png(profiled):
    import matplotlib.image

    out, _, _ = profiled
    path = out / "profile.png"
    assert path.read_bytes()[:8] == PNG_MAGIC
    height, width, channels = matplotlib.image.imread(path).shape
    assert width > 2 * height > 0 and channels in (3, 4)  # one panel per catalog size, side by side


def test_other_catalog_sizes_run_the_checkpoints_graph(tiny_checkpoints, tmp_path):
    """An HSTU whose trained time bias reads timestamps keeps that input at every catalog size: the other
    sizes swap in a random item table and keep every other weight, so onnxruntime is measured, not skipped."""
    config = ProfileConfig(model=str(tiny_checkpoints("hstu", "softmax")), out=str(tmp_path), backends=("onnxruntime",),
                           batch_sizes=(4,), catalog_sizes=(300, 400), iterations=2, warmup=0, threads=1)
    report = profile(config, echo=lambda line: None)
    assert [(m["catalog_size"], m["status"]) for m in report["measurements"]] == [(300, "ok"), (400, "ok")]


def test_precisions_a_backend_does_not_run_are_skipped(tiny_checkpoints):
    source = open_source(ProfileConfig(model=str(tiny_checkpoints("sasrec", "softmax"))))
    assert "expected fp32 or bf16" in skip_reason(source, Setup("torch", "fp16", 300))
    assert "no bf16 kernels" in skip_reason(source, Setup("onnxruntime", "bf16", 300))
    assert skip_reason(source, Setup("torch", "bf16", 300)) is None


def test_bundle_without_checkpoint_profiles_only_its_own_graph(exported, tmp_path):
    bundle, _ = exported("sasrec", "softmax")
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["source"]["checkpoint"]  # seqrec export records where the graph came from
    orphan = tmp_path / "orphan"
    shutil.copytree(bundle, orphan)
    del manifest["source"]["checkpoint"]
    (orphan / "manifest.json").write_text(json.dumps(manifest))
    cfg = ProfileConfig(model=str(orphan), out=str(tmp_path / "out"), backends=("torch", "onnxruntime"),
                        batch_sizes=(4,), catalog_sizes=(300, 400), iterations=2, warmup=0)
    lines: list[str] = []
    report = profile(cfg, echo=lines.append)
    status = {(m["backend"], m["catalog_size"]): m["status"] for m in report["measurements"]}
    assert status == {("torch", 300): "skipped", ("onnxruntime", 300): "ok", ("torch", 400): "skipped",
                      ("onnxruntime", 400): "skipped"}
    assert "names no checkpoint" in lines[0] and not any(line.startswith("exporting") for line in lines)
    assert report["source"]["top_k"] == 7  # baked into the bundle


def test_bundle_with_its_checkpoint_runs_torch_on_the_same_model(exported, tmp_path):
    bundle, _ = exported("sasrec", "softmax")
    cfg = ProfileConfig(model=str(bundle), out=str(tmp_path / "out"), backends=("torch", "onnxruntime"),
                        batch_sizes=(4,), iterations=2, warmup=0)
    lines: list[str] = []
    report = profile(cfg, echo=lines.append)
    assert [m["status"] for m in report["measurements"]] == ["ok", "ok"]
    assert not any(line.startswith("exporting") for line in lines)  # the bundle's own graph, as it is


@pytest.mark.parametrize("args,message", [
    (["--backends", "torch,tpu"], "backends | received tpu, expected a comma-separated list of torch, onnxruntime, "
                                  "tensorrt"),
    (["--precisions", "fp32,int8"], "precisions | received int8, expected a comma-separated list of fp32, fp16, bf16"),
    (["--batch-sizes", "0,8"], "batch_sizes | received 0,8, expected a comma-separated list of integers >= 1"),
    (["--catalog-sizes", "5"], "catalog_sizes | received 5, expected >= top_k 10"),
    (["--iterations", "3", "--seconds", "1"], "--iterations and --seconds | received both, expected at most one"),
])
def test_bad_option_values_are_one_line_errors(tiny_checkpoints, tmp_path, args, message):
    result = run(tiny_checkpoints("sasrec", "softmax"), *args, "--out", tmp_path)
    assert result.exit_code == 1 and message in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "profile.json").exists()


def test_a_folder_that_is_no_model_is_refused(tmp_path):
    result = run(tmp_path, "--out", tmp_path / "out")
    assert result.exit_code == 1 and "a path with neither manifest.json nor config.json" in result.output


def test_out_may_not_be_a_model_directory(tiny_checkpoints, exported, tmp_path):
    """The report's files would land among the model's: refused before any work, as train and export refuse."""
    checkpoint = tiny_checkpoints("sasrec", "softmax")
    bundle = exported("sasrec", "softmax")[0]
    for out, held in ((checkpoint, "config.json, weights.safetensors"), (bundle, "manifest.json")):
        result = run(checkpoint, "--iterations", "1", "--out", out)
        assert result.exit_code == 1 and f"a model's directory (it holds {held})" in result.output, result.output
        assert not (Path(out) / "profile.json").exists()


def test_malformed_list_is_a_usage_error(tiny_checkpoints, tmp_path):
    result = run(tiny_checkpoints("sasrec", "softmax"), "--batch-sizes", "1,x", "--out", tmp_path)
    assert result.exit_code == 2
    assert "batch_sizes | received '1,x', expected a comma-separated list of integers" in result.output


def test_histories_are_identical_across_backends_and_left_padded(tiny_checkpoints):
    from seqrec.profiling.sweep import _histories

    cfg = ProfileConfig(model=str(tiny_checkpoints("sasrec", "softmax")), length=12)
    source = open_source(cfg)
    first, again = _histories(source, 300, 64, cfg)["items"], _histories(source, 300, 64, cfg)["items"]
    np.testing.assert_array_equal(first, again)  # (B, L), drawn once from the seed
    lengths = (first > 0).sum(1)
    assert lengths.min() >= 1 and lengths.max() <= 12 and len(set(lengths)) > 3
    assert all((row[: 12 - n] == 0).all() and (row[12 - n:] > 0).all() for row, n in zip(first, lengths))


def test_config_rejects_nonsense_directly():
    with pytest.raises(ConfigError, match=r"warmup \| received -1"):
        ProfileConfig(warmup=-1)
