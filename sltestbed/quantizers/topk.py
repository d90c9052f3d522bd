"""Top-k sparsification at a budget of b bits per element.

Keeps the k = ceil(n b / 16) largest-magnitude values as float16 plus a 1-bit position mask
over all n elements: the payload costs 16 k + n bits, about (b + 1) bits per element, and the
ledger counts all of it.
"""

from __future__ import annotations

import torch

from .base import Field, FieldSpec, Payload, QuantizerEncoder, check_finite


class TopKEncoder(QuantizerEncoder):
    scheme = "topk"
    bits_range = range(1, 9)

    @staticmethod
    def kept(n: int, bits: int) -> int:
        """k: how many values a budget of `bits` bits per element keeps out of n."""
        return min(n, -(-n * bits // 16))

    def quantize(self, x: torch.Tensor, prepared: torch.Tensor) -> Payload:
        check_finite(prepared)
        flat = prepared.reshape(-1)
        n = flat.numel()
        k = self.kept(n, self.bits)
        mask = torch.zeros(n, dtype=torch.bool, device=flat.device)
        mask[flat.abs().topk(k, sorted=False).indices] = True
        values = flat[mask].to(torch.float16)
        return Payload(self.scheme, self.bits, tuple(prepared.shape),
                       (Field(values, 16), Field(mask.to(torch.uint8), 1)))

    @classmethod
    def wire_fields(cls, bits, shape, params):
        cls.check_bits(bits)
        cls._check_nparams(params)
        n = cls._numel(shape)
        return (FieldSpec(cls.kept(n, bits), 16, torch.float16), FieldSpec(n, 1))

    @classmethod
    def validate(cls, payload: Payload) -> None:
        values, mask = (f.data for f in payload.fields)
        selected = int(torch.count_nonzero(mask))
        if selected != values.numel():
            raise ValueError(f"topk payload: mask selects {selected} positions but {values.numel()} values came")

    @staticmethod
    def dequantize(payload: Payload) -> torch.Tensor:
        values, mask = (f.data for f in payload.fields)
        mask = mask.bool()
        if int(mask.sum()) != values.numel():
            raise ValueError(f"topk payload: mask selects {int(mask.sum())} positions but {values.numel()} values came")
        out = torch.zeros(mask.numel(), dtype=torch.float32, device=values.device)
        out[mask] = values.float()
        return out.reshape(payload.shape)
