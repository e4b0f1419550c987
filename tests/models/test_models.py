"""Every registered encoder: padding is nothing, batch-mates do not matter, no future leakage."""

import functools

import pytest
import torch

from seqrec.config import POSITIONS, ModelConfig
from seqrec.errors import ConfigError
from seqrec.models import ENCODERS, HEADS, build_model

NUM_ITEMS = 37


def tiny_model(model: str, positions: str = "relative", head: str = "softmax", **overrides):
    torch.manual_seed(0)
    settings = {"num_items": NUM_ITEMS, "dim": 16, "heads": 2, "layers": 2, "max_length": 12, "dropout": 0.2,
                "cpr_variant": "CPR:9+Mi", **overrides}
    cfg = ModelConfig(model=model, positions=positions, head=head, **settings)
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


@pytest.mark.parametrize("model,head", [(m, h) for m in ENCODERS for h in HEADS])
def test_wrong_inputs_are_typed_errors_at_the_boundary(model, head):
    """What a library caller gets wrong is named at the model's door, not a crash in an embedding or a scatter."""
    from seqrec.errors import ModelInputError

    net = tiny_model(model, head=head)
    items = random_histories(3, 10)
    times = torch.arange(30).view(3, 10) * 1000
    cases = [
        (lambda: net(items[0]), r"items \| received \(10,\), expected a \(batch, length >= 1\)"),
        (lambda: net(items[:, :0]), r"items \| received \(3, 0\)"),
        (lambda: net(items.float()), r"items dtype \| received torch.float32, expected an integer dtype"),
        (lambda: net(items.clone().index_fill_(1, torch.tensor([4]), NUM_ITEMS + 1)),
         rf"item ids \| received ids from 0 to {NUM_ITEMS + 1}, expected ids in 0..{NUM_ITEMS}"),
        (lambda: net(items - 1), r"item ids \| received ids from -1 to"),
        (lambda: net(items, times[:1]), r"timestamps shape \| received \(1, 10\), expected one per item, "
                                        r"the shape of items \(3, 10\)"),
        (lambda: net(items, times[:, 2:]), r"timestamps shape \| received \(3, 8\)"),
        (lambda: net.top_k(items, NUM_ITEMS + 1), rf"k \| received {NUM_ITEMS + 1}, expected an integer in 1..{NUM_ITEMS}"),
        (lambda: net.top_k(items, 0), r"k \| received 0"),
        (lambda: net.top_k_reference(items, -1), r"k \| received -1"),
    ]
    for call, message in cases:
        with pytest.raises(ModelInputError, match=message):
            call()


@pytest.mark.parametrize("head", HEADS)
def test_any_integer_dtype_of_ids_scores_as_int64(head):
    net = tiny_model("sasrec", head=head)
    items = random_histories(4, 9)
    assert torch.equal(net(items.int()), net(items))
    for exclude_seen in (False, True):
        assert all(torch.equal(a, b) for a, b in zip(net.top_k(items.int(), 5, exclude_seen),
                                                     net.top_k(items, 5, exclude_seen)))


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("kernel", ["matmul", "fused"])
def test_a_numpy_integer_k_is_an_int(head, kernel):
    """check_k takes any integer (np.int64 from an array of k's): every path below it must too."""
    import numpy as np

    net = tiny_model("sasrec", head=head)
    net.head.topk_kernel = kernel
    items = random_histories(3, 9)
    for exclude_seen in (False, True):
        assert all(torch.equal(a, b) for a, b in zip(net.top_k(items, np.int64(3), exclude_seen),
                                                     net.top_k(items, 3, exclude_seen)))


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("kernel", ["matmul", "matmul by blocks of 5", "fused"])
def test_rows_shorter_than_k_end_in_item_zero_whatever_the_path(head, kernel):
    """With exclude_seen a user with nearly the whole catalog in the window has fewer than k items left:
    the rest of the row is id 0 with -inf on every path (no excluded id comes back)."""
    net = tiny_model("sasrec", head=head, max_length=40)
    net.head.topk_kernel, _, block = kernel.partition(" by blocks of ")
    top_k = functools.partial(net.top_k, catalog_block=int(block)) if block else net.top_k
    items = torch.arange(1, 36).view(1, 35).repeat(2, 1)  # items 1..35 seen, 36 and 37 left
    items[1, :30] = 0  # the second user has seen 5
    for scores, ids in (top_k(items, 8, exclude_seen=True), net.top_k_reference(items, 8, exclude_seen=True)):
        assert sorted(ids[0, :2].tolist()) == [36, 37] and ids[0, 2:].eq(0).all()
        assert scores[0, 2:].eq(float("-inf")).all() and scores[1].isfinite().all()


@pytest.mark.parametrize("model", list(ENCODERS))
@pytest.mark.parametrize("head", HEADS)
def test_an_empty_batch_gives_empty_results(model, head):
    """No user, no rows: (0, N+1) logits and (0, k) top-k on every path (the CPR head's history step failed)."""
    net = tiny_model(model, head=head)
    empty = torch.zeros(0, 7, dtype=torch.long)
    with torch.no_grad():
        assert net(empty).shape == (0, NUM_ITEMS + 1)
        for exclude_seen in (False, True):
            for scores, ids in (net.top_k(empty, 5, exclude_seen), net.top_k_reference(empty, 5, exclude_seen)):
                assert scores.shape == ids.shape == (0, 5)


def test_integer_settings_given_as_floats_or_bools_are_refused_by_name():
    """A float width reached torch as "empty(): argument 'size' ... got float"; a float batch size or top-K was
    accepted and failed later. NumPy integers are integers, stored as int."""
    import numpy as np

    from seqrec.config import ExportConfig, ScoreConfig, TrainConfig

    cases = [(lambda: ModelConfig(num_items=5, dim=8.0), r"dim \| received 8.0, expected an integer"),
             (lambda: ModelConfig(num_items=5, max_length=2.5), r"max_length \| received 2.5"),
             (lambda: TrainConfig(batch_size=2.5), r"batch_size \| received 2.5"),
             (lambda: ExportConfig(top_k=True), r"top_k \| received True"),
             (lambda: ScoreConfig(model="m", input="i", output="o", actors=1.0), r"actors \| received 1.0")]
    for make, message in cases:
        with pytest.raises(ConfigError, match=message):
            make()
    cfg = ModelConfig(num_items=np.int64(5), dim=np.int32(8))
    assert type(cfg.num_items) is int and type(cfg.dim) is int and cfg.to_dict()["dim"] == 8
