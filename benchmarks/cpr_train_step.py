"""One CPR training step (forward + backward), the base partition's catalog product once or twice.

The plain-base recipe (``cpr_base_projection=0 cpr_base_detach=1 cpr_base_weight=1``) trains the CPR
logits and the base logits with a full softmax each. ``two products`` is the step as it was: the CPR
logits (``CPRHead.logits``) and the base logits (``CPRHead.base_logits``) each from their own
(M, D) x (D, N + 1) product, each divided by a temperature of 1. ``one product`` is what
``training.loop.packed_loss`` does now: ``CPRHead.logits_and_base`` and no division at 1. Beauty's
catalog and model (N 12,101, SASRec d 64, 2 layers, L 50, batch 128) with random history lengths
1..50 (longer than Beauty's), bf16 autocast, interleaved, CPU time (best of ``--repeats``), the ratio
printed.

    python benchmarks/cpr_train_step.py --threads 1 --repeats 7

Not a test.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch

from seqrec.config import resolve_configs
from seqrec.models import build_model
from seqrec.training.losses import full_cross_entropy

NUM_ITEMS, BATCH, LENGTH = 12_101, 128, 50


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, inputs, targets = _setup()
    steps = {"two products": _two_products, "one product": _one_product}
    best = {name: float("inf") for name in steps}
    for _ in range(args.repeats):
        for name, step in steps.items():
            best[name] = min(best[name], _cpu_seconds(lambda: step(model, inputs, targets)))
    for name, seconds in best.items():
        print(f"{name:14s} {seconds * 1000:8.1f} ms per step")
    print(f"one / two products: {best['one product'] / best['two products']:.3f}")


def _setup():
    model_cfg, _ = resolve_configs("sasrec", "cpr", {"cpr_base_projection": False})
    model_cfg = dataclasses.replace(model_cfg, num_items=NUM_ITEMS)
    torch.manual_seed(0)
    model = build_model(model_cfg).train()
    model.head.base_gradient = False  # cpr_base_detach
    gen = torch.Generator().manual_seed(1)
    sequence = torch.randint(1, NUM_ITEMS + 1, (BATCH, LENGTH + 1), generator=gen)
    lengths = torch.randint(2, LENGTH + 2, (BATCH,), generator=gen)  # left padded, 1..L targets each
    sequence = sequence.masked_fill(torch.arange(LENGTH + 1) < (LENGTH + 1 - lengths).unsqueeze(1), 0)
    return model, sequence[:, :-1], sequence[:, 1:]


def _two_products(model, inputs: torch.Tensor, targets: torch.Tensor) -> None:
    with torch.autocast("cpu", dtype=torch.bfloat16):
        layers, rows, wanted = _encode(model, inputs, targets)
        logits = model.head.logits(layers, inputs, rows)  # (M, N+1)
        base = model.head.base_logits(layers, rows)  # (M, N+1), the same product again
        loss = full_cross_entropy(logits / 1.0, wanted) + full_cross_entropy(base / 1.0, wanted)
    _backward(model, loss)


def _one_product(model, inputs: torch.Tensor, targets: torch.Tensor) -> None:
    with torch.autocast("cpu", dtype=torch.bfloat16):
        layers, rows, wanted = _encode(model, inputs, targets)
        logits, base = model.head.logits_and_base(layers, inputs, rows)  # (M, N+1) each
        loss = full_cross_entropy(logits, wanted) + full_cross_entropy(base, wanted)
    _backward(model, loss)


def _encode(model, inputs: torch.Tensor, targets: torch.Tensor):
    rows = targets > 0  # (B, L)
    return model.encode_layers(inputs), rows, targets[rows]


def _backward(model, loss: torch.Tensor) -> None:
    model.zero_grad(set_to_none=True)
    loss.backward()


def _cpu_seconds(run) -> float:
    started = time.process_time()
    run()
    return time.process_time() - started


if __name__ == "__main__":
    main()
