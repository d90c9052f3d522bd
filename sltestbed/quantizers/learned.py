"""The Quantized-TinyLLaVA quantizer: FSQ-inspired, linear scaling, distortion regularised.

Encoder (client): u = W_in x + b_in; mu, sigma = mean(u), std(u) over the whole tensor;
q_min, q_max = mu -+ 3 sigma; z = 2 (clip(u) - q_min + 1e-4) / (q_max - q_min + 1e-4) - 1;
codes j = round((L-1)/2 (z + 1)) on L = 2^b levels including +-1. No side information: the
decoder's learned affine map absorbs the scale.
Decoder (server): z_hat = 2 j / (L-1) - 1, x_hat = W_out z_hat + b_out.
Regulariser: L_dist = mean over token vectors of 1 - cos(z, sg(z_hat)) (eps 1e-3).
"""

from __future__ import annotations

import torch
from torch import nn

from .base import Field, Payload, QuantizerDecoder, QuantizerEncoder, QuantOut, affine_codes, check_features, check_finite

EPS = 1e-4
STATS_BLOCK = 1 << 18  # elements per block of the statistics pass: 1 MiB of float32


def _identity_linear(dim: int) -> nn.Linear:
    layer = nn.Linear(dim, dim)
    with torch.no_grad():
        layer.weight.copy_(torch.eye(dim))
        layer.bias.zero_()
    return layer


class LearnedEncoder(QuantizerEncoder):
    scheme = "learned"
    bits_range = range(1, 9)

    def __init__(self, bits: int, dim: int | None = None, projection: bool = True, clip_sigmas: float = 3.0):
        super().__init__(bits)
        if projection and (dim is None or dim < 1):
            raise ValueError("the learned quantizer's projection needs the feature size: dim >= 1")
        if not clip_sigmas > 0:
            raise ValueError(f"clip_sigmas must be > 0, got {clip_sigmas}")
        self.proj = _identity_linear(dim) if projection else None
        self.clip_sigmas = float(clip_sigmas)

    def _project(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        return self.proj(x) if self.proj is not None else x

    def _range(self, u: torch.Tensor):
        """q_min, q_max = mu -+ 3 sigma over the whole tensor, differentiable. A sum and a dot
        product per cache-sized block (the dot reads the block from cache, so the tensor
        comes from memory once), instead of torch.std_mean, which is several times slower on
        a CPU; NaN or Inf in u shows up in the statistics, so the finiteness check is free."""
        flat = u.reshape(-1)
        n = flat.numel()
        total, squares = flat.new_zeros(()), flat.new_zeros(())
        for start in range(0, n, STATS_BLOCK):
            block = flat[start:start + STATS_BLOCK]
            total = total + block.sum()
            squares = squares + torch.dot(block, block)
        mu = total / n
        var = (squares - n * mu * mu) / max(n - 1, 1)
        check_finite(var)
        sigma = var.clamp_min(0).sqrt()
        return mu - self.clip_sigmas * sigma, mu + self.clip_sigmas * sigma

    def _payload(self, u: torch.Tensor, q_min: torch.Tensor, q_max: torch.Tensor) -> Payload:
        # j = round((L-1) (clip(u) - q_min + eps) / (q_max - q_min + eps)) as one affine map,
        # a clamp and a truncation (values are >= 0, so +0.5 then truncate = round)
        top = self.levels - 1
        a = top / float(q_max - q_min + EPS)
        codes = affine_codes(u, a, (EPS - float(q_min)) * a + 0.5, top)
        return Payload(self.scheme, self.bits, tuple(u.shape), (Field(codes, self.bits),))

    @staticmethod
    def dequantize(payload: Payload) -> torch.Tensor:
        top = 2**payload.bits - 1
        # (2 j - top) / top: one rounding, so each level is the float nearest 2 j / (L-1) - 1
        return payload.fields[0].data.float().mul_(2.0).sub_(top).div_(top).reshape(payload.shape)

    @staticmethod
    def _normalised(u: torch.Tensor, q_min: torch.Tensor, q_max: torch.Tensor) -> torch.Tensor:
        return 2 * (torch.minimum(torch.maximum(u, q_min), q_max) - q_min + EPS) / (q_max - q_min + EPS) - 1

    @torch.no_grad()
    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """z in [-1, 1]: projected, clipped at mu +- 3 sigma, scaled (the grid's domain)."""
        check_features(x)
        u = self._project(x)
        return self._normalised(u, *self._range(u)).clamp_(-1.0, 1.0)

    def forward(self, x: torch.Tensor) -> QuantOut:
        check_features(x)
        u = self._project(x)
        q_min, q_max = self._range(u)
        z = self._normalised(u, q_min, q_max)
        with torch.no_grad():
            payload = self._payload(u.detach(), q_min.detach(), q_max.detach())
            z_hat = self.dequantize(payload)
        values = z_hat + (z - z.detach())  # straight-through: exact value, identity gradient
        return QuantOut(values, payload, distortion_loss(z, z_hat))

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> Payload:
        check_features(x)
        u = self._project(x)
        q_min, q_max = self._range(u)
        return self._payload(u, q_min, q_max)


def distortion_loss(z: torch.Tensor, z_hat: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """mean_n (1 - <z_n, sg(z_hat_n)> / (||z_n|| ||z_hat_n|| + eps)) over token vectors."""
    z_hat = z_hat.detach()
    dot = (z * z_hat).sum(-1)
    norms = z.norm(dim=-1) * z_hat.norm(dim=-1) + eps
    return (1 - dot / norms).mean()


class LearnedDecoder(QuantizerDecoder):
    def __init__(self, dim: int | None = None, projection: bool = True):
        super().__init__()
        if projection and (dim is None or dim < 1):
            raise ValueError("the learned quantizer's projection needs the feature size: dim >= 1")
        self.proj = _identity_linear(dim) if projection else None

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        return self.proj(values) if self.proj is not None else values
