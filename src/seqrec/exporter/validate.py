"""Parity of an exported graph with PyTorch, on random users and on edge cases.

For every case the exported runner's top-K is compared with the slow PyTorch path (full logits in
float32, ``torch.topk``). Scores must agree within the spec's tolerance; an item id may differ
from PyTorch's at a rank only if PyTorch scores the returned item as high as its own choice there
(a tie), so a genuinely wrong item always fails; an item returned twice, or outside 1..N, fails too.
The cases with ids that are no known item (<= 0 or > N: a new catalogue item in the last slot, a
hole in the middle) are compared with PyTorch's answer for the same histories with those slots
removed (their ``reference <input>`` entries, built here row by row, not by the graph's ``compact``).

A CPR head whose running logits tie at a reranker stage's boundary (the plain base partition h . E
of a history with no known item scores every item 0) reranks whichever tied items a backend's TopK
takes first, so PyTorch's answer is one of several right ones. A user on whom the backends disagree
and whose boundary ties is counted as such (``undefined_users``) and held to what every right answer
has: distinct items, best first, each scored as PyTorch scores it by the base partition or by one of
the reranker facets (a history item by its own CPR logit), and no item left out that every one of
its scores would put above the K-th returned.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from seqrec.config import ATTENTION_ENCODERS, ModelConfig
from seqrec.errors import ExportMismatchError, received_expected
from seqrec.exporter.graph import ScoringGraph
from seqrec.exporter.runners import Runner
from seqrec.exporter.specs import ExportSpec


@dataclass
class CaseResult:
    name: str
    users: int
    length: int
    max_abs_diff: float
    top_k_agreement: float  # share of (user, rank) with the same id as PyTorch
    wrong_items: int  # ids that differ and are not ties
    ok: bool
    undefined_users: int = 0  # their top-K is not unique in PyTorch either: held to any right one (module doc)
    tied_items: int = 0  # (user, rank) whose id differs from PyTorch's and is right: a tie


@dataclass
class ParityReport:
    backend: str
    reference: str
    atol: float
    rtol: float
    cases: list[CaseResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(case.ok for case in self.cases)

    def to_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok}

    def lines(self) -> list[str]:
        head = f"parity {self.backend} vs {self.reference} (atol {self.atol:g}, rtol {self.rtol:g})"
        return [head] + [f"  {'ok ' if c.ok else 'BAD'} {c.name:20s} users {c.users:4d}  length {c.length:3d}  "
                         f"max|diff| {c.max_abs_diff:.2e}  top-K agreement {c.top_k_agreement:.4f}"
                         + (f" (other ids: {c.tied_items} ties)" if c.tied_items else "")
                         + (f"  ({c.undefined_users} users with a tied reranker boundary: any right answer)"
                            if c.undefined_users else "") for c in self.cases]


REFERENCE = "reference "  # a feed's "reference items": the histories PyTorch scores for it, when not its own


VALIDATION_USERS = 200  # random users of the parity check, where the window is short enough
EDGE_USERS = 8  # users of each edge case, likewise
MIN_VALIDATION_USERS = 16  # the default never checks fewer random users, however long the window
VALIDATION_ATTENTION = 2**30  # attention scores per layer (users x heads x W x W) the default random users run
# through: every graph scores a user at its full window W, 3.6 s a user on each side at W = 8,192 (d 16, 1 thread),
# so 200 users there took 25 minutes; 200 users up to W = 2,317 with one head
EDGE_ATTENTION = 2**28  # the same for each edge case: 8 users up to W = 5,792 with one head


def parity_users(cfg: ModelConfig, window: int) -> tuple[int, int]:
    """(random users, users per edge case) of the default parity check: VALIDATION_USERS and EDGE_USERS, fewer
    for an attention encoder whose window makes each user slow (at least MIN_VALIDATION_USERS and 2)."""
    if cfg.model not in ATTENTION_ENCODERS:
        return VALIDATION_USERS, EDGE_USERS
    per_user = cfg.heads * window * window  # attention scores of one user per layer, at any history length
    return (max(MIN_VALIDATION_USERS, min(VALIDATION_USERS, VALIDATION_ATTENTION // per_user)),
            max(2, min(EDGE_USERS, EDGE_ATTENTION // per_user)))


def edge_cases(spec: ExportSpec, num_items: int, window: int, users: int, seed: int,
               edge_users: int = EDGE_USERS) -> dict[str, dict[str, torch.Tensor]]:
    """Named feeds: ``users`` random users; ``edge_users`` each of length 1, full length, longer than the window,
    all repeats, no known item (at most 4), an unknown id in the last slot, unknown ids in the middle."""
    cases = {"random users": spec.sample_inputs(num_items, users, window, seed)}
    shapes = {"length 1": (edge_users, 1), "full length": (edge_users, window),
              "longer than window": (edge_users, window + 7)}
    for offset, (name, shape) in enumerate(shapes.items(), start=1):
        gen = torch.Generator().manual_seed(seed + offset)
        cases[name] = _with_timestamps(spec, {"items": torch.randint(1, num_items + 1, shape, generator=gen)})
    repeated = torch.randint(1, num_items + 1, (edge_users, 1), generator=torch.Generator().manual_seed(seed + 9))
    cases["all repeats"] = _with_timestamps(spec, {"items": repeated.expand(edge_users, window).clone()})
    cases["no known item"] = _with_timestamps(spec, {"items": torch.zeros(min(4, edge_users), window,
                                                                          dtype=torch.long)})
    cases.update(_unknown_id_cases(spec, num_items, window, seed, edge_users))
    return cases


def _unknown_id_cases(spec: ExportSpec, num_items: int, window: int, seed: int,
                      users: int) -> dict[str, dict[str, torch.Tensor]]:
    """Histories longer than the window with ids that are no known item: in the last slot (a brand-new item; 0
    there is right padding), and there plus two in the middle. Their removal brings older items into the window."""
    gen = torch.Generator().manual_seed(seed + 10)
    cases = {}
    for name, length, holes in (("unknown last", window + 1, 1), ("unknown in middle", window + 3, 3)):
        items = torch.randint(1, num_items + 1, (users, length), generator=gen)  # (B, L)
        starts = torch.randint(0, length - holes, (users,), generator=gen)  # left padding before each history
        items = items.masked_fill(torch.arange(length) < starts.unsqueeze(1), 0)
        slots = torch.zeros_like(items, dtype=torch.bool)
        for row, start in enumerate(starts.tolist()):
            inside = torch.randperm(length - 1 - start, generator=gen)[: holes - 1] + start  # (holes - 1,)
            slots[row, inside] = True
        slots[:, -1] = True  # the last slot: unknown in both cases
        cases[name] = _with_unknown_ids(spec, items, slots, num_items)
    return cases


def _with_unknown_ids(spec: ExportSpec, items: torch.Tensor, slots: torch.Tensor, num_items: int
                      ) -> dict[str, torch.Tensor]:
    """The feed of ``items`` (B, L) (known ids, left padded) whose ``slots`` (B, L) bool hold ids outside 1..N
    instead, timestamped like their neighbours, and its reference: the same histories with those slots removed."""
    unknown = torch.tensor([num_items + 1, -1, 0, 2**40, -(2**40), num_items + 1000, -num_items, 2**62])
    batch, length = items.shape
    fed = items.masked_scatter(slots, unknown[torch.arange(int(slots.sum())) % len(unknown)])  # each one in turn
    times = (1_600_000_000 + torch.arange(1, length + 1).expand(batch, length) * 3600) * (items > 0)  # (B, L)
    kept = ~slots & (items > 0)  # (B, L)
    clean = torch.zeros_like(items)
    clean_times = torch.zeros_like(times)
    for row in range(batch):
        count = int(kept[row].sum())
        clean[row, length - count :] = items[row][kept[row]]
        clean_times[row, length - count :] = times[row][kept[row]]
    feed = {"items": fed, "timestamps": times, REFERENCE + "items": clean, REFERENCE + "timestamps": clean_times}
    return {key: feed[key] for key in spec.inputs + tuple(REFERENCE + name for name in spec.inputs)}


def check_parity(runner: Runner, graph: ScoringGraph, spec: ExportSpec, cases: dict[str, dict[str, torch.Tensor]],
                 reference: str = "pytorch fp32") -> ParityReport:
    """Each case through the runner and against PyTorch a few users at a time: PyTorch's reference holds
    (users, N+1) logits per partition, 3.6 GB for 200 users of a 4.5M-item catalog, and both sides hold
    (users, L, L) attention scores, 3.4 GB per layer for 200 users of a 2,048-item window."""
    report = ParityReport(runner.name, reference, spec.score_atol, spec.score_rtol)
    for name, feed in cases.items():
        rows, length = feed[spec.inputs[0]].shape
        users = _users_per_comparison(graph)
        groups = [{key: value[first:first + users] for key, value in feed.items()} for first in range(0, rows, users)]
        report.cases.append(merged_cases([
            compare_case(name, graph, spec, group, runner.infer({key: group[key].numpy() for key in spec.inputs}))
            for group in groups]))
    return report


REFERENCE_SCORES = 2**26  # float32 scores the PyTorch side of a comparison holds per partition at once: 256 MiB
ATTENTION_SCORES = 2**26  # float32 attention scores per layer a group of users holds on either side: 256 MiB


def _users_per_comparison(graph: ScoringGraph) -> int:
    """Users whose (1 + reranker stages) x (N + 1) scores fit REFERENCE_SCORES and whose heads x W x W attention
    scores fit ATTENTION_SCORES; at least one. W is the graph's window whatever the case's length: both sides pad
    every history to it (``ScoringGraph.window_inputs``), so 8 users of length 1 at W = 8,192 held 18 GB."""
    partitions = 1 + len(getattr(getattr(graph.model.head, "variant", None), "rerank", ()))
    by_catalog = REFERENCE_SCORES // (partitions * (graph.model.cfg.num_items + 1))
    by_attention = ATTENTION_SCORES // (graph.model.cfg.heads * graph.length * graph.length)
    return max(1, min(by_catalog, by_attention))


def merged_cases(parts: list[CaseResult]) -> CaseResult:
    """One case's result from the results of its groups of users."""
    users = sum(part.users for part in parts)
    diffs = [part.max_abs_diff for part in parts]
    worst = math.nan if any(math.isnan(diff) for diff in diffs) else max(diffs)  # as a tensor's max() keeps NaN
    return CaseResult(parts[0].name, users, parts[0].length, worst,
                      sum(part.top_k_agreement * part.users for part in parts) / users,
                      sum(part.wrong_items for part in parts), all(part.ok for part in parts),
                      sum(part.undefined_users for part in parts), sum(part.tied_items for part in parts))


def require_parity(report: ParityReport) -> None:
    """Raise ExportMismatchError naming the worst case when any case disagrees."""
    bad = [case for case in report.cases if not case.ok]
    if bad:
        worst = max(bad, key=lambda case: (case.wrong_items, case.max_abs_diff))
        raise ExportMismatchError(received_expected(
            f"{report.backend} against {report.reference} on '{worst.name}'",
            f"max |score diff| {worst.max_abs_diff:.3g}, {worst.wrong_items} wrong top-K items",
            f"scores within atol {report.atol:g} + rtol {report.rtol:g} and the same items up to ties"))


@torch.no_grad()
def compare_case(name: str, graph: ScoringGraph, spec: ExportSpec, feed: dict[str, torch.Tensor],
                 outputs: dict[str, np.ndarray]) -> CaseResult:
    length = int(feed[spec.inputs[0]].shape[1])
    tensors = [feed.get(REFERENCE + key, feed[key]) for key in spec.inputs]  # what PyTorch's answer is for
    ref_items, ref_scores = graph.reference(*tensors)  # (B, K)
    got_items = torch.from_numpy(outputs["top_items"])
    got_scores = torch.from_numpy(outputs["top_scores"]).float()
    tolerance = spec.score_atol + spec.score_rtol * ref_scores.abs().nan_to_num(posinf=0.0, neginf=0.0)
    both_inf = ref_scores.isneginf() & got_scores.isneginf()
    diff = (ref_scores - got_scores).abs().masked_fill(both_inf, 0.0)  # (B, K)
    same = got_items == ref_items
    num_items = graph.model.cfg.num_items
    malformed = _repeated_or_out_of_range(got_items, got_scores, num_items)  # (B, K)
    wrong = ~same & ~_ties(graph, tensors, got_items, ref_scores, tolerance) | malformed  # (B, K)
    disagree = wrong.any(1) | (diff > tolerance).any(1)  # (B,)
    undefined = disagree & _tied_rerank_boundary(graph, tensors, spec) if disagree.any() else disagree  # (B,)
    if undefined.any():
        rows = undefined.nonzero().squeeze(1)
        got_tolerance = spec.score_atol + spec.score_rtol * got_scores.abs().nan_to_num(posinf=0.0, neginf=0.0)
        wrong[rows] = _not_a_right_answer(graph, [tensor[rows] for tensor in tensors], got_items[rows],
                                          got_scores[rows], got_tolerance[rows]) | malformed[rows]
        diff = diff.masked_fill(undefined.unsqueeze(1), 0.0)  # rank by rank against one right answer of several
    return CaseResult(name, int(ref_items.shape[0]), length, float(diff.max()),
                      float(same.float().mean()), int(wrong.sum()), bool((diff <= tolerance).all()) and not wrong.any(),
                      int(undefined.sum()), int((~same & ~wrong).sum()))


def _ties(graph: ScoringGraph, tensors: list[torch.Tensor], got_items: torch.Tensor, ref_scores: torch.Tensor,
          tolerance: torch.Tensor) -> torch.Tensor:
    """Whether PyTorch scores each returned item as high as its own item at that rank (B, K)."""
    items, timestamps = graph.window_inputs(*tensors)  # (B, W) each
    logits = graph.model(items, timestamps).float()  # (B, N+1)
    if graph.exclude_seen:
        logits = logits.scatter(1, items, float("-inf"))
    got_scores = logits.gather(1, got_items.clamp(0, logits.shape[1] - 1))  # (B, K)
    return ((got_scores - ref_scores).abs() <= tolerance) | (got_scores.isneginf() & ref_scores.isneginf())


def _repeated_or_out_of_range(got_items: torch.Tensor, got_scores: torch.Tensor, num_items: int) -> torch.Tensor:
    """(B, K) bool: a returned item outside 1..N, or one already returned at a better rank (a slot scored -inf
    holds no item: fewer than K are left)."""
    real = ~got_scores.isneginf()  # (B, K)
    outside = (got_items < 1) | (got_items > num_items)
    earlier = torch.ones(got_items.shape[1], got_items.shape[1], dtype=torch.bool).tril(-1)  # (K, K): [j, i] = i < j
    repeated = ((got_items.unsqueeze(2) == got_items.unsqueeze(1)) & earlier).any(2)  # (B, K)
    return real & (outside | repeated)


def _not_a_right_answer(graph: ScoringGraph, tensors: list[torch.Tensor], got_items: torch.Tensor,
                        got_scores: torch.Tensor, tolerance: torch.Tensor) -> torch.Tensor:
    """(B, K) bool for users whose reranker boundary ties: where the returned answer differs from every answer a
    choice among the tied items gives (see the module doc); a missed item counts at the last rank."""
    options = _partition_options(graph, tensors)  # (B, 1+R, N+1)
    ids = got_items.clamp(0, options.shape[2] - 1)
    scored = options.gather(2, ids.unsqueeze(1).expand(-1, options.shape[1], -1))  # (B, 1+R, K)
    close = (scored - got_scores.unsqueeze(1)).abs() <= tolerance.unsqueeze(1)
    wrong = ~(close | (scored.isneginf() & got_scores.isneginf().unsqueeze(1))).any(1)  # (B, K)
    wrong[:, 1:] |= got_scores[:, 1:] > got_scores[:, :-1] + tolerance[:, 1:]  # not best first
    returned = torch.zeros_like(options[:, 0], dtype=torch.bool).scatter_(1, ids, True)  # (B, N+1)
    least = options.min(1).values.masked_fill(returned, float("-inf"))  # (B, N+1): the item's lowest right score
    wrong[:, -1] |= (least > got_scores[:, -1:] + tolerance[:, -1:]).any(1)
    return wrong


def _partition_options(graph: ScoringGraph, tensors: list[torch.Tensor]) -> torch.Tensor:
    """(B, 1+R, N+1): each item's right scores, base and reranker facets (``CPRHead.partition_scores``); a
    history item (with a context partition or exclude-seen) has one, its CPR logit or -inf, in every row."""
    model = graph.model
    items, timestamps = graph.window_inputs(*tensors)  # (B, W) each
    layers = model.encode_layers(items, timestamps)
    options = model.head.partition_scores(layers).float()  # (B, 1+R, N+1)
    if model.head.context_facet is None and not graph.exclude_seen:
        return options
    window = items[:, -model.cfg.max_length :]
    fixed = model.head.logits(layers, window).float()  # (B, N+1): history items whatever the tie
    if graph.exclude_seen:
        fixed = fixed.scatter(1, window, float("-inf"))
    history = torch.zeros_like(fixed, dtype=torch.bool).scatter_(1, window, True)  # (B, N+1), column 0 too
    return torch.where(history.unsqueeze(1), fixed.unsqueeze(1), options)


def _tied_rerank_boundary(graph: ScoringGraph, tensors: list[torch.Tensor], spec: ExportSpec) -> torch.Tensor:
    """(B,) bool: the logits a reranker stage ranks tie, within the score tolerance, at the stage's size."""
    head = graph.model.head
    sizes = getattr(getattr(head, "variant", None), "rerank", ())
    items, timestamps = graph.window_inputs(*tensors)  # (B, W) each
    tied = torch.zeros(items.shape[0], dtype=torch.bool)
    if not sizes:
        return tied
    for size, running in zip(sizes, head.rerank_inputs(graph.model.encode_layers(items, timestamps))):
        ranked = running.float().sort(dim=1, descending=True).values  # (B, N+1)
        if size < ranked.shape[1] - 1:  # a stage that takes every item has no boundary
            last_in, first_out = ranked[:, size - 1], ranked[:, size]
            tied |= (last_in - first_out).abs() <= spec.score_atol + spec.score_rtol * last_in.abs()
    return tied


def _with_timestamps(spec: ExportSpec, sample: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if "timestamps" in spec.inputs:
        batch, length = sample["items"].shape
        steps = torch.arange(1, length + 1).expand(batch, length) * 3600
        sample["timestamps"] = (1_600_000_000 + steps) * (sample["items"] > 0)
    return {key: sample[key] for key in spec.inputs}
