"""Training: losses fall, early stopping, seeding, checkpoints round trip without pickle."""

import dataclasses
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from seqrec.config import TrainConfig
from seqrec.errors import CheckpointError, ConfigError, DataError, SchemaError, TrainingDivergedError
from seqrec.models import ENCODERS, HEADS
from seqrec.training import evaluate, evaluate_checkpoint, load_checkpoint, prepare_data, train, train_model
from seqrec.training import loop
from seqrec.training.loop import length_bucketed_batches, train_windows


@pytest.mark.parametrize("model", list(ENCODERS))
@pytest.mark.parametrize("loss", ["ce", "sampled"])
@pytest.mark.parametrize("head", list(HEADS))
def test_loss_decreases_and_beats_untrained(synth_parquet, make_configs, model, loss, head):
    data = prepare_data(synth_parquet)
    model_cfg, train_cfg = make_configs(model, epochs=6, loss=loss, negatives=20, patience=10)
    model_cfg = dataclasses.replace(model_cfg, head=head, cpr_variant="CPR:10+Mi")
    ckpt = train_model(data, model_cfg, train_cfg, progress=False)
    losses = ckpt.meta["training"]["losses"]
    assert losses[-1] < losses[0] * 0.97
    untrained = train_model(data, model_cfg, TrainConfig(epochs=1, lr=1e-12, seed=0), progress=False)  # lr 0 is refused
    assert ckpt.meta["metrics"]["valid"]["ndcg@10"] > untrained.meta["metrics"]["valid"]["ndcg@10"] + 0.02


@pytest.mark.parametrize("loss", ["ce", "sampled"])
def test_cpr_head_trains_with_the_base_partition_loss(synth_parquet, make_configs, loss):
    data = prepare_data(synth_parquet)
    model_cfg, train_cfg = make_configs(epochs=4, loss=loss, negatives=20, cpr_base_weight=1.0)
    model_cfg = dataclasses.replace(model_cfg, head="cpr", cpr_variant="CPR:10+Mi")
    ckpt = train_model(data, model_cfg, train_cfg, progress=False)
    losses = ckpt.meta["training"]["losses"]
    assert losses[-1] < losses[0] * 0.97 and ckpt.train_config.cpr_base_weight == 1.0
    untrained = train_model(data, model_cfg, TrainConfig(epochs=1, lr=1e-12, seed=0), progress=False)  # lr 0 is refused
    assert ckpt.meta["metrics"]["valid"]["ndcg@10"] > untrained.meta["metrics"]["valid"]["ndcg@10"] + 0.02


def test_same_seed_same_model(synth_parquet, make_configs):
    data = prepare_data(synth_parquet)
    first = train_model(data, *make_configs(epochs=2), progress=False)
    second = train_model(data, *make_configs(epochs=2), progress=False)
    for (name, a), (_, b) in zip(first.model.state_dict().items(), second.model.state_dict().items()):
        torch.testing.assert_close(a, b, msg=name)


def test_early_stopping_keeps_best_epoch(synth_parquet, make_configs):
    data = prepare_data(synth_parquet)
    model_cfg, train_cfg = make_configs(epochs=40, lr=0.05, patience=2)
    ckpt = train_model(data, model_cfg, train_cfg, progress=False)
    history = ckpt.meta["training"]
    assert history["epochs"] < 40 and history["epochs"] == history["best_epoch"] + 2
    restored = evaluate(ckpt.model, data.seqs, data.split.valid)["ndcg@10"]
    assert restored == pytest.approx(history["best_valid_ndcg@10"])


@pytest.mark.parametrize("mode", ["last", "all"])
def test_windows_and_buckets_cover_every_trainable_user(synth_parquet, mode):
    data = prepare_data(synth_parquet)
    windows = train_windows(data.seqs, data.split, max_length=5, mode=mode)
    assert (windows.lengths <= 6).all() and (windows.lengths >= 2).all()
    trainable = data.split.train_end[data.split.train_end - data.seqs.offsets[:-1] >= 2]
    if mode == "last":  # one window per user: the most recent items
        assert (windows.ends == trainable).all()
    else:  # the synthetic users reach 18 training items: several windows each, the most recent among them
        assert len(windows) > len(trainable) and set(trainable) <= set(windows.ends)
    batches = length_bucketed_batches(windows, 32, np.random.default_rng(0))
    assert sorted(np.concatenate(batches).tolist()) == list(range(len(windows.starts)))
    spread = [np.ptp(windows.lengths[b]) for b in batches]
    assert np.median(spread) <= 1  # windows of similar length share a batch


def test_checkpoint_round_trip(tiny_checkpoint, synth_parquet):
    files = sorted(p.name for p in tiny_checkpoint.iterdir())
    assert files == ["config.json", "meta.json", "vocab.parquet", "weights.safetensors"]
    config = json.loads((tiny_checkpoint / "config.json").read_text())
    assert config["schema_version"] == 2 and config["model"]["model"] == "sasrec"
    meta = json.loads((tiny_checkpoint / "meta.json").read_text())
    assert len(meta["data"]["fingerprint"]) == 64 and "torch" in meta["versions"]
    ckpt = load_checkpoint(tiny_checkpoint)
    again = evaluate_checkpoint(tiny_checkpoint, synth_parquet, "test")
    assert again["ndcg@10"] == pytest.approx(meta["metrics"]["test"]["ndcg@10"])
    assert ckpt.model.item_embedding.weight.data_ptr() == ckpt.model.head.item_embedding.weight.data_ptr()


def test_every_checkpoint_file_gets_the_umask_permissions(tiny_checkpoint, tmp_path):
    """safetensors writes its file owner-only; a scoring job under another account must read the weights."""
    import os

    from seqrec.training.checkpoint import save_checkpoint

    old_umask = os.umask(0o022)
    try:
        out = save_checkpoint(tmp_path / "copy", load_checkpoint(tiny_checkpoint))
    finally:
        os.umask(old_umask)
    modes = {path.name: path.stat().st_mode & 0o777 for path in out.iterdir()}
    assert modes == dict.fromkeys(["config.json", "meta.json", "vocab.parquet", "weights.safetensors"], 0o644)
    assert out.stat().st_mode & 0o777 == 0o755


def test_exclude_history_never_counts_a_history_item(tiny_checkpoint, synth_parquet):
    plain = evaluate_checkpoint(tiny_checkpoint, synth_parquet, "test")
    excluded = evaluate_checkpoint(tiny_checkpoint, synth_parquet, "test", exclude_history=True)
    data = prepare_data(synth_parquet)
    repeats = np.mean([t in data.seqs.items[s:e] for s, e, t in
                       zip(data.split.test.history_start, data.split.test.history_end, data.split.test.targets)])
    assert excluded["hr@50"] <= 1 - repeats + 1e-9
    assert plain["users"] == excluded["users"] == len(data.split.test)


def test_eval_keeps_the_files_split_and_counts_unknown_targets_as_misses(tiny_checkpoint, synth_parquet, tmp_path):
    """Unknown items leave the histories, not the split: inserted early in every history they change
    nothing; as every user's last item they make every test target a miss (not the validation item)."""
    table = pq.read_table(synth_parquet)
    base = evaluate_checkpoint(tiny_checkpoint, synth_parquet, "test", by_repeat=True)
    users = np.unique(table.column("user_id").to_numpy())
    first = pa.table({"user_id": users, "item_id": np.full(len(users), 10**9),
                      "timestamp": np.full(len(users), table.column("timestamp").to_numpy().min() - 1)})
    pq.write_table(pa.concat_tables([first.cast(table.schema), table]), tmp_path / "early.parquet")
    early = evaluate_checkpoint(tiny_checkpoint, tmp_path / "early.parquet", "test", by_repeat=True)
    assert early["all"] == base["all"] and early["new"] == base["new"]
    assert early["unknown_interactions"] == len(users) and early["unknown_targets"] == 0
    last = pa.table({"user_id": users, "item_id": np.full(len(users), 10**9),
                     "timestamp": np.full(len(users), table.column("timestamp").to_numpy().max() + 1)})
    pq.write_table(pa.concat_tables([table, last.cast(table.schema)]), tmp_path / "late.parquet")
    late = evaluate_checkpoint(tiny_checkpoint, tmp_path / "late.parquet", "test")
    assert late["hr@50"] == 0.0 and late["ndcg@10"] == 0.0 and late["unknown_targets"] == late["users"]
    assert late["users"] == base["all"]["users"]  # the same users, each now with an unknown target
    from click.testing import CliRunner

    from seqrec.cli import main

    result = CliRunner().invoke(main, ["eval", str(tiny_checkpoint), "--data", str(tmp_path / "late.parquet"), "--json"])
    assert result.exit_code == 0 and result.output.splitlines()[0] == (
        f"warning: {late['users']} of {late['users']} test targets are items this model never saw (counted as "
        "misses): is this the data it was trained on?")
    result = CliRunner().invoke(main, ["eval", str(tiny_checkpoint), "--data", str(tmp_path / "early.parquet")])
    assert result.exit_code == 0 and "warning" not in result.output
    unknown = table.set_column(table.schema.get_field_index("item_id"), "item_id",
                               pa.array(np.arange(len(table)) + 10**9, table.schema.field("item_id").type))
    pq.write_table(unknown, tmp_path / "unknown.parquet")
    with pytest.raises(DataError, match="none in the checkpoint's vocabulary"):
        evaluate_checkpoint(tiny_checkpoint, tmp_path / "unknown.parquet", "test")


def test_eval_names_the_file_when_its_id_type_cannot_match_the_vocabulary(tiny_checkpoint, synth_parquet, tmp_path):
    """Text ids are read as `seqrec score` reads them (see test_eval_reads_ids_in_the_vocabularys_type_as_score_does):
    text that is no integer is unknown to an integer vocabulary, and a file of nothing else names itself."""
    import pyarrow.compute as pc

    table = pq.read_table(synth_parquet)
    column = table.schema.get_field_index("item_id")
    as_text = table.set_column(column, "item_id", pc.binary_join_element_wise(
        "item-", table.column("item_id").cast(pa.string()), ""))
    pq.write_table(as_text, tmp_path / "text.parquet")
    with pytest.raises(DataError, match=r"items of .*text.parquet \| received none in the checkpoint's vocabulary"):
        evaluate_checkpoint(tiny_checkpoint, tmp_path / "text.parquet", "test")


def test_eval_refuses_a_file_without_times_for_a_model_that_reads_them(tiny_checkpoints, tmp_path):
    rng = np.random.default_rng(0)
    table = pa.table({"user_id": np.repeat(np.arange(20), 5), "item_id": rng.integers(1000, 1060, 100)})
    pq.write_table(table, tmp_path / "no_times.parquet")  # the tiny checkpoints' items, no timestamp column
    checkpoint = tiny_checkpoints("hstu", "softmax", num_items=60)  # a random time bias: it reads times
    with pytest.raises(SchemaError, match="no_times.parquet \\| received interactions without timestamps"):
        evaluate_checkpoint(checkpoint, tmp_path / "no_times.parquet", "test")
    plain = tiny_checkpoints("hstu", "softmax", num_items=60, time_bias=False)
    assert evaluate_checkpoint(plain, tmp_path / "no_times.parquet", "test")["users"] > 0


def test_missing_checkpoint_file_is_a_typed_error(tiny_checkpoint, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((tiny_checkpoint / "config.json").read_text())
    with pytest.raises(CheckpointError, match=r"missing \['weights.safetensors', 'vocab.parquet', 'meta.json'\]"):
        load_checkpoint(broken)
    bundle = tmp_path / "bundle"  # `seqrec eval BUNDLE`: say what it is, not which checkpoint files it lacks
    bundle.mkdir()
    (bundle / "manifest.json").write_text("{}")
    with pytest.raises(CheckpointError, match=r"received an export bundle \(manifest.json\), expected the checkpoint"):
        load_checkpoint(bundle)


def test_a_broken_checkpoint_is_one_typed_error(tiny_checkpoint, tmp_path):
    truncated = tmp_path / "truncated"
    shutil.copytree(tiny_checkpoint, truncated)
    weights = (truncated / "weights.safetensors").read_bytes()
    (truncated / "weights.safetensors").write_bytes(weights[: len(weights) // 2])
    with pytest.raises(CheckpointError, match=r"weights.safetensors \| received weights that do not load"):
        load_checkpoint(truncated)
    malformed = tmp_path / "malformed"
    shutil.copytree(tiny_checkpoint, malformed)
    config = json.loads((malformed / "config.json").read_text())
    del config["model"]
    (malformed / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"config.json \| received a malformed config \(KeyError\('model'\)\)"):
        load_checkpoint(malformed)
    (malformed / "config.json").write_text("[1]")  # JSON, but no object: was an AttributeError traceback
    with pytest.raises(CheckpointError, match=r"config.json \| received JSON list, expected a JSON object"):
        load_checkpoint(malformed)


def test_a_device_this_machine_lacks_is_a_config_error_not_the_weights(tiny_checkpoint):
    """load_checkpoint(device='cuda') without CUDA blamed the weights ('pin_memory=True requires a CUDA ...')."""
    absent = f"cuda:{torch.cuda.device_count()}"
    with pytest.raises(ConfigError, match=re.escape(f"device | received '{absent}', expected cpu, or one of the")):
        load_checkpoint(tiny_checkpoint, device=absent)
    with pytest.raises(ConfigError, match=re.escape("device | received 'gpu', expected cpu, cuda or cuda:N")):
        load_checkpoint(tiny_checkpoint, device="gpu")


@pytest.mark.parametrize("section,key,value", [("model", "model", "gpt9"), ("model", "colour", "red"),
                                               ("train", "colour", "red")])
def test_an_unknown_model_or_key_in_config_json_names_the_file(tiny_checkpoint, tmp_path, section, key, value):
    """A ConfigError from the config classes is not a ValueError: it escaped without naming config.json."""
    edited = shutil.copytree(tiny_checkpoint, tmp_path / "edited")
    config = json.loads((edited / "config.json").read_text())
    config[section][key] = value
    (edited / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"config.json \| received a malformed config \(ConfigError\("):
        load_checkpoint(edited)


@pytest.mark.parametrize("by_repeat", [False, True])
def test_a_batch_size_below_one_is_a_config_error(tiny_checkpoint, synth_parquet, by_repeat):
    """batch_size=0 was a bare 'ValueError: range() arg 3 must not be zero'."""
    for bad in (0, -4):
        with pytest.raises(ConfigError, match=rf"evaluation batch_size \| received {bad}, expected an integer >= 1"):
            evaluate_checkpoint(tiny_checkpoint, synth_parquet, batch_size=bad, by_repeat=by_repeat)


def test_a_vocabulary_of_another_size_is_refused(tiny_checkpoint, tmp_path):
    """A vocab.parquet copied from another checkpoint loaded silently and mapped ids to the wrong items."""
    from seqrec.data import Vocabulary

    swapped = shutil.copytree(tiny_checkpoint, tmp_path / "swapped")
    items = len(load_checkpoint(tiny_checkpoint).vocab)
    Vocabulary.from_items(pa.array(range(items + 5))).save(swapped / "vocab.parquet")
    with pytest.raises(CheckpointError, match=rf"vocab.parquet \| received {items + 5:,} items, expected {items:,}, "
                                              r"the model's catalog"):
        load_checkpoint(swapped)


def test_training_never_loses_what_out_held(synth_parquet, tiny_checkpoint, tmp_path, make_configs, monkeypatch):
    """--out is checked before any training (only a checkpoint is ever replaced), and a save that fails
    half way leaves the previous checkpoint whole."""
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "config.json").write_text("{}")  # someone's file, not a checkpoint
    (tmp_path / "notes" / "other.txt").write_text("keep")
    monkeypatch.setattr(loop, "fit", lambda *args, **kwargs: pytest.fail("trained before checking --out"))
    with pytest.raises(ConfigError, match=r"--out '.*notes' \| received a directory that is not a checkpoint"):
        train(synth_parquet, tmp_path / "notes", *make_configs())
    monkeypatch.undo()
    kept = tmp_path / "kept"
    shutil.copytree(tiny_checkpoint, kept)
    before = {path.name: path.read_bytes() for path in kept.iterdir()}
    import safetensors.torch

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt  # a kill, or a full disk, in the middle of the save

    monkeypatch.setattr(safetensors.torch, "save_model", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(synth_parquet, kept, *make_configs(epochs=1), progress=False)
    assert {path.name: path.read_bytes() for path in kept.iterdir()} == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["kept", "notes"]  # no staging left behind


def test_a_checkpoint_holding_anything_of_the_users_is_not_replaced(synth_parquet, tiny_checkpoint, tmp_path,
                                                                     make_configs, monkeypatch):
    """Training replaces a checkpoint whole: a bundle exported into it (before export refused that) or notes put
    beside its files would go with it. Such a checkpoint is refused before any training, naming what it holds."""
    kept = tmp_path / "kept"
    shutil.copytree(tiny_checkpoint, kept)
    (kept / "bundle").mkdir()
    (kept / "bundle" / "manifest.json").write_text("{}")
    (kept / "notes.txt").write_text("keep")
    monkeypatch.setattr(loop, "fit", lambda *args, **kwargs: pytest.fail("trained before checking --out"))
    with pytest.raises(ConfigError, match=r"--out '.*kept' \| received a checkpoint that also holds 'bundle', "
                                          r"'notes.txt', which replacing it would delete, expected a checkpoint "
                                          r"holding only its own files \(config.json, weights.safetensors"):
        train(synth_parquet, kept, *make_configs())
    assert (kept / "bundle" / "manifest.json").read_text() == "{}" and (kept / "notes.txt").read_text() == "keep"


def test_scores_that_stop_being_finite_are_divergence_not_a_result(synth_parquet, tmp_path, make_configs):
    """A huge step can leave finite-looking losses and weights whose scores are NaN: NDCG 0.0 would still
    have beaten the initial best and been saved. Now it is divergence: nothing to keep, nothing saved."""
    with pytest.raises(TrainingDivergedError, match=r"weights and scores after epoch 1 \| received values that are "
                                                     r"not finite"):
        train(synth_parquet, tmp_path / "diverged", *make_configs(epochs=3, lr=1e8, batch_size=500), progress=False)
    assert not (tmp_path / "diverged").exists()


def test_the_summary_says_why_training_stopped(synth_parquet, tmp_path, make_configs):
    patience = train(synth_parquet, None, *make_configs(epochs=30, patience=1, lr=0.05), progress=False)
    limit = train(synth_parquet, None, *make_configs(epochs=1), progress=False)
    assert patience.meta["training"]["stopped_by"] == "patience" and limit.meta["training"]["stopped_by"] == "epochs"


@pytest.mark.parametrize("option, value, expected", [
    ("lr", float("nan"), "lr | received nan, expected > 0"),
    ("lr", 0.0, "lr | received 0.0, expected > 0"),  # trains nothing
    ("max_minutes", float("inf"), "max_minutes | received inf"),
    ("max_minutes", 0.0, "max_minutes | received 0.0, expected > 0"),  # still ran a whole epoch
    ("seed", -1, "seed | received -1, expected in [0, 9223372036854775807]"),
    ("device", "gpu", "device | received 'gpu', expected cpu, cuda or cuda:N"),
])
def test_non_finite_numbers_seeds_and_devices_are_refused(option, value, expected):
    with pytest.raises(ConfigError, match=re.escape(expected)):
        TrainConfig(**{option: value})


def test_training_needs_a_device_this_machine_has(synth_parquet, tmp_path, make_configs):
    model_cfg, train_cfg = make_configs()
    with pytest.raises(ConfigError, match=re.escape("device | received 'cuda:7', expected cpu, or one of the")):
        train(synth_parquet, tmp_path / "out", model_cfg, dataclasses.replace(train_cfg, device="cuda:7"))
    assert not (tmp_path / "out").exists()


def test_a_checkpoint_trained_on_a_gpu_loads_and_scores_on_a_cpu(tiny_checkpoint, synth_parquet, tmp_path):
    """The training device is a record of how it was trained, not a requirement of the machine that loads it:
    train on a GPU, evaluate, export and score on CPUs."""
    copy = shutil.copytree(tiny_checkpoint, tmp_path / "trained_on_cuda")
    config = json.loads((copy / "config.json").read_text())
    config["train"]["device"] = "cuda:1"
    (copy / "config.json").write_text(json.dumps(config))
    loaded = load_checkpoint(copy)
    assert loaded.train_config.device == "cuda:1" and next(loaded.model.parameters()).device.type == "cpu"
    assert evaluate_checkpoint(copy, synth_parquet) == evaluate_checkpoint(tiny_checkpoint, synth_parquet)


def copy_with_schema_version(checkpoint: Path, out: Path, version: int) -> Path:
    shutil.copytree(checkpoint, out)
    config = json.loads((out / "config.json").read_text())
    config["schema_version"] = version
    (out / "config.json").write_text(json.dumps(config))
    return out


def test_newer_schema_version_is_refused(tiny_checkpoint, tmp_path):
    copy = copy_with_schema_version(tiny_checkpoint, tmp_path / "copy", 99)
    with pytest.raises(CheckpointError, match=r"schema_version \| received 99"):
        load_checkpoint(copy)


@pytest.mark.parametrize("model", ["sasrec", "hstu"])
def test_schema_1_loads_except_for_the_rescaled_hstu(tiny_checkpoints, tmp_path, model):
    copy = copy_with_schema_version(tiny_checkpoints(model, "softmax"), tmp_path / "copy", 1)
    if model == "sasrec":
        assert load_checkpoint(copy).model_config.model == "sasrec"
    else:
        with pytest.raises(CheckpointError, match=r"received 1 for a hstu model.*retrain"):
            load_checkpoint(copy)


@pytest.mark.parametrize("head", list(HEADS))
def test_bf16_autocast_trains_and_keeps_fp32_weights(synth_parquet, make_configs, head):
    data = prepare_data(synth_parquet)
    model_cfg, train_cfg = make_configs(epochs=4, precision="bf16", patience=10)
    model_cfg = dataclasses.replace(model_cfg, head=head)
    ckpt = train_model(data, model_cfg, train_cfg, progress=False)
    losses = ckpt.meta["training"]["losses"]
    assert losses[-1] < losses[0] * 0.97
    assert all(p.dtype == torch.float32 for p in ckpt.model.parameters())
    assert ckpt.meta["metrics"]["valid"]["ndcg@10"] > 0.05


def test_target_in_history_by_hand():
    from seqrec.data import EvalExamples
    from seqrec.training.evaluation import target_in_history

    items = np.array([1, 2, 3, 4, 5, 5, 7])
    examples = EvalExamples(users=np.arange(4), history_start=np.array([0, 0, 4, 6]),
                            history_end=np.array([3, 3, 6, 6]), targets=np.array([2, 4, 5, 7]))
    assert target_in_history(items, examples).tolist() == [True, False, True, False]


def test_by_repeat_groups_partition_the_users(tiny_checkpoint, synth_parquet):
    grouped = evaluate_checkpoint(tiny_checkpoint, synth_parquet, "test", by_repeat=True)
    plain = evaluate_checkpoint(tiny_checkpoint, synth_parquet, "test")
    assert grouped["repeat"]["users"] > 0 and grouped["new"]["users"] > 0
    assert grouped["repeat"]["users"] + grouped["new"]["users"] == grouped["all"]["users"] == plain["users"]
    weighted = sum(grouped[g]["ndcg@10"] * grouped[g]["users"] for g in ("repeat", "new")) / plain["users"]
    assert weighted == pytest.approx(plain["ndcg@10"]) and grouped["all"]["ndcg@10"] == pytest.approx(plain["ndcg@10"])
    excluded = evaluate_checkpoint(tiny_checkpoint, synth_parquet, "test", exclude_history=True, by_repeat=True)
    assert excluded["repeat"]["hr@50"] == 0.0 and excluded["all"]["top10_repeat_share"] == 0.0
    assert 0.0 < grouped["all"]["top10_repeat_share"] <= 1.0


def test_excluded_items_never_count_in_a_small_catalog(make_configs, tmp_path):
    """With fewer eligible items than 10, the top 10 ran into -inf slots (the excluded history, padding): they
    counted as history items in the share, and an excluded repeated target (rank N) as a hit at @10 and @50."""
    rows = [(1, [1, 2, 3, 4]), (2, [3]), (3, [4, 5]), (4, [1, 2, 3, 4, 5, 6]), (5, [2, 3, 2, 3, 2])]
    table = pa.table({"user_id": [user for user, items in rows for _ in items],
                      "item_id": [item for _, items in rows for item in items],
                      "timestamp": [1000 + slot for _, items in rows for slot in range(len(items))]})
    pq.write_table(table, tmp_path / "six_items.parquet")
    model_cfg, train_cfg = make_configs(epochs=1)
    train(tmp_path / "six_items.parquet", tmp_path / "ckpt", model_cfg, train_cfg, progress=False)
    excluded = evaluate_checkpoint(tmp_path / "ckpt", tmp_path / "six_items.parquet", exclude_history=True,
                                   by_repeat=True)
    assert excluded["repeat"]["users"] == 1 and excluded["repeat"]["hr@50"] == excluded["repeat"]["ndcg@10"] == 0.0
    assert all(excluded[group]["top10_repeat_share"] == 0.0 for group in ("all", "repeat", "new"))


def test_a_group_without_users_has_no_metrics_rather_than_zeros():
    """On data without repeats the 'repeat' group is empty: None (JSON null, 'n/a' in the table), not 0.0."""
    from seqrec.training.evaluation import by_repeat_metrics

    ranks, shares = np.array([0, 3, 20]), np.array([0.1, np.nan, 0.0])
    groups = by_repeat_metrics(ranks, shares, np.zeros(3, dtype=bool))
    assert groups["repeat"]["users"] == 0 and groups["repeat"]["ndcg@10"] is None
    assert groups["repeat"]["top10_repeat_share"] is None and set(groups["repeat"]) == set(groups["new"])
    assert groups["new"] == groups["all"] and groups["new"]["hr@10"] == pytest.approx(2 / 3)
    assert groups["new"]["top10_repeat_share"] == pytest.approx(0.05)  # the user scored on nothing left out


def test_cpr_recency_bias_trains_at_its_own_learning_rate():
    from seqrec.config import ModelConfig
    from seqrec.models import build_model
    from seqrec.models.cpr import RECENCY_LR_SCALE
    from seqrec.training.loop import parameter_groups

    net = build_model(ModelConfig(head="cpr", num_items=30, dim=8, heads=2, max_length=6))
    groups = parameter_groups(net, lr=1e-3)
    assert [group["lr"] for group in groups] == [1e-3, 1e-3 * RECENCY_LR_SCALE]
    assert groups[1]["params"] == [net.head.pointer_recency]
    assert sum(len(group["params"]) for group in groups) == len(list(net.parameters()))
    optimizer = torch.optim.AdamW(groups, lr=1e-3)
    net.head.pointer_recency.grad = torch.ones(6)
    optimizer.step()  # Adam's first step moves each entry by its group's lr
    torch.testing.assert_close(net.head.pointer_recency.detach(), torch.full((6,), -1e-3 * RECENCY_LR_SCALE))


def test_refit_trains_on_the_validation_items_for_the_chosen_epochs(synth_parquet, make_configs):
    from seqrec.training.loop import refit_split

    data = prepare_data(synth_parquet)
    moved = refit_split(data.split)
    valid = data.split.valid
    assert (moved.train_end[valid.users] == data.split.train_end[valid.users] + 1).all()
    assert (data.seqs.items[moved.train_end[valid.users] - 1] == valid.targets).all()  # the valid target is in
    assert (moved.train_end[valid.users] == data.split.test.history_end).all()  # the test target is not
    model_cfg, train_cfg = make_configs(epochs=6, patience=2)
    plain = train_model(data, model_cfg, train_cfg, progress=False)
    refit = train_model(data, model_cfg, dataclasses.replace(train_cfg, refit=True), progress=False)
    chosen = plain.meta["training"]["best_epoch"]
    assert refit.meta["training"]["refit"]["epochs"] == chosen and len(refit.meta["training"]["refit"]["losses"]) == chosen
    assert refit.meta["metrics"]["valid"] == plain.meta["metrics"]["valid"]  # the selection run's, not the refit's
    assert refit.meta["metrics"]["test"] == evaluate(refit.model, data.seqs, data.split.test)
    assert refit.meta["metrics"]["test"] != plain.meta["metrics"]["test"]


def test_a_diverging_first_epoch_is_a_typed_error(synth_parquet, make_configs):
    model_cfg, train_cfg = make_configs(epochs=3, lr=1e30)  # Adam moves every weight by ~1e30: the logits overflow
    with pytest.raises(TrainingDivergedError, match=r"training loss at epoch 1, batch \d+ \| received nan"):
        train_model(prepare_data(synth_parquet), model_cfg, train_cfg, progress=False)


def test_a_loss_that_diverges_later_keeps_the_best_weights(synth_parquet, make_configs, monkeypatch):
    real_epoch = loop.train_epoch

    def break_at_epoch_3(model, *args):  # the weights go bad during epoch 3: its loss is NaN
        if args[-1] == 3:
            with torch.no_grad():
                model.item_embedding.weight[5] = float("nan")
        return real_epoch(model, *args)

    monkeypatch.setattr(loop, "train_epoch", break_at_epoch_3)
    data = prepare_data(synth_parquet)
    ckpt = train_model(data, *make_configs(epochs=6), progress=False)
    history = ckpt.meta["training"]
    assert history["epochs"] == 2 and history["best_epoch"] in (1, 2)
    assert "epoch 3, batch 1 | received nan" in history["stopped"]
    assert all(torch.isfinite(p).all() for p in ckpt.model.parameters())
    assert ckpt.meta["metrics"]["valid"]["ndcg@10"] == pytest.approx(history["best_valid_ndcg@10"])


def test_training_refuses_an_out_that_holds_its_own_data(tiny_checkpoint, synth_parquet, make_configs, tmp_path):
    """--out is replaced whole: with the data file inside it, training deleted its own input."""
    held = shutil.copytree(tiny_checkpoint, tmp_path / "ckpt")
    shutil.copy(synth_parquet, held / "data.parquet")
    with pytest.raises(ConfigError, match=r"--out '.*ckpt' \| received '.*data.parquet' or a directory holding it"):
        train(held / "data.parquet", held, *make_configs(), progress=False)
    assert (held / "data.parquet").is_file()


def test_a_refit_that_diverges_keeps_the_selection_run(synth_parquet, make_configs, monkeypatch, tmp_path):
    """The refit had no divergence check: weights spoiled by its last step were saved (NaN, test NDCG 0) with
    no word. Now it is checked like the selection run, and a diverged refit keeps the selection run's model."""
    real_epoch = loop.train_epoch
    models = []

    def spoil_the_refit(model, *args):
        loss = real_epoch(model, *args)
        models.append(model) if model not in models else None
        if model is models[-1] and len(models) == 2:  # the refit model, after its loss was checked
            with torch.no_grad():
                model.item_embedding.weight[5] = float("nan")
        return loss

    monkeypatch.setattr(loop, "train_epoch", spoil_the_refit)
    ckpt = train_model(prepare_data(synth_parquet), *make_configs(epochs=2, refit=True), tmp_path / "ckpt",
                       progress=False)
    refit = ckpt.meta["training"]["refit"]
    assert "weights and scores after epoch 1" in refit["diverged"] and "kept the selection run's" in refit["diverged"]
    assert ckpt.model is not models[1] and all(torch.isfinite(p).all() for p in ckpt.model.parameters())
    assert ckpt.meta["metrics"]["test"]["ndcg@10"] > 0
    assert load_checkpoint(tmp_path / "ckpt").meta["training"]["refit"] == refit


def test_saved_metrics_rank_as_the_selection_did(synth_parquet, make_configs):
    """With --exclude-history the selection ranks without history items; so do the checkpoint's metrics."""
    data = prepare_data(synth_parquet)
    ckpt = train_model(data, *make_configs(epochs=2, exclude_history=True), progress=False)
    assert ckpt.meta["metrics"]["valid"]["ndcg@10"] == pytest.approx(ckpt.meta["training"]["best_valid_ndcg@10"])
    assert ckpt.meta["metrics"]["test"] == evaluate(ckpt.model, data.seqs, data.split.test, exclude_history=True)


@pytest.mark.parametrize("option,value", [("eval_every", 0), ("weight_decay", -0.1), ("eval_users", 0)])
def test_bad_train_option_is_a_typed_error(option, value):
    with pytest.raises(ConfigError, match=rf"{option} \| received {value}, expected >= "):
        TrainConfig(**{option: value})
