"""softmax-CPR head against a literal restatement of the published algorithm, and its sampled form."""

import math

import pytest
import torch
from torch import nn

from seqrec.config import ModelConfig, parse_cpr_variant
from seqrec.errors import ConfigError
from seqrec.models import build_model
from seqrec.models.heads import causal_histories

NUM_ITEMS = 29
VARIANTS = ["softmax", "softmax+Mi", "C", "CP", "CP+Mi", "CPR:7", "CPR:7+Mi", "CPR:20,9,4+Mi", "CPR:100+Mi"]


def cpr_model(variant: str, model: str = "sasrec", layers: int = 2, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    cfg = ModelConfig(model=model, head="cpr", cpr_variant=variant, num_items=NUM_ITEMS, dim=12, heads=2,
                      layers=layers, max_length=10, dropout=0.1, **overrides)
    net = build_model(cfg).eval()
    with torch.no_grad():  # random weights everywhere, not the identity start
        for module in net.head.modules():
            if isinstance(module, nn.Linear):
                module.weight.normal_(0, 0.3)
                module.bias.normal_(0, 0.3)
        if net.head.pointer_recency is not None:
            net.head.pointer_recency.normal_(0, 0.5)
    return net


def histories_with_repeats(batch: int, length: int, seed: int) -> torch.Tensor:
    """Left padded, lengths 1..length, drawn from few items so duplicates abound; one all-repeat row."""
    gen = torch.Generator().manual_seed(seed)
    items = torch.randint(1, 7, (batch, length), generator=gen)
    items[0] = 5
    lengths = torch.randint(1, length + 1, (batch,), generator=gen)
    lengths[0] = length
    slots = torch.arange(length).unsqueeze(0)
    return items.masked_fill(slots < (length - lengths).unsqueeze(1), 0)


def literal_cpr(head, all_hidden_states: list[torch.Tensor], item_seq: torch.Tensor) -> torch.Tensor:
    """RecBole 1.2 SASRecCPR.calculate_loss_prob restated line by line (logits at the last slot).

    scatter_add of context + pointer scores and of counts over the whole catalog, divide, replace.
    With ``cpr_pooling="logsumexp"`` (ours): scatter_add of exp(context + pointer), then log.
    """
    variant, weight = head.variant, head.item_embedding.weight
    hidden_emb_arr = []
    for i in range(head.mixed_layers):
        hidden_states = all_hidden_states[-(i + 1)]  # i-th layer from the top
        hidden_emb_arr.append(hidden_states)
        for j in range(2):  # n_facet_window = 2
            bsz, seq_len, hidden_size = hidden_states.size()
            shifted = torch.cat((torch.zeros((bsz, j + 1, hidden_size)), hidden_states[:, : -(j + 1), :]), dim=1)
            hidden_emb_arr.append(shifted)
    if variant.mixed_input:
        mlp = head.mix(torch.cat(hidden_emb_arr, dim=-1))
        raw = torch.cat([hidden_emb_arr[0], nn.functional.gelu(mlp)], dim=-1)
    else:
        raw = hidden_emb_arr[0]
    last = raw[:, -1, :].unsqueeze(1)  # (bsz, 1, W)
    base = last[..., : weight.shape[1]] if head.softmax_facet is None else head.softmax_facet(last)  # ours: no f_S
    lm_logits = nn.functional.linear(base, weight, None)  # (bsz, 1, N+1)
    lm_logits[:, :, 0] = -math.inf
    for k, facet in zip(variant.rerank, head.rerank_facets):
        k = min(k, NUM_ITEMS)  # RecBole fails when k > N; we cap it
        _, candidates = torch.topk(lm_logits, k)
        reranked = (facet(last).unsqueeze(2).expand(-1, -1, k, -1) * weight[candidates, :]).sum(-1)
        lm_logits = lm_logits.scatter(2, candidates, reranked)
    if variant.context:
        bsz, seq_len_2 = item_seq.size()
        context = (head.context_facet(last).unsqueeze(2).expand(-1, -1, seq_len_2, -1)
                   * weight[item_seq, :].unsqueeze(1)).sum(-1)  # (bsz, 1, L)
        pointer = 0
        if variant.pointer:
            pointer = (head.pointer_query(last).unsqueeze(2) * head.pointer_key(raw).unsqueeze(1)).sum(-1)
            if head.pointer_recency is not None:  # our extension: a learned bias by distance back from the end
                pointer = pointer + head.pointer_recency[torch.arange(seq_len_2 - 1, -1, -1)]
        index = item_seq.unsqueeze(1)  # (bsz, 1, L)
        if head.pooling == "logsumexp":
            summed = torch.zeros_like(lm_logits).scatter_add(2, index, (context + pointer).exp())
            only_new = torch.where(summed > 0, summed.log(), summed)  # 0 off the history, as below
        else:
            only_new = torch.zeros_like(lm_logits).scatter_add(2, index, context + pointer)
            count = torch.zeros_like(only_new) + 1e-15
            count = count.scatter_add(2, index, torch.ones_like(index, dtype=count.dtype))
            only_new = only_new / count
        lm_logits = lm_logits.scatter(2, index, torch.zeros_like(index, dtype=lm_logits.dtype)) + only_new
        lm_logits[:, :, 0] = -math.inf  # item 0 is never a result (RecBole leaves it to the softmax)
    return lm_logits.squeeze(1)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("model", ["sasrec", "gru4rec"])
def test_head_matches_the_literal_algorithm(variant, model):
    net = cpr_model(variant, model, cpr_pooling="mean")
    items = histories_with_repeats(9, 10, seed=len(variant))
    layers = net.encode_layers(items)
    with torch.no_grad():
        torch.testing.assert_close(net(items), literal_cpr(net.head, layers, items), rtol=1e-5, atol=1e-5)


def test_head_without_recency_is_the_published_algorithm():
    net = cpr_model("CPR:7+Mi", cpr_recency=False, cpr_pooling="mean")
    assert net.head.pointer_recency is None
    items = histories_with_repeats(9, 10, seed=8)
    with torch.no_grad():
        torch.testing.assert_close(net(items), literal_cpr(net.head, net.encode_layers(items), items),
                                   rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("variant", ["softmax+Mi", "CP", "CPR:7+Mi", "CPR:20,9,4"])
def test_plain_base_partition_is_the_softmax_heads_logits(variant):
    net = cpr_model(variant, cpr_base_projection=False)
    assert net.head.softmax_facet is None
    items = histories_with_repeats(9, 10, seed=11)
    rows = items > 0
    with torch.no_grad():
        layers = net.encode_layers(items)
        torch.testing.assert_close(net(items), literal_cpr(net.head, layers, items), rtol=1e-5, atol=1e-5)
        base = net.head.base_logits(layers, rows)  # (M, N+1)
        plain = layers[-1][rows] @ net.item_embedding.weight.T  # (M, N+1): h . E, as the softmax head
        torch.testing.assert_close(base[:, 1:], plain[:, 1:])
        assert torch.isneginf(base[:, 0]).all()
        scores, ids = net.top_k(items, 5, False)
        ref_scores, ref_ids = net.top_k_reference(items, 5, False)
    torch.testing.assert_close(scores, ref_scores, rtol=1e-5, atol=1e-5)
    assert torch.equal(ids, ref_ids)


@pytest.mark.parametrize("variant", ["C", "CP+Mi", "CPR:7+Mi"])
@pytest.mark.parametrize("model", ["sasrec", "gru4rec"])
def test_logsumexp_pooling_matches_the_literal_sum_of_probabilities(variant, model):
    net = cpr_model(variant, model, cpr_pooling="logsumexp")
    items = histories_with_repeats(9, 10, seed=len(variant) + 3)
    with torch.no_grad():
        ours = net(items)
        torch.testing.assert_close(ours, literal_cpr(net.head, net.encode_layers(items), items), rtol=1e-5, atol=1e-5)
        mean = cpr_model(variant, model, cpr_pooling="mean")(items)  # same weights, published pooling
    count = torch.zeros_like(ours).scatter_add(1, items, torch.ones_like(items, dtype=ours.dtype))  # (B, N+1)
    count[:, 0] = 0
    assert (ours[count > 1] > mean[count > 1]).all()  # log-sum-exp of several slots exceeds their mean
    torch.testing.assert_close(ours[count <= 1], mean[count <= 1])  # one slot or none: the same logit


@pytest.mark.parametrize("variant", ["CP+Mi", "CPR:7+Mi", "CPR:20,9,4"])
@pytest.mark.parametrize("pooling", ["mean", "logsumexp"])
def test_every_prefix_row_matches_scoring_that_prefix_alone(variant, pooling):
    net = cpr_model(variant, layers=3, cpr_pooling=pooling)
    items = histories_with_repeats(5, 10, seed=3)
    rows = items > 0
    with torch.no_grad():
        packed = net.head.logits(net.encode_layers(items), items, rows)  # (M, N+1)
        prefixes = causal_histories(items)[rows]  # (M, L): prefix t, later slots zeroed, then left padded
        prefixes = torch.stack([p.roll(len(p) - 1 - int((p > 0).nonzero()[-1])) for p in prefixes])
        torch.testing.assert_close(packed, net(prefixes), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("variant,pooling", [("softmax+Mi", "mean"), ("C", "mean"), ("CP", "mean"),
                                             ("CPR:7+Mi", "mean"), ("CPR:20,9,4+Mi", "mean"),
                                             ("CP", "logsumexp"), ("CPR:7+Mi", "logsumexp")])
@pytest.mark.parametrize("base_projection", [True, False])
def test_sampled_columns_equal_the_full_logits(variant, pooling, base_projection):
    net = cpr_model(variant, cpr_pooling=pooling, cpr_base_projection=base_projection)
    items = histories_with_repeats(6, 10, seed=4)
    rows = items > 0
    targets = torch.randint(1, 7, (int(rows.sum()),), generator=torch.Generator().manual_seed(1))
    negatives = torch.tensor([1, 2, 3, 9, 9, 17, 28])  # history items among them on purpose
    with torch.no_grad():
        layers = net.encode_layers(items)
        full = net.head.logits(layers, items, rows)  # (M, N+1)
        sampled, columns = net.head.sampled_logits(layers, items, rows, targets, negatives)  # (M, C)
    real = columns > 0
    real[:, 0] = True
    torch.testing.assert_close(sampled[real], full.gather(1, columns)[real], rtol=1e-5, atol=1e-5)
    assert torch.isneginf(sampled[~real]).all()
    if net.head.variant.context:  # each history item is scored in exactly one column of its row
        histories = causal_histories(items)[rows]  # (M, L)
        for row, cols in enumerate(columns.tolist()):
            for item in set(histories[row].tolist()) - {0}:
                assert cols.count(item) == 1, (row, item, cols)


@pytest.mark.parametrize("variant", ["softmax", "C", "CPR:7+Mi", "CPR:20,9,4"])
@pytest.mark.parametrize("base_projection", [True, False])
@pytest.mark.parametrize("gradient", [True, False])
def test_logits_and_base_from_one_product_equal_logits_and_base_logits(variant, base_projection, gradient):
    net = cpr_model(variant, cpr_base_projection=base_projection)
    items = histories_with_repeats(6, 10, seed=8)
    rows = items > 0
    with torch.set_grad_enabled(gradient):  # without gradient the rerank would write in place: not into base
        layers = net.encode_layers(items)
        logits, base = net.head.logits_and_base(layers, items, rows)  # (M, N+1) each
        torch.testing.assert_close(logits, net.head.logits(layers, items, rows), rtol=0, atol=0)
        torch.testing.assert_close(base, net.head.base_logits(layers, rows), rtol=0, atol=0)


def test_fresh_head_scores_like_the_softmax_head():
    torch.manual_seed(0)
    softmax = build_model(ModelConfig(num_items=NUM_ITEMS, dim=12, heads=2, max_length=10)).eval()
    torch.manual_seed(0)
    cpr = build_model(ModelConfig(num_items=NUM_ITEMS, dim=12, heads=2, max_length=10, head="cpr",
                                  cpr_variant="CPR:7+Mi")).eval()
    cpr.load_state_dict(softmax.state_dict(), strict=False)
    items = histories_with_repeats(4, 10, seed=5)
    ours, theirs = cpr(items), softmax(items)
    history = torch.zeros_like(ours, dtype=torch.bool).scatter(1, items, True)
    history[:, 0] = False  # history items get context + (small) pointer scores; the rest must agree
    torch.testing.assert_close(ours[~history], theirs[~history], rtol=1e-5, atol=1e-5)


def test_variants_parse_and_bad_ones_are_rejected():
    assert parse_cpr_variant("CPR:100+Mi").rerank == (100,)
    with pytest.raises(ConfigError, match=r"cpr_variant \| received 'CPR:20,100'"):
        ModelConfig(head="cpr", cpr_variant="CPR:20,100")


def big_cpr_model(variant: str, model: str = "sasrec", pooling: str = "mean"):
    torch.manual_seed(1)
    cfg = ModelConfig(model=model, head="cpr", cpr_variant=variant, num_items=503, dim=12, heads=2,
                      max_length=10, dropout=0.0, cpr_pooling=pooling)
    net = build_model(cfg).eval()
    with torch.no_grad():
        for module in net.head.modules():
            if isinstance(module, nn.Linear):
                module.weight.normal_(0, 0.3)
    return net


@pytest.mark.parametrize("variant,pooling", [("softmax", "mean"), ("C+Mi", "mean"), ("CP", "mean"),
                                             ("CPR:40+Mi", "mean"), ("CPR:60,20,7", "mean"),
                                             ("CP", "logsumexp"), ("CPR:40+Mi", "logsumexp")])
@pytest.mark.parametrize("exclude_seen", [False, True])
@pytest.mark.parametrize("model", ["sasrec", "gru4rec"])
def test_candidate_top_k_equals_full_logits_top_k(variant, pooling, exclude_seen, model):
    net = big_cpr_model(variant, model, pooling)
    gen = torch.Generator().manual_seed(7)
    items = torch.randint(1, 504, (11, 14), generator=gen)  # longer than max_length 10
    items[:, 6:] = torch.where(torch.rand(11, 8, generator=gen) < 0.5, items[:, 5:13], items[:, 6:])  # repeats
    items[3, :12] = 0  # a short history
    with torch.no_grad():
        scores, ids = net.top_k(items, 15, exclude_seen)
        ref_scores, ref_ids = net.top_k_reference(items, 15, exclude_seen)
    torch.testing.assert_close(scores, ref_scores, rtol=1e-5, atol=1e-5)
    assert torch.equal(ids, ref_ids)
    if exclude_seen:
        window = items[:, -10:]
        assert not (ids.unsqueeze(-1) == window.unsqueeze(1)).any()


@pytest.mark.parametrize("variant", ["CPR:9+Mi", "CPR:20,5", "CPR:30+Mi", "CPR:100+Mi"])
@pytest.mark.parametrize("exclude_seen", [False, True])
@pytest.mark.parametrize("topk_kernel", ["fused", "matmul"])
def test_candidate_top_k_when_the_history_covers_most_of_a_tiny_catalog(variant, exclude_seen, topk_kernel):
    """Fewer items outside the history than the reranker takes: its empty slots (item 0, a left-out
    seen item, a repeated history slot) must stay unscored, on both catalog paths (eager and traced)."""
    torch.manual_seed(2)
    net = build_model(ModelConfig(head="cpr", cpr_variant=variant, num_items=13, dim=8, heads=2, max_length=10,
                                  dropout=0.0)).eval()
    net.head.topk_kernel = topk_kernel
    items = torch.randint(1, 14, (7, 10), generator=torch.Generator().manual_seed(5))
    items[0] = torch.arange(1, 11)  # ten distinct items: three left outside the history
    with torch.no_grad():
        scores, ids = net.top_k(items, 3, exclude_seen)
        ref_scores, ref_ids = net.top_k_reference(items, 3, exclude_seen)
    torch.testing.assert_close(scores, ref_scores, rtol=1e-5, atol=1e-5)
    assert torch.equal(ids, ref_ids) and (ids > 0).all()
    assert all(len(set(row.tolist())) == 3 for row in ids)  # no item twice


@pytest.mark.parametrize("variant,pooling", [("C", "mean"), ("CP+Mi", "mean"), ("CPR:60,20,7", "mean"),
                                             ("CPR:60,20,7", "logsumexp")])
def test_custom_pointer_op_top_k_equals_standard(variant, pooling):
    net = big_cpr_model(variant, pooling=pooling)
    gen = torch.Generator().manual_seed(3)
    items = torch.randint(1, 40, (9, 10), generator=gen)  # small id range: duplicates and candidate overlap
    items[2, :7] = 0
    with torch.no_grad():
        standard = net.top_k(items, 12)
        custom = net.top_k(items, 12, pointer_op="custom")
    torch.testing.assert_close(custom[0], standard[0])
    assert torch.equal(custom[1], standard[1])


def test_an_unknown_pointer_op_is_refused():
    """pointer_op="Custom" ran silently as "standard", with either head."""
    items = histories_with_repeats(2, 6, seed=1)
    for net in (cpr_model("CP"), build_model(ModelConfig(num_items=40, dim=16, layers=1, max_length=8))):
        for bad in ("Custom", "", "triton"):
            with pytest.raises(ConfigError, match=rf"pointer_op \| received '{bad}', expected one of standard, custom"):
                net.top_k(items, 3, pointer_op=bad)


def test_rerank_inputs_are_the_running_logits_of_each_stage():
    net = big_cpr_model("CPR:60,20,7")
    items = torch.randint(1, 504, (5, 10), generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        layers = net.encode_layers(items, None)
        inputs = net.head.rerank_inputs(layers)  # [(B, N+1)] x 3
        base = net.head.base_logits(layers, None)  # (B, N+1)
    assert len(inputs) == 3
    torch.testing.assert_close(inputs[0], base)
    for before, after, k in zip(inputs, inputs[1:], (60, 20)):  # a stage changes its own top-k only
        top = torch.zeros_like(before, dtype=torch.bool).scatter(1, before.topk(k, dim=1).indices, True)
        assert (after != before).any(1).all() and not ((after != before) & ~top).any()


def test_pooling_of_repeated_slots_keeps_float64():
    """log-sum-exp pooling promotes low precision to float32 and must not round float64 down."""
    from seqrec.models.cpr import pool_occurrences

    ids = torch.tensor([[0, 3, 5, 3], [2, 2, 2, 7]])
    values = torch.randn(2, 4, dtype=torch.float64)
    pooled = pool_occurrences(ids, values)
    assert pooled.dtype == torch.float64
    expected = torch.logaddexp(values[0, 1], values[0, 3])
    assert torch.equal(pooled[0, 1], expected) and torch.equal(pooled[0, 3], expected)
    assert pool_occurrences(ids, values.to(torch.bfloat16)).dtype == torch.float32


@pytest.mark.parametrize("bad", [float("inf"), float("-inf"), float("nan")])
def test_slot_means_read_only_their_own_ids(bad):
    """A non-finite value on a padding slot reaches no mean; on a slot of id 3, only id 3's."""
    from seqrec.models.cpr import slot_means

    ids = torch.tensor([[3, 5, 0, 3]])
    means, first = slot_means(ids, torch.tensor([[1.0, 2.0, bad, 3.0]]))
    torch.testing.assert_close(means, torch.tensor([[2.0, 2.0, 0.0, 2.0]]))
    assert first.tolist() == [[True, True, False, False]]
    means, _ = slot_means(ids, torch.tensor([[1.0, 2.0, 7.0, bad]]))
    torch.testing.assert_close(means, torch.tensor([[bad, 2.0, 0.0, bad]]), equal_nan=True)


def test_slot_means_sum_fp16_in_fp32():
    """50 slots of 2000: the fp16 sum (100,000) overflows, the mean does not; it comes back in float32."""
    from seqrec.models.cpr import slot_means

    means, _ = slot_means(torch.full((1, 50), 2), torch.full((1, 50), 2000.0, dtype=torch.float16))
    assert means.dtype == torch.float32
    torch.testing.assert_close(means, torch.full((1, 50), 2000.0))


@pytest.mark.parametrize("bad", [float("inf"), float("nan")])
def test_sampled_history_columns_give_the_target_its_own_mean_only(bad):
    """The positive's replaced logit reads only its own slots: another history id's non-finite value does
    not reach it (it did through (means * is_target).sum, 0 * inf = NaN)."""
    from seqrec.models.cpr import _with_history_columns

    ids = torch.tensor([[3, 5, 0, 3]])  # (M, L); the positive is item 3
    columns = torch.tensor([[3, 8, 9]])  # (M, 1 + S): positive, then two sampled negatives
    logits = torch.zeros(1, 3)
    merged, merged_columns = _with_history_columns(logits, columns, ids, torch.tensor([[1.0, bad, 0.0, 3.0]]))
    assert merged[0, 0].item() == 2.0  # the mean of item 3's two slots
    assert merged_columns[0, :3].tolist() == [3, 8, 9]
