"""Full-ranking evaluation: every target is ranked against the whole catalog."""

from __future__ import annotations

import numbers
from typing import Iterator

import numpy as np
import torch

from seqrec.data import EvalExamples, UserSequences, pad_left
from seqrec.errors import ConfigError, received_expected
from seqrec.models import SequentialRecommender
from seqrec.training.metrics import CUTOFFS, ranking_metrics, target_ranks


@torch.no_grad()
def evaluate(
    model: SequentialRecommender,
    seqs: UserSequences,
    examples: EvalExamples,
    batch_size: int = 512,
    exclude_history: bool = False,
    cutoffs: tuple[int, ...] = CUTOFFS,
    device: str = "cpu",
) -> dict[str, float]:
    """NDCG/HR/MRR at each cutoff plus ``users``, the number of examples ranked.

    With ``exclude_history`` every item of the user's full history (not only the model's window)
    is removed from the ranking; a target that repeats a history item then counts as a miss.
    """
    ranks = rank_targets(model, seqs, examples, batch_size, exclude_history, device)
    return {**ranking_metrics(ranks, cutoffs), "users": int(len(ranks))}


@torch.no_grad()
def rank_targets(
    model: SequentialRecommender,
    seqs: UserSequences,
    examples: EvalExamples,
    batch_size: int = 512,
    exclude_history: bool = False,
    device: str = "cpu",
) -> np.ndarray:
    """0-based rank of each example's target among all items (E,)."""
    ranks = [target_ranks(logits, targets).cpu().numpy()
             for logits, targets, _ in scored_batches(model, seqs, examples, batch_size, exclude_history, device)]
    return np.concatenate(ranks) if ranks else np.zeros(0, dtype=np.int64)


@torch.no_grad()
def evaluate_by_repeat(
    model: SequentialRecommender,
    seqs: UserSequences,
    examples: EvalExamples,
    batch_size: int = 512,
    exclude_history: bool = False,
    device: str = "cpu",
    top: int = 10,
) -> dict[str, dict[str, float]]:
    """Metrics for targets that repeat an item of the user's history and for new items, and the
    share of repeated and new items among each user's top ``top`` (the copy / exclude behaviour)."""
    ranks, shares = ranks_and_repeat_shares(model, seqs, examples, batch_size, exclude_history, device, top)
    return by_repeat_metrics(ranks, shares, target_in_history(seqs.items, examples), top)


@torch.no_grad()
def ranks_and_repeat_shares(model: SequentialRecommender, seqs: UserSequences, examples: EvalExamples,
                            batch_size: int = 512, exclude_history: bool = False, device: str = "cpu",
                            top: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Each example's 0-based target rank (E,) and the share of its top ``top`` that are history items (E,)."""
    ranks, top_repeats = [np.zeros(0, dtype=np.int64)], [np.zeros(0)]
    for logits, targets, batch in scored_batches(model, seqs, examples, batch_size, exclude_history, device):
        ranks.append(target_ranks(logits, targets).cpu().numpy())
        in_history = mask_history(torch.zeros_like(logits), seqs.items, examples.history_start[batch],
                                  examples.history_end[batch]).isneginf()  # (B, N+1)
        best = logits.topk(min(top, logits.shape[1] - 1), dim=1)  # (B, K)
        ranked = ~best.values.isneginf()  # (B, K): a -inf slot (an excluded item, padding) is no recommendation
        top_repeats.append((in_history.gather(1, best.indices) & ranked).float().mean(1).cpu().numpy())
    return np.concatenate(ranks), np.concatenate(top_repeats)


def by_repeat_metrics(ranks: np.ndarray, shares: np.ndarray, repeated: np.ndarray, top: int = 10
                      ) -> dict[str, dict[str, float | None]]:
    """``evaluate_by_repeat``'s groups from ranks (E,), top-``top`` history shares (E,; NaN where the
    model scored nothing, left out of the share) and whether each target repeats its history (E,).
    A group without users (no repeats in the data, say) has None for every metric, not 0."""
    def group(pick: np.ndarray) -> dict[str, float | None]:
        scored = pick & ~np.isnan(shares)
        share = float(shares[scored].mean()) if scored.any() else None
        metrics = ranking_metrics(ranks[pick]) if pick.any() else dict.fromkeys(ranking_metrics(ranks[:0]))
        return {**metrics, "users": int(pick.sum()), f"top{top}_repeat_share": share}

    everyone = np.ones(len(ranks), dtype=bool)
    return {"repeat": group(repeated), "new": group(~repeated), "all": group(everyone)}


def target_in_history(items: np.ndarray, examples: EvalExamples) -> np.ndarray:
    """Whether each example's target already occurs in its full history (E,) bool."""
    rows, positions = ranges_to_indices(examples.history_start, examples.history_end)
    hits = items[positions] == examples.targets[rows]
    return np.bincount(rows[hits], minlength=len(examples.targets)) > 0


def scored_batches(model: SequentialRecommender, seqs: UserSequences, examples: EvalExamples, batch_size: int,
                   exclude_history: bool, device: str) -> Iterator[tuple[torch.Tensor, torch.Tensor, slice]]:
    """Full-catalog logits (B, N+1) and targets (B,) per batch of examples, in eval mode; ConfigError for a
    batch_size below 1 (every evaluation entry point scores through here)."""
    check_batch_size(batch_size)
    was_training = model.training
    model.eval()
    for lo in range(0, len(examples.targets), batch_size):
        batch = slice(lo, lo + batch_size)
        starts, ends = examples.history_start[batch], examples.history_end[batch]
        window_starts = np.maximum(starts, ends - model.cfg.max_length)
        histories = torch.from_numpy(pad_left(seqs.items, window_starts, ends, model.cfg.max_length)).to(device)
        timestamps = (torch.from_numpy(pad_left(seqs.timestamps, window_starts, ends, model.cfg.max_length)).to(device)
                      if seqs.has_times else None)  # no real times: the model gets none
        logits = model(histories, timestamps)  # (B, N+1)
        if exclude_history:
            logits = mask_history(logits, seqs.items, starts, ends)
        yield logits, torch.from_numpy(examples.targets[batch]).to(device), batch
    model.train(was_training)


def check_batch_size(batch_size: int) -> None:
    """An integer >= 1 (0 was a bare 'range() arg 3 must not be zero')."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise ConfigError(received_expected("evaluation batch_size", repr(batch_size), "an integer >= 1"))


def mask_history(logits: torch.Tensor, items: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> torch.Tensor:
    """Set the logit of every item in rows' [start, end) history slices to -inf."""
    rows, positions = ranges_to_indices(starts, ends)
    history_items = torch.from_numpy(items[positions]).to(logits.device)
    return logits.index_put((torch.from_numpy(rows).to(logits.device), history_items),
                            torch.tensor(float("-inf"), device=logits.device))


def ranges_to_indices(starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flatten [start, end) ranges: (row of each element, its position), without a Python loop."""
    lengths = np.maximum(ends - starts, 0)
    rows = np.repeat(np.arange(len(starts)), lengths)
    first_of_row = np.repeat(np.cumsum(lengths) - lengths, lengths)
    positions = np.arange(lengths.sum()) - first_of_row + np.repeat(starts, lengths)
    return rows, positions
