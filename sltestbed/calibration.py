"""Entropy-based bit-width selection for the cut: calibrate on a client's first batches.

A client runs its part of the model (no gradient) on its first `batches` training batches,
turns each modality's features into what its quantizer rounds (the normalised features on
[-1, 1], `QuantizerEncoder.normalise`), and per modality reports

- per batch: the KDE density on a fixed grid of [-1, 1] and the differential entropy h
  (the paper's appendix figure plots these across 8 batches);
- over all batches pooled: `bit_width.select_bits`, i.e. h, the entropy H* a distortion budget
  needs, the chosen width (smallest b >= H*) and per b the entropy figures.

Only these summaries leave the client, never feature values. The server combines the
clients' reports with `combine`: per modality the largest width any client chose (every
client's features then meet the budget).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from .bit_width import select_bits
from .entropy import kde_entropy
from .model import ClientPart
from .trainer import BatchCursor
from .trainer import TensorData

GRID = np.linspace(-1.0, 1.0, 129)  # where the per-batch densities are reported
MAX_SAMPLES_PER_BATCH = 50_000  # a seeded subsample per batch and modality bounds the KDE's cost


@dataclass
class ModalityCalibration:
    modality: str
    bits: int  # the width chosen from the pooled samples
    entropy_bits: float  # h of the pooled samples
    needed_bits: float  # H* = h - log2 D*
    batch_entropy: list[float]  # h per calibration batch
    density: list[list[float]]  # KDE per batch on GRID
    choice: dict  # the full `BitChoice` report (rows per b, reason)


def calibrate(part: ClientPart, data: TensorData, batch_size: int, batches: int, seed: int,
              max_rel_mse: float, bits_range=range(1, 9)) -> dict[str, ModalityCalibration]:
    """Per modality, the report of this client's first `batches` batches (see module doc)."""
    if batches < 1:
        raise ValueError(f"calibration needs at least 1 batch, got {batches}")
    cursor = BatchCursor(len(data), batch_size, seed)  # the same first batches training will see
    generator = torch.Generator().manual_seed(seed)
    samples: dict[str, list[torch.Tensor]] = {}
    was_training = part.training
    part.eval()
    with torch.no_grad():
        for _ in range(batches):
            batch = data.batch(cursor.next())
            feats = part.features(batch["pixel_values"], batch["input_ids"])
            for modality, x in feats.items():
                z = part.encoders[modality].normalise(x).reshape(-1)
                if z.numel() > MAX_SAMPLES_PER_BATCH:
                    z = z[torch.randperm(z.numel(), generator=generator)[:MAX_SAMPLES_PER_BATCH]]
                samples.setdefault(modality, []).append(z)
    part.train(was_training)
    out = {}
    for modality, per_batch in samples.items():
        densities, entropies = [], []
        for z in per_batch:
            kde = kde_entropy(z, support=(-1.0, 1.0))
            densities.append(np.interp(GRID, kde.grid, kde.density).round(5).tolist())
            entropies.append(kde.entropy_bits)
        choice = select_bits(torch.cat(per_batch), max_rel_mse=max_rel_mse, bits_range=bits_range)
        out[modality] = ModalityCalibration(modality, choice.bits, choice.entropy_bits, choice.needed_bits,
                                            entropies, densities, choice.to_dict())
    return out


def to_dict(report: dict[str, ModalityCalibration]) -> dict:
    return {m: asdict(c) for m, c in report.items()}


def combine(reports: dict[int, dict]) -> dict:
    """The clients' reports (client id -> `to_dict` output) to the run's choice:
    {"bits": {modality: width}, "clients": reports, "grid": GRID}. Per modality the largest
    width any client chose."""
    if not reports:
        raise ValueError("no client answered the calibration request: nothing to choose bits from")
    modalities = sorted({m for r in reports.values() for m in r})
    bits = {m: max(r[m]["bits"] for r in reports.values() if m in r) for m in modalities}
    return {"bits": bits, "grid": GRID.tolist(), "clients": {str(k): v for k, v in sorted(reports.items())}}
