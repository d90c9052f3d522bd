"""The bit width the features' entropy calls for: `select_bits`.

The rule: a uniform quantizer with step D has, at high resolution, code entropy
H(Q) = h - log2 D and mean squared error D^2 / 12. Given a distortion budget (MSE relative to
the feature variance), the step that meets it is D* = sqrt(12 * budget * var), and the entropy
needed is H* = h - log2 D*: no uniquely decodable code spends fewer bits per element
(source-coding bound). The quantity rounded up is H*: the chosen width is the smallest b whose
fixed-length code has b >= H* bits. h alone is at most 1 bit on [-1, 1], so it cannot be the
quantity rounded up.
Its entropy estimate is `entropy.kde_entropy`; `calibration.py` runs it in a Flower run
(`bits="auto"`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from .entropy import _as_samples, code_entropy, kde_entropy


@dataclass
class BitWidthRow:
    bits: int
    step: float  # D_b = 2 / (2^b - 1) on [-1, 1]
    highres_entropy: float  # h - log2 D_b
    code_entropy: float  # measured on the samples quantized at b bits
    rel_mse: float  # measured mean squared error / variance
    predicted_rel_mse: float  # D_b^2 / 12 / variance


@dataclass
class BitChoice:
    bits: int
    entropy_bits: float  # h, the differential entropy of the normalised features
    variance: float
    max_rel_mse: float
    needed_bits: float  # H* = h - log2 D*
    bandwidth: float
    n: int
    rows: list[BitWidthRow] = field(default_factory=list)
    reason: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def quantize_levels(z: np.ndarray, bits: int) -> np.ndarray:
    """Codes of the learned quantizer's grid: L = 2^b points on [-1, 1] including +-1."""
    top = 2**bits - 1
    return np.clip(np.rint((z + 1) * top / 2), 0, top).astype(np.int64)


def select_bits(z, max_rel_mse: float = 0.05, bits_range=range(1, 9), support=(-1.0, 1.0),
                bandwidth: float | str = "isj") -> BitChoice:
    """Choose the bit width for normalised features `z` (see module doc for the rule);
    `bandwidth` as in `kde_entropy`."""
    if not 0 < max_rel_mse < 1:
        raise ValueError(f"max_rel_mse must be in (0, 1), got {max_rel_mse}")
    bits_range = list(bits_range)
    if not bits_range or min(bits_range) < 1 or max(bits_range) > 8:
        raise ValueError(f"bits_range must lie within 1..8, got {bits_range}")
    z = _as_samples(z)
    kde = kde_entropy(z, support=support, bandwidth=bandwidth)
    var = float(z.var())
    if var <= 0:
        raise ValueError("features are constant: nothing to choose bits for")
    step_needed = math.sqrt(12 * max_rel_mse * var)
    needed = kde.entropy_bits - math.log2(step_needed)
    rows = []
    for b in bits_range:
        step = 2 / (2**b - 1)
        codes = quantize_levels(z, b)
        z_hat = codes * step - 1
        rows.append(BitWidthRow(b, step, kde.entropy_bits - math.log2(step), code_entropy(codes, 2**b),
                                float(np.mean((z - z_hat) ** 2) / var), step * step / 12 / var))
    fitting = [b for b in bits_range if b >= needed]
    chosen = min(fitting) if fitting else max(bits_range)
    reason = (
        f"h = {kde.entropy_bits:.3f} bit (KDE, n = {z.size}, bandwidth {kde.bandwidth:.4f} by {kde.method}, "
        f"local x{kde.local_scale[0]:.2f}..{kde.local_scale[1]:.2f}); "
        f"relative MSE <= {max_rel_mse} needs step {step_needed:.4f}, so H* = h - log2(step) = "
        f"{needed:.3f} bits per element; "
        + (f"{chosen} bits is the smallest fixed-length code >= H*" if fitting
           else f"no width in {bits_range} reaches H*; using the largest, {chosen}")
    )
    return BitChoice(chosen, kde.entropy_bits, var, max_rel_mse, needed, kde.bandwidth, z.size, rows, reason)
