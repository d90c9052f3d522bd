"""The quantizer interface: two halves that live on the two sides of the cut.

The *encoder* half runs where the tensor is produced (the client for activations, the server
for gradients). It turns a float tensor into a `Payload`: integer codes plus the side
information the other side needs. The *decoder* half runs on the receiving side: the
parameter-free `dequantize(payload)` turns codes back into values, then the decoder module
applies its learned map (identity for schemes without one).

Inside training, `encoder(x)` returns a `QuantOut` whose `values` equal
`dequantize(payload)` exactly but carry the straight-through gradient to `x`, so an
in-process model and a split one over the network see the same numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


@dataclass(frozen=True)
class Field:
    """One array that crosses the link.

    Integer codes (uint8) are sent packed at `bits` bits each (1..8); float arrays are sent
    raw, `bits` being their width (16 or 32).
    """

    data: torch.Tensor
    bits: int

    @property
    def numel(self) -> int:
        return self.data.numel()

    @property
    def is_codes(self) -> bool:
        return self.data.dtype == torch.uint8

    @property
    def ideal_bits(self) -> int:
        return self.numel * self.bits


@dataclass(frozen=True)
class Payload:
    """What one quantized tensor sends: `fields[0]` carries the elements, the rest is side
    information (scales, offsets, masks). `params` are small integers the receiver needs."""

    scheme: str
    bits: int
    shape: tuple[int, ...]
    fields: tuple[Field, ...]
    params: tuple[int, ...] = ()

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def ideal_bits(self) -> int:
        """Every bit of every field: codes, masks and side information."""
        return sum(f.ideal_bits for f in self.fields)

    @property
    def ideal_bytes(self) -> int:
        return math.ceil(self.ideal_bits / 8)

    @property
    def side_bits(self) -> int:
        return sum(f.ideal_bits for f in self.fields[1:])

    def to(self, device) -> "Payload":
        fields = tuple(Field(f.data.to(device), f.bits) for f in self.fields)
        return Payload(self.scheme, self.bits, self.shape, fields, self.params)


@dataclass(frozen=True)
class FieldSpec:
    """What one field of a scheme's payload must be, known from the header alone: `numel`
    values of `bits` bits, integer codes (dtype uint8) or raw floats of `dtype`."""

    numel: int
    bits: int
    dtype: torch.dtype = torch.uint8

    @property
    def is_codes(self) -> bool:
        return self.dtype == torch.uint8


@dataclass
class QuantOut:
    """Training-path output of an encoder.

    values: what the receiver reconstructs before its learned map (== dequantize(payload)),
        differentiable with respect to the encoder's input through the straight-through
        estimator.
    payload: what goes on the wire.
    loss: the scheme's regulariser (the distortion loss of the learned quantizer), 0 otherwise.
    """

    values: torch.Tensor
    payload: Payload
    loss: torch.Tensor


def check_features(x: torch.Tensor, what: str = "features") -> None:
    """Dtype and emptiness checks every encoder runs before any work."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{what} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{what} must be a floating-point tensor, got dtype {x.dtype}")
    if x.numel() == 0:
        raise ValueError(f"{what} is empty (shape {tuple(x.shape)}): nothing to quantize")


def check_finite(t: torch.Tensor, what: str = "features") -> None:
    """Raise if `t` holds NaN or Inf. Encoders call it on statistics they compute anyway
    (a mean, a max): NaN and Inf in the input propagate into them, so the check is free.
    A large tensor is reduced to its min and max first (one pass, NaN propagates), which is
    several times faster than a full isfinite mask."""
    if t.numel() > 1024:
        t = torch.stack(torch.aminmax(t.detach().float()))
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{what} contain NaN or Inf values")


_CHUNK = 1 << 18  # elements per block of `affine_codes`: 1 MiB of float32 stays in cache


def affine_codes(u: torch.Tensor, scale: float, offset: float, top: int) -> torch.Tensor:
    """codes = floor(clamp(u * scale + offset, 0, top + 0.49)) as uint8, `offset` already
    holding the +0.5 of rounding. Works in cache-sized blocks (a fused multiply-add, a clamp,
    a truncating copy to int16 and a narrowing copy per block), so the float intermediate
    never goes out to memory: on a CPU about 2.5x faster than the same whole-tensor
    operations. (float32 -> int16 -> uint8 is vectorised where float32 -> uint8 is not.)"""
    flat = u.detach().reshape(-1)
    n = flat.numel()
    out = torch.empty(n, dtype=torch.uint8, device=flat.device)
    buf = torch.empty(min(n, _CHUNK), dtype=torch.float32, device=flat.device)
    ints = torch.empty(min(n, _CHUNK), dtype=torch.int16, device=flat.device)
    offset_t = torch.tensor(offset, dtype=torch.float32, device=flat.device)
    for start in range(0, n, _CHUNK):
        stop = min(n, start + _CHUNK)
        block = buf[: stop - start]
        torch.add(offset_t, flat[start:stop], alpha=scale, out=block).clamp_(0.0, top + 0.49)
        whole = ints[: stop - start]
        whole.copy_(block)
        out[start:stop].copy_(whole)
    return out.reshape(u.shape)


AUTO_BITS_SCHEMES = ("learned", "uniform")  # the schemes that implement `normalise`


class QuantizerEncoder(nn.Module):
    """Sender half. Subclasses set `scheme`, `bits_range`, and implement `prepare`,
    `quantize` and `dequantize`."""

    scheme: ClassVar[str]
    bits_range: ClassVar[range]
    nparams: ClassVar[int] = 0  # small integers in `Payload.params`

    def __init__(self, bits: int):
        super().__init__()
        self.bits = self.check_bits(bits)

    @classmethod
    def check_bits(cls, bits) -> int:
        if isinstance(bits, bool) or not isinstance(bits, int) or bits not in cls.bits_range:
            lo, hi = cls.bits_range.start, cls.bits_range.stop - 1
            raise ValueError(
                f"bits={bits!r} is out of range for quantizer '{cls.scheme}': "
                f"allowed {lo}..{hi}" if lo != hi else
                f"bits={bits!r} is not valid for quantizer '{cls.scheme}': it is {lo} bits"
            )
        return bits

    @property
    def levels(self) -> int:
        return 2**self.bits

    def random_state(self):
        """Where encoding draws random numbers (stochastic rounding), the stream's state, for a
        checkpoint; None for a deterministic scheme."""
        return None

    def load_random_state(self, state) -> None:
        """Continue the stream `random_state` saved."""

    # --- to implement -------------------------------------------------------------------
    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Differentiable continuous tensor whose rounding gives the codes (default: x)."""
        return x.float()

    def quantize(self, x: torch.Tensor, prepared: torch.Tensor) -> Payload:
        """Codes and side information, computed without gradient."""
        raise NotImplementedError

    @staticmethod
    def dequantize(payload: Payload) -> torch.Tensor:
        raise NotImplementedError

    @classmethod
    def wire_fields(cls, bits: int, shape: tuple[int, ...], params: tuple[int, ...]) -> tuple[FieldSpec, ...]:
        """The fields a payload of this scheme carries, from its header alone (default: one
        code per element); ValueError for bits or params this scheme never writes."""
        cls.check_bits(bits)
        cls._check_nparams(params)
        return (FieldSpec(cls._numel(shape), bits),)

    @classmethod
    def validate(cls, payload: Payload) -> None:
        """Checks of decoded values that the header cannot make (side information in range);
        ValueError naming the problem."""

    @classmethod
    def _numel(cls, shape: tuple[int, ...]) -> int:
        """Elements of a payload's shape: at least one (encoders refuse empty tensors)."""
        n = math.prod(shape)
        if n < 1:
            raise ValueError(f"a '{cls.scheme}' payload of shape {shape} has no elements")
        return n

    @classmethod
    def _check_nparams(cls, params: tuple[int, ...]) -> None:
        if len(params) != cls.nparams:
            raise ValueError(f"a '{cls.scheme}' payload has {cls.nparams} parameter(s), got {len(params)}")

    def regulariser(self, prepared: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        return prepared.new_zeros(())

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """The features as this scheme sees them before rounding, on [-1, 1] (what the
        entropy-based bit-width selection measures). Schemes whose grid is not a fixed
        normalisation of the features to [-1, 1] have none."""
        raise ValueError(f"quantizer '{self.scheme}' has no normalisation of the features to [-1, 1], so its "
                         f"bit width cannot be chosen from their entropy (bits='auto' works with "
                         f"{', '.join(AUTO_BITS_SCHEMES)})")

    # --- the two paths ------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> QuantOut:
        check_features(x)
        prepared = self.prepare(x)
        with torch.no_grad():
            payload = self.quantize(x, prepared.detach())
            decoded = self.dequantize(payload).to(prepared.dtype)
        values = decoded + (prepared - prepared.detach())  # straight-through: exact value, identity gradient
        return QuantOut(values, payload, self.regulariser(prepared, values))

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> Payload:
        """Wire path: the payload only, no autograd graph."""
        check_features(x)
        return self.quantize(x, self.prepare(x))


class QuantizerDecoder(nn.Module):
    """Receiver half: the learned map after dequantization (identity unless overridden)."""

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        return values
