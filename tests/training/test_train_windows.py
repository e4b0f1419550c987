"""Training windows: with train_windows "all" every training item but a user's first is a target exactly once,
however long the history; "last" is the single most recent window of the runs recorded before the option."""

import dataclasses
import json
import re

import numpy as np
import pyarrow as pa
import pytest
import torch

from seqrec.config import TrainConfig, resolve_configs
from seqrec.data import Split, UserSequences
from seqrec.errors import ConfigError, DataError
from seqrec.training import load_checkpoint, prepare_data, train_model
from seqrec.training.loop import _padded_batches, train_windows

EDGE_LENGTHS = (0, 1, 2)  # with max_length, max_length + 1 and 3 * max_length + 2 per test


def ranges(lengths: list[int], seed: int = 0) -> tuple[UserSequences, Split]:
    """Users whose training range [offset, train_end) holds ``lengths[u]`` items, followed by 0 to 2 held-out
    items; every item of the flat array is distinct (its position + 1), so a target names its slot."""
    rng = np.random.default_rng(seed)
    totals = np.asarray(lengths) + rng.integers(0, 3, len(lengths))  # (U,)
    offsets = np.concatenate([[0], np.cumsum(totals)]).astype(np.int64)  # (U + 1,)
    items = np.arange(1, offsets[-1] + 1, dtype=np.int64)  # (T,)
    seqs = UserSequences(pa.array(np.arange(len(lengths))), offsets, items, np.arange(offsets[-1], dtype=np.int64))
    return seqs, Split(offsets[:-1] + np.asarray(lengths, dtype=np.int64), None, None)


def random_lengths(max_length: int, seed: int) -> list[int]:
    edges = [*EDGE_LENGTHS, max_length, max_length + 1, 3 * max_length + 2]
    return edges + np.random.default_rng(seed).integers(0, 5 * max_length, 40).tolist()


def old_train_windows(seqs: UserSequences, split: Split, max_length: int) -> tuple[np.ndarray, np.ndarray]:
    """train_windows as it was before the option: the most recent max_length + 1 items of each user."""
    ends = split.train_end
    starts = np.maximum(seqs.offsets[:-1], ends - (max_length + 1))
    keep = ends - starts >= 2
    return starts[keep], ends[keep]


@pytest.mark.parametrize("max_length", [1, 2, 5, 7])
def test_the_targets_of_all_windows_partition_each_training_range(max_length):
    lengths = random_lengths(max_length, seed=max_length)
    seqs, split = ranges(lengths, seed=max_length)
    windows = train_windows(seqs, split, max_length, "all")
    owner = np.searchsorted(seqs.offsets, windows.starts, side="right") - 1  # (W,) user of each window
    for user, n in enumerate(lengths):
        start, end = seqs.offsets[user], split.train_end[user]
        mine = np.flatnonzero(owner == user)
        assert len(mine) == (0 if n < 2 else -(-(n - 1) // max_length))  # ceil((n - 1) / max_length)
        if not len(mine):
            continue
        assert (windows.starts[mine] >= start).all() and (windows.ends[mine] <= end).all()
        targets = np.concatenate([np.arange(s + 1, e) for s, e in zip(windows.starts[mine], windows.ends[mine])])
        assert np.sort(targets).tolist() == list(range(start + 1, end))  # each once, none outside the range
        full = np.sort(windows.lengths[mine])[1:]  # all but the shortest (the oldest) window are full
        assert (full == max_length + 1).all() and windows.lengths[mine].min() >= 2
    assert windows.summary() == {"train_windows": "all", "windows": len(owner), "left_out": 0,
                                 "targets": sum(max(n - 1, 0) for n in lengths), "training_interactions": sum(lengths)}


def test_padded_batches_put_every_training_target_in_exactly_one_slot():
    """What the loss reads: the non-padding targets of every batch are the range's items but the first, once."""
    max_length = 4
    lengths = random_lengths(max_length, seed=11)
    seqs, split = ranges(lengths, seed=11)
    windows = train_windows(seqs, split, max_length, "all")
    batches = np.array_split(np.random.default_rng(0).permutation(len(windows)), 7)
    seen = []
    for inputs, _, targets in _padded_batches(seqs, windows, batches, max_length, "cpu"):
        assert inputs.shape == targets.shape and inputs.shape[1] <= max_length  # (B, L)
        assert ((inputs > 0) == (targets > 0)).all()  # every real input slot predicts a real next item
        seen += targets[targets > 0].tolist()
    expected = [item for user, n in enumerate(lengths) if n >= 2
                for item in seqs.items[seqs.offsets[user] + 1: split.train_end[user]]]
    assert sorted(seen) == sorted(expected) and len(set(seen)) == len(seen)


@pytest.mark.parametrize("max_length", [1, 3, 8])
def test_last_is_the_old_windows_exactly(max_length):
    seqs, split = ranges(random_lengths(max_length, seed=3), seed=3)
    last = train_windows(seqs, split, max_length, "last")
    starts, ends = old_train_windows(seqs, split, max_length)
    np.testing.assert_array_equal(last.starts, starts)
    np.testing.assert_array_equal(last.ends, ends)
    every = train_windows(seqs, split, max_length, "all")
    assert last.left_out == every.summary()["targets"] - last.summary()["targets"] > 0
    assert last.left_out == int((split.train_end - seqs.offsets[:-1]).clip(0).sum() - last.lengths.sum()
                                - ((split.train_end - seqs.offsets[:-1]) == 1).sum())  # older than the window


def test_no_user_with_two_training_items_is_a_typed_error():
    seqs, split = ranges([0, 1, 1])
    for mode in ("all", "last"):
        with pytest.raises(DataError, match=r"training sequences \| received no user with 2 or more"):
            train_windows(seqs, split, 5, mode)
    with pytest.raises(ConfigError, match=re.escape("train_windows | received 'every', expected one of all, last")):
        train_windows(*ranges([4]), 5, "every")


def scrambled_old_items(max_length: int, seed: int = 0) -> tuple[pa.Table, pa.Table]:
    """Interactions of users longer than the window, and the same with every item older than each user's last
    training window (and its refit window, one item later) shuffled among them: same users, items, times."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(4, 6 * max_length, 80)  # (U,) train range (all but the last 2): 2 or more items
    users = np.repeat(np.arange(len(lengths)), lengths)
    within = np.arange(len(users)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    items = rng.integers(1, 40, len(users))
    old = within < np.repeat(lengths - 2 - (max_length + 1), lengths)  # older than the last window
    scrambled = items.copy()
    scrambled[old] = rng.permutation(items[old])
    assert (scrambled != items).sum() > 100

    def table(values):
        return pa.table({"user_id": users, "item_id": values, "timestamp": 1000 + within})

    return table(items), table(scrambled)


def test_all_trains_on_old_items_and_last_never_reads_them(make_configs):
    """The reviewer's observation: with the last window only, scrambling every older item changed nothing."""
    original, scrambled = (prepare_data(t) for t in scrambled_old_items(max_length=4))
    model_cfg, train_cfg = make_configs(epochs=2, refit=True)  # the refit trains on one item more per user
    model_cfg = dataclasses.replace(model_cfg, max_length=4)
    models = {}
    for mode in ("last", "all"):
        cfg = dataclasses.replace(train_cfg, train_windows=mode)
        models[mode] = [train_model(data, model_cfg, cfg, progress=False) for data in (original, scrambled)]
    for mode, (a, b) in models.items():
        same = all(torch.equal(x, y) for x, y in zip(a.model.state_dict().values(), b.model.state_dict().values()))
        assert same == (mode == "last"), mode
        for run in ("selection", "refit"):
            counts = (a.meta["training"] if run == "selection" else a.meta["training"]["refit"])["per_epoch"]
            assert counts["train_windows"] == mode and (counts["left_out"] > 0) == (mode == "last")
    ranges_ = original.split.train_end - original.seqs.offsets[:-1]
    assert models["all"][0].meta["training"]["per_epoch"]["targets"] == int((ranges_ - 1).sum())
    assert models["all"][0].meta["training"]["refit"]["per_epoch"]["targets"] == int(ranges_.sum())  # + valid item


def test_the_epoch_lines_and_meta_say_what_an_epoch_trains_on(make_configs, tmp_path, capsys):
    original, _ = scrambled_old_items(max_length=4)
    model_cfg, train_cfg = make_configs(epochs=1, train_windows="last")
    ckpt = train_model(prepare_data(original), dataclasses.replace(model_cfg, max_length=4), train_cfg,
                       tmp_path / "ckpt", progress=True)
    counts = ckpt.meta["training"]["per_epoch"]
    assert counts["windows"] == 80 and counts["left_out"] > counts["targets"]
    lines = capsys.readouterr().err
    share = counts["left_out"] / counts["training_interactions"]
    assert (f"each epoch: 80 windows, {counts['targets']:,} target interactions (train_windows last); "
            f"{counts['left_out']:,} of the training ranges' {counts['training_interactions']:,} interactions "
            f"({share:.1%}) are older than each user's last window and left out") in lines
    saved = json.loads((tmp_path / "ckpt" / "meta.json").read_text())["training"]["per_epoch"]
    assert saved == counts and load_checkpoint(tmp_path / "ckpt").train_config.train_windows == "last"


def test_a_checkpoint_saved_before_the_option_says_it_trained_on_the_last_window(tiny_checkpoint, tmp_path):
    import shutil

    old = shutil.copytree(tiny_checkpoint, tmp_path / "old")
    config = json.loads((old / "config.json").read_text())
    assert config["train"].pop("train_windows") == "all"
    (old / "config.json").write_text(json.dumps(config))
    assert load_checkpoint(old).train_config.train_windows == "last"
    assert load_checkpoint(tiny_checkpoint).train_config.train_windows == "all"


def test_train_windows_defaults_to_all_and_refuses_other_values():
    assert TrainConfig().train_windows == "all"
    assert resolve_configs("sasrec", "softmax", {"train_windows": "last"})[1].train_windows == "last"  # --set
    expected = "train_windows | received 'every', expected one of all, last"
    with pytest.raises(ConfigError, match=re.escape(expected)) as raised:
        TrainConfig(train_windows="every")
    assert str(raised.value) == expected  # one line
    with pytest.raises(ConfigError, match=re.escape(expected)):
        resolve_configs("gru4rec", "softmax", {"train_windows": "every"})
