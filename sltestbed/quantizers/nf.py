"""NF-b block-wise quantization (QLoRA-style NormalFloat), b = 2..8.

Levels: 2^b normal quantiles scaled to [-1, 1] with an exact zero (2^(b-1) positive,
2^(b-1) - 1 negative). Each block of `block_size` elements is divided by its absolute maximum
(float32 side information, one per block) and rounded to the nearest level.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
from scipy.stats import norm

from .base import Field, FieldSpec, Payload, QuantizerEncoder, check_finite


@functools.lru_cache(maxsize=None)
def nf_levels(bits: int) -> tuple[float, ...]:
    n = 2**bits
    offset = 1 - 0.5 * (1 / (2 * n) + 1 / (2 * (n - 1)))  # 0.9677 for NF4, as in QLoRA
    positive = norm.ppf(np.linspace(offset, 0.5, n // 2 + 1)[:-1])
    negative = -norm.ppf(np.linspace(offset, 0.5, n // 2)[:-1])
    levels = np.sort(np.concatenate([positive, [0.0], negative]))
    return tuple((levels / np.abs(levels).max()).tolist())


class NFEncoder(QuantizerEncoder):
    scheme = "nf"
    bits_range = range(2, 9)
    nparams = 1  # block size

    def __init__(self, bits: int, block_size: int = 64):
        super().__init__(bits)
        if not isinstance(block_size, int) or block_size < 1:
            raise ValueError(f"NF block_size must be a positive integer, got {block_size!r}")
        self.block_size = block_size

    def quantize(self, x: torch.Tensor, prepared: torch.Tensor) -> Payload:
        flat = prepared.reshape(-1)
        n, bs = flat.numel(), self.block_size
        width = min(bs, n)  # a block larger than the tensor is one block of n elements
        blocks = torch.nn.functional.pad(flat, (0, (-n) % width)).view(-1, width)
        absmax = blocks.abs().amax(1)
        check_finite(absmax)
        absmax = torch.where(absmax > 0, absmax, torch.ones_like(absmax))
        levels = torch.tensor(nf_levels(self.bits), device=flat.device)
        mids = (levels[1:] + levels[:-1]) / 2
        codes = torch.bucketize(blocks / absmax[:, None], mids).reshape(-1)[:n].to(torch.uint8)
        return Payload(self.scheme, self.bits, tuple(prepared.shape),
                       (Field(codes, self.bits), Field(absmax, 32)), params=(bs,))

    @classmethod
    def wire_fields(cls, bits, shape, params):
        cls.check_bits(bits)
        cls._check_nparams(params)
        if params[0] < 1:
            raise ValueError(f"nf payload: block size must be >= 1, got {params[0]}")
        n = cls._numel(shape)
        return (FieldSpec(n, bits), FieldSpec(-(-n // params[0]), 32, torch.float32))

    @classmethod
    def validate(cls, payload: Payload) -> None:
        absmax = payload.fields[1].data
        if not bool(((absmax > 0) & torch.isfinite(absmax)).all()):
            raise ValueError("nf payload: block scales must be positive and finite")

    @staticmethod
    def dequantize(payload: Payload) -> torch.Tensor:
        codes, absmax = (f.data for f in payload.fields)
        bs = payload.params[0]
        if absmax.numel() != math.ceil(codes.numel() / bs):
            raise ValueError(f"nf payload: {codes.numel()} codes need {math.ceil(codes.numel() / bs)} block scales, got {absmax.numel()}")
        levels = torch.tensor(nf_levels(payload.bits), device=codes.device)
        scale = absmax.repeat_interleave(min(bs, codes.numel()))[: codes.numel()]  # O(n), whatever bs says
        return (levels[codes.long()] * scale).reshape(payload.shape)
