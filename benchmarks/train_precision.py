"""Training-step time in fp32 against bf16 autocast, measured in the same run.

Backs the claims in benchmarks/RESULTS.md that ``--precision bf16`` speeds up training on a CPU
with AVX-512 bf16, and slows it down on one without bf16 hardware (AVX2), where it is emulated. Uses Beauty-sized shapes on synthetic data (about 12k items, length-bucketed
batches of 128 users) so it needs no shared data.

    python benchmarks/train_precision.py --model sasrec --steps 30
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np
import torch

from seqrec.config import resolve_configs
from seqrec.data import SynthConfig, generate_interactions
from seqrec.devices import native_bf16_on_cpu
from seqrec.models import build_model
from seqrec.training import prepare_data
from seqrec.training.loop import _batch_loss, _padded_batches, length_bucketed_batches, train_windows


def time_steps(model_name: str, precision: str, steps: int, data) -> float:
    """Seconds per optimizer step, after two warm-up steps."""
    model_cfg, train_cfg = resolve_configs(model_name, "softmax", {"precision": precision})
    model_cfg = dataclasses.replace(model_cfg, num_items=len(data.vocab))
    torch.manual_seed(0)
    model = build_model(model_cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=train_cfg.lr)
    windows = train_windows(data.seqs, data.split, model_cfg.max_length)
    batches = length_bucketed_batches(windows, train_cfg.batch_size, np.random.default_rng(0))[: steps + 2]
    started = 0.0
    for index, (inputs, times, targets) in enumerate(_padded_batches(data.seqs, windows, batches,
                                                                     model_cfg.max_length, "cpu")):
        if index == 2:
            started = time.perf_counter()
        loss = _batch_loss(model, inputs, times, targets, train_cfg)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return (time.perf_counter() - started) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="sasrec")
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    table = generate_interactions(SynthConfig(users=20000, items=12101, min_length=5, max_length=50, seed=0))
    data = prepare_data(table)
    print(f"{args.model}: {len(data.vocab)} items, {torch.get_num_threads()} threads, {args.steps} steps each; "
          f"CPU {torch.backends.cpu.get_cpu_capability()}, bf16 hardware: {'yes' if native_bf16_on_cpu() else 'no'}")
    fp32 = time_steps(args.model, "fp32", args.steps, data)
    bf16 = time_steps(args.model, "bf16", args.steps, data)
    print(f"{'precision':10s}{'s/step':>10s}")
    print(f"{'fp32':10s}{fp32:10.4f}")
    print(f"{'bf16':10s}{bf16:10.4f}")
    print(f"bf16 speed-up: {fp32 / bf16:.2f}x")


if __name__ == "__main__":
    main()
