"""Top-k sparsification at a budget of b bits per element.

Keeps the k = ceil(n b / 16) largest-magnitude values as float16 plus a 1-bit position mask
over all n elements: the payload costs 16 k + n bits, about (b + 1) bits per element, and the
ledger counts all of it.
"""

from __future__ import annotations

import math

import torch

from .base import Field, Payload, QuantizerEncoder, check_finite


class TopKEncoder(QuantizerEncoder):
    scheme = "topk"
    bits_range = range(1, 9)

    def quantize(self, x: torch.Tensor, prepared: torch.Tensor) -> Payload:
        check_finite(prepared)
        flat = prepared.reshape(-1)
        n = flat.numel()
        k = min(n, math.ceil(n * self.bits / 16))
        mask = torch.zeros(n, dtype=torch.bool, device=flat.device)
        mask[flat.abs().topk(k, sorted=False).indices] = True
        values = flat[mask].to(torch.float16)
        return Payload(self.scheme, self.bits, tuple(prepared.shape),
                       (Field(values, 16), Field(mask.to(torch.uint8), 1)))

    @staticmethod
    def dequantize(payload: Payload) -> torch.Tensor:
        values, mask = (f.data for f in payload.fields)
        mask = mask.bool()
        if int(mask.sum()) != values.numel():
            raise ValueError(f"topk payload: mask selects {int(mask.sum())} positions but {values.numel()} values came")
        out = torch.zeros(mask.numel(), dtype=torch.float32, device=values.device)
        out[mask] = values.float()
        return out.reshape(payload.shape)
