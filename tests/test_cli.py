"""The command line through click's test runner, on real files."""

import json
import os
import signal
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from seqrec.cli import main
from seqrec.exporter import load_bundle


def run(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_synth_stats_and_import(tmp_path):
    dst = tmp_path / "synth.parquet"
    result = run("data", "synth", dst, "--users", 50, "--items", 80, "--repeat-prob", 0.3, "--seed", 1)
    assert result.exit_code == 0, result.output
    stats = json.loads(run("data", "stats", dst).output)
    assert stats["users"] == 50 and 0.15 < stats["repeat_share"] < 0.45
    text = tmp_path / "s3rec.txt"
    text.write_text("1 5 6 7\n2 6 8\n")
    out = tmp_path / "imported.parquet"
    result = run("data", "import", "--format", "s3rec", text, out)
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["interactions"] == 5
    assert pq.read_table(out).column_names == ["user_id", "item_id", "timestamp"]


def test_import_writes_each_users_rows_together_in_time_order(tmp_path):
    """A log in time order interleaves users; the imported file groups them (time order kept within a
    user, ties in source order), so `seqrec score` reads it as an interaction log as it is."""
    source = tmp_path / "log.inter"
    source.write_text("user_id:token\titem_id:token\ttimestamp:float\n"
                      "u2\ti1\t10\nu1\ti2\t11\nu2\ti3\t12\nu1\ti4\t9\nu2\ti5\t12\nu3\ti1\t13\n")
    out = tmp_path / "imported.parquet"
    assert run("data", "import", "--format", "recbole", source, out).exit_code == 0
    rows = pq.read_table(out).to_pylist()
    assert [(r["user_id"], r["item_id"], r["timestamp"]) for r in rows] == [
        ("u1", "i4", 9), ("u1", "i2", 11), ("u2", "i1", 10), ("u2", "i3", 12), ("u2", "i5", 12), ("u3", "i1", 13)]


def test_schema_error_is_one_line_without_traceback(tmp_path):
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"user_id": [1, 2], "item": [3, 4]}), bad)
    result = CliRunner().invoke(main, ["data", "stats", str(bad)])
    assert result.exit_code == 1
    assert "column 'item_id'" in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_train_then_eval_json(synth_parquet, tmp_path):
    out = tmp_path / "ckpt"
    result = run("train", "--data", synth_parquet, "--out", out, "--model", "gru4rec", "--epochs", 2,
                 "--dim", 16, "--max-length", 20, "--batch-size", 64, "--quiet")
    assert result.exit_code == 0, result.output
    assert (out / "weights.safetensors").exists()
    result = run("eval", out, "--data", synth_parquet, "--split", "valid", "--exclude-history", "--json")
    metrics = json.loads(result.output)
    assert {"ndcg@10", "hr@10", "mrr@10", "ndcg@50"} <= metrics.keys() and metrics["split"] == "valid"


def test_eval_of_a_refit_checkpoint_on_its_validation_split_says_it_trained_on_it(synth_parquet, tmp_path):
    """A --refit model trained on every validation target: --split valid then measures training data."""
    out = tmp_path / "refit"
    result = run("train", "--data", synth_parquet, "--out", out, "--epochs", 1, "--dim", 16, "--max-length", 10,
                 "--refit", "--quiet")
    assert result.exit_code == 0, result.output
    valid = run("eval", out, "--data", synth_parquet, "--split", "valid", "--json")
    assert json.loads(valid.stdout)["trained_on_targets"] is True
    assert "warning: this checkpoint was refit on every validation item" in valid.stderr
    test = run("eval", out, "--data", synth_parquet, "--json")
    assert json.loads(test.stdout)["trained_on_targets"] is False and "warning" not in test.stderr


def test_train_prints_progress_on_stderr_and_only_its_result_on_stdout(synth_parquet, tmp_path):
    """`seqrec train ... | jq` read the epoch lines mixed with the result's JSON line."""
    result = run("train", "--data", synth_parquet, "--out", tmp_path / "ckpt", "--epochs", 2, "--dim", 16,
                 "--max-length", 10)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["checkpoint"] == str(tmp_path / "ckpt")
    assert "epoch   2  loss" in result.stderr and "trained 2 epochs" in result.stderr


def test_export_reports_parity_on_stderr_and_its_result_on_stdout(tiny_checkpoint, tmp_path):
    """`seqrec export ... | jq` read the parity report's lines before the JSON line."""
    result = run("export", tiny_checkpoint, "--out", tmp_path / "bundle", "--validation-users", 5)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["valid"] is True
    assert result.stderr.startswith("parity onnxruntime vs pytorch fp32")


@pytest.mark.parametrize("config, field, value", [("ScoreConfig", "batch_size", 10**11), ("ScoreConfig", "threads", 10**20),
                                                  ("ExportConfig", "validation_users", 10**8),
                                                  ("TrainConfig", "batch_size", 10**9)])
def test_sizes_beyond_any_machine_are_refused_up_front(config, field, value):
    """They ended in allocation or integer-overflow tracebacks, a score job leaving its ledger behind."""
    from seqrec import config as configs
    from seqrec.errors import ConfigError

    with pytest.raises(ConfigError, match=rf"{field} \| received {value}, expected in \[1, "):
        getattr(configs, config)(**{field: value})


@pytest.mark.parametrize("error, shown", [
    (MemoryError("Unable to allocate 40.0 GiB"), "Unable to allocate 40.0 GiB"),
    (RuntimeError("[enforce fail at alloc_cpu.cpp:121] data. DefaultCPUAllocator: can't allocate memory: you tried "
                  "to allocate 42949672960 bytes.\nmore"), "[enforce fail at alloc_cpu.cpp:121] data. "
     "DefaultCPUAllocator: can't allocate memory: you tried to allocate 42949672960 bytes.")])
def test_running_out_of_memory_is_one_error_line(synth_parquet, tiny_checkpoint, monkeypatch, error, shown):
    import seqrec.training

    def too_big(*args, **kwargs):
        raise error

    monkeypatch.setattr(seqrec.training, "evaluate_checkpoint", too_big)
    result = CliRunner().invoke(main, ["eval", str(tiny_checkpoint), "--data", str(synth_parquet)])
    assert result.exit_code == 1 and result.output == (f"Error: out of memory ({shown}): run with smaller sizes "
                                                       "(batch, catalog, users)\n")


def test_other_runtime_errors_are_not_called_out_of_memory(synth_parquet, tiny_checkpoint, monkeypatch):
    import seqrec.training

    def broken(*args, **kwargs):
        raise RuntimeError("shape mismatch")

    monkeypatch.setattr(seqrec.training, "evaluate_checkpoint", broken)
    result = CliRunner().invoke(main, ["eval", str(tiny_checkpoint), "--data", str(synth_parquet)])
    assert isinstance(result.exception, RuntimeError) and "out of memory" not in result.output


def test_print_config_resolves_model_defaults():
    result = run("train", "--model", "gru4rec", "--lr", 0.01, "--print-config")  # no --data / --out needed
    config = json.loads(result.output)
    assert config["model"]["num_items"] is None  # set from the data, not the placeholder 1
    missing = CliRunner().invoke(main, ["train", "--out", "x"])
    assert missing.exit_code == 2 and "Missing option '--data'." in missing.output
    assert config["model"]["model"] == "gru4rec" and config["train"]["lr"] == 0.01
    assert config["model"]["layers"] == 1  # gru4rec's own default, not the dataclass default
    assert config["train"]["refit"] is False and config["model"]["cpr_pooling"] == "logsumexp"
    assert config["model"]["embedding_std"] is None
    assert config["train"]["cpr_base_weight"] == 0.0 and config["train"]["cpr_base_detach"] is False
    assert config["train"]["cpr_detach_partitions"] is False
    assert config["model"]["cpr_base_projection"] is True
    chosen = run("train", "--data", ".", "--out", "x", "--refit", "--cpr-pooling", "mean", "--embedding-std", 0.02,
                 "--head", "cpr", "--cpr-base-weight", 0.5, "--cpr-base-detach", "--no-cpr-base-projection",
                 "--cpr-detach-partitions", "--print-config")
    config = json.loads(chosen.output)
    assert config["train"]["cpr_base_detach"] is True and config["model"]["cpr_base_projection"] is False
    assert config["train"]["cpr_detach_partitions"] is True
    assert config["train"]["refit"] is True and config["model"]["cpr_pooling"] == "mean"
    assert config["model"]["embedding_std"] == 0.02 and config["train"]["cpr_base_weight"] == 0.5


def test_bad_option_value_is_a_typed_one_liner(synth_parquet, tmp_path):
    result = CliRunner().invoke(main, ["train", "--data", str(synth_parquet), "--out", str(tmp_path / "c"),
                                       "--dim", "10", "--heads", "3"])
    assert result.exit_code == 1 and "dim / heads | received dim=10, heads=3" in result.output
    result = CliRunner().invoke(main, ["train", "--data", str(synth_parquet), "--out", str(tmp_path / "c"),
                                       "--cpr-base-weight", "1"])
    assert result.exit_code == 1 and "cpr_base_weight | received 1.0 with head 'softmax'" in result.output


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path):
    result = run("demo", "--out", tmp_path / "demo", "--users", 400, "--epochs", 2)
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "demo" / "demo_summary.json").read_text())
    assert summary["model"]["users"] == 400 and "popularity" in summary
    assert summary["export"]["valid"] and (tmp_path / "demo" / "bundle" / "model.onnx").is_file()
    assert "parity onnxruntime vs pytorch fp32" in result.output
    assert summary["score"]["users_scored"] == 400 and summary["score"]["form"] == "long"
    assert pq.read_table(tmp_path / "demo" / "scored" / "interactions.parquet").num_rows == 400
    assert "scored 400 users, rejected 0" in result.output


def test_demo_refuses_a_bad_option_before_writing_anything(tmp_path):
    result = run("demo", "--out", tmp_path / "demo", "--epochs", 0)
    assert result.exit_code == 1 and "epochs | received 0, expected >= 1" in result.output
    result = run("demo", "--out", tmp_path / "demo", "--users", 0)  # checked after the directory was made
    assert result.exit_code == 1 and "users | received 0, expected an integer >= 1" in result.output
    assert not (tmp_path / "demo").exists()
    (tmp_path / "afile").write_text("")
    result = run("demo", "--out", tmp_path / "afile" / "demo")  # was a NotADirectoryError traceback
    assert result.exit_code == 1 and result.output.startswith("Error: --out '") and "(NotADirectoryError)" in result.output


def test_a_demo_rerun_refuses_before_any_work_where_its_outputs_hold_a_users_files(tmp_path):
    """A rerun replaces its checkpoint, bundle and scored output whole: a user's file in scored/ was deleted, and
    one in bundle/ stopped the demo at its export after data and checkpoint had been rewritten."""
    demo = tmp_path / "demo"
    (demo / "scored" / "sub").mkdir(parents=True)
    (demo / ".seqrec-demo").write_text("an earlier demo")
    (demo / "scored" / "_ledger.jsonl").write_text("")
    (demo / "scored" / "sub" / "mine.txt").write_text("keep")
    result = run("demo", "--out", demo, "--users", 300, "--epochs", 1)
    assert result.exit_code == 1 and "an earlier demo whose scored/ also holds 'sub'" in result.output, result.output
    (demo / "scored" / "sub" / "mine.txt").unlink()
    (demo / "scored" / "sub").rmdir()
    (demo / "bundle").mkdir()
    (demo / "bundle" / "manifest.json").write_text("{}")
    (demo / "bundle" / "notes.txt").write_text("keep")
    result = run("demo", "--out", demo, "--users", 300, "--epochs", 1)
    assert result.exit_code == 1 and "a bundle that also holds 'notes.txt'" in result.output, result.output
    assert not (demo / "interactions.parquet").exists() and (demo / "bundle" / "notes.txt").read_text() == "keep"


@pytest.mark.slow
def test_a_demo_rerun_stopped_after_writing_its_data_leaves_none_of_the_earlier_demos_outputs(tmp_path, monkeypatch):
    """A rerun stopped after it wrote its data left the earlier run's checkpoint, bundle, scores and summary beside
    the new data: a folder of two runs that read as one, and only 'stopped before the end' said so."""
    from seqrec import demo as demo_module

    out = tmp_path / "demo"
    first = run("demo", "--out", out, "--users", 300, "--epochs", 1)
    assert first.exit_code == 0, first.output

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt  # Ctrl-C as training starts, the new data written

    monkeypatch.setattr(demo_module, "train", interrupted)
    result = run("demo", "--out", out, "--users", 200, "--epochs", 1, "--seed", 3)
    assert result.exit_code == 130, result.output
    assert sorted(path.name for path in out.iterdir()) == [".seqrec-demo", "interactions.parquet"]
    assert len(pq.read_table(out / "interactions.parquet").column("user_id").unique()) == 200
    assert result.output.strip().splitlines()[-1] == (
        f"Interrupted: '{out}' holds no demo_summary.json: what it holds is one run's outputs up to where it stopped "
        "(a demo removes an earlier demo's outputs before it writes any); run the demo again for all of them")


def test_train_cpr_head_then_eval_by_repeat(synth_parquet, tmp_path):
    out = tmp_path / "cpr"
    result = run("train", "--data", synth_parquet, "--out", out, "--head", "cpr", "--cpr-variant", "CPR:20,5+Mi",
                 "--loss", "sampled", "--negatives", 16, "--epochs", 2, "--dim", 16, "--batch-size", 64, "--quiet")
    assert result.exit_code == 0, result.output
    assert json.loads((out / "config.json").read_text())["model"]["cpr_variant"] == "CPR:20,5+Mi"
    result = run("eval", out, "--data", synth_parquet, "--by-repeat")
    assert result.exit_code == 0, result.output
    header, users = result.output.splitlines()[:2]
    assert header.split() == ["all", "repeat", "new"] and users.split()[0] == "users"
    assert "top10_repeat_share" in result.output and "mrr@10" in result.output
    assert result.output.splitlines()[-5:] == ["split                  test", "exclude_history        False",
                                               "unknown_interactions   0", "unknown_targets        0",
                                               "no_known_history       0"]


@pytest.mark.parametrize("args, message", [
    (["--model", "gru4rec", "--pc-steps", 7], "pc_steps | received 7 for --model gru4rec, --head softmax, --loss ce, "
                                              "expected only with --model pcrec, which reads it"),
    (["--model", "gru4rec", "--heads", 4], "heads | received 4 for --model gru4rec"),
    (["--cpr-variant", "C"], "cpr_variant | received 'C' for --model sasrec, --head softmax"),
    (["--negatives", 5], "negatives | received 5 for --model sasrec, --head softmax, --loss ce"),
    (["--head", "cpr", "--cpr-variant", "softmax+Mi", "--cpr-pooling", "mean"],  # no history partition to pool
     "cpr_pooling | received 'mean' for --model sasrec, --head cpr (variant softmax+Mi), --loss ce, expected only "
     "with --head cpr with history partitions (C, CP, CPR:..)"),
    (["--head", "cpr", "--cpr-variant", "C", "--no-cpr-recency"], "cpr_recency | received False for --model sasrec, "
     "--head cpr (variant C)"),  # the recency bias belongs to the pointer
    (["--model", "pcrec", "--pc-steps", 0, "--pc-alpha", 2], "pc_alpha | received 2.0 for --model pcrec (pc_steps 0)"),
])
def test_an_option_the_run_never_reads_is_refused(args, message):
    result = run("train", "--data", ".", "--out", "x", *args, "--print-config")
    assert result.exit_code == 1 and message in result.output and len(result.output.strip().splitlines()) == 1


def test_bad_cpr_variant_is_a_typed_one_liner(synth_parquet, tmp_path):
    result = run("train", "--data", synth_parquet, "--out", tmp_path / "c", "--head", "cpr", "--cpr-variant", "CPR:5,50")
    assert result.exit_code == 1 and "cpr_variant | received 'CPR:5,50'" in result.output
    assert "Traceback" not in result.output


def test_ctrl_c_in_train_exits_130_saying_out_is_unchanged(synth_parquet, tmp_path, monkeypatch):
    """The interrupt is raised from inside training (as Ctrl-C raises it in the epoch loop)."""
    from seqrec.training import loop

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "train_epoch", interrupted)
    result = CliRunner().invoke(main, ["train", "--data", str(synth_parquet), "--out", str(tmp_path / "ckpt"),
                                       "--epochs", "1", "--dim", "8", "--quiet"])
    assert result.exit_code == 130, result.output
    assert result.output.strip().splitlines()[-1] == (
        "Interrupted: the output directory is as it was before this run (results are put in place only when complete)")
    assert not (tmp_path / "ckpt").exists()


def _sigterm_self(*args, **kwargs):
    """SIGTERM to this process, as `timeout` or a scheduler sends it; its handler raises at the next bytecode."""
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(5)  # never reached in full: the handler raises first
    raise AssertionError("SIGTERM did not interrupt the command")


def test_sigterm_in_train_cleans_up_as_ctrl_c_does_and_exits_143(synth_parquet, tmp_path, monkeypatch):
    """A real SIGTERM mid-training: no staging directory left, --out untouched, exit 143, and the test process's
    own SIGTERM handler is back afterwards."""
    from seqrec.training import loop

    monkeypatch.setattr(loop, "train_epoch", _sigterm_self)
    before = signal.getsignal(signal.SIGTERM)
    result = CliRunner().invoke(main, ["train", "--data", str(synth_parquet), "--out", str(tmp_path / "ckpt"),
                                       "--epochs", "1", "--dim", "8", "--quiet"])
    assert result.exit_code == 143, result.output
    assert result.output.strip().splitlines()[-1] == (
        "Terminated: the output directory is as it was before this run (results are put in place only when complete)")
    assert sorted(path.name for path in tmp_path.iterdir()) == []
    assert signal.getsignal(signal.SIGTERM) == before


def test_sigterm_in_export_leaves_no_staging_directory(tiny_checkpoint, tmp_path, monkeypatch):
    from seqrec.exporter import api

    monkeypatch.setattr(api, "check_parity", _sigterm_self)
    result = CliRunner().invoke(main, ["export", str(tiny_checkpoint), "--out", str(tmp_path / "bundle")])
    assert result.exit_code == 143, result.output
    assert result.output.strip().splitlines()[-1].startswith("Terminated: ")
    assert sorted(path.name for path in tmp_path.iterdir()) == []


def test_sigterm_wrapped_by_torch_onnx_export_still_exits_143(tiny_checkpoint, tmp_path, monkeypatch):
    """torch.onnx.export wraps an interrupt in its own error; the one rebuilt from it keeps its kind."""
    import torch

    from seqrec.interrupts import Terminated

    def export(*args, **kwargs):
        raise RuntimeError("Failed to export the model with torch.export") from Terminated()

    monkeypatch.setattr(torch.onnx, "export", export)
    result = CliRunner().invoke(main, ["export", str(tiny_checkpoint), "--out", str(tmp_path / "bundle")])
    assert result.exit_code == 143 and "Terminated: " in result.output, result.output
    assert sorted(path.name for path in tmp_path.iterdir()) == []


def test_bf16_on_a_cpu_that_only_emulates_it_is_warned_before_training(synth_parquet, tmp_path):
    """Emulated bf16 products are several times slower than fp32 (10x measured on an AVX2 EPYC): the warning
    comes where this CPU lacks bf16 hardware, as oneDNN reports it, and only there."""
    from seqrec.devices import native_bf16_on_cpu

    result = CliRunner().invoke(main, ["train", "--data", str(synth_parquet), "--out", str(tmp_path / "ckpt"),
                                       "--model", "gru4rec", "--epochs", "1", "--dim", "16", "--max-length", "20",
                                       "--precision", "bf16", "--quiet"])
    assert result.exit_code == 0, result.output
    warned = "warning: --precision bf16 on a CPU without bf16 hardware" in result.output
    assert warned != native_bf16_on_cpu()


def test_score_of_a_bundle_with_bf16_is_only_the_refusal(exported, monkeypatch, tmp_path):
    """A bundle's precision is set at export, so --precision bf16 is refused; a warning about this CPU's bf16
    speed before that refusal would be about something that never runs."""
    from seqrec import devices

    monkeypatch.setattr(devices, "native_bf16_on_cpu", lambda: False)
    result = run("score", exported("sasrec", "softmax")[0], "--input", tmp_path, "--output", tmp_path / "out",
                 "--precision", "bf16")
    assert result.exit_code == 1 and "expected fp32 for the bundle" in result.output
    assert "warning" not in result.output


@pytest.mark.parametrize("native, precision, device, warned", [(False, "bf16", "cpu", True), (True, "bf16", "cpu", False),
                                                               (False, "fp32", "cpu", False),
                                                               (False, "bf16", "cuda", False)])
def test_the_bf16_warning_names_the_cpu_and_the_way_out(monkeypatch, native, precision, device, warned):
    import torch

    from seqrec import devices

    monkeypatch.setattr(devices, "native_bf16_on_cpu", lambda: native)  # the other kind of CPU than this one
    warning = devices.slow_bf16_warning(precision, device)
    assert (warning is not None) == warned
    if warned:
        assert f"({torch.backends.cpu.get_cpu_capability()})" in warning and "use --precision fp32" in warning


def test_train_windows_option_is_recorded_and_a_bad_value_refused(synth_parquet, tmp_path):
    """--train-windows fills TrainConfig.train_windows (default all), lands in config.json and meta.json, and the
    epoch lines say what an epoch trains on; a value outside the choices is refused before anything runs."""
    assert json.loads(run("train", "--print-config").output)["train"]["train_windows"] == "all"
    out = tmp_path / "last"
    result = run("train", "--data", synth_parquet, "--out", out, "--epochs", 1, "--dim", 16, "--max-length", 5,
                 "--train-windows", "last")
    assert result.exit_code == 0, result.output
    assert json.loads((out / "config.json").read_text())["train"]["train_windows"] == "last"
    counts = json.loads((out / "meta.json").read_text())["training"]["per_epoch"]
    assert counts["train_windows"] == "last" and counts["left_out"] > 0
    assert (f"each epoch: {counts['windows']:,} windows, {counts['targets']:,} target interactions (train_windows "
            f"last); {counts['left_out']:,} of the training ranges' {counts['training_interactions']:,} "
            "interactions") in result.stderr
    every = run("train", "--data", synth_parquet, "--out", tmp_path / "all", "--epochs", 1, "--dim", 16,
                "--max-length", 5, "--quiet")
    assert every.exit_code == 0, every.output
    all_counts = json.loads((tmp_path / "all" / "meta.json").read_text())["training"]["per_epoch"]
    assert all_counts["targets"] == counts["targets"] + counts["left_out"] and all_counts["left_out"] == 0
    bad = CliRunner().invoke(main, ["train", "--data", str(synth_parquet), "--out", str(tmp_path / "bad"),
                                    "--train-windows", "every"])
    assert bad.exit_code == 2  # click's usage error, as for --loss; the dataclass refuses it too (tests/training)
    assert "Invalid value for '--train-windows': 'every' is not one of 'all', 'last'" in bad.output
    assert not (tmp_path / "bad").exists()


def test_the_refit_warning_on_the_validation_split_is_a_whole_sentence(tiny_checkpoint, synth_parquet, tmp_path):
    """It stopped mid-sentence ("...; --split test is")."""
    import shutil

    refit = tmp_path / "refit"  # the tiny checkpoint as a --refit run records it
    shutil.copytree(tiny_checkpoint, refit)
    config, meta = json.loads((refit / "config.json").read_text()), json.loads((refit / "meta.json").read_text())
    config["train"]["refit"], meta["training"]["refit"] = True, {"epochs": 1}
    (refit / "config.json").write_text(json.dumps(config))
    (refit / "meta.json").write_text(json.dumps(meta))
    valid = run("eval", refit, "--data", synth_parquet, "--split", "valid")
    assert valid.exit_code == 0, valid.output
    assert valid.stderr.splitlines() == [
        "warning: this checkpoint was refit on every validation item (--refit): these are training targets, not a "
        "held-out measure; --split test is the held-out measure"]


def test_a_sigterm_between_the_renames_of_a_replacement_waits_until_both_are_done(tmp_path, monkeypatch):
    """Replacing a bundle or checkpoint renames the old one away, then the new one in; a SIGTERM between the two
    used to leave neither at --out (the command's clean-up then deleted the new one)."""
    from pathlib import Path

    from seqrec.interrupts import Terminated, take_sigterm_as_interrupt
    from seqrec.directories import replace_directory, staging_directory

    out = tmp_path / "bundle"
    out.mkdir()
    (out / "manifest.json").write_text("old")
    real_rename = Path.rename

    def rename(self, target):
        moved = real_rename(self, target)
        if self == out:  # the old one is away, the new one not yet in
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)  # the handler runs here unless it is deferred
        return moved

    monkeypatch.setattr(Path, "rename", rename)
    previous = signal.getsignal(signal.SIGTERM)
    take_sigterm_as_interrupt()
    try:
        with staging_directory(out) as staging, pytest.raises(Terminated):
            (staging / "manifest.json").write_text("new")
            replace_directory(staging, out)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert (out / "manifest.json").read_text() == "new"


def test_a_sigterm_while_the_last_part_commits_stops_the_writer_before_the_job_leaves(monkeypatch):
    """run_local waits for the writer thread in close(); an interrupt there left the thread writing alone while
    the command exited (a half-written part or ledger line)."""
    from seqrec.batchinfer import local
    from seqrec.interrupts import Terminated, take_sigterm_as_interrupt

    class Scorer:
        batch_size = 1

        def score(self, batch): return batch

    class SlowWriter:
        events: list[str] = []

        def handle(self, part, result, began):
            if result is None:
                self.events.append("commit started")
                os.kill(os.getpid(), signal.SIGTERM)  # while the job waits for this commit in close()
                time.sleep(0.5)  # a part's commit: flush, rename, ledger line
                self.events.append("commit finished")

        def abort(self):
            self.events.append("abort")

    monkeypatch.setattr(local, "read_part", lambda part, plan, rows: iter([pa.record_batch({"a": [1]})]))
    previous = signal.getsignal(signal.SIGTERM)
    take_sigterm_as_interrupt()
    try:
        with pytest.raises(Terminated):
            local.run_local(Scorer(), None, ["part-0"], SlowWriter())
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert SlowWriter.events == ["commit started", "commit finished", "abort"]  # the job left after the writer


@pytest.mark.parametrize("args, message", [
    (["--max-length", 100_000_000], "max_length | received 100000000, expected in [1, 8192]"),
    (["--layers", 100_000], "layers | received 100000, expected in [1, 128]"),
    (["--dim", 100_000_000], "dim | received 100000000, expected in [1, 16384]"),
    (["--model", "pcrec", "--pc-steps", 100_000], "pc_steps | received 100000, expected in [0, 64]"),
])
def test_a_model_size_beyond_any_recommender_is_refused_in_one_line(args, message):
    """A window of 10^8 trained, then its export allocated until the machine's OOM killer stopped it;
    100,000 layers built for minutes in silence."""
    result = run("train", "--data", ".", "--out", "x", *args, "--print-config")
    assert result.exit_code == 1 and message in result.output and len(result.output.strip().splitlines()) == 1


def test_more_sampled_negatives_than_the_catalog_holds_is_refused_before_training(synth_parquet, tmp_path):
    result = run("train", "--data", synth_parquet, "--out", tmp_path / "c", "--loss", "sampled", "--negatives", 61,
                 "--epochs", 1, "--quiet")
    assert result.exit_code == 1 and "negatives | received 61 for a catalog of 60 items, expected at most 60" \
        in result.output
    assert not (tmp_path / "c").exists()


def test_a_checkpoint_is_never_written_inside_another(synth_parquet, tmp_path):
    outer = tmp_path / "outer"
    assert run("train", "--data", synth_parquet, "--out", outer, "--epochs", 1, "--dim", 8, "--quiet").exit_code == 0
    result = run("train", "--data", synth_parquet, "--out", outer / "inner", "--epochs", 1, "--dim", 8, "--quiet")
    assert result.exit_code == 1 and f"a path inside the checkpoint '{outer}'" in result.output
    assert not (outer / "inner").exists()


@pytest.mark.parametrize("value", ["1,,2", "1,", ",1"])
def test_a_comma_list_with_an_empty_value_is_refused(tmp_path, value):
    result = run("profile", tmp_path, "--batch-sizes", value)
    assert result.exit_code == 2 and f"received '{value}', expected a comma-separated list of integers" \
        in result.output


def test_score_and_profile_print_the_config_their_model_resolves(exported, tmp_path):
    bundle, _ = exported("sasrec", "softmax")
    score = json.loads(run("score", bundle, "--input", tmp_path / "none.parquet", "--output", tmp_path / "o",
                           "--engine", "ray", "--print-config").output)
    assert (score["backend"], score["top_k"], score["exclude_seen"], score["actors"]) == ("onnxruntime", 7, False, 2)
    profile = json.loads(run("profile", bundle, "--print-config").output)
    manifest = load_bundle(bundle).manifest
    assert (profile["top_k"], profile["length"], profile["seconds"]) == (7, manifest["window"], 2.0)
    assert profile["catalog_sizes"] == [manifest["model"]["num_items"]]
    refused = run("score", bundle, "--input", "x", "--output", tmp_path / "o", "--top-k", 3, "--print-config")
    assert refused.exit_code == 1 and "--top-k | received 3, expected 7 as baked into the graph" in refused.output


def test_a_checkpoint_scored_without_top_k_on_a_catalog_under_ten_returns_all_its_items(tmp_path):
    data, ckpt = tmp_path / "s.parquet", tmp_path / "ck"
    assert run("data", "synth", data, "--users", 40, "--items", 3, "--min-length", 2, "--max-length", 3).exit_code == 0
    assert run("train", "--data", data, "--out", ckpt, "--epochs", 1, "--dim", 8, "--quiet").exit_code == 0
    config = json.loads(run("score", ckpt, "--input", data, "--output", tmp_path / "o", "--print-config").output)
    assert config["top_k"] == 3
