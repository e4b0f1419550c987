"""Every registered encoder: padding is nothing, batch-mates do not matter, no future leakage."""

import pytest
import torch

from seqrec.config import POSITIONS, ModelConfig
from seqrec.errors import ConfigError
from seqrec.models import ENCODERS, HEADS, build_model

NUM_ITEMS = 37


def tiny_model(model: str, positions: str = "relative", head: str = "softmax", **overrides):
    torch.manual_seed(0)
    cfg = ModelConfig(model=model, num_items=NUM_ITEMS, dim=16, heads=2, layers=2, max_length=12,
                      positions=positions, dropout=0.2, head=head, cpr_variant="CPR:9+Mi", **overrides)
    return build_model(cfg).eval()


def random_histories(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    """Left-padded histories of irregular lengths 1..length, repeats included."""
    gen = torch.Generator().manual_seed(seed)
    items = torch.randint(1, NUM_ITEMS + 1, (batch, length), generator=gen)
    lengths = torch.randint(1, length + 1, (batch,), generator=gen)
    slots = torch.arange(length).unsqueeze(0)
    return items.masked_fill(slots < (length - lengths).unsqueeze(1), 0)


ALL_MODELS = [(m, p, h) for m in ENCODERS for p in POSITIONS for h in HEADS]


@pytest.mark.parametrize("model,positions,head", ALL_MODELS)
def test_left_padding_changes_nothing(model, positions, head):
    net = tiny_model(model, positions, head)
    histories = random_histories(7, 9)
    wider = torch.cat([torch.zeros(7, 3, dtype=torch.long), histories], dim=1)  # (7, 12)
    torch.testing.assert_close(net(histories)[:, 1:], net(wider)[:, 1:], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("model,positions,head", ALL_MODELS)
def test_batch_mates_change_nothing(model, positions, head):
    net = tiny_model(model, positions, head)
    histories = random_histories(5, 10, seed=1)
    together = net(histories)
    for row in range(5):
        alone = histories[row : row + 1]
        alone = alone[:, (alone[0] > 0).nonzero()[0, 0] :]  # strip padding entirely
        torch.testing.assert_close(together[row : row + 1, 1:], net(alone)[:, 1:], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("model,positions,head", ALL_MODELS)
def test_future_items_never_reach_past_positions(model, positions, head):
    net = tiny_model(model, positions, head).train()  # dropout on: leakage must be absent in training too
    histories = random_histories(4, 10, seed=2)
    changed = histories.clone()
    changed[:, -1] = (changed[:, -1] % NUM_ITEMS) + 1
    torch.manual_seed(5)
    before = net.encode(histories)[:, :-1]
    torch.manual_seed(5)
    after = net.encode(changed)[:, :-1]
    torch.testing.assert_close(before, after)


@pytest.mark.parametrize("model,head", [(m, h) for m in ENCODERS for h in HEADS])
def test_padding_hidden_state_and_item_zero(model, head):
    net = tiny_model(model, head=head)
    histories = random_histories(6, 8, seed=3)
    hidden = net.encode(histories)
    assert torch.equal(hidden[histories == 0], torch.zeros_like(hidden[histories == 0]))
    assert torch.equal(net.item_embedding.weight[0], torch.zeros(16))
    logits = net(histories)
    assert logits.shape == (6, NUM_ITEMS + 1)
    assert torch.isneginf(logits[:, 0]).all() and torch.isfinite(logits[:, 1:]).all()


@pytest.mark.parametrize("model", list(ENCODERS))
def test_longer_than_max_length_keeps_most_recent(model):
    net = tiny_model(model, "absolute")
    long = torch.randint(1, NUM_ITEMS + 1, (3, 20))
    torch.testing.assert_close(net(long), net(long[:, -12:]))


def test_bad_config_is_a_typed_error():
    with pytest.raises(ConfigError, match=r"dim / heads \| received dim=10, heads=3"):
        ModelConfig(dim=10, heads=3)
    with pytest.raises(ConfigError, match=r"model \| received 'bert'"):
        ModelConfig(model="bert")
    with pytest.raises(ConfigError, match=r"embedding_std \| received 0.0"):
        ModelConfig(embedding_std=0.0)
    with pytest.raises(ConfigError, match=r"heads \| received 0, expected >= 1"):
        ModelConfig(heads=0)


@pytest.mark.parametrize("std,expected", [(None, 16**-0.5), (0.02, 0.02)])
def test_item_table_is_drawn_with_the_configured_std(std, expected):
    torch.manual_seed(0)
    table = build_model(ModelConfig(num_items=4000, dim=16, embedding_std=std)).item_embedding.weight
    assert table[0].abs().sum() == 0  # padding row
    assert table[1:].std().item() == pytest.approx(expected, rel=0.03)
