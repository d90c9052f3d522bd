"""OpenELM's layer-wise scaling, computed from its published configuration: per layer the
query and key/value heads and the FFN width, and the parameter count. Torch-free.

OpenELM is not a `transformers` built-in (its checkpoints need remote code), so this module
recomputes what Apple's `configuration_openelm.py` derives from the published hyperparameters
(OpenELM-270M: 16 layers, model_dim 1280, head_dim 64, 4 GQA groups, qkv multipliers 0.5 ->
1.0 and FFN multipliers 0.5 -> 4.0 spaced linearly over the layers and rounded to 2 decimals,
FFN widths divisible by 256, GLU FFN, RMSNorm, q/k normalisation, input and output embeddings
shared, vocabulary 32000), and counts the weights of `modeling_openelm.py`'s modules:

    per layer   attn_norm (d) + qkv_proj (d x (q + 2 kv) heads x head_dim, no bias)
                + q_norm, k_norm (head_dim each) + out_proj (q heads x head_dim x d)
                + ffn_norm (d) + proj_1 (d x 2 ffn, GLU) + proj_2 (ffn x d)
    model       token embeddings (vocab x d, shared with the head) + final norm (d)
"""

from __future__ import annotations

from dataclasses import dataclass

OPENELM_270M = dict(num_transformer_layers=16, model_dim=1280, head_dim=64, num_gqa_groups=4,
                    ffn_multipliers=(0.5, 4.0), qkv_multipliers=(0.5, 1.0), ffn_dim_divisor=256, vocab_size=32000)


def make_divisible(v: float, divisor: int) -> int:
    """OpenELM's (MobileNet's) rounding: to the nearest multiple of `divisor`, never more than
    10% below `v`."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


def _linspace(a: float, b: float, n: int) -> list[float]:
    return [round(a + (b - a) * i / (n - 1), 2) if n > 1 else round(a, 2) for i in range(n)]


@dataclass(frozen=True)
class OpenElmLayer:
    query_heads: int
    kv_heads: int
    ffn_dim: int


@dataclass(frozen=True)
class OpenElmShape:
    model_dim: int
    head_dim: int
    vocab_size: int
    layers: tuple[OpenElmLayer, ...]

    @classmethod
    def from_config(cls, num_transformer_layers: int, model_dim: int, head_dim: int, num_gqa_groups: int,
                    ffn_multipliers: tuple, qkv_multipliers: tuple, ffn_dim_divisor: int, vocab_size: int):
        layers = []
        for qkv, ffn in zip(_linspace(*qkv_multipliers, num_transformer_layers),
                            _linspace(*ffn_multipliers, num_transformer_layers)):
            q_heads = make_divisible(model_dim * qkv, head_dim * num_gqa_groups) // head_dim
            layers.append(OpenElmLayer(q_heads, q_heads // num_gqa_groups, make_divisible(ffn * model_dim, ffn_dim_divisor)))
        return cls(model_dim, head_dim, vocab_size, tuple(layers))

    @property
    def hidden_size(self) -> int:
        return self.model_dim

    def layer_parameters(self, layer: OpenElmLayer) -> int:
        d, h = self.model_dim, self.head_dim
        attention = d * (layer.query_heads + 2 * layer.kv_heads) * h + 2 * h + layer.query_heads * h * d
        ffn = d * 2 * layer.ffn_dim + layer.ffn_dim * d
        return attention + ffn + 2 * d

    @property
    def embedding_parameters(self) -> int:
        return self.vocab_size * self.model_dim

    def parameters(self) -> int:
        """All weights, the shared embedding counted once."""
        return self.embedding_parameters + sum(self.layer_parameters(l) for l in self.layers) + self.model_dim


def openelm_270m() -> OpenElmShape:
    return OpenElmShape.from_config(**OPENELM_270M)
