"""Heads' top_k with either candidate step ("fused" catalog_topk, "matmul" + topk) gives the same items,
and what a traced scoring graph holds with each ``topk_kernel``."""

import pytest
import torch
from torch import nn

from seqrec.config import ModelConfig
from seqrec.errors import ConfigError
from seqrec.exporter.graph import ScoringGraph
from seqrec.models import build_model

CATALOG = 20_011  # more than one tile of the blocked kernel, so "fused" runs it on the CPU
HEADS = [("softmax", {}), ("softmax", {"l2_normalize": True}), ("cpr", {"cpr_variant": "CPR:60,20,7"}),
         ("cpr", {"cpr_variant": "C+Mi"})]


def catalog_model(head: str, **overrides) -> nn.Module:
    torch.manual_seed(2)
    cfg = ModelConfig(model="sasrec", head=head, num_items=CATALOG, dim=16, heads=2, layers=1, max_length=10,
                      dropout=0.0, **overrides)
    net = build_model(cfg).eval()
    with torch.no_grad():
        for module in net.head.modules():
            if isinstance(module, nn.Linear):  # CPR facets away from the identity they start at
                module.weight.normal_(0, 0.3)
    return net


def histories(batch: int = 9, length: int = 12) -> torch.Tensor:
    gen = torch.Generator().manual_seed(4)
    items = torch.randint(1, CATALOG + 1, (batch, length), generator=gen)
    items[:, ::3] = items[:, 1::3]  # repeats
    items[2, :9] = 0  # a short history
    return items


@pytest.mark.parametrize("head,overrides", HEADS, ids=[f"{h}-{o}" for h, o in HEADS])
@pytest.mark.parametrize("exclude_seen", [False, True])
def test_fused_top_k_equals_matmul_top_k(head, overrides, exclude_seen):
    net = catalog_model(head, **overrides)
    items = histories()
    with torch.no_grad():
        expected_scores, expected_ids = net.top_k_reference(items, 15, exclude_seen)
        for kernel in ("fused", "matmul", "auto"):
            net.head.topk_kernel = kernel
            scores, ids = net.top_k(items, 15, exclude_seen)
            torch.testing.assert_close(scores, expected_scores, rtol=1e-5, atol=1e-5)
            assert torch.equal(ids, expected_ids), kernel


@pytest.mark.parametrize("head,overrides", HEADS, ids=[f"{h}-{o}" for h, o in HEADS])
@pytest.mark.parametrize("exclude_seen", [False, True])
@pytest.mark.parametrize("block", [997, 13])  # 997 divides no catalog here; 13 < top 15 + its exclusions
def test_matmul_top_k_by_catalog_block_equals_the_whole_catalog_at_once(head, overrides, exclude_seen, block):
    net = catalog_model(head, **overrides)
    net.head.topk_kernel = "matmul"
    items = histories()
    with torch.no_grad():
        expected_scores, expected_ids = net.top_k_reference(items, 15, exclude_seen)
        scores, ids = net.top_k(items, 15, exclude_seen, catalog_block=block)
    torch.testing.assert_close(scores, expected_scores, rtol=1e-5, atol=1e-5)
    assert torch.equal(ids, expected_ids)


def catalog_wide_nodes(program: torch.export.ExportedProgram) -> list[str]:
    """Computed nodes with a dimension of the catalog's size N + 1 (the table itself is an input, not one)."""
    return [node.name for node in program.graph.nodes if node.op == "call_function"
            and isinstance(node.meta.get("val"), torch.Tensor) and CATALOG + 1 in node.meta["val"].shape]


@pytest.mark.parametrize("head", ["softmax", "cpr"])
@pytest.mark.parametrize("exclude_seen", [False, True])
def test_a_traced_graph_scored_by_block_never_holds_catalog_wide_scores(head, exclude_seen):
    net = catalog_model(head, cpr_variant="CPR:20+Mi")
    items = histories()
    with torch.no_grad():
        eager = ScoringGraph(net, top_k=10, exclude_seen=exclude_seen, length=10)(items)
        programs = {block: torch.export.export(ScoringGraph(net, 10, exclude_seen, 10, catalog_block=block), (items,))
                    for block in (CATALOG + 1, 4_096)}
    assert catalog_wide_nodes(programs[CATALOG + 1])  # at once: (B, N+1) scores
    assert not catalog_wide_nodes(programs[4_096])
    for program in programs.values():
        traced = program.module()(items)
        assert torch.equal(traced[0], eager[0])
        torch.testing.assert_close(traced[1], eager[1], rtol=1e-5, atol=1e-5)


def test_fused_top_k_with_grad_enabled():
    net = catalog_model("softmax")  # its embedding table requires grad; top_k selects without gradient
    net.head.topk_kernel = "fused"
    scores, ids = net.top_k(histories(), 5)
    assert not scores.requires_grad and ids.shape == (9, 5)


def seqrec_nodes(program: torch.export.ExportedProgram) -> list[str]:
    return [str(node.target) for node in program.graph.nodes
            if node.op == "call_function" and getattr(node.target, "namespace", None) == "seqrec"]


@pytest.mark.parametrize("head", ["softmax", "cpr"])
def test_traced_graph_keeps_matmul_unless_fused_is_asked_for(head):
    net = catalog_model(head, cpr_variant="CPR:20")
    items = histories()
    graph = ScoringGraph(net, top_k=10, exclude_seen=True, length=10)
    with torch.no_grad():
        eager = graph(items)  # "auto" in eager: catalog_topk
        nodes = {}
        for kernel in ("auto", "fused"):
            net.head.topk_kernel = kernel
            program = torch.export.export(graph, (items,))
            nodes[kernel] = seqrec_nodes(program)
            traced = program.module()(items)
            assert torch.equal(traced[0], eager[0])
            torch.testing.assert_close(traced[1], eager[1], rtol=1e-5, atol=1e-5)
    assert nodes == {"auto": [], "fused": ["seqrec.catalog_topk_opaque.default"]}


def test_unknown_topk_kernel():
    net = catalog_model("softmax")
    net.head.topk_kernel = "onnx"
    with pytest.raises(ConfigError, match=r"head topk_kernel \| received 'onnx', expected one of auto, matmul, fused"):
        net.top_k(histories(), 5)


def test_a_cosine_head_builds_the_fused_caches_once_per_table_version(monkeypatch):
    """With l2_normalize, scoring batch after batch must reuse one unit table (catalog_topk's norm order
    and int8 copy key on the table object), and see an update of the weights."""
    from seqrec.kernels import blocked_catalog_topk

    builds = []
    build = blocked_catalog_topk._NORM_ORDERS._build
    monkeypatch.setattr(blocked_catalog_topk._NORM_ORDERS, "_build", lambda table: builds.append(1) or build(table))
    net = catalog_model("softmax", l2_normalize=True)
    net.head.topk_kernel = "fused"
    items = histories()
    with torch.no_grad():
        first = [net.top_k(items, 7)[1] for _ in range(3)]
        assert len(builds) == 1 and all(torch.equal(first[0], ids) for ids in first)
        net.item_embedding.weight.mul_(torch.rand(CATALOG + 1, 1) + 0.5)  # new norms, same unit rows
        net.item_embedding.weight[5].neg_()
        expected = net.top_k_reference(items, 7)[1]
        torch.testing.assert_close(net.top_k(items, 7)[1], expected, rtol=0, atol=0)
    assert len(builds) == 2
