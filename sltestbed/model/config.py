"""`TinyLlavaConfig`: every size and choice of the model, with named presets."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields, replace

VISION_TOWERS = ("siglip", "vit", "clip")
LANGUAGE_MODELS = ("llama", "qwen2")


@dataclass
class TinyLlavaConfig:
    # vision tower (a transformers vision model built from this config, or loaded from vision_path)
    # (the defaults are the "tiny" preset: `TinyLlavaConfig()` is the default benchmark's model)
    vision_tower: str = "siglip"
    image_size: int = 8
    patch_size: int = 4
    vision_hidden: int = 16
    vision_layers: int = 1
    vision_heads: int = 2
    vision_intermediate: int = 32
    vision_feature_layer: int = -1  # hidden state fed to the connector (TinyLLaVA uses -2)
    # language model (a transformers causal LM, or loaded from lm_path)
    language_model: str = "llama"
    vocab_size: int = 64
    lm_hidden: int = 16
    lm_layers: int = 2
    lm_heads: int = 2
    lm_intermediate: int = 32
    max_positions: int = 256
    # connector: 2-layer MLP with GELU, vision_hidden -> lm_hidden -> lm_hidden
    # quantizers at the cut, one per modality (image tokens, text tokens)
    quantizer: str = "fp32"
    bits: int | None = None
    modality_bits: dict = field(default_factory=dict)  # e.g. {"image": 3}: a width per modality, else `bits`
    quantizer_options: dict = field(default_factory=dict)
    # LoRA (model/lora.py): adapters of this rank (0: none) on the language model's `lora_targets`
    # (and with "vision" in `lora_parts`, on the tower's linear layers); the adapted weights freeze
    lora_rank: int = 0
    lora_alpha: int = 0  # the adapters' scale is alpha / rank (0: alpha = 2 x rank)
    lora_targets: str = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"
    lora_parts: str = "lm"
    # Hugging Face checkpoints for the parts (a local directory or a hub name): loaded with
    # from_pretrained, the sizes above then mirror theirs (`pretrained.pretrained_fields`)
    vision_path: str | None = None
    lm_path: str | None = None

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        if self.vision_tower not in VISION_TOWERS:
            raise ValueError(f"unknown vision tower {self.vision_tower!r}: choose one of {', '.join(VISION_TOWERS)}")
        if self.language_model not in LANGUAGE_MODELS:
            raise ValueError(f"unknown language model {self.language_model!r}: choose one of {', '.join(LANGUAGE_MODELS)}")
        for name in ("image_size", "patch_size", "vision_hidden", "vision_layers", "vision_heads", "vision_intermediate",
                     "vocab_size", "lm_hidden", "lm_layers", "lm_heads", "lm_intermediate", "max_positions"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        for hidden, heads, what in ((self.vision_hidden, self.vision_heads, "vision"), (self.lm_hidden, self.lm_heads, "lm")):
            if hidden % heads:
                raise ValueError(f"{what} hidden size {hidden} is not divisible by {heads} heads")
        if not isinstance(self.lora_rank, int) or self.lora_rank < 0 or self.lora_alpha < 0:
            raise ValueError(f"lora_rank and lora_alpha must be integers >= 0, got {self.lora_rank}, {self.lora_alpha}")
        if self.lora_rank and not self.lora_target_names:
            raise ValueError("lora_targets names no layer")
        if self.lora_rank and set(self.lora_part_names) - {"lm", "vision"}:
            raise ValueError(f"lora_parts {self.lora_parts!r}: use 'lm' or 'lm,vision'")
        if not -self.vision_layers <= self.vision_feature_layer < self.vision_layers + 1 or self.vision_feature_layer == 0:
            raise ValueError(f"vision_feature_layer {self.vision_feature_layer} out of range for {self.vision_layers} layers")
        for path_name in ("vision_path", "lm_path"):  # a local directory, or a hub name from_pretrained resolves
            path = getattr(self, path_name)
            if path is not None and (not path or path.startswith(("/", ".", "~"))) and not os.path.isdir(path):
                raise ValueError(f"{path_name}: no such directory {path!r}")
        from ..quantizers import implied_bits

        self.bits = implied_bits(self.quantizer, self.bits)
        unknown = sorted(set(self.modality_bits) - {"image", "text"})
        if unknown:
            raise ValueError(f"modality_bits: unknown modality {unknown}; the modalities are image, text")
        self.modality_bits = {m: implied_bits(self.quantizer, b) for m, b in sorted(self.modality_bits.items())}

    @property
    def lora_target_names(self) -> tuple[str, ...]:
        return tuple(t.strip() for t in self.lora_targets.split(",") if t.strip())

    @property
    def lora_part_names(self) -> tuple[str, ...]:
        return tuple(t.strip() for t in self.lora_parts.split(",") if t.strip())

    def bits_of(self, modality: str) -> int:
        """The bit width of one modality's quantizer."""
        return self.modality_bits.get(modality, self.bits)

    @property
    def image_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TinyLlavaConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown TinyLlavaConfig key(s) {unknown}")
        return cls(**data)

    def save(self, directory: str) -> None:
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, "config.json"), "w") as f:
            json.dump(self.to_dict(), f, indent=2)

    @classmethod
    def load(cls, directory: str) -> "TinyLlavaConfig":
        path = os.path.join(directory, "config.json")
        if not os.path.isfile(path):
            raise ValueError(f"no config.json in {directory!r}")
        with open(path) as f:
            return cls.from_dict(json.load(f))

    def replace(self, **changes) -> "TinyLlavaConfig":
        return replace(self, **changes)


PRESETS = {
    # the default benchmark, and the unit tests' model: digits-VQA at its own 8x8 resolution, a
    # 16-wide cut (4 image tokens x 16 values: as many values as the image has pixels), where
    # the bits at the cut show in the accuracy; a forward pass in milliseconds
    "tiny": dict(image_size=8, patch_size=4, vision_hidden=16, vision_layers=1, vision_heads=2, vision_intermediate=32,
                 lm_hidden=16, lm_layers=2, lm_heads=2, lm_intermediate=32),
    # wider: 16x16 images, a 64-wide cut (16 image tokens x 64 values), minutes on two cores
    "wide": dict(image_size=16, patch_size=4, vision_hidden=64, vision_layers=2, vision_heads=4, vision_intermediate=128,
                    lm_hidden=64, lm_layers=2, lm_heads=4, lm_intermediate=128),
    # a GPU: shapes-VQA at 32x32, a deeper tower and language model
    "large": dict(image_size=32, patch_size=4, vision_hidden=256, vision_layers=6, vision_heads=8, vision_intermediate=1024,
                  lm_hidden=512, lm_layers=8, lm_heads=8, lm_intermediate=1536, vision_feature_layer=-2),
}


def preset(name: str, **overrides) -> TinyLlavaConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}: choose one of {', '.join(PRESETS)}")
    return TinyLlavaConfig(**{**PRESETS[name], **overrides})
