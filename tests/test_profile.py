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
from seqrec.errors import ConfigError, ExportError, ExportMismatchError, MissingDependencyError
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
    return out, result, json.loads((out / "profile.json").read_text())


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
    _, result, report = profiled
    reason = backend_missing("tensorrt")
    if reason is None:
        pytest.skip("tensorrt and a CUDA device are present: tensorrt is measured here")
    skipped = [m for m in report["measurements"] if m["backend"] == "tensorrt"]
    assert len(skipped) == 4 and all(m["status"] == "skipped" and m["reason"] == reason for m in skipped)
    assert "TensorRT backend" in reason
    for stream in (result.stderr, result.stdout):  # a progress line, then a table row, per catalog
        assert sum(line.startswith("tensorrt") and "skipped: the TensorRT backend" in line
                   for line in stream.splitlines()) == len(CATALOGS)
    assert report["outcome"] == {"ok": 8, "skipped": 4, "failed": 0}  # skips of what cannot run here: exit 0


def test_progress_goes_to_stderr_table_and_summary_to_stdout(profiled):
    """Each row once on stdout (the table), so ``seqrec profile ... > table.txt`` holds no progress."""
    out, result, _ = profiled
    progress = result.stderr.splitlines()
    assert len([line for line in progress if line.startswith(BACKENDS)]) == 2 * 2 * 2 + 2  # torch and onnxruntime
    assert sum(line.startswith("exporting onnxruntime fp32") for line in progress) == len(CATALOGS)  # per catalog
    lines = result.stdout.splitlines()  # x batch; tensorrt once per catalog
    assert lines[0].startswith("backend") and len(lines) == 1 + 2 * 2 * 2 + 2 + 1  # header, rows, summary
    assert lines[-1].startswith("profiled 8 configurations, skipped 4") and str(out / "profile.png") in lines[-1]
    assert not any(line.startswith("exporting") for line in lines)


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
    (["--batch-sizes", "0,8"], "batch_sizes | received 0,8, expected a comma-separated list of integers in [1, "),
    (["--batch-sizes", "100000000"], "batch_sizes | received 100000000, expected a comma-separated list of integers "
                                     "in [1, 1,048,576]"),
    (["--catalog-sizes", "10000000000"], "catalog_sizes | received 10000000000, expected a comma-separated list of "
                                         "integers in [1, 1,000,000,000]"),
    (["--threads", "99999999999999999999"], "threads | received 99999999999999999999, expected in [1, 1024]"),
    (["--seed", "-1"], "seed | received -1, expected in [0, 9223372036854775807]"),  # as train's
    (["--catalog-sizes", "5"], "catalog_sizes | received 5, expected >= top_k 10"),
    (["--iterations", "3", "--seconds", "1"], "--iterations and --seconds | received both, expected at most one"),
    (["--length", "13"], "length | received 13, expected <= the model's window 12"),
    (["--length", "99999999999999999999"], "length | received 99999999999999999999, expected <= the model's window"),
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


def _quick(model, out, **options) -> ProfileConfig:
    return ProfileConfig(model=str(model), out=str(out), **{"backends": ("torch", "onnxruntime"), "batch_sizes": (4,),
                                                            "iterations": 1, "warmup": 0, "threads": 1, **options})


def _interrupted_export(*args, **kwargs):
    """torch.onnx.export as Ctrl-C leaves it: its own error, with the KeyboardInterrupt as the context."""
    try:
        raise KeyboardInterrupt
    except KeyboardInterrupt:
        raise RuntimeError("TorchExportError: Failed to export the model with torch.export")


def test_an_interrupt_inside_an_export_stops_the_sweep(tiny_checkpoints, tmp_path, monkeypatch):
    """Not a skipped backend and a complete-looking report: an interrupt, as train and score report it."""
    monkeypatch.setattr(torch.onnx, "export", _interrupted_export)
    checkpoint = tiny_checkpoints("sasrec", "softmax")
    with pytest.raises(KeyboardInterrupt):
        profile(_quick(checkpoint, tmp_path / "lib"), echo=lambda line: None)
    assert not (tmp_path / "lib").exists()  # no report, no temporary export, and not the empty folder it made
    (tmp_path / "mine").mkdir()  # a folder the user made stays, empty
    with pytest.raises(KeyboardInterrupt):
        profile(_quick(checkpoint, tmp_path / "mine"), echo=lambda line: None)
    assert list((tmp_path / "mine").iterdir()) == []
    result = run(checkpoint, "--backends", "torch,onnxruntime", "--batch-sizes", 4, "--iterations", 1, "--warmup", 0,
                 "--out", tmp_path / "cli" / "deeper")
    assert result.exit_code == 130 and "Interrupted" in result.stderr, result.output
    assert "profiled" not in result.output and not (tmp_path / "cli").exists()


def test_an_interrupt_wrapped_in_a_seqrec_error_stops_the_sweep(tiny_checkpoints, tmp_path, monkeypatch):
    """Whatever library wraps a Ctrl-C during a setup (here in a SeqrecError), the sweep stops."""
    from seqrec.profiling import sweep

    def open_runner(*args, **kwargs):
        raise ExportError("building the graph | received an error, expected none") from KeyboardInterrupt()

    monkeypatch.setattr(sweep, "open_runner", open_runner)
    with pytest.raises(KeyboardInterrupt):
        profile(_quick(tiny_checkpoints("sasrec", "softmax"), tmp_path, backends=("onnxruntime",)),
                echo=lambda line: None)
    assert not (tmp_path / "profile.json").exists()


def test_a_failed_setup_is_recorded_and_makes_the_run_fail(tiny_checkpoints, tmp_path, monkeypatch):
    """An export whose parity fails is no 'cannot run here' skip: the report says failed, the run raises
    (exit 1) after the other configurations are measured and written."""
    from seqrec.exporter import validate

    original = validate.compare_case
    monkeypatch.setattr(validate, "compare_case", lambda name, graph, spec, feed, outputs: original(
        name, graph, spec, feed, {**outputs, "top_items": outputs["top_items"][:, ::-1].copy()}))
    checkpoint = tiny_checkpoints("sasrec", "softmax")
    with pytest.raises(ExportMismatchError, match=r"seqrec profile \| received onnxruntime fp32 catalog 300 failed "
                                                  r"\(.*wrong top-K items"):
        profile(_quick(checkpoint, tmp_path / "lib"), echo=lambda line: None)
    report = json.loads((tmp_path / "lib" / "profile.json").read_text())
    assert [(m["backend"], m["status"]) for m in report["measurements"]] == [("torch", "ok"), ("onnxruntime", "failed")]
    assert report["measurements"][1]["error"] == "ExportMismatchError" and "wrong top-K" in report["measurements"][1][
        "reason"]
    assert report["outcome"] == {"ok": 1, "skipped": 0, "failed": 1}
    result = run(checkpoint, "--backends", "torch,onnxruntime", "--batch-sizes", 4, "--iterations", 1, "--warmup", 0,
                 "--out", tmp_path / "cli")
    assert result.exit_code == 1, result.output
    assert result.stderr.splitlines()[-1].startswith("Error: seqrec profile | received onnxruntime fp32 catalog 300 "
                                                     "failed")
    assert "failed 1 (onnxruntime fp32)" in result.stdout.splitlines()[-1]


def test_a_bundle_whose_graph_does_not_load_fails_in_one_line(exported, tmp_path):
    """ONNX Runtime's error opening a damaged model.onnx came out as its traceback; now the configuration fails
    with the ExportError naming the file, recorded like any failed setup, and the command ends in one line."""
    damaged = tmp_path / "bundle"
    shutil.copytree(exported("sasrec", "softmax")[0], damaged)
    graph = damaged / "model.onnx"
    graph.write_bytes(bytes(graph.stat().st_size))  # as many bytes, all zero
    result = run(damaged, "--backends", "onnxruntime", "--batch-sizes", 4, "--iterations", 1, "--warmup", 0,
                 "--out", tmp_path / "out")
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert result.stderr.splitlines()[-1].startswith("Error: seqrec profile | received onnxruntime fp32 catalog 300 "
                                                     f"failed (onnxruntime fp32 catalog 300: ONNX model '{graph}' | "
                                                     "received a model ONNX Runtime could not load (")
    report = json.loads((tmp_path / "out" / "profile.json").read_text())
    assert [(m["status"], m["error"]) for m in report["measurements"]] == [("failed", "ExportError")]


def test_a_missing_library_found_during_setup_is_a_skip(tiny_checkpoints, tmp_path, monkeypatch):
    from seqrec.profiling import source

    def export(*args, **kwargs):
        raise MissingDependencyError("the ONNX exporter | received no module 'onnxscript', expected pip install x")

    monkeypatch.setattr(source, "_export", export)
    report = profile(_quick(tiny_checkpoints("sasrec", "softmax"), tmp_path), echo=lambda line: None)
    assert [m["status"] for m in report["measurements"]] == ["ok", "skipped"]
    assert "error" not in report["measurements"][1] and "onnxscript" in report["measurements"][1]["reason"]


@pytest.mark.parametrize("args,skipped", [(["--backends", "torch", "--precisions", "fp16"], "torch fp16"),
                                          (["--backends", "tensorrt"], "tensorrt fp32")])
def test_nothing_measured_is_an_error(tiny_checkpoints, tmp_path, args, skipped):
    if args[1] == "tensorrt" and backend_missing("tensorrt") is None:
        pytest.skip("tensorrt runs here")
    result = run(tiny_checkpoints("sasrec", "softmax"), *args, "--batch-sizes", 4, "--iterations", 1, "--out", tmp_path)
    assert result.exit_code == 1, result.output
    assert result.stderr.splitlines()[-1] == (
        f"Error: seqrec profile | received nothing measured: {skipped} catalog 300 skipped (reasons in "
        f"{tmp_path / 'profile.json'}), expected at least one backend and precision that runs on this machine from "
        "this model")
    report = json.loads((tmp_path / "profile.json").read_text())  # the reasons, honestly recorded
    assert report["outcome"] == {"ok": 0, "skipped": 1, "failed": 0} and report["measurements"][0]["reason"]


@pytest.mark.parametrize("under", ["a file", "/proc"])
def test_an_out_the_file_system_refuses_is_one_line_before_any_work(tiny_checkpoints, tmp_path, under):
    if under == "/proc" and not Path("/proc/self").is_dir():
        pytest.skip("no /proc here")
    (tmp_path / "afile").write_text("x")
    out = tmp_path / "afile" / "profile" if under == "a file" else Path("/proc/seqrec-profile-test")
    result = run(tiny_checkpoints("sasrec", "softmax"), "--backends", "torch", "--iterations", 1, "--out", out)
    assert result.exit_code == 1, result.output
    refused = "not a directory (NotADirectoryError)" if under == "a file" else \
        "no such file or directory (FileNotFoundError)"
    assert result.output.strip().splitlines() == [  # one line, and no progress line: nothing was measured
        f"Error: --out '{out}' | received a path where {refused}, expected a directory this user can create and write"]


@pytest.mark.parametrize("options,gib,part,window", [
    ({"catalog_sizes": (10**9,)}, 16, "item table 59.6 GiB", 12),
    ({"batch_sizes": (2**20,)}, 0.5, "hidden states 0.8 GiB", 12),
    ({"batch_sizes": (1024,)}, 4, "attention scores 8.0 GiB", 1024),  # 1,024 users x 2 heads x 1,024^2 floats
])
def test_a_sweep_that_cannot_fit_in_memory_is_refused_before_any_work(tiny_checkpoints, tmp_path, monkeypatch,
                                                                      options, gib, part, window):
    """Within the options' own bounds (ProfileConfig), a sweep can still outgrow the machine it runs on."""
    from seqrec.profiling import sweep

    monkeypatch.setattr(sweep, "physical_memory", lambda: int(gib * 2**30))
    cfg = _quick(tiny_checkpoints("sasrec", "softmax", max_length=window), tmp_path / "out", **options)
    with pytest.raises(ConfigError, match=rf"--catalog-sizes, --batch-sizes and --length \| received .*{part}.*, "
                                          rf"expected a sweep that fits in this machine's {gib:.1f} GiB of memory"):
        profile(cfg, echo=lambda line: None)
    assert not (tmp_path / "out").exists()
