"""No quantization: the tensor crosses the link as float32, float16 or bfloat16."""

from __future__ import annotations

import math

import torch

from .base import Field, FieldSpec, Payload, QuantizerEncoder, check_finite

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class PassthroughEncoder(QuantizerEncoder):
    scheme = "fp32"
    bits_range = range(32, 33)

    def __init__(self, bits: int | None = None):
        super().__init__(self.bits_range.start if bits is None else bits)
        self.dtype = _DTYPES[self.scheme]

    def quantize(self, x: torch.Tensor, prepared: torch.Tensor) -> Payload:
        check_finite(prepared)
        data = prepared.to(self.dtype)
        return Payload(self.scheme, self.bits, tuple(prepared.shape), (Field(data, self.bits),))

    @staticmethod
    def dequantize(payload: Payload) -> torch.Tensor:
        return payload.fields[0].data.float().reshape(payload.shape)

    @classmethod
    def wire_fields(cls, bits, shape, params):
        cls.check_bits(bits)
        cls._check_nparams(params)
        return (FieldSpec(math.prod(shape), bits, _DTYPES[cls.scheme]),)


class FP16Encoder(PassthroughEncoder):
    scheme = "fp16"
    bits_range = range(16, 17)


class BF16Encoder(PassthroughEncoder):
    scheme = "bf16"
    bits_range = range(16, 17)
