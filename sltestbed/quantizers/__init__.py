"""Quantizers: one scheme per module, one registry here.

    encoder, decoder = build_quantizer("learned", bits=2, dim=64)
    out = encoder(x)                      # training path: out.values carries the STE gradient
    payload = encoder.encode(x)           # wire path
    x_hat = decoder(dequantize(payload))  # receiving side
"""

from __future__ import annotations

import inspect

import torch

from .base import AUTO_BITS_SCHEMES, Field, Payload, QuantizerDecoder, QuantizerEncoder, QuantOut, check_features, check_finite
from .fsq import FSQDecoder, FSQEncoder
from .learned import LearnedDecoder, LearnedEncoder, distortion_loss
from .nf import NFEncoder, nf_levels
from .passthrough import BF16Encoder, FP16Encoder, PassthroughEncoder
from .topk import TopKEncoder
from .uniform import UniformEncoder

ENCODERS: dict[str, type[QuantizerEncoder]] = {
    cls.scheme: cls
    for cls in (PassthroughEncoder, FP16Encoder, BF16Encoder, UniformEncoder, NFEncoder, TopKEncoder, FSQEncoder, LearnedEncoder)
}
SCHEMES = tuple(ENCODERS)  # the order is the wire id: never reorder, only append
GRADIENT_SCHEMES = ("fp32", "fp16", "bf16", "uniform", "nf", "topk")  # no learned part: usable for gradients
_DECODERS = {"learned": LearnedDecoder, "fsq": FSQDecoder}


def scheme_class(name: str) -> type[QuantizerEncoder]:
    try:
        return ENCODERS[name]
    except KeyError:
        raise ValueError(f"unknown quantizer {name!r}: choose one of {', '.join(SCHEMES)}") from None


def implied_bits(name: str, bits: int | None = None) -> int:
    """Bits per element of a scheme: given, or implied (fp32 -> 32, fp16/bf16 -> 16)."""
    cls = scheme_class(name)
    if bits is None:
        if len(cls.bits_range) != 1:
            raise ValueError(f"quantizer {name!r} needs bits in {cls.bits_range.start}..{cls.bits_range.stop - 1}")
        return cls.bits_range.start
    return cls.check_bits(bits)


def build_quantizer(name: str, bits: int | None = None, dim: int | None = None, **options):
    """Both halves of a scheme: (encoder for the sender, decoder for the receiver)."""
    cls = scheme_class(name)
    bits = implied_bits(name, bits)
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "bits"}
    unknown = set(options) - accepted
    if unknown:
        raise ValueError(f"quantizer {name!r} has no option(s) {sorted(unknown)}; it takes {sorted(accepted - {'dim'}) or 'none'}")
    kwargs = dict(options)
    if "dim" in accepted:
        kwargs["dim"] = dim
    encoder = cls(bits, **kwargs)
    dec_cls = _DECODERS.get(name)
    if dec_cls is None:
        decoder = QuantizerDecoder()
    else:
        dec_accepted = set(inspect.signature(dec_cls.__init__).parameters) - {"self"}
        decoder = dec_cls(**{k: v for k, v in kwargs.items() if k in dec_accepted})
    return encoder, decoder


def dequantize(payload: Payload) -> torch.Tensor:
    """Codes and side information back to float32 values of the payload's shape."""
    return scheme_class(payload.scheme).dequantize(payload)


__all__ = [
    "AUTO_BITS_SCHEMES", "ENCODERS", "GRADIENT_SCHEMES", "SCHEMES", "Field", "Payload", "QuantOut", "QuantizerDecoder", "QuantizerEncoder",
    "build_quantizer", "check_features", "check_finite", "dequantize", "distortion_loss", "implied_bits",
    "nf_levels", "scheme_class",
]
