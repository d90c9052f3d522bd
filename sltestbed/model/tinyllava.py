"""TinyLLaVA-style VQA model: vision tower -> connector -> [image tokens; question tokens]
-> causal language model -> the answer token's logits at the last question position.

`TinyLlava.forward` is the unsplit reference: no quantizers, the language model's own
forward. The split parts (`split.py`) share these modules and add the per-modality
quantizers held here.
"""

from __future__ import annotations

import os

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..quantizers import build_quantizer
from .components import Connector, VisionTower, build_language_model
from .config import TinyLlavaConfig
from .lora import add_lora, base_key, is_adapter

MODALITIES = ("image", "text")


def answer_positions(num_image_tokens: int, lengths: torch.Tensor) -> torch.Tensor:
    """Index of the last question token of each sample: its hidden state predicts the answer."""
    return num_image_tokens + lengths - 1


class TinyLlava(nn.Module):
    def __init__(self, config: TinyLlavaConfig):
        super().__init__()
        config.validate()
        self.config = config
        self.vision = VisionTower(config)
        self.lm = build_language_model(config)
        self.lm_hidden = self.lm.config.hidden_size
        self.connector = Connector(self.vision.hidden_size, self.lm_hidden)
        encoders, decoders = {}, {}
        for modality in MODALITIES:
            encoders[modality], decoders[modality] = build_quantizer(
                config.quantizer, config.bits_of(modality), dim=self.lm_hidden, **config.quantizer_options)
        self.quant_encoders = nn.ModuleDict(encoders)
        self.quant_decoders = nn.ModuleDict(decoders)
        if config.lora_rank:
            add_lora(self, config.lora_rank, config.lora_alpha or 2 * config.lora_rank, config.lora_target_names,
                     config.lora_part_names)

    @property
    def embed_tokens(self) -> nn.Embedding:
        return self.lm.get_input_embeddings()

    @property
    def num_lm_layers(self) -> int:
        return len(self.lm.model.layers)

    def image_tokens(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.connector(self.vision(pixel_values))

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Unsplit reference forward (no quantizers): answer logits, B x vocab."""
        image = self.image_tokens(pixel_values)
        sequence = torch.cat([image, self.embed_tokens(input_ids)], dim=1)
        hidden = self.lm.model(inputs_embeds=sequence).last_hidden_state
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        return self.lm.lm_head(hidden[rows, answer_positions(image.shape[1], lengths)])

    # --- transformers-style persistence -------------------------------------------------
    def save_pretrained(self, directory: str) -> None:
        os.makedirs(directory, exist_ok=True)
        self.config.save(directory)
        state = {k: v.detach().contiguous() for k, v in self.state_dict().items()}
        save_file(state, os.path.join(directory, "model.safetensors"))

    @classmethod
    def from_pretrained(cls, directory: str, **config_overrides) -> "TinyLlava":
        """Load a saved model; `config_overrides` (e.g. another quantizer) keep every weight
        that still fits and leave new quantizer parameters at their initial values."""
        if not os.path.isdir(directory):
            raise ValueError(f"no such model directory {directory!r}")
        config = TinyLlavaConfig.load(directory).replace(**config_overrides)
        model = cls(config)
        state = load_file(os.path.join(directory, "model.safetensors"))
        model.load_weights(state)
        return model

    def load_weights(self, state: dict) -> None:
        """Load every tensor of `state` whose name and shape fit; quantizer parameters and LoRA
        adapters may be missing (a new quantizer, a base without adapters: they keep their
        initial values) or extra (an old one). A weight that adapters now wrap is found under
        its name without them (`q_proj.weight` for `q_proj.base_layer.weight`)."""
        sources = self.fitting_sources(state)
        missing = [k for k in self.state_dict()
                   if k not in sources and not k.startswith("quant_") and not is_adapter(k)]
        if missing:
            raise ValueError(f"checkpoint lacks {len(missing)} model tensors, e.g. {missing[:3]}")
        self.load_state_dict({k: state[source] for k, source in sources.items()}, strict=False)

    def fitting_sources(self, state: dict) -> dict[str, str]:
        """{own tensor name: the name in `state` that fits it (same shape)}: the name itself, or
        for a weight that adapters now wrap, its name without them."""
        sources = {}
        for k, tensor in self.state_dict().items():
            source = k if k in state else base_key(k)
            if source in state and tensor.shape == state[source].shape:
                sources[k] = source
        return sources
