"""One small export spec per model and head: graph inputs, dynamic axes, sample inputs, tolerance.

Adding a model or a head means registering its spec here; ``tests/exporter`` fails for any
registered model/head pair without one, and exports every pair.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from seqrec.errors import ExportError, received_expected
from seqrec.exporter.graph import OUTPUT_NAMES


@dataclass(frozen=True)
class ExportSpec:
    """How one model/head pair is exported and checked."""

    inputs: tuple[str, ...] = ("items",)  # (B, L) int64 each
    outputs: tuple[str, ...] = OUTPUT_NAMES
    score_atol: float = 1e-4  # |ONNX - PyTorch| on top-K scores at fp32
    score_rtol: float = 1e-4

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        return {name: {0: "batch", 1: "length"} for name in self.inputs} | {
            name: {0: "batch"} for name in self.outputs}

    def sample_inputs(self, num_items: int, batch: int, length: int, seed: int = 0) -> dict[str, torch.Tensor]:
        """Left-padded random histories of lengths 1..length, and increasing timestamps if asked."""
        gen = torch.Generator().manual_seed(seed)
        items = torch.randint(1, num_items + 1, (batch, length), generator=gen)
        lengths = torch.randint(1, length + 1, (batch,), generator=gen)
        items = items.masked_fill(torch.arange(length) < (length - lengths).unsqueeze(1), 0)
        sample = {"items": items}
        if "timestamps" in self.inputs:
            steps = torch.randint(60, 86_400, (batch, length), generator=gen)
            sample["timestamps"] = (1_600_000_000 + steps.cumsum(1)) * (items > 0)
        return sample


EXPORT_SPECS: dict[tuple[str, str], ExportSpec] = {}


def register_spec(model: str, head: str, spec: ExportSpec) -> None:
    EXPORT_SPECS[(model, head)] = spec


def spec_for(model: str, head: str) -> ExportSpec:
    if (model, head) not in EXPORT_SPECS:
        known = ", ".join(f"{m}/{h}" for m, h in sorted(EXPORT_SPECS))
        raise ExportError(received_expected("model/head to export", f"{model}/{head}", f"one of {known}"))
    return EXPORT_SPECS[(model, head)]


def spec_of_model(model) -> ExportSpec:
    """The spec of a trained model (``SequentialRecommender``): its model/head pair's, less the
    timestamps input when no timestamp can change the output (``reads_timestamps``)."""
    spec = spec_for(model.cfg.model, model.cfg.head)
    if "timestamps" in spec.inputs and not model.reads_timestamps():
        return replace(spec, inputs=tuple(name for name in spec.inputs if name != "timestamps"))
    return spec


for _model in ("sasrec", "gru4rec"):
    register_spec(_model, "softmax", ExportSpec())
    register_spec(_model, "cpr", ExportSpec(score_atol=2e-4))  # two more products per score
for _model in ("hstu", "pcrec"):  # time bias: timestamps are an input (spec_of_model drops it for a zero bias)
    register_spec(_model, "softmax", ExportSpec(inputs=("items", "timestamps"), score_atol=2e-4))
    register_spec(_model, "cpr", ExportSpec(inputs=("items", "timestamps"), score_atol=5e-4))
