"""The Bayes-optimal scorer of ``seqrec data synth`` data: the ceiling the CPR benchmark runs under.

It knows what no model sees: each user's taste cluster, the item popularities, every item's
successor list and the repeat rule (a repeat copies a uniform slot of the last W items). It scores
each test user's items by

    P(v) = p * (slots of v among the last W) / W + (1 - p) * P_fresh(v),

with P_fresh the generator's draw of an unseen item (successor of the last item with probability
0.6, else the taste cluster by popularity, some global popularity; a seen draw is redrawn from the
cluster), and reports NDCG@10 over all items as ``cpr_accuracy.py`` does. ``--fresh`` weakens the
fresh part to what a model can learn: ``cluster`` drops the successor lists, ``uniform`` knows
nothing about new items.

    python benchmarks/synth_oracle.py --repeat-prob 0.5

Not a test.
"""

from __future__ import annotations

import argparse

import numpy as np

from seqrec.data import synth
from seqrec.data.synth import SynthConfig


def world_and_taste(cfg: SynthConfig):
    """Replay the generator's random draws up to the users' taste clusters (same seed, same order)."""
    rng = np.random.default_rng(cfg.seed)
    world = synth._build_world(cfg, rng)
    lengths = synth._draw_lengths(cfg, rng)
    order = np.argsort(-lengths, kind="stable")
    taste = np.empty(cfg.users, dtype=np.int64)
    taste[order] = rng.integers(0, cfg.taste_clusters, size=cfg.users)[order]
    return world, taste, synth._step_repeat_prob(cfg, lengths)


def popularity(cfg: SynthConfig, world) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Global share (I + 1,), share within its own cluster (I + 1,), and cluster (I + 1,) of every item."""
    global_share = np.zeros(cfg.items + 1)
    global_share[1:] = np.diff(np.concatenate([[0.0], world.global_cdf]))
    cluster_share, cluster_of = np.zeros(cfg.items + 1), np.zeros(cfg.items + 1, dtype=np.int64)
    for c in range(cfg.taste_clusters):
        start = 0 if c == 0 else world.cluster_end[c - 1]
        members = world.cluster_items[start:world.cluster_end[c]]
        cluster_share[members] = np.diff(np.concatenate([[0.0], world.cluster_keys[start:world.cluster_end[c]] - c]))
        cluster_of[members] = c
    return global_share, cluster_share, cluster_of


def oracle_scores(cfg, world, history, cluster, p_repeat, shares, fresh_mode):
    """P(next item) over 0..I for one user's history (item 0 scored -1)."""
    global_share, cluster_share, cluster_of = shares
    seen = np.zeros(cfg.items + 1, dtype=bool)
    seen[history] = seen[0] = True
    own = np.where(cluster_of == cluster, cluster_share, 0.0)
    if fresh_mode == "uniform":
        fresh = np.where(seen, 0.0, 1.0) / (~seen).sum()
    else:
        succ = np.bincount(world.successors[history[-1]], minlength=cfg.items + 1) / cfg.transitions_per_item
        successors = cfg.transition_prob * succ if fresh_mode == "full" else 0.0
        first = successors + (1 - cfg.transition_prob) * ((1 - synth._GLOBAL_MIX) * own + synth._GLOBAL_MIX * global_share)
        unseen_own = np.where(seen, 0.0, own)
        fresh = np.where(seen, 0.0, first) + first[seen].sum() * unseen_own / max(unseen_own.sum(), 1e-12)
    window = history[-min(len(history), cfg.repeat_window):]
    score = p_repeat * np.bincount(window, minlength=cfg.items + 1) / len(window) + (1 - p_repeat) * fresh
    score[0] = -1.0
    return score


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat-prob", type=float, default=0.5)
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args()
    cfg = SynthConfig(users=args.users, items=args.items, repeat_prob=args.repeat_prob, seed=args.seed, repeat_window=10)
    world, taste, p_repeat = world_and_taste(cfg)
    table = synth.generate_interactions(cfg)
    users, items = table["user_id"].to_numpy(), table["item_id"].to_numpy()
    starts = np.concatenate([[0], np.flatnonzero(np.diff(users)) + 1, [len(users)]])
    shares = popularity(cfg, world)
    for fresh_mode in ("full", "cluster", "uniform"):
        rng = np.random.default_rng(0)
        gains = {"all": [], "repeat": [], "new": []}
        for u in range(len(starts) - 1):
            sequence = items[starts[u]:starts[u + 1]]
            history, target = sequence[:-1], sequence[-1]
            score = oracle_scores(cfg, world, history, taste[users[starts[u]] - 1], p_repeat, shares, fresh_mode)
            ties = int((score == score[target]).sum()) - 1  # window items met equally often tie: random order
            rank = int((score > score[target]).sum()) + int(rng.integers(0, ties + 1))
            gain = 1.0 / np.log2(rank + 2) if rank < 10 else 0.0
            gains["all"].append(gain)
            gains["repeat" if target in history else "new"].append(gain)
        print(f"fresh={fresh_mode:8s} " + "  ".join(f"{k} NDCG@10 {np.mean(v):.4f} ({len(v)} users)"
                                                    for k, v in gains.items() if v))


if __name__ == "__main__":
    main()
