"""A whole model with the CPR head gives the same logits and gradients with either scatter kernel."""

import copy

import pytest
import torch

from seqrec.config import ModelConfig
from seqrec.kernels.triton import triton_available, triton_interpreting
from seqrec.models import build_model

DEVICE = "cpu" if triton_interpreting() else "cuda"
requires_triton = pytest.mark.skipif(
    not triton_available() or (DEVICE == "cuda" and not torch.cuda.is_available()),
    reason="needs triton (pip install 'seqrec[triton]') and CUDA or TRITON_INTERPRET=1")


@requires_triton
@pytest.mark.parametrize("model", ["sasrec", "gru4rec"])
def test_triton_scatter_model_equals_reference_model(model):
    torch.manual_seed(0)
    reference = build_model(ModelConfig(model=model, head="cpr", cpr_variant="CPR:9,4+Mi", num_items=41, dim=8,
                                        heads=2, max_length=7, dropout=0.0)).to(DEVICE)
    fast = copy.deepcopy(reference)
    fast.head.scatter_kernel = "triton"
    items = torch.randint(1, 6, (5, 7), device=DEVICE)  # few distinct items: duplicates everywhere
    items[1, :4] = 0
    rows = items > 0
    outputs = []
    for net in (reference, fast):
        logits = net.head.logits(net.encode_layers(items), items, rows)  # (M, N+1)
        loss = logits.masked_fill(logits.isneginf(), 0).square().mean()
        loss.backward()
        outputs.append((logits.detach(), [p.grad.clone() for p in net.parameters() if p.grad is not None]))
    torch.testing.assert_close(outputs[0][0], outputs[1][0])
    for ref_grad, fast_grad in zip(outputs[0][1], outputs[1][1], strict=True):
        torch.testing.assert_close(ref_grad, fast_grad, rtol=1e-5, atol=1e-6)
