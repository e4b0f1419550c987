"""Synthetic interaction generator."""

from __future__ import annotations

import hashlib
import time

import numpy as np
import pyarrow as pa
import pytest

from seqrec.data import SynthConfig, generate_interactions, interaction_stats
from seqrec.data.schema import validate_interactions
from seqrec.errors import ConfigError


def test_schema_ranges_and_increasing_timestamps() -> None:
    cfg = SynthConfig(users=300, items=80, min_length=3, max_length=20, taste_clusters=7)
    table = generate_interactions(cfg)
    assert table.schema.types == [pa.int64()] * 3
    assert validate_interactions(table).equals(table)
    users, items = table["user_id"].to_numpy(), table["item_id"].to_numpy()
    times = table["timestamp"].to_numpy()
    assert items.min() >= 1 and items.max() <= 80
    lengths = np.bincount(users)[1:]
    assert lengths.size == 300 and lengths.min() >= 3 and lengths.max() <= 20
    same_user = users[1:] == users[:-1]
    assert np.all(times[1:][same_user] > times[:-1][same_user])
    assert np.all(np.diff(users) >= 0)


def test_deterministic_per_seed() -> None:
    first = generate_interactions(SynthConfig(users=200, repeat_prob=0.3, seed=7))
    assert first.equals(generate_interactions(SynthConfig(users=200, repeat_prob=0.3, seed=7)))
    assert not first.equals(generate_interactions(SynthConfig(users=200, repeat_prob=0.3,
                                                              seed=8)))


def test_no_repeats_when_repeat_prob_is_zero() -> None:
    table = generate_interactions(SynthConfig(users=2000, items=60, max_length=60))
    assert interaction_stats(table)["repeat_share"] == 0.0  # even when users exhaust the items


@pytest.mark.parametrize("p", [0.2, 0.5])
def test_repeat_share_close_to_repeat_prob(p: float) -> None:
    table = generate_interactions(SynthConfig(users=2000, repeat_prob=p))
    assert interaction_stats(table)["repeat_share"] == pytest.approx(p, abs=0.05)


def test_sequences_have_learnable_transitions() -> None:
    table = generate_interactions(SynthConfig(users=4000, items=300))
    users, items = table["user_id"].to_numpy(), table["item_id"].to_numpy()
    same = users[1:] == users[:-1]
    prev, nxt = items[:-1][same], items[1:][same]
    half = prev.size // 2
    counts = np.zeros((301, 301))
    np.add.at(counts, (prev[:half], nxt[:half]), 1)
    top = np.argsort(-counts, axis=1)[:, :10]
    bigram_hits = (top[prev[half:]] == nxt[half:, None]).any(axis=1).mean()
    popular = np.argsort(-np.bincount(items[:half], minlength=301))[:10]
    assert bigram_hits > 2 * np.isin(nxt[half:], popular).mean()


def test_fast_on_100k_users() -> None:
    start = time.process_time()  # CPU time: other jobs on a shared machine do not make it flaky
    table = generate_interactions(SynthConfig(users=100_000, repeat_prob=0.2))
    assert time.process_time() - start < 10.0
    assert table["user_id"].to_numpy()[-1] == 100_000


@pytest.mark.parametrize(("field", "value", "message"), [
    ("users", 0, r"users \| received 0, expected an integer >= 1"),
    ("repeat_prob", 1.5, r"repeat_prob \| received 1\.5"),
    ("max_length", 600, r"max_length \| received 600, expected min_length <= max_length <= items "
                        r"\(received min_length 5, max_length 600, items 500\)"),
    ("max_length", 0, r"max_length \| received 0, expected an integer >= 1"),
    ("min_length", 0, r"min_length \| received 0, expected an integer >= 1"),
    ("min_length", 60, r"min_length \| received 60, expected min_length <= max_length <= items \(received "
                       r"min_length 60, max_length 50 by default, min\(50, items\), items 500\)"),
    ("users", 10**13, r"users \| received 10000000000000, expected users x max_length <= 250,000,000"),
    ("taste_clusters", 0, r"taste_clusters \| received 0"),
])
def test_config_ranges(field: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        SynthConfig(**{field: value})


@pytest.mark.parametrize("items", [2, 5, 19])
def test_fewer_items_than_default_taste_clusters(items: int) -> None:
    cfg = SynthConfig(users=5, items=items, min_length=2, max_length=2)
    assert cfg.taste_clusters == items
    table = generate_interactions(cfg)
    assert table["item_id"].to_numpy().max() <= items


@pytest.mark.parametrize("items", [2, 5, 20, 49])
def test_small_catalogs_take_their_length_defaults_from_the_catalog(items: int) -> None:
    """`data synth --items 20` used to fail on a max length of 50 the user never set."""
    cfg = SynthConfig(users=30, items=items)
    assert cfg.max_length == items and cfg.min_length == min(5, items)
    lengths = np.unique(generate_interactions(cfg)["user_id"].to_numpy(), return_counts=True)[1]
    assert lengths.min() >= cfg.min_length and lengths.max() <= items
    assert SynthConfig(items=500).max_length == 50 and SynthConfig(items=500).min_length == 5


def test_explicit_taste_clusters_above_items_still_refused() -> None:
    with pytest.raises(ConfigError, match=r"taste_clusters \| received 20, expected an "
                                          r"integer in \[1, items=19\]"):
        SynthConfig(items=19, max_length=10, taste_clusters=20)


def _fingerprint(table: pa.Table) -> str:
    digest = hashlib.sha256()
    for name in table.column_names:
        digest.update(name.encode())
        digest.update(table[name].to_numpy().astype("<i8").tobytes())
    return digest.hexdigest()[:16]


@pytest.mark.parametrize(("options", "rows", "fingerprint"), [
    # Generated by the code before taste_clusters defaulted to min(20, items): unchanged since.
    ({"users": 50, "items": 20, "max_length": 15, "repeat_prob": 0.2, "seed": 3}, 444,
     "0662a2d2fdea7af6"),
    ({"users": 50, "seed": 1}, 1103, "5127eab37e465d47"),
])
def test_output_unchanged_for_items_from_20(options: dict, rows: int, fingerprint: str) -> None:
    table = generate_interactions(SynthConfig(**options))
    assert (table.num_rows, _fingerprint(table)) == (rows, fingerprint)
