"""Losses against direct restatements on small random inputs."""

import dataclasses
import re

import pytest
import torch
import torch.nn.functional as F

from seqrec.config import ModelConfig, TrainConfig, check_trainable
from seqrec.errors import ConfigError
from seqrec.models import build_model
from seqrec.models.heads import causal_histories
from seqrec.training.loop import packed_loss
from seqrec.training.losses import draw_negatives, full_cross_entropy, sampled_softmax


def tiny(num_items=23):
    torch.manual_seed(0)
    return build_model(ModelConfig(num_items=num_items, dim=8, layers=1, max_length=6))


def test_full_cross_entropy_leaves_seen_items_out_but_never_the_target():
    model = tiny()
    hidden, targets = torch.randn(5, 8), torch.tensor([3, 7, 7, 1, 22])
    seen = torch.tensor([[0, 4, 5], [7, 2, 0], [0, 0, 0], [9, 9, 1], [21, 20, 19]])
    logits = hidden @ model.item_embedding.weight.T
    logits[:, 0] = float("-inf")
    for row, items in enumerate(seen.tolist()):
        for item in items:
            if item and item != targets[row]:
                logits[row, item] = float("-inf")
    expected = F.cross_entropy(logits, targets)
    raw = model.head.logits([hidden.unsqueeze(1)], torch.ones(5, 1, dtype=torch.long))  # (5, N+1)
    torch.testing.assert_close(full_cross_entropy(raw, targets, seen=seen), expected)
    assert full_cross_entropy(raw, targets).item() > expected.item()


def test_sampled_softmax_masks_accidental_hits_and_seen_negatives():
    model = tiny(num_items=5)  # 64 negatives over 5 items: every item is drawn, hits are certain
    hidden, targets = torch.randn(3, 8), torch.tensor([1, 2, 3])
    seen = torch.tensor([[2, 3], [0, 0], [1, 0]])
    gen = torch.Generator().manual_seed(0)
    drawn = draw_negatives(5, 64, "cpu", generator=gen)
    logits, columns = model.head.sampled_logits([hidden.unsqueeze(1)], None, None, targets, drawn)
    loss = sampled_softmax(logits, columns, targets, seen=seen)
    negatives = torch.randint(1, 6, (64,), generator=torch.Generator().manual_seed(0))
    weights = model.item_embedding.weight
    rows = []
    for row in range(3):
        allowed = [n for n in negatives.tolist() if n != targets[row] and n not in seen[row].tolist()]
        logits = torch.cat([hidden[row] @ weights[targets[row]].view(1, -1).T, hidden[row] @ weights[allowed].T])
        rows.append(-F.log_softmax(logits, 0)[0])
    torch.testing.assert_close(loss, torch.stack(rows).mean())


def test_prefix_histories_are_causal():
    inputs = torch.tensor([[0, 4, 5, 6]])
    assert causal_histories(inputs)[0].tolist() == [[0, 0, 0, 0], [0, 4, 0, 0], [0, 4, 5, 0], [0, 4, 5, 6]]


def random_cpr(variant="CPR:7+Mi", num_items=29):
    torch.manual_seed(0)
    cfg = ModelConfig(head="cpr", cpr_variant=variant, num_items=num_items, dim=12, heads=2, layers=2, max_length=10)
    net = build_model(cfg).eval()  # no dropout: two passes over one batch agree
    with torch.no_grad():
        for module in net.head.modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.normal_(0, 0.3)
                module.bias.normal_(0, 0.3)
    return net


def batch_with_repeats(num_items=29):
    """Left padded histories from few items (duplicates everywhere) and a target at every real slot."""
    gen = torch.Generator().manual_seed(3)
    inputs = torch.randint(1, 7, (5, 10), generator=gen)
    lengths = torch.tensor([10, 1, 4, 7, 9])
    inputs = inputs.masked_fill(torch.arange(10) < (10 - lengths).unsqueeze(1), 0)  # (5, 10)
    targets = torch.randint(1, num_items + 1, (5, 10), generator=gen).masked_fill(inputs == 0, 0)
    targets[0, -3:] = inputs[0, 2]  # some targets repeat a history item
    return inputs, targets


def base_queries(net, inputs, targets):
    layers = net.encode_layers(inputs)
    return net.head.softmax_facet(net.head.head_input(layers)[targets > 0])  # (M, D)


def test_cpr_base_weight_adds_the_softmax_loss_of_the_unreplaced_base_logits():
    net, (inputs, targets) = random_cpr(), batch_with_repeats()
    cfg = TrainConfig(temperature=0.5)
    with torch.no_grad():
        plain = packed_loss(net, inputs, None, targets, cfg)
        weighted = packed_loss(net, inputs, None, targets, dataclasses.replace(cfg, cpr_base_weight=0.3))
        base = base_queries(net, inputs, targets) @ net.item_embedding.weight.T  # (M, N+1)
        base[:, 0] = float("-inf")
        cpr = net.head.logits(net.encode_layers(inputs), inputs, targets > 0)  # (M, N+1)
    expected = 0.3 * F.cross_entropy(base / 0.5, targets[targets > 0])
    torch.testing.assert_close(weighted - plain, expected, rtol=1e-5, atol=1e-6)
    history = causal_histories(inputs)[targets > 0]  # (M, L): the history columns differ, so the term is new
    assert not torch.allclose(base.gather(1, history)[history > 0], cpr.gather(1, history)[history > 0])


def test_cpr_base_weight_with_sampled_softmax_keeps_history_items_as_negatives():
    net, (inputs, targets) = random_cpr(), batch_with_repeats()
    cfg = TrainConfig(loss="sampled", negatives=12)
    with torch.no_grad():
        torch.manual_seed(5)
        plain = packed_loss(net, inputs, None, targets, cfg)
        torch.manual_seed(5)
        weighted = packed_loss(net, inputs, None, targets, dataclasses.replace(cfg, cpr_base_weight=2.0))
        torch.manual_seed(5)
        drawn = draw_negatives(29, 12, "cpu").tolist()
        queries = base_queries(net, inputs, targets)  # (M, D)
    weights, rows = net.item_embedding.weight, []
    histories, flat_targets = causal_histories(inputs)[targets > 0].tolist(), targets[targets > 0].tolist()
    for query, history, target in zip(queries, histories, flat_targets):
        own = sorted(set(history) - {0, target})  # the user's items: negatives of the base partition
        others = [n for n in drawn if n != target and n not in history]
        scores = query @ weights[[target] + others + own].T
        rows.append(-F.log_softmax(scores, 0)[0])
    torch.testing.assert_close(weighted - plain, 2.0 * torch.stack(rows).mean(), rtol=1e-5, atol=1e-6)


def test_cpr_base_weight_is_checked():
    with pytest.raises(ConfigError, match="cpr_base_weight | received -0.5"):
        TrainConfig(cpr_base_weight=-0.5)
    with pytest.raises(ConfigError, match="with head 'softmax'"):
        check_trainable(ModelConfig(num_items=5), TrainConfig(cpr_base_weight=1.0))
    check_trainable(ModelConfig(num_items=5, head="cpr"), TrainConfig(cpr_base_weight=1.0))


def test_l2_normalize_is_refused_with_the_cpr_head():
    with pytest.raises(ConfigError, match=r"l2_normalize \| received True with head 'cpr', expected the softmax head"):
        check_trainable(ModelConfig(num_items=5, head="cpr", l2_normalize=True), TrainConfig())
    check_trainable(ModelConfig(num_items=5, l2_normalize=True), TrainConfig())


def test_a_plain_base_without_history_or_reranker_partitions_is_refused():
    """softmax(+Mi) with the plain base would train --head softmax, with a Mi layer that feeds nothing."""
    for variant in ("softmax", "softmax+Mi"):
        with pytest.raises(ConfigError, match=re.escape(f"cpr_base_projection | received False with variant "
                                                        f"{variant!r}")):
            check_trainable(ModelConfig(num_items=5, head="cpr", cpr_variant=variant, cpr_base_projection=False),
                            TrainConfig())
        check_trainable(ModelConfig(num_items=5, head="cpr", cpr_variant=variant), TrainConfig())
    for variant in ("C+Mi", "CP", "CPR:3+Mi"):
        check_trainable(ModelConfig(num_items=5, head="cpr", cpr_variant=variant, cpr_base_projection=False),
                        TrainConfig())


def _gradients(net, loss):
    net.zero_grad()
    loss.backward()
    return {name: param.grad.clone() for name, param in net.named_parameters() if param.grad is not None}


@pytest.mark.parametrize("loss", ["ce", "sampled"])
def test_cpr_base_detach_leaves_the_base_to_its_own_loss(loss):
    net, (inputs, targets) = random_cpr("CPR:7+Mi"), batch_with_repeats()
    cfg = TrainConfig(loss=loss, negatives=12, cpr_base_weight=1.0)
    torch.manual_seed(5)
    attached = packed_loss(net, inputs, None, targets, cfg)
    attached_grads = _gradients(net, attached)
    net.head.base_gradient = False
    torch.manual_seed(5)
    detached = packed_loss(net, inputs, None, targets, cfg)
    detached_grads = _gradients(net, detached)
    torch.testing.assert_close(detached, attached)  # the same forward pass
    partitions = ("head.context_facet.", "head.pointer_query.", "head.pointer_key.", "head.pointer_recency",
                  "head.rerank_facets.")
    for name, grad in attached_grads.items():  # partitions: the same gradient; the base facet: another
        if name.startswith(partitions):
            torch.testing.assert_close(detached_grads[name], grad)
        elif name.startswith("head.softmax_facet."):
            assert not torch.allclose(detached_grads[name], grad), name
    # the base facet now learns from the base loss alone
    base_only = dataclasses.replace(cfg, cpr_base_weight=0.0)
    torch.manual_seed(5)
    cpr_grads = _gradients(net, packed_loss(net, inputs, None, targets, base_only))
    for name in ("head.softmax_facet.weight", "head.softmax_facet.bias"):  # no gradient, or only zeros
        assert name not in cpr_grads or cpr_grads[name].abs().max() == 0
    assert cpr_grads["head.context_facet.weight"].abs().max() > 0


def test_cpr_base_detach_is_set_by_training_and_checked():
    from seqrec.training.loop import trainable_model

    model_cfg = ModelConfig(num_items=9, head="cpr", cpr_variant="C", dim=8, layers=1, max_length=4)
    train_cfg = TrainConfig(cpr_base_detach=True, cpr_base_weight=1.0)
    assert not trainable_model(model_cfg, train_cfg).head.base_gradient
    assert trainable_model(model_cfg, TrainConfig()).head.base_gradient
    with pytest.raises(ConfigError, match="cpr_base_detach.*cpr_base_weight 0.0"):
        check_trainable(model_cfg, TrainConfig(cpr_base_detach=True))
    with pytest.raises(ConfigError, match="with head 'softmax'"):
        check_trainable(ModelConfig(num_items=5), train_cfg)


@pytest.mark.parametrize("loss", ["ce", "sampled"])
def test_cpr_detach_partitions_leaves_the_encoder_and_table_to_the_base_loss(loss):
    net, (inputs, targets) = random_cpr("CPR:7+Mi"), batch_with_repeats()
    cfg = TrainConfig(loss=loss, negatives=12, cpr_base_weight=1.0, cpr_base_detach=True)
    net.head.base_gradient = False
    torch.manual_seed(5)
    attached = _gradients(net, packed_loss(net, inputs, None, targets, cfg))
    net.head.partition_gradient = False
    torch.manual_seed(5)
    detached = _gradients(net, packed_loss(net, inputs, None, targets, cfg))
    torch.manual_seed(5)
    layers = net.encode_layers(inputs)
    real = targets > 0
    if loss == "ce":
        base = net.head.base_logits(layers, real)
        columns = None
    else:  # the base loss at the columns the CPR loss used: the same negatives, history items voided
        negatives = draw_negatives(29, 12, "cpu")
        _, columns = net.head.sampled_logits(layers, inputs, real, targets[real], negatives)
        base = net.head.base_logits(layers, real, columns)
    base_loss = full_cross_entropy(base, targets[real]) if columns is None else sampled_softmax(base, columns,
                                                                                              targets[real])
    base_only = _gradients(net, base_loss)
    shared = [name for name in detached if not name.startswith("head.") or name == "head.item_embedding.weight"]
    assert "item_embedding.weight" in shared and any(name.startswith("encoder.") for name in shared)
    for name in shared:  # encoder and item table: the base loss's gradient, no longer the CPR loss's too
        torch.testing.assert_close(detached[name], base_only[name])
        assert not torch.allclose(attached[name], base_only[name]), name
    for name in ("head.mix.weight", "head.rerank_facets.0.weight", "head.context_facet.weight",
                 "head.pointer_query.weight", "head.pointer_key.weight", "head.pointer_recency"):
        assert detached[name].abs().max() > 0, name  # the partitions still learn, Mi's own layer too


def _trained_three_steps(head_options: dict, cfg: TrainConfig) -> dict:
    """Seed, build, train three steps on one batch in training mode (dropout on): what train_model does."""
    from seqrec.training.loop import make_optimizer, trainable_model

    inputs, targets = batch_with_repeats()
    torch.manual_seed(0)
    net = trainable_model(ModelConfig(num_items=29, dim=12, heads=2, layers=2, max_length=10, **head_options), cfg)
    optimizer = make_optimizer(net, cfg)
    for _ in range(3):
        loss = packed_loss(net, inputs, None, targets, cfg)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return net.state_dict()


def test_cpr_second_stage_trains_the_encoder_exactly_as_a_softmax_model():
    """A CPR SASRec with the plain base on its own loss and the other partitions detached ends with the
    softmax SASRec's encoder and item table, bit for bit: the same start (the head draws its weights
    aside), the same gradients, the same dropout masks."""
    softmax = _trained_three_steps({}, TrainConfig())
    recipe = TrainConfig(cpr_base_weight=1.0, cpr_base_detach=True, cpr_detach_partitions=True)
    cpr = _trained_three_steps({"head": "cpr", "cpr_variant": "CPR:7+Mi", "cpr_base_projection": False}, recipe)
    for name, value in softmax.items():
        torch.testing.assert_close(cpr[name], value, rtol=0, atol=0)
    assert not torch.equal(cpr["head.rerank_facets.0.weight"][:, :12], torch.eye(12))  # the head learned


def test_cpr_detach_partitions_is_set_by_training_and_checked():
    from seqrec.training.loop import trainable_model

    model_cfg = ModelConfig(num_items=9, head="cpr", cpr_variant="CPR:3", dim=8, layers=1, max_length=4)
    assert not trainable_model(model_cfg, TrainConfig(cpr_detach_partitions=True)).head.partition_gradient
    assert trainable_model(model_cfg, TrainConfig()).head.partition_gradient
    for head, variant in (("softmax", "CPR:100+Mi"), ("cpr", "softmax+Mi")):
        with pytest.raises(ConfigError, match=re.escape(f"head {head!r}, variant {variant!r}")):
            check_trainable(dataclasses.replace(model_cfg, head=head, cpr_variant=variant),
                            TrainConfig(cpr_detach_partitions=True))
