"""Original FSQ (Mentzer et al. 2023) as a per-element scalar quantizer with L = 2^b levels.

bound(z) = tanh(z + shift) * half_l - offset, half_l = (L-1)(1+eps)/2, eps = 1e-3,
offset = 0.5 (L is even), shift = atanh(offset / half_l); z_hat = round(bound(z)) / (L // 2).
Codes are round(bound(z)) + L // 2 in 0..L-1. Optional learned projections in and out
(dim -> dim), as in the comparison quantizers of Quantized-TinyLLaVA.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .base import Field, Payload, QuantizerDecoder, QuantizerEncoder, check_finite

FSQ_EPS = 1e-3


class FSQEncoder(QuantizerEncoder):
    scheme = "fsq"
    bits_range = range(2, 9)  # L = 2 degenerates (every value rounds to -1 or 0)

    def __init__(self, bits: int, dim: int | None = None, projection: bool = False):
        super().__init__(bits)
        if projection and (dim is None or dim < 1):
            raise ValueError("FSQ's projection needs the feature size: dim >= 1")
        self.proj = nn.Linear(dim, dim) if projection else None
        L = self.levels
        self.half_l = (L - 1) * (1 + FSQ_EPS) / 2
        self.offset = 0.5 if L % 2 == 0 else 0.0
        self.shift = math.atanh(self.offset / self.half_l)
        self.half_width = L // 2

    def bound(self, z: torch.Tensor) -> torch.Tensor:
        return torch.tanh(z + self.shift) * self.half_l - self.offset

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        if self.proj is not None:
            x = self.proj(x)
        return self.bound(x) / self.half_width

    def quantize(self, x: torch.Tensor, prepared: torch.Tensor) -> Payload:
        check_finite(x)
        codes = (prepared * self.half_width).round_().add_(self.half_width).clamp_(0, self.levels - 1)
        return Payload(self.scheme, self.bits, tuple(prepared.shape), (Field(codes.to(torch.uint8), self.bits),))

    @staticmethod
    def dequantize(payload: Payload) -> torch.Tensor:
        half_width = 2**payload.bits // 2
        return ((payload.fields[0].data.float() - half_width) / half_width).reshape(payload.shape)


class FSQDecoder(QuantizerDecoder):
    def __init__(self, dim: int | None = None, projection: bool = False):
        super().__init__()
        if projection and (dim is None or dim < 1):
            raise ValueError("FSQ's projection needs the feature size: dim >= 1")
        self.proj = nn.Linear(dim, dim) if projection else None

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        return self.proj(values) if self.proj is not None else values
