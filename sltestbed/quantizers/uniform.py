"""Uniform min-max quantization, per tensor or per channel (last dimension), b = 1..8.

codes = round((x - min) / scale), scale = (max - min) / (L - 1); the receiver gets min and
scale as float32 side information (one pair per tensor, or per channel). With
`stochastic=True` rounding is unbiased: floor(v + U[0, 1)), for gradients.
"""

from __future__ import annotations

import torch

from .base import Field, FieldSpec, Payload, QuantizerEncoder, affine_codes, check_features, check_finite


class UniformEncoder(QuantizerEncoder):
    scheme = "uniform"
    bits_range = range(1, 9)
    nparams = 1  # 1 per channel, 0 per tensor

    def __init__(self, bits: int, per_channel: bool = False, stochastic: bool = False, seed: int = 0):
        super().__init__(bits)
        self.per_channel = bool(per_channel)
        self.stochastic = bool(stochastic)
        self.seed = int(seed)
        self._generator: torch.Generator | None = None

    def _noise(self, like: torch.Tensor) -> torch.Tensor:
        if self._generator is None or self._generator.device != like.device:
            self._generator = torch.Generator(device=like.device).manual_seed(self.seed)
        return torch.rand(like.shape, generator=self._generator, device=like.device)

    def random_state(self) -> tuple[str, torch.Tensor] | None:
        return None if self._generator is None else (str(self._generator.device), self._generator.get_state())

    def load_random_state(self, state: tuple[str, torch.Tensor] | None) -> None:
        self._generator = None
        if state is not None:
            device, stream = state
            self._generator = torch.Generator(device=device)
            self._generator.set_state(stream)

    def _range(self, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """min and max, per tensor or per channel (NaN / Inf raise)."""
        if self.per_channel:
            flat = v.reshape(-1, v.shape[-1])
            lo, hi = flat.amin(0), flat.amax(0)
        else:
            lo, hi = torch.aminmax(v)
        check_finite(lo + hi)
        return lo, hi

    def quantize(self, x: torch.Tensor, prepared: torch.Tensor) -> Payload:
        v = prepared
        lo, hi = self._range(v)
        top = self.levels - 1
        scale = (hi - lo) / top
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        if self.stochastic or self.per_channel:
            t = (v - lo) / scale
            t = t.add_(self._noise(t)).floor_() if self.stochastic else t.add_(0.5).floor_()
            codes = t.clamp_(0, top).to(torch.uint8)
        else:  # the common case, as one blocked pass
            inv = 1.0 / float(scale)
            codes = affine_codes(v, inv, 0.5 - float(lo) * inv, top)
        side = (Field(lo.reshape(-1).float(), 32), Field(scale.reshape(-1).float(), 32))
        return Payload(self.scheme, self.bits, tuple(v.shape), (Field(codes, self.bits),) + side,
                       params=(int(self.per_channel),))

    @torch.no_grad()
    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """2 (x - min) / (max - min) - 1, per tensor or per channel: the grid's domain."""
        check_features(x)
        v = x.float()
        lo, hi = self._range(v)
        span = torch.where(hi > lo, hi - lo, torch.ones_like(hi))
        return (2 * (v - lo) / span - 1).clamp_(-1.0, 1.0)

    @classmethod
    def wire_fields(cls, bits, shape, params):
        cls.check_bits(bits)
        cls._check_nparams(params)
        if params[0] not in (0, 1):
            raise ValueError(f"uniform payload: per-channel flag must be 0 or 1, got {params[0]}")
        if params[0] and not shape:
            raise ValueError("uniform payload: per-channel scales need at least one dimension")
        channels = shape[-1] if params[0] else 1
        return (FieldSpec(cls._numel(shape), bits),
                FieldSpec(channels, 32, torch.float32), FieldSpec(channels, 32, torch.float32))

    @classmethod
    def validate(cls, payload: Payload) -> None:
        _, lo, scale = (f.data for f in payload.fields)
        if not bool(torch.isfinite(lo).all()):
            raise ValueError("uniform payload: minimum is not finite")
        if not bool((scale > 0).all()):  # NaN fails too
            raise ValueError("uniform payload: scale must be positive")

    @staticmethod
    def dequantize(payload: Payload) -> torch.Tensor:
        codes, lo, scale = (f.data for f in payload.fields)
        channels = payload.shape[-1] if payload.params and payload.params[0] else 1
        if lo.numel() != channels or scale.numel() != channels:
            raise ValueError(f"uniform payload: expected {channels} scales, got {lo.numel()} and {scale.numel()}")
        return (codes.float().reshape(-1, channels) * scale + lo).reshape(payload.shape)
