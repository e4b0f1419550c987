"""Synthetic interaction logs with structure a sequential model can learn.

Items have Zipf popularity and belong to taste clusters; each item has a few successor items,
mostly from its own cluster. Each user has one taste cluster and, at every step, either repeats
a recent item, follows a successor of the previous item, or draws from its cluster by popularity
(with a little global popularity mixed in). The generator steps through positions
0..max_length-1 and acts on all still-active users at once, so its cost does not grow with a
Python loop per interaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from seqrec.errors import ConfigError, received_expected

_GLOBAL_MIX = 0.1  # share of taste draws taken from global popularity instead
_OWN_CLUSTER_SUCCESSORS = 0.8  # share of an item's successors drawn from its own cluster
_RESAMPLE_ROUNDS = 4  # popularity re-draws before falling back to a uniform unseen item
_START_TIME = 1_600_000_000  # seconds since the epoch of the earliest first interaction
_DEFAULT_TASTE_CLUSTERS = 20  # capped at the number of items when taste_clusters is not given
_DEFAULT_MAX_LENGTH = 50  # capped at the number of items: without repeats a history holds each item once
_DEFAULT_MIN_LENGTH = 5
_MAX_CELLS = 250_000_000  # users x max_length: the (users, max_length) int64 history and its copies fit in memory


@dataclass
class SynthConfig:
    """Size, randomness and structure of a synthetic interaction log."""

    users: int = 2000
    items: int = 500
    repeat_prob: float = 0.0
    seed: int = 0
    min_length: int | None = None  # None: min(5, max_length)
    max_length: int | None = None  # None: min(50, items)
    zipf_exponent: float = 1.1
    taste_clusters: int | None = None  # None: min(20, items)
    transitions_per_item: int = 5
    transition_prob: float = 0.6
    repeat_window: int = 10

    def __post_init__(self) -> None:
        """Resolve the defaults that depend on the catalog; raise ConfigError for any value out of range,
        naming an option the caller gave before one resolved from a default."""
        given = {"min_length": self.min_length, "max_length": self.max_length}
        for name, value in given.items():
            if value is not None and value < 1:
                raise ConfigError(received_expected(name, value, "an integer >= 1"))
        if self.taste_clusters is None:
            self.taste_clusters = min(_DEFAULT_TASTE_CLUSTERS, self.items)
        if self.max_length is None:
            self.max_length = max(min(_DEFAULT_MAX_LENGTH, self.items), 1)
        if self.min_length is None:
            self.min_length = min(_DEFAULT_MIN_LENGTH, self.max_length)
        blamed = "max_length" if given["max_length"] is not None or given["min_length"] is None else "min_length"
        checks = [
            ("users", self.users >= 1, "an integer >= 1"),
            ("items", self.items >= 2, "an integer >= 2"),
            ("repeat_prob", 0.0 <= self.repeat_prob <= 1.0, "a probability in [0, 1]"),
            ("seed", 0 <= self.seed <= 2**63 - 1, "an integer in [0, 2**63 - 1]"),  # as training's
            (blamed, self.min_length <= self.max_length <= self.items,
             f"min_length <= max_length <= items (received min_length {self.min_length}, max_length "
             f"{self.max_length}{'' if given['max_length'] is not None else ' by default, min(50, items)'}, "
             f"items {self.items})"),
            ("users", self.users * self.max_length <= _MAX_CELLS,
             f"users x max_length <= {_MAX_CELLS:,} (the log is built in memory; received "
             f"{self.users:,} x {self.max_length})"),
            ("items", self.items * self.transitions_per_item <= _MAX_CELLS,
             f"items x transitions_per_item <= {_MAX_CELLS:,} (the item structure is built in memory; received "
             f"{self.items:,} x {self.transitions_per_item})"),
            ("zipf_exponent", self.zipf_exponent >= 0.0, "a number >= 0"),
            ("taste_clusters", 1 <= self.taste_clusters <= self.items,
             f"an integer in [1, items={self.items}]"),
            ("transitions_per_item", self.transitions_per_item >= 1, "an integer >= 1"),
            ("transition_prob", 0.0 <= self.transition_prob <= 1.0, "a probability in [0, 1]"),
            ("repeat_window", self.repeat_window >= 1, "an integer >= 1"),
        ]
        for name, ok, expected in checks:
            if not ok:
                raise ConfigError(received_expected(name, getattr(self, name), expected))


@dataclass
class _World:
    """Item-side structure shared by all users (items are 1..I; index 0 unused)."""

    global_cdf: np.ndarray  # (I,) cumulative popularity over items 1..I
    cluster_keys: np.ndarray  # (I,) cluster id + cumulative popularity within the cluster
    cluster_items: np.ndarray  # (I,) items sorted by cluster
    cluster_end: np.ndarray  # (C,) end of each cluster in cluster_items
    successors: np.ndarray  # (I + 1, T) successor items of each item


def generate_interactions(cfg: SynthConfig) -> pa.Table:
    """Generate a log with user_id (1..U), item_id (1..I), timestamp (increasing per user).

    Deterministic for a given config. With ``repeat_prob`` 0 no user meets an item twice;
    otherwise the share of repeated interactions is close to ``repeat_prob``.
    """
    rng = np.random.default_rng(cfg.seed)
    world = _build_world(cfg, rng)
    lengths = _draw_lengths(cfg, rng)  # (U,)
    order = np.argsort(-lengths, kind="stable")  # longest first: active users are a prefix
    taste = rng.integers(0, cfg.taste_clusters, size=cfg.users)[order]  # (U,)
    history = _simulate(cfg, world, lengths[order], taste, rng)  # (U, max_length)
    history[order] = history.copy()  # rows back in user order
    return _to_table(history, lengths, rng)


def _build_world(cfg: SynthConfig, rng: np.random.Generator) -> _World:
    """Draw popularity, clusters and successor lists."""
    rank = rng.permutation(cfg.items) + 1
    weight = rank.astype(np.float64) ** -cfg.zipf_exponent  # weight[i - 1] of item i
    cluster = rng.permutation(cfg.items) % cfg.taste_clusters  # every cluster non-empty
    by_cluster = np.argsort(cluster, kind="stable")
    cluster_end = np.cumsum(np.bincount(cluster, minlength=cfg.taste_clusters))
    keys = _cluster_keys(weight[by_cluster], cluster[by_cluster], cluster_end)
    world = _World(np.cumsum(weight) / weight.sum(), keys, by_cluster + 1, cluster_end,
                   np.zeros((cfg.items + 1, cfg.transitions_per_item), dtype=np.int64))
    world.successors[1:] = _draw_successors(cfg, world, cluster, rng)
    return world


def _cluster_keys(weight: np.ndarray, cluster: np.ndarray, cluster_end: np.ndarray) -> np.ndarray:
    """Cluster id + cumulative share of popularity within the cluster (items sorted by cluster).

    The keys increase monotonically, so one ``searchsorted`` of ``c + u`` (u uniform in [0, 1))
    draws an item of cluster ``c`` with probability proportional to its weight.
    """
    within = np.cumsum(weight)
    totals = within[cluster_end - 1]
    previous = np.concatenate([[0.0], totals[:-1]])
    return cluster + (within - previous[cluster]) / (totals - previous)[cluster]


def _draw_successors(cfg: SynthConfig, world: _World, cluster: np.ndarray,
                     rng: np.random.Generator) -> np.ndarray:
    """Successor items per item: mostly popular items of its own cluster, some global."""
    shape = (cfg.items, cfg.transitions_per_item)
    own = np.repeat(cluster, cfg.transitions_per_item)
    picks = _from_clusters(world, own, rng).reshape(shape)
    glob = _from_global(world, rng, picks.size).reshape(shape)
    return np.where(rng.random(shape) < _OWN_CLUSTER_SUCCESSORS, picks, glob)


def _from_clusters(world: _World, clusters: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One item per entry of ``clusters``, drawn by popularity within that cluster."""
    pos = np.searchsorted(world.cluster_keys, clusters + rng.random(clusters.size), side="right")
    return world.cluster_items[np.minimum(pos, world.cluster_end[clusters] - 1)]


def _from_global(world: _World, rng: np.random.Generator, size: int) -> np.ndarray:
    """``size`` items drawn by global popularity."""
    pos = np.searchsorted(world.global_cdf, rng.random(size), side="right")
    return np.minimum(pos, world.global_cdf.size - 1) + 1


def _draw_lengths(cfg: SynthConfig, rng: np.random.Generator) -> np.ndarray:
    """Sequence lengths, log-uniform on [min_length, max_length] (many short, few long)."""
    low, high = np.log(cfg.min_length), np.log(cfg.max_length + 1)
    lengths = np.exp(rng.uniform(low, high, size=cfg.users)).astype(np.int64)
    return np.clip(lengths, cfg.min_length, cfg.max_length)


def _step_repeat_prob(cfg: SynthConfig, lengths: np.ndarray) -> float:
    """Per-step repeat probability once a history exists, so the overall share is repeat_prob.

    The first step of a user can never repeat, so steps after it repeat with probability
    repeat_prob * interactions / (interactions - users), capped at 1.
    """
    total = int(lengths.sum())
    later = total - lengths.size
    return 0.0 if later == 0 else min(1.0, cfg.repeat_prob * total / later)


def _simulate(cfg: SynthConfig, world: _World, lengths: np.ndarray, taste: np.ndarray,
              rng: np.random.Generator) -> np.ndarray:
    """Fill a (U, max_length) history, one position at a time over the active users."""
    history = np.zeros((lengths.size, cfg.max_length), dtype=np.int64)  # (U, L)
    p_repeat = _step_repeat_prob(cfg, lengths)
    for t in range(cfg.max_length):
        active = int(np.searchsorted(-lengths, -t, side="left"))  # lengths sorted descending
        if active == 0:
            break
        hist = history[:active, :t]  # (A, t)
        fresh = _fresh_items(cfg, world, hist, taste[:active], rng)  # (A,)
        if t > 0 and p_repeat > 0:
            window = min(t, cfg.repeat_window)
            back = (rng.random(active) * window).astype(np.int64)
            repeat = hist[np.arange(active), t - 1 - back]
            fresh = np.where(rng.random(active) < p_repeat, repeat, fresh)
        history[:active, t] = fresh
    return history


def _fresh_items(cfg: SynthConfig, world: _World, hist: np.ndarray, taste: np.ndarray,
                 rng: np.random.Generator) -> np.ndarray:
    """An item each user has not met yet: successor of the last item, or a taste draw."""
    active, t = hist.shape
    picks = _from_clusters(world, taste, rng)
    mixed = rng.random(active) < _GLOBAL_MIX
    picks[mixed] = _from_global(world, rng, int(mixed.sum()))
    if t > 0:
        follow = rng.random(active) < cfg.transition_prob
        slot = rng.integers(0, cfg.transitions_per_item, size=active)
        successor = world.successors[hist[:, t - 1], slot]
        picks = np.where(follow, successor, picks)
    return _replace_seen(cfg, world, hist, taste, picks, rng)


def _replace_seen(cfg: SynthConfig, world: _World, hist: np.ndarray, taste: np.ndarray,
                  picks: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Re-draw picks the user has already met: taste, then global, then uniform unseen."""
    if hist.shape[1] == 0:
        return picks
    rows = np.flatnonzero((hist == picks[:, None]).any(axis=1))
    for round_ in range(2 * _RESAMPLE_ROUNDS):
        if rows.size == 0:
            return picks
        if round_ < _RESAMPLE_ROUNDS:
            picks[rows] = _from_clusters(world, taste[rows], rng)
        else:
            picks[rows] = _from_global(world, rng, rows.size)
        rows = rows[(hist[rows] == picks[rows, None]).any(axis=1)]
    if rows.size:
        picks[rows] = _uniform_unseen(cfg.items, hist[rows], rng)
    return picks


def _uniform_unseen(items: int, hist: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """For each row of ``hist``, an item of 1..items not in that row, uniformly."""
    seen = np.sort(hist, axis=1)  # (R, t)
    duplicate = np.zeros(seen.shape, dtype=bool)
    duplicate[:, 1:] = seen[:, 1:] == seen[:, :-1]
    distinct = seen.shape[1] - duplicate.sum(axis=1)
    value = (rng.random(seen.shape[0]) * (items - distinct)).astype(np.int64) + 1  # k-th unseen
    for j in range(seen.shape[1]):  # walk past each distinct seen item at or below it
        value += (seen[:, j] <= value) & ~duplicate[:, j]
    return value


def _to_table(history: np.ndarray, lengths: np.ndarray, rng: np.random.Generator) -> pa.Table:
    """Long table of the histories with strictly increasing per-user timestamps."""
    mask = np.arange(history.shape[1]) < lengths[:, None]  # (U, L)
    users = np.repeat(np.arange(1, lengths.size + 1, dtype=np.int64), lengths)
    gaps = rng.integers(1, 86_400, size=history.shape)  # (U, L) seconds between events
    gaps[:, 0] = _START_TIME + rng.integers(0, 365 * 86_400, size=lengths.size)
    times = np.cumsum(gaps, axis=1)
    return pa.table({"user_id": users, "item_id": history[mask], "timestamp": times[mask]})


def synthesize_to(cfg: SynthConfig, dst: str | Path) -> dict:
    """``seqrec data synth``: generate, write Parquet to ``dst``, return its stats."""
    from seqrec.data.importers import write_interactions
    from seqrec.data.stats import interaction_stats

    table = generate_interactions(cfg)
    write_interactions(table, dst)
    return {"written": str(dst), **interaction_stats(table)}
