"""The training loop: packed causal passes over length-bucketed batches, early stopping on
validation NDCG@10, best weights restored and saved as a checkpoint directory."""

from __future__ import annotations

import copy
import dataclasses
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import torch
from tqdm.auto import tqdm

from seqrec.config import TRAIN_WINDOWS, ModelConfig, TrainConfig, check_catalog_fit, check_trainable
from seqrec.data import (EvalExamples, Split, UserSequences, Vocabulary, build_sequences, leave_one_out, pad_left,
                         read_interactions, table_fingerprint)
from seqrec.errors import ConfigError, DataError, TrainingDivergedError, received_expected
from seqrec.models import SequentialRecommender, build_model
from seqrec.models.heads import causal_histories
from seqrec.training.checkpoint import Checkpoint, checked_checkpoint_output, save_checkpoint
from seqrec.training.evaluation import evaluate, ranges_to_indices, scored_batches
from seqrec.training.losses import draw_negatives, full_cross_entropy, sampled_softmax


@dataclass
class TrainingData:
    """Everything derived from one interactions table."""

    vocab: Vocabulary
    seqs: UserSequences
    split: Split
    fingerprint: str
    source: str


def prepare_data(source: str | Path | pa.Table, vocab: Vocabulary | None = None) -> TrainingData:
    """Read and validate interactions, build the vocabulary (unless given), sequences and split."""
    table = source if isinstance(source, pa.Table) else read_interactions(source)
    vocab = vocab or Vocabulary.from_items(table.column("item_id"))
    seqs = build_sequences(table, vocab)
    return TrainingData(vocab, seqs, leave_one_out(seqs), table_fingerprint(table),
                        "<table>" if isinstance(source, pa.Table) else str(source))


def train_model(data: TrainingData, model_cfg: ModelConfig, train_cfg: TrainConfig,
                out: str | Path | None = None, progress: bool = True) -> Checkpoint:
    """Train, restore the best validation weights, evaluate valid and test, save to ``out``."""
    check_trainable(model_cfg, train_cfg)
    if out is not None:
        checked_checkpoint_output(out, protect=None if data.source == "<table>" else data.source)  # before any
        # work: a bad --out costs nothing, and replacing it never deletes the data it trains on
    _seed_everything(train_cfg.seed)
    model_cfg = dataclasses.replace(model_cfg, num_items=len(data.vocab))
    check_catalog_fit(model_cfg, train_cfg)
    model = trainable_model(model_cfg, train_cfg)
    history = fit(model, data, train_cfg, progress)
    ranked = {"exclude_history": train_cfg.exclude_history, "device": train_cfg.device}  # as the selection ranks
    metrics = {"valid": evaluate(model, data.seqs, data.split.valid, **ranked)}
    if train_cfg.refit:  # valid stays the selection run's: the refit model has trained on it
        model, history["refit"] = refit_or_keep(model, data, model_cfg, train_cfg, history["best_epoch"], progress)
    metrics["test"] = evaluate(model, data.seqs, data.split.test, **ranked)
    meta = {"data": {"source": data.source, "fingerprint": data.fingerprint, "users": len(data.seqs),
                     "items": len(data.vocab)}, "metrics": metrics, "training": history}
    ckpt = Checkpoint(model.eval(), model_cfg, train_cfg, data.vocab, meta)
    if out is not None:
        save_checkpoint(out, ckpt)
    return ckpt


def refit_or_keep(selected: SequentialRecommender, data: TrainingData, model_cfg: ModelConfig, train_cfg: TrainConfig,
                  epochs: int, progress: bool) -> tuple[SequentialRecommender, dict]:
    """A fresh model refit for ``epochs`` on training + validation items, or, if that run diverges, the selection
    run's model (the summary says so in ``diverged``): a failed refit must not cost the run that chose it."""
    _seed_everything(train_cfg.seed)
    model = trainable_model(model_cfg, train_cfg)
    try:
        return model, fit_epochs(model, data.seqs, refit_split(data.split), train_cfg, epochs, progress)
    except TrainingDivergedError as error:
        kept = f"{error}; kept the selection run's weights (trained without the validation items)"
        _report(progress, f"refit stopped: {kept}")
        return selected, {"epochs": epochs, "diverged": kept}


def trainable_model(model_cfg: ModelConfig, train_cfg: TrainConfig) -> SequentialRecommender:
    """A fresh model on the training device, with the head's training-only switches set."""
    model = build_model(model_cfg).to(train_cfg.device)
    if train_cfg.cpr_base_detach:
        model.head.base_gradient = False
    if train_cfg.cpr_detach_partitions:
        model.head.partition_gradient = False
    return model


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW over ``parameter_groups``: the selection run and the refit train alike."""
    return torch.optim.AdamW(parameter_groups(model, cfg.lr), lr=cfg.lr, weight_decay=cfg.weight_decay)


def parameter_groups(model: torch.nn.Module, lr: float) -> list[dict]:
    """One optimizer group per learning-rate scale: a parameter's ``lr_scale`` attribute (default 1).

    Adam moves every parameter by about ``lr`` per step whatever its gradient, so a bias that has
    to travel several nats (CPR's pointer bias by distance) gets a larger step this way.
    """
    groups: dict[float, list] = {}
    for param in model.parameters():
        groups.setdefault(float(getattr(param, "lr_scale", 1.0)), []).append(param)
    return [{"params": params, "lr": lr * scale} for scale, params in sorted(groups.items())]


def fit(model: SequentialRecommender, data: TrainingData, cfg: TrainConfig, progress: bool = True) -> dict:
    """Epoch loop with early stopping; leaves the best weights in ``model``; returns a summary.

    A NaN or infinite loss stops the loop and keeps the best weights so far (the summary says why in
    ``stopped``); before any validation there is nothing to keep and ``TrainingDivergedError`` rises.
    """
    optimizer = make_optimizer(model, cfg)
    rng = np.random.default_rng(cfg.seed)
    valid = _validation_subset(data.split.valid, cfg.eval_users, rng)
    windows = train_windows(data.seqs, data.split, model.cfg.max_length, cfg.train_windows)
    _report(progress, f"each epoch: {windows.describe()}")
    best = {"ndcg@10": -1.0, "epoch": 0, "state": None}
    started, losses = time.perf_counter(), []
    stopped = None
    reason = "epochs"  # why the loop ends: the epoch limit, patience, max_minutes or divergence
    for epoch in range(1, cfg.epochs + 1):
        try:
            losses.append(train_epoch(model, optimizer, data.seqs, windows, cfg, rng, progress, epoch))
            _require_finite_scores(model, data.seqs, valid, cfg, epoch)
        except TrainingDivergedError as error:
            if best["state"] is None:  # nothing worth keeping
                raise
            stopped, reason = f"{error}; kept the weights of epoch {best['epoch']}", "diverged"
            _report(progress, f"stopped: {stopped}")
            break
        if epoch % cfg.eval_every and epoch != cfg.epochs:
            continue
        score = evaluate(model, data.seqs, valid, exclude_history=cfg.exclude_history, device=cfg.device)["ndcg@10"]
        improved = score > best["ndcg@10"]
        if improved:
            best = {"ndcg@10": score, "epoch": epoch, "state": copy.deepcopy(model.state_dict())}
        elapsed = time.perf_counter() - started
        _report(progress, f"epoch {epoch:3d}  loss {losses[-1]:.4f}  valid ndcg@10 {score:.4f}"
                          f"{'  *' if improved else ''}  [{elapsed:.0f}s]")
        if epoch - best["epoch"] >= cfg.patience * cfg.eval_every:
            reason = "patience"
            break
        if _out_of_time(cfg, started) and epoch < cfg.epochs:
            reason = "max_minutes"
            break
    if best["state"] is not None:
        model.load_state_dict(best["state"])
    seconds = time.perf_counter() - started
    _report(progress, f"trained {len(losses)} epochs in {seconds:.0f}s ({STOP_REASONS[reason]}); best valid "
                      f"ndcg@10 {best['ndcg@10']:.4f} at epoch {best['epoch']}; each epoch: {windows.describe()}")
    summary = {"epochs": len(losses), "best_epoch": best["epoch"], "best_valid_ndcg@10": best["ndcg@10"],
               "seconds": round(seconds, 1), "losses": [round(x, 5) for x in losses], "stopped_by": reason,
               "per_epoch": windows.summary()}
    return summary if stopped is None else {**summary, "stopped": stopped}


STOP_REASONS = {"epochs": "the epoch limit", "patience": "patience: no validation gain",
                "max_minutes": "the --max-minutes budget", "diverged": "divergence"}


def _require_finite_scores(model: SequentialRecommender, seqs: UserSequences, valid: EvalExamples, cfg: TrainConfig,
                           epoch: int) -> None:
    """TrainingDivergedError when the weights or the scores of a few validation users are no longer finite:
    the last optimizer step of an epoch can spoil the weights after its loss was checked, and NaN scores
    rank every target last, which would still count as a validation result."""
    finite = all(bool(torch.isfinite(param).all()) for param in model.parameters())
    if finite and len(valid):
        sample = EvalExamples(valid.users[:32], valid.history_start[:32], valid.history_end[:32], valid.targets[:32])
        logits = [batch[0] for batch in scored_batches(model, seqs, sample, 32, False, cfg.device)][0]  # (B, N+1)
        finite = bool(torch.isfinite(logits[:, 1:]).all())  # scored_batches ran to its end: training mode is back
    if not finite:
        raise TrainingDivergedError(received_expected(
            f"weights and scores after epoch {epoch}", "values that are not finite",
            f"finite values (diverged at lr {cfg.lr:g}, precision {cfg.precision}: try a lower --lr)"))


def refit_split(split: Split) -> Split:
    """The same split with every validation target moved into training (each user's test item stays out)."""
    train_end = split.train_end.copy()
    train_end[split.valid.users] = split.valid.history_end + 1  # the validation target is items[history_end]
    return dataclasses.replace(split, train_end=train_end)


def fit_epochs(model: SequentialRecommender, seqs: UserSequences, split: Split, cfg: TrainConfig, epochs: int,
               progress: bool = True) -> dict:
    """Train for exactly ``epochs`` epochs on ``split``'s training items, nothing held out to stop on."""
    optimizer = make_optimizer(model, cfg)
    rng = np.random.default_rng(cfg.seed)
    windows = train_windows(seqs, split, model.cfg.max_length, cfg.train_windows)
    _report(progress, f"refit, each epoch: {windows.describe()}")
    started, losses = time.perf_counter(), []
    for epoch in range(1, epochs + 1):
        losses.append(train_epoch(model, optimizer, seqs, windows, cfg, rng, progress, epoch))
        _require_finite_scores(model, seqs, split.valid, cfg, epoch)  # the selection run's check, each epoch
        _report(progress, f"refit epoch {epoch:3d}/{epochs}  loss {losses[-1]:.4f}  "
                          f"[{time.perf_counter() - started:.0f}s]")
    seconds = time.perf_counter() - started
    _report(progress, f"refit on training + validation items: {epochs} epochs in {seconds:.0f}s; each epoch: "
                      f"{windows.describe()}")
    return {"epochs": epochs, "seconds": round(seconds, 1), "losses": [round(x, 5) for x in losses],
            "per_epoch": windows.summary()}


@dataclass
class TrainWindows:
    """Training samples: slices [start, end) of ``seqs.items`` of 2 to max_length + 1 items, each a causal pass
    whose every item but the first is a target; ``mode`` says how they were cut (``train_windows``)."""

    starts: np.ndarray  # (W,)
    ends: np.ndarray  # (W,)
    mode: str = "all"
    interactions: int = 0  # items in the users' training ranges
    left_out: int = 0  # of those, the ones older than every window (0 with mode "all")

    def __len__(self) -> int:
        return len(self.starts)

    @property
    def lengths(self) -> np.ndarray:
        return self.ends - self.starts

    def summary(self) -> dict:
        """What one epoch trains on, for the progress lines and meta.json."""
        return {"train_windows": self.mode, "windows": len(self), "targets": int((self.lengths - 1).sum()),
                "training_interactions": self.interactions, "left_out": self.left_out}

    def describe(self) -> str:
        counts = self.summary()
        line = f"{counts['windows']:,} windows, {counts['targets']:,} target interactions (train_windows {self.mode})"
        if self.mode == "last":
            line += (f"; {self.left_out:,} of the training ranges' {self.interactions:,} interactions "
                     f"({self.left_out / max(self.interactions, 1):.1%}) are older than each user's last window and "
                     "left out (train_windows all trains on them)")
        return line


def train_windows(seqs: UserSequences, split: Split, max_length: int, mode: str = "all") -> TrainWindows:
    """Each user's training range [start, train_end) cut from its end into windows of max_length + 1 items.

    ``all``: every window, the oldest one shorter when the range does not divide evenly, so every item of the
    range but the first is the target of exactly one slot of one window (a window's first item is its first
    input only, the target of the window before it). ``last``: only the most recent window of each user (the
    windows of runs before ``train_windows`` existed). Users with fewer than two training items have none.
    """
    if mode not in TRAIN_WINDOWS:
        raise ConfigError(received_expected("train_windows", repr(mode), f"one of {', '.join(TRAIN_WINDOWS)}"))
    offsets, ends = seqs.offsets[:-1], split.train_end  # (U,) each
    counts = np.where(ends - offsets >= 2, (ends - offsets - 2) // max_length + 1, 0)  # (U,) ceil((n - 1) / M)
    if mode == "last":
        counts = np.minimum(counts, 1)
    if not counts.any():
        raise DataError(received_expected("training sequences", "no user with 2 or more training items",
                                          "users with at least 4 interactions (2 train + valid + test)"))
    users, back = ranges_to_indices(np.zeros_like(counts), counts)  # (W,) each: a user's windows together, back
    # 0 the most recent
    window_ends = ends[users] - back * max_length  # (W,)
    window_starts = np.maximum(offsets[users], window_ends - (max_length + 1))  # (W,)
    left_out = int((window_starts - offsets[users]).sum()) if mode == "last" else 0
    return TrainWindows(window_starts, window_ends, mode, int((ends - offsets).clip(0).sum()), left_out)


def length_bucketed_batches(windows: TrainWindows, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Windows sorted by length (random among equals) cut into batches, batch order shuffled."""
    order = np.lexsort((rng.random(len(windows.starts)), windows.lengths))
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def train_epoch(model: SequentialRecommender, optimizer: torch.optim.Optimizer, seqs: UserSequences,
                windows: TrainWindows, cfg: TrainConfig, rng: np.random.Generator, progress: bool,
                epoch: int) -> float:
    model.train()
    batches = length_bucketed_batches(windows, cfg.batch_size, rng)
    total, count = 0.0, 0
    with tqdm(total=len(windows), desc=f"epoch {epoch}", disable=None if progress else True, leave=False,
              unit="window", unit_scale=True) as bar:  # windows done of the epoch's windows
        for inputs, timestamps, targets in _padded_batches(seqs, windows, batches, model.cfg.max_length, cfg.device):
            loss = _batch_loss(model, inputs, timestamps, targets, cfg)
            value = _finite_value(loss, cfg, epoch, count + 1)  # before the step: a bad batch leaves the weights alone
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total, count = total + value, count + 1
            bar.update(len(inputs))
            if count % 20 == 0:
                bar.set_postfix(loss=f"{total / count:.4f}")
    return total / max(count, 1)


def _finite_value(loss: torch.Tensor, cfg: TrainConfig, epoch: int, batch: int) -> float:
    """The loss as a float (the one device sync of a batch), or TrainingDivergedError if it is not finite."""
    value = loss.item()
    if not math.isfinite(value):
        raise TrainingDivergedError(received_expected(
            f"training loss at epoch {epoch}, batch {batch}", f"{value}",
            f"a finite number (diverged at lr {cfg.lr:g}, precision {cfg.precision}: try a lower --lr)"))
    return value


def _padded_batches(seqs: UserSequences, windows: TrainWindows, batches, max_length: int,
                    device: str) -> Iterator[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]]:
    """(inputs, their timestamps or None without real times, next item per slot), each (B, L) left padded."""
    for users in batches:
        starts, ends = windows.starts[users], windows.ends[users]
        inputs, targets = pad_left(seqs.items, starts, ends - 1, max_length), pad_left(seqs.items, starts + 1, ends,
                                                                                         max_length)
        times = pad_left(seqs.timestamps, starts, ends - 1, max_length) if seqs.has_times else None
        yield tuple(None if array is None else torch.from_numpy(array).to(device)
                    for array in (inputs, times, targets))


def _batch_loss(model: SequentialRecommender, inputs: torch.Tensor, timestamps: torch.Tensor | None,
                targets: torch.Tensor, cfg: TrainConfig) -> torch.Tensor:
    device_type = torch.device(cfg.device).type
    with torch.autocast(device_type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16"):
        return packed_loss(model, inputs, timestamps, targets, cfg)


def packed_loss(model: SequentialRecommender, inputs: torch.Tensor, timestamps: torch.Tensor | None,
                targets: torch.Tensor, cfg: TrainConfig) -> torch.Tensor:
    """Loss of every real slot's next-item prediction in one causal pass; the head skips padding.

    With ``cpr_base_weight`` the CPR head's base partition also trains as a softmax head of its own:
    the history partitions replace the logits of the user's own items, so without it those items are
    never the base partition's negatives, while a softmax head learns from them.
    """
    layers = model.encode_layers(inputs, timestamps)  # [(B, L, D)]
    real = targets > 0  # (B, L)
    seen = causal_histories(inputs)[real] if cfg.exclude_history else None  # (M, L)
    targets = targets[real]  # (M,)
    columns, base = None, None  # full softmax over the catalog; the CPR base partition's logits
    if cfg.loss == "sampled":
        negatives = draw_negatives(model.cfg.num_items, cfg.negatives, inputs.device)  # (S,)
        logits, columns = model.head.sampled_logits(layers, inputs, real, targets, negatives)  # (M, C)
    elif cfg.cpr_base_weight > 0:
        logits, base = model.head.logits_and_base(layers, inputs, real)  # (M, N+1) each, one base product
    else:
        logits = model.head.logits(layers, inputs, real)  # (M, N+1)
    loss = _softmax_loss(logits, columns, targets, seen, cfg)
    if cfg.cpr_base_weight > 0:
        base = model.head.base_logits(layers, real, columns) if base is None else base  # (M, C)
        loss = loss + cfg.cpr_base_weight * _softmax_loss(base, columns, targets, seen, cfg)
    return loss


def _softmax_loss(logits: torch.Tensor, columns: torch.Tensor | None, targets: torch.Tensor,
                  seen: torch.Tensor | None, cfg: TrainConfig) -> torch.Tensor:
    if cfg.temperature != 1.0:  # at 1 the division would only copy (M, N+1) twice, forward and backward
        logits = logits / cfg.temperature
    if columns is None:
        return full_cross_entropy(logits, targets, seen=seen)
    return sampled_softmax(logits, columns, targets, seen=seen)


def _validation_subset(valid: EvalExamples, users: int | None, rng: np.random.Generator) -> EvalExamples:
    if users is None or users >= len(valid.targets):
        return valid
    pick = np.sort(rng.choice(len(valid.targets), size=users, replace=False))
    return EvalExamples(valid.users[pick], valid.history_start[pick], valid.history_end[pick], valid.targets[pick])


def _out_of_time(cfg: TrainConfig, started: float) -> bool:
    return cfg.max_minutes is not None and time.perf_counter() - started > 60 * cfg.max_minutes


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def _report(progress: bool, line: str) -> None:
    if progress:
        tqdm.write(line, file=sys.stderr)  # beside the bar: stdout holds only the command's result (JSON)
