"""The parity check itself, on answers written by hand: it must pass every right answer and fail wrong ones.

A user whose reranker boundary ties (the plain base partition h . E of a history with no known item scores
every item 0) has many right answers, one per choice of the tied items a backend's TopK reranks; the check
must pass each of them and still catch an answer no choice gives (other scores, another order, a missed
item, an item twice)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from seqrec.exporter.graph import ScoringGraph
from seqrec.exporter.specs import spec_for
from seqrec.exporter.validate import ParityReport, compare_case, edge_cases
from seqrec.training.checkpoint import load_checkpoint

TOP_K = 7


@pytest.fixture(scope="module")
def plain_base(tiny_checkpoints):
    """A CPR:20+Mi head whose base partition is h . E: every base logit of a history with no known item is 0."""
    model = load_checkpoint(tiny_checkpoints("sasrec", "cpr", cpr_base_projection=False)).model
    return ScoringGraph(model, TOP_K, exclude_seen=False, length=model.cfg.max_length), spec_for("sasrec", "cpr")


def feed_of(graph: ScoringGraph, seed: int = 0) -> dict[str, torch.Tensor]:
    """Three users with no known item (tied boundary) and three random ones (no tie)."""
    generator = torch.Generator().manual_seed(seed)
    known = torch.randint(1, graph.model.cfg.num_items + 1, (3, graph.length), generator=generator)
    return {"items": torch.cat([torch.zeros(3, graph.length, dtype=torch.long), known])}


@torch.no_grad()
def another_right_answer(graph: ScoringGraph, items: torch.Tensor) -> dict[str, np.ndarray]:
    """PyTorch's answer, but for the users with no known item the top-K a backend gives when its reranker
    stage takes 20 other tied items: the last 20 of the catalog, which PyTorch's topk does not take first."""
    top_items, top_scores = graph.reference(items)
    options = graph.model.head.partition_scores(graph.model.encode_layers(items))  # (B, 2, N+1)
    n = graph.model.cfg.num_items
    chosen = torch.arange(n - 19, n + 1).expand(len(items), -1)  # (B, 20)
    logits = options[:, 0].scatter(1, chosen, options[:, 1].gather(1, chosen))  # (B, N+1): no history to replace
    scores, ids = logits.topk(TOP_K, dim=1)
    unknown = (items == 0).all(1)
    top_items[unknown], top_scores[unknown] = ids[unknown], scores[unknown].float()
    return {"top_items": top_items.numpy(), "top_scores": top_scores.numpy()}


def test_the_torch_runner_takes_arrays_of_any_strides():
    """A reversed view (negative strides), which ONNX Runtime takes, failed in torch.from_numpy."""
    from seqrec.exporter.runners import TorchRunner

    class Echo(torch.nn.Module):
        def forward(self, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return items, items.float()  # (B, L) each

    items = np.arange(12, dtype=np.int64).reshape(3, 4)
    with TorchRunner(Echo(), ("items",)) as runner:
        for view in (items[:, ::-1], items[::-1], items.T.copy().T):
            outputs = runner.infer({"items": view})
            np.testing.assert_array_equal(outputs["top_items"], view)


def test_another_right_answer_of_tied_users_passes(plain_base):
    graph, spec = plain_base
    feed = feed_of(graph)
    outputs = another_right_answer(graph, feed["items"])
    reference = graph.reference(feed["items"])[0].numpy()
    assert (outputs["top_items"][:3] != reference[:3]).any()  # the tied users' answers do differ from PyTorch's
    result = compare_case("mixed", graph, spec, feed, outputs)
    assert result.ok and result.undefined_users == 3 and result.wrong_items == 0


@pytest.mark.parametrize("corruption", ["scores shifted", "order reversed", "best item missed", "item twice"])
def test_a_wrong_answer_of_tied_users_fails(plain_base, corruption):
    graph, spec = plain_base
    feed = feed_of(graph)
    outputs = another_right_answer(graph, feed["items"])
    items, scores = outputs["top_items"].copy(), outputs["top_scores"].copy()
    if corruption == "scores shifted":
        scores[:3] += 1.0
    elif corruption == "order reversed":
        items[:3], scores[:3] = items[:3, ::-1], scores[:3, ::-1]
    elif corruption == "best item missed":  # ranks 2..K moved up, an item scored below them last
        items[:3, :-1], scores[:3, :-1] = items[:3, 1:].copy(), scores[:3, 1:].copy()
        items[:3, -1], scores[:3, -1] = 0, float("-inf")
    else:
        items[:3, 1] = items[:3, 0]
    result = compare_case("mixed", graph, spec, feed, {"top_items": items, "top_scores": scores})
    assert not result.ok and result.wrong_items > 0


def test_an_item_returned_twice_fails_even_where_every_score_ties(tiny_checkpoints):
    """A softmax SASRec scores every item 0 for a history with no known item: any item is a tie at any rank,
    but not the same item twice."""
    model = load_checkpoint(tiny_checkpoints("sasrec", "softmax")).model
    graph = ScoringGraph(model, TOP_K, exclude_seen=False, length=model.cfg.max_length)
    feed = {"items": torch.zeros(2, graph.length, dtype=torch.long)}
    scores = np.zeros((2, TOP_K), dtype=np.float32)
    distinct = compare_case("no known item", graph, spec_for("sasrec", "softmax"), feed,
                            {"top_items": np.tile(np.arange(20, 20 + TOP_K), (2, 1)), "top_scores": scores})
    assert distinct.ok  # other tied items than PyTorch's: right
    assert distinct.top_k_agreement == 0.0 and distinct.tied_items == 2 * TOP_K  # the report says why it is ok
    assert f"top-K agreement 0.0000 (other ids: {2 * TOP_K} ties)" in ParityReport("x", "y", 0, 0, [distinct]).lines()[1]
    twice = compare_case("no known item", graph, spec_for("sasrec", "softmax"), feed,
                         {"top_items": np.full((2, TOP_K), 17), "top_scores": scores})
    assert not twice.ok and twice.wrong_items == 2 * (TOP_K - 1)


def test_an_item_outside_the_catalog_fails(plain_base):
    graph, spec = plain_base
    feed = feed_of(graph)
    outputs = another_right_answer(graph, feed["items"])
    outputs["top_items"][4, 0] = graph.model.cfg.num_items + 1  # clamped, it would be scored as item N
    assert not compare_case("mixed", graph, spec, feed, outputs).ok


def test_fp16_tolerances_do_not_excuse_a_wrong_answer_of_tied_users(plain_base):
    """The export at fp16 widens the tolerances 50 times (``TOLERANCE_SCALE``); an answer shifted by 1.0
    on every tied user must still fail."""
    graph, spec = plain_base
    wide = dataclasses.replace(spec, score_atol=spec.score_atol * 50, score_rtol=spec.score_rtol * 50)
    feed = feed_of(graph)
    outputs = another_right_answer(graph, feed["items"])
    outputs["top_scores"][:3] += 1.0
    assert not compare_case("mixed", graph, wide, feed, outputs).ok


def test_unknown_id_cases_are_checked_against_the_histories_without_those_slots():
    """The edge cases with ids that are no known item (a new item last, holes in the middle) carry, as their
    reference, the same histories with those slots removed and the rest moved right with their timestamps."""
    spec, num_items = spec_for("hstu", "softmax"), 50  # items and timestamps
    cases = edge_cases(spec, num_items, window=6, users=4, seed=0)
    for name in ("unknown last", "unknown in middle"):
        feed = cases[name]
        assert sorted(feed) == ["items", "reference items", "reference timestamps", "timestamps"]
        known = (feed["items"] > 0) & (feed["items"] <= num_items)  # (B, L)
        assert not known[:, -1].any() and known.any(1).all()
        for row in range(len(known)):
            count = int(known[row].sum())
            assert feed["reference items"][row, -count:].tolist() == feed["items"][row][known[row]].tolist()
            assert feed["reference timestamps"][row, -count:].tolist() == feed["timestamps"][row][known[row]].tolist()
            assert not feed["reference items"][row, :-count].any()
            assert not feed["reference timestamps"][row, :-count].any()
    holes = ~known[:, :-1] & (known[:, :-1].cumsum(1) > 0)  # "unknown in middle": after the first known item
    assert holes.any(1).all() and (feed["timestamps"][~known & (feed["items"] != 0)] > 0).all()
    assert {num_items + 1, -1, 0} <= set(cases["unknown last"]["items"][:, -1].tolist())


class FixedAnswers:
    """A runner that returns given outputs (check_parity's side of the backend), the next rows at each call: a case
    is fed in order, a group of users at a time. ``batches`` records the users of each call."""

    name = "fixed"

    def __init__(self, outputs: dict[str, np.ndarray]) -> None:
        self.outputs = outputs
        self.batches: list[int] = []

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        first, users = sum(self.batches), len(next(iter(feed.values())))
        self.batches.append(users)
        return {key: value[first:first + users] for key, value in self.outputs.items()}


@pytest.mark.parametrize("wrong_user", [None, 1, 5])
def test_a_case_compared_a_few_users_at_a_time_gives_the_report_of_all_at_once(plain_base, monkeypatch, wrong_user):
    """PyTorch's side holds (users, N+1) logits per partition: 3.6 GB for 200 users of 4.5M items, so a case is
    compared in groups of users; the report must not depend on the grouping, and a wrong item in any group fails."""
    from seqrec.exporter import validate

    graph, spec = plain_base
    feed = feed_of(graph)
    outputs = another_right_answer(graph, feed["items"])
    if wrong_user is not None:
        outputs["top_items"][wrong_user, 0] = outputs["top_items"][wrong_user, -1]  # a worse item first, twice
    reports = {}
    for users in (6, 4, 1):  # all at once; groups of 4 and 2; one by one
        partitions = 2  # the base and one reranker stage (CPR:20+Mi)
        monkeypatch.setattr(validate, "REFERENCE_SCORES", users * partitions * (graph.model.cfg.num_items + 1))
        assert validate._users_per_comparison(graph) == users
        reports[users] = validate.check_parity(FixedAnswers(outputs), graph, spec, {"mixed": feed}).cases[0]
    for users in (4, 1):  # the same report, but for PyTorch's last bits: its matmuls round by batch size
        exact = {"max_abs_diff": 0.0, "top_k_agreement": 0.0}
        assert dataclasses.replace(reports[users], **exact) == dataclasses.replace(reports[6], **exact)
        assert abs(reports[users].max_abs_diff - reports[6].max_abs_diff) < 1e-5
        assert reports[users].top_k_agreement == pytest.approx(reports[6].top_k_agreement, abs=1e-6)
    assert reports[6].users == 6 and reports[6].undefined_users == 3
    assert reports[6].ok == (wrong_user is None) and (reports[6].wrong_items > 0) == (wrong_user is not None)


def test_a_nan_score_difference_in_any_group_stays_nan_in_the_merged_report():
    from seqrec.exporter.validate import CaseResult, merged_cases

    good = CaseResult("c", 3, 5, 7e-7, 1.0, 0, True)
    bad = CaseResult("c", 2, 5, float("nan"), 1.0, 0, False)
    for parts in ([good, bad], [bad, good]):
        merged = merged_cases(parts)
        assert np.isnan(merged.max_abs_diff) and not merged.ok and merged.users == 5


def test_long_windows_are_checked_a_few_users_at_a_time_on_both_sides(plain_base, monkeypatch):
    """Both sides hold (users, L, L) attention scores per layer: 200 users of a 2,048-item window ran the export
    out of a 24 GB machine's memory. Every history is padded to the graph's window on both sides, so a short case
    is grouped as a full one: 8 users of length 1 at a window of 8,192 held 18 GB."""
    from seqrec.exporter import validate

    graph, spec = plain_base
    feed = feed_of(graph)
    heads = graph.model.cfg.heads
    monkeypatch.setattr(validate, "ATTENTION_SCORES", 2 * heads * graph.length ** 2)  # 2 users of a full window
    runner = FixedAnswers(another_right_answer(graph, feed["items"]))
    case = validate.check_parity(runner, graph, spec, {"mixed": feed}).cases[0]
    assert runner.batches == [2, 2, 2] and case.ok and case.users == 6
    longer = torch.cat([torch.zeros(6, 9, dtype=torch.long), feed["items"]], 1)  # (6, L + 9)
    for items in (feed["items"][:, -1:], longer):  # shorter and longer than the window: the window's cost
        runner = FixedAnswers(another_right_answer(graph, graph.window_inputs(items)[0]))
        case = validate.check_parity(runner, graph, spec, {"cut": {"items": items}}).cases[0]
        assert runner.batches == [2, 2, 2] and case.ok and case.users == 6


@pytest.mark.parametrize("model,heads,window,expected", [
    ("sasrec", 1, 50, (200, 8)), ("sasrec", 1, 2048, (200, 8)), ("sasrec", 1, 4096, (64, 8)),
    ("sasrec", 1, 8192, (16, 4)), ("hstu", 4, 8192, (16, 2)), ("pcrec", 2, 4096, (32, 8)),
    ("gru4rec", 1, 8192, (200, 8))])
def test_the_default_parity_check_checks_fewer_users_where_a_long_attention_window_makes_each_slow(
        model, heads, window, expected):
    """Every user is scored at the full window on both sides: 200 users at 8,192 took 25 minutes. A recurrent
    encoder's cost grows with W, not W^2, so it keeps the default."""
    from seqrec.config import ModelConfig
    from seqrec.exporter.validate import parity_users

    cfg = ModelConfig(model=model, head="softmax", num_items=100, heads=heads, dim=16, max_length=window)
    assert parity_users(cfg, window) == expected
