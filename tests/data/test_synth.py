"""Synthetic interaction generator."""

from __future__ import annotations

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
    ("users", 0, r"SynthConfig\.users \| received 0, expected an integer >= 1"),
    ("repeat_prob", 1.5, r"SynthConfig\.repeat_prob \| received 1\.5"),
    ("max_length", 600, r"SynthConfig\.max_length \| received 600, expected an integer in "
                        r"\[min_length=5, items=500\]"),
    ("taste_clusters", 0, r"SynthConfig\.taste_clusters \| received 0"),
])
def test_config_ranges(field: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        SynthConfig(**{field: value})
