"""Staging directories that runs killed outright leave beside their output: removed by the next run staging
there, and only those (a live run's, and anything else with a similar name, are kept)."""

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import seqrec
from seqrec.cli import main

MARKER = ".seqrec-staging"  # seqrec.directories.STAGING_MARKER, spelled out: these tests read what is on disk
STALLED = """
import sys, time

import safetensors.torch

from seqrec.cli import main
from seqrec.exporter import api


def stall(*args, **kwargs):  # the run has staged part of its output and is still writing it
    print("staged", flush=True)
    time.sleep(600)


api.check_parity = stall  # export: after model.onnx
safetensors.torch.save_model = stall  # training: after config.json
main(sys.argv[1:])
"""


def stalled_run(*args) -> subprocess.Popen:
    """``seqrec ARGS`` in another process, alive and still writing its staging directory when this returns."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(seqrec.__file__).parents[1]),
                                                        os.environ.get("PYTHONPATH", "")])}
    process = subprocess.Popen([sys.executable, "-c", STALLED, *map(str, args)], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    line = process.stdout.readline()
    if line != "staged\n":
        process.kill()
        pytest.fail(f"the run ended before it staged anything: {line}{process.stdout.read()[-2000:]}")
    return process


def killed(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGKILL)  # as the OOM killer ends a run: no clean-up of any kind
    process.wait()


def staging_of(out: Path) -> list[Path]:
    return sorted(path for path in out.parent.iterdir() if re.fullmatch(rf"\.{out.name}\.[a-z0-9_]{{8}}", path.name))


def export(checkpoint: Path, out: Path):
    result = CliRunner().invoke(main, ["export", str(checkpoint), "--out", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


@pytest.mark.slow
def test_the_staging_left_by_a_killed_export_is_removed_by_the_next_export(tiny_checkpoint, tmp_path):
    out = tmp_path / "bundle"
    killed(stalled_run("export", tiny_checkpoint, "--out", out))
    [left] = staging_of(out)
    assert (left / "model.onnx").is_file()
    result = export(tiny_checkpoint, out)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["bundle"]
    assert re.fullmatch(rf"removed '{re.escape(str(left))}' \([\d.]+ MiB\), the staging directory of a run that "
                        "died before it finished", result.stderr.splitlines()[0]), result.stderr


@pytest.mark.slow
def test_the_staging_left_by_a_killed_training_is_removed_by_the_next_training(synth_parquet, tmp_path):
    out = tmp_path / "ckpt"
    args = ["train", "--data", synth_parquet, "--out", out, "--epochs", 1, "--dim", 8, "--quiet"]
    killed(stalled_run(*args))
    [left] = staging_of(out)
    assert (left / "config.json").is_file()
    result = CliRunner().invoke(main, [str(arg) for arg in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert sorted(path.name for path in tmp_path.iterdir()) == ["ckpt"]
    assert f"removed '{left}' (" in result.stderr


@pytest.mark.slow
def test_the_staging_of_a_live_export_to_the_same_out_is_kept(tiny_checkpoint, tmp_path):
    """Two exports to one --out at once: neither deletes the other's staging directory, only a dead run's."""
    out = tmp_path / "bundle"
    dead = stalled_run("export", tiny_checkpoint, "--out", out)
    [left] = staging_of(out)
    live = stalled_run("export", tiny_checkpoint, "--out", out)
    try:
        [running] = set(staging_of(out)) - {left}
        killed(dead)
        export(tiny_checkpoint, out)
        assert staging_of(out) == [running] and (running / "model.onnx").is_file()
        assert live.poll() is None
    finally:
        killed(live)


@pytest.mark.slow
def test_only_a_dead_runs_staging_of_this_very_out_is_removed(tiny_checkpoint, tmp_path):
    """Hidden directories named like a staging directory are kept: without the marker (a user's, or one left
    before runs wrote markers), of another --out, or named otherwise; a link is never followed."""
    out = tmp_path / "bundle"
    killed(stalled_run("export", tiny_checkpoint, "--out", out))
    [left] = staging_of(out)
    kept = {".bundle.userdata": None, ".bundle2.k2j4h5g6": MARKER, ".bundle.k2j4h5g6x": MARKER,
            ".bundle.failed.k2j4h5g6": MARKER, "bundle.k2j4h5g6": MARKER, ".other.k2j4h5g6": MARKER}
    for name, inside in kept.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / (inside or "weights.safetensors")).write_text("keep")
    (tmp_path / ".other.k2j4h5g6" / "x").write_text("keep")
    (tmp_path / ".bundle.linkedxx").symlink_to(tmp_path / ".other.k2j4h5g6", target_is_directory=True)
    export(tiny_checkpoint, out)
    assert not left.exists()
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted([*kept, ".bundle.linkedxx", "bundle"])
    assert all((tmp_path / name / (inside or "weights.safetensors")).read_text() == "keep"
               for name, inside in kept.items())
    assert (tmp_path / ".other.k2j4h5g6" / "x").read_text() == "keep"


def test_a_dead_staging_that_cannot_all_be_removed_keeps_its_marker_and_says_so(tmp_path, monkeypatch, capsys):
    """Files this user may not delete (another user's, an immutable one): the removal must not claim the space nor
    take the marker, or no later run would ever try again."""
    from seqrec import directories

    staging = tmp_path / ".bx.abcdefgh"
    (staging / "part").mkdir(parents=True)
    (staging / directories.STAGING_MARKER).write_text("x")
    (staging / "part" / "w").write_bytes(b"0" * 4096)
    (staging / "loose").write_bytes(b"0" * 100)
    monkeypatch.setattr(directories.shutil, "rmtree", lambda path, ignore_errors=False: None)  # nothing removable
    directories.remove_dead_staging(tmp_path / "bx")
    err = capsys.readouterr().err
    assert f"could not remove all of '{staging}'" in err and "removed '" not in err
    assert (staging / directories.STAGING_MARKER).is_file() and (staging / "part" / "w").is_file()
    monkeypatch.undo()
    directories.remove_dead_staging(tmp_path / "bx")  # a later run, able to remove it: tries again
    assert not staging.exists() and f"removed '{staging}'" in capsys.readouterr().err


def test_a_demo_rerun_removes_a_link_among_its_outputs_not_what_it_points_to(tmp_path):
    from seqrec.demo import _remove_earlier_outputs

    kept = tmp_path / "elsewhere"
    kept.mkdir()
    (kept / "manifest.json").write_text("{}")
    out = tmp_path / "demo"
    out.mkdir()
    (out / "bundle.failed").symlink_to(kept)
    (out / "scored").mkdir()
    _remove_earlier_outputs(out)
    assert sorted(path.name for path in out.iterdir()) == [] and (kept / "manifest.json").is_file()
