"""HSTU and PCRec: T = 0 is HSTU, invariances with the time bias on, export, gradients, fp32 PC steps."""

import dataclasses
import json

import pyarrow as pa
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from seqrec.cli import main
from seqrec.config import PC_ACTIVATIONS, ModelConfig, TrainConfig
from seqrec.errors import ConfigError
from seqrec.models import build_model
from seqrec.models.hstu import HSTUEncoder, HSTULayer
from seqrec.models.pcrec import PredictiveCoding
from seqrec.training import prepare_data, train_model

NUM_ITEMS = 37


def tiny(model: str, seed: int = 0, **overrides):
    """A 2-layer model whose every encoder parameter is perturbed, so zero-initialised biases,
    theta_0 and time buckets all act in the tests."""
    torch.manual_seed(seed)
    settings = {"num_items": NUM_ITEMS, "dim": 16, "heads": 2, "layers": 2, "max_length": 12, "dropout": 0.2,
                **overrides}
    net = build_model(ModelConfig(model=model, **settings)).eval()
    with torch.no_grad():
        for param in net.encoder.parameters():
            param.add_(0.3 * torch.randn_like(param))
    return net


def histories_and_times(batch: int, length: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded histories of lengths 1..length and increasing timestamps (0 at padding)."""
    gen = torch.Generator().manual_seed(seed)
    items = torch.randint(1, NUM_ITEMS + 1, (batch, length), generator=gen)
    lengths = torch.randint(1, length + 1, (batch,), generator=gen)
    padding = torch.arange(length).unsqueeze(0) < (length - lengths).unsqueeze(1)
    times = 1_600_000_000 + torch.randint(0, 10**6, (batch, length), generator=gen).cumsum(1)
    return items.masked_fill(padding, 0), times.masked_fill(padding, 0)


PC_MODELS = [("hstu", {}), ("pcrec", {"pc_steps": 2})] + [
    ("pcrec", {"pc_steps": 3, "pc_activation": name}) for name in PC_ACTIVATIONS
]


def test_hstu_layer_is_the_published_formula():
    """x + W_o(u * LayerNorm(silu(Q K^T + rab) * mask / n  V)), per head, Q K^T unscaled, restated literally."""
    cfg = ModelConfig(model="hstu", num_items=NUM_ITEMS, dim=12, heads=3, max_length=7, dropout=0.0)
    torch.manual_seed(1)
    layer = HSTULayer(cfg).eval()
    x, rab = torch.randn(2, 7, 12), torch.randn(1, 3, 7, 7)
    allowed = (torch.rand(2, 1, 7, 7) > 0.3).float()
    u, v, q, k = F.silu(F.linear(F.layer_norm(x, (12,), eps=1e-6), layer.uvqk.weight, layer.uvqk.bias)).chunk(4, -1)
    heads = []
    for h in range(3):
        cols = slice(4 * h, 4 * h + 4)
        a = F.silu(q[..., cols] @ k[..., cols].transpose(1, 2) + rab[:, h]) * allowed[:, 0] / 7  # (2, 7, 7)
        heads.append(a @ v[..., cols])
    expected = x + layer.out(u * F.layer_norm(torch.cat(heads, -1), (12,), eps=1e-6))
    torch.testing.assert_close(layer(x, rab, allowed), expected, rtol=1e-5, atol=1e-5)


def test_zero_steps_is_hstu_exactly():
    hstu = tiny("hstu")
    pcrec = build_model(dataclasses.replace(hstu.cfg, model="pcrec", pc_steps=0)).eval()
    missing, unexpected = pcrec.load_state_dict(hstu.state_dict(), strict=False)
    assert not unexpected and missing and all(key.startswith("encoder.pc_steps.") for key in missing)
    items, times = histories_and_times(6, 10)
    for timestamps in (None, times):
        for ours, theirs in zip(pcrec.encode_layers(items, timestamps), hstu.encode_layers(items, timestamps)):
            assert torch.equal(ours, theirs)
        assert torch.equal(pcrec(items, timestamps), hstu(items, timestamps))
    stepped = build_model(dataclasses.replace(hstu.cfg, model="pcrec", pc_steps=2)).eval()
    stepped.load_state_dict(hstu.state_dict(), strict=False)
    assert not torch.allclose(stepped(items)[:, 1:], hstu(items)[:, 1:])  # the steps do act


@pytest.mark.parametrize("cpr", [False, True])
def test_one_seed_gives_pcrec_the_hstu_weights_and_random_stream(cpr):
    """Paired by seed, PCRec and HSTU differ only by the PC steps: same item table, same HSTU layers,
    and the stream left as HSTU leaves it (training's batch order and dropout masks)."""
    head = {"head": "cpr", "cpr_variant": "CPR:5+Mi"} if cpr else {}
    built, draws = {}, {}
    for model, pc in (("hstu", {}), ("pcrec", {"pc_steps": 2})):
        torch.manual_seed(3)
        built[model] = build_model(ModelConfig(model=model, num_items=NUM_ITEMS, dim=16, heads=2, layers=2,
                                               max_length=12, **head, **pc)).state_dict()
        draws[model] = torch.rand(4)
    shared = built["hstu"].keys()
    assert shared < built["pcrec"].keys()
    assert all(torch.equal(built["hstu"][key], built["pcrec"][key]) for key in shared)
    assert torch.equal(draws["hstu"], draws["pcrec"])


def test_a_float64_model_keeps_float64_in_the_pc_steps():
    """The fp32 promotion of the PC steps must not round a float64 model down (gradcheck, debugging)."""
    torch.manual_seed(0)
    cfg = ModelConfig(model="pcrec", num_items=NUM_ITEMS, dim=8, heads=2, layers=1, max_length=6, pc_steps=2)
    steps = PredictiveCoding(cfg).double()
    states = torch.randn(2, 6, 8, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[False, False, True, True, True, True], [True] * 6])
    assert steps(states, mask).dtype == torch.float64
    assert torch.autograd.gradcheck(lambda s: steps(s, mask), (states,))


@pytest.mark.parametrize("model,pc", PC_MODELS)
def test_padding_and_batch_mates_change_nothing_with_times(model, pc):
    net = tiny(model, **pc)
    items, times = histories_and_times(5, 9, seed=1)
    together = net(items, times)
    wider = net(torch.nn.functional.pad(items, (3, 0)), torch.nn.functional.pad(times, (3, 0)))
    torch.testing.assert_close(together[:, 1:], wider[:, 1:], rtol=1e-5, atol=1e-5)
    for row in range(5):
        start = int((items[row] > 0).nonzero()[0, 0])
        alone = net(items[row : row + 1, start:], times[row : row + 1, start:])
        torch.testing.assert_close(together[row : row + 1, 1:], alone[:, 1:], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("model,pc", PC_MODELS)
def test_no_leak_from_the_future_in_training_mode(model, pc):
    net = tiny(model, **pc).train()
    items, times = histories_and_times(4, 10, seed=2)
    for slot in (5, 9):  # change item t + 1 (and its time): positions <= t must not move
        changed_items, changed_times = items.clone(), times.clone()
        changed_items[:, slot] = changed_items[:, slot] % NUM_ITEMS + 1
        changed_times[:, slot:] += 12_345
        outputs = []
        for args in ((items, times), (changed_items, changed_times)):
            torch.manual_seed(5)
            outputs.append(torch.stack(net.encode_layers(*args))[:, :, :slot])
        torch.testing.assert_close(outputs[0], outputs[1])


def test_two_identical_calls_give_identical_outputs():
    net = tiny("pcrec", pc_steps=3)
    items, times = histories_and_times(4, 10, seed=3)
    assert torch.equal(net(items, times), net(items, times))


def test_export_pcrec_matches_eager_with_dynamic_batch():
    net = tiny("pcrec", pc_steps=2)
    items, times = histories_and_times(4, 10, seed=4)
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.export.export(net, (items, times), dynamic_shapes=({0: batch}, {0: batch}))
    exported = program.module()
    for size in (4, 7):
        items, times = histories_and_times(size, 10, seed=size)
        torch.testing.assert_close(exported(items, times), net(items, times), rtol=1e-5, atol=1e-5)


def test_gradients_reach_theta_0_gamma_and_time_bias():
    net = tiny("pcrec", pc_steps=2).train()
    items, times = histories_and_times(4, 10, seed=5)
    torch.stack(net.encode_layers(items, times)).square().sum().backward()
    for pc in net.encoder.pc_steps:
        for param in (pc.theta_0, pc.rate.weight, pc.rate.bias):
            assert param.grad is not None and param.grad.abs().sum() > 0
    assert net.encoder.time_bias.grad.abs().sum() > 0


def test_time_bias_is_off_without_timestamps():
    net = tiny("hstu")
    items, times = histories_and_times(4, 10, seed=6)
    before, timed = net(items), net(items, times)
    with torch.no_grad():
        net.encoder.time_bias.add_(1.0)
    assert torch.equal(net(items), before)  # no timestamps: the time bias never enters
    assert not torch.allclose(net(items, times), timed)


def test_pc_steps_run_in_fp32_under_bf16_autocast():
    torch.manual_seed(0)
    step = PredictiveCoding(ModelConfig(model="pcrec", dim=16, max_length=12, pc_steps=3))
    states, mask = torch.randn(3, 12, 16), torch.rand(3, 12) > 0.3
    plain = step(states, mask)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = step(states, mask)
    assert autocast.dtype == torch.float32 and torch.equal(autocast, plain)


def test_l2_normalized_head_scores_cosines():
    net = tiny("hstu", l2_normalize=True)
    items, _ = histories_and_times(4, 10, seed=7)
    logits = net(items)
    assert logits[:, 1:].abs().max() <= 1 + 1e-6
    layers = net.encode_layers(items)
    columns = torch.tensor([3, 5, 8])
    sampled, ids = net.head.sampled_logits(layers, items, None, columns[:1].expand(4), columns[1:])
    torch.testing.assert_close(sampled, logits[:, ids[0]])


@pytest.mark.parametrize("field,value,message", [
    ("pc_steps", -1, r"pc_steps \| received -1"),
    ("pc_alpha", 2.5, r"pc_alpha \| received 2.5, expected in \[0.0, 2.0\]"),
    ("pc_activation", "gelu", r"pc_activation \| received 'gelu'"),
])
def test_bad_pc_settings_are_typed_errors(field, value, message):
    with pytest.raises(ConfigError, match=message):
        ModelConfig(model="pcrec", **{field: value})


@pytest.mark.parametrize("with_times", [False, True])
def test_training_passes_timestamps_only_when_real(with_times):
    users = [u for u in range(1, 31) for _ in range(6)]
    table = {"user_id": users, "item_id": [(u * 7 + i) % 20 + 1 for u in range(1, 31) for i in range(6)]}
    if with_times:
        table["timestamp"] = [1_000 * u + 60 * i for u in range(1, 31) for i in range(6)]
    data = prepare_data(pa.table(table))
    net_cfg = ModelConfig(model="hstu", dim=8, layers=1, max_length=8)
    seen = set()
    original = HSTUEncoder.forward

    def spy(self, item_vectors, mask, timestamps=None):
        seen.add(timestamps is None)
        return original(self, item_vectors, mask, timestamps)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(HSTUEncoder, "forward", spy)
        train_model(data, net_cfg, TrainConfig(epochs=1, batch_size=16), progress=False)
    assert data.seqs.has_times is with_times and seen == {not with_times}


def test_cli_trains_pcrec(synth_parquet, tmp_path):
    out = tmp_path / "pcrec"
    args = ["train", "--data", synth_parquet, "--out", out, "--model", "pcrec", "--pc-steps", 2, "--pc-alpha",
            0.3, "--pc-activation", "softplus", "--epochs", 2, "--dim", 16, "--max-length", 20, "--batch-size",
            64, "--loss", "sampled", "--negatives", 32, "--temperature", 0.05, "--l2-normalize", "--quiet"]
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert 0.0 <= json.loads(result.output)["valid"]["ndcg@10"] <= 1.0
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["pc_steps"] == 2 and config["model"]["pc_activation"] == "softplus"
    assert config["model"]["l2_normalize"] is True and config["train"]["temperature"] == 0.05
