"""Inference cost of PCRec's predictive-coding steps against HSTU, per user, on this CPU (issue 4).

One HSTU model with the ``hstu`` defaults (d 64, 2 layers, L 50) on a Beauty-sized catalog; PCRec
models with T = 1, 2, 4 steps share its weights (``load_state_dict``: only the PC parameters are
their own). Same random left-padded histories for all, timed in the same run, interleaved, best of
``--repeats`` (the protocol of ``cpr_cost.py``). Two figures per model: the scoring pass (encoder +
softmax over the whole catalog, what batch scoring runs) and the encoder alone (where the PC steps
live); the ratio to HSTU is printed for both.

    python benchmarks/pc_cost.py --threads 1

Writes benchmarks/out/pc_cost.json. Not a test.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import torch
from cpr_cost import best_seconds, histories  # same histories and timing protocol as the CPR head's cost

from seqrec.config import MODEL_DEFAULTS, ModelConfig
from seqrec.models import build_model

ROOT = Path(__file__).resolve().parents[1]


def shared_weight_models(num_items: int, length: int, steps: list[int]) -> dict[str, torch.nn.Module]:
    """HSTU and one PCRec per T, every HSTU weight shared."""
    torch.manual_seed(0)
    hstu = build_model(ModelConfig(model="hstu", num_items=num_items, max_length=length,
                                   **MODEL_DEFAULTS["hstu"].model)).eval()
    models = {"hstu": hstu}
    for count in steps:
        pcrec = build_model(dataclasses.replace(hstu.cfg, model="pcrec", pc_steps=count)).eval()
        missing, unexpected = pcrec.load_state_dict(hstu.state_dict(), strict=False)
        assert not unexpected and all(key.startswith("encoder.pc_steps.") for key in missing)
        models[f"pcrec T={count}"] = pcrec
    return models


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=12_101)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--length", type=int, default=50)
    parser.add_argument("--steps", nargs="+", type=int, default=[1, 2, 4])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "pc_cost.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    models = shared_weight_models(args.items, args.length, args.steps)
    items = histories(args.batch, args.length, args.items)
    scoring = best_seconds({name: (lambda model=model: model(items)) for name, model in models.items()}, args.repeats)
    encoders = best_seconds({name: (lambda model=model: model.encode(items)) for name, model in models.items()},
                            args.repeats)
    rows = [{"model": name, "scoring_ms_per_user": 1000 * scoring[name] / args.batch,
             "encoder_ms_per_user": 1000 * encoders[name] / args.batch,
             "scoring_ratio": scoring[name] / scoring["hstu"], "encoder_ratio": encoders[name] / encoders["hstu"]}
            for name in models]
    print(f"{args.items} items, batch {args.batch}, L {args.length}, {torch.get_num_threads()} threads")
    print(f"{'model':14s}{'scoring ms/user':>17s}{'x HSTU':>8s}{'encoder ms/user':>17s}{'x HSTU':>8s}")
    for row in rows:
        print(f"{row['model']:14s}{row['scoring_ms_per_user']:17.4f}{row['scoring_ratio']:8.2f}"
              f"{row['encoder_ms_per_user']:17.4f}{row['encoder_ratio']:8.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"items": args.items, "batch": args.batch, "length": args.length,
                                    "threads": torch.get_num_threads(), "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
