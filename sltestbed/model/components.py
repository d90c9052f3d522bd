"""The parts of the model, each a real `transformers` module or a plain torch one."""

from __future__ import annotations

import torch
from torch import nn
from transformers import (AutoModelForCausalLM, CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM,
                          Qwen2Config, Qwen2ForCausalLM, SiglipVisionConfig, SiglipVisionModel, ViTConfig, ViTModel)
from transformers.masking_utils import create_causal_mask

from .config import TinyLlavaConfig


# tower kind -> (model class, its config class, extra model arguments, has a CLS token to drop)
TOWERS = {"siglip": (SiglipVisionModel, SiglipVisionConfig, {}, False),
          "vit": (ViTModel, ViTConfig, {"add_pooling_layer": False}, True),
          "clip": (CLIPVisionModel, CLIPVisionConfig, {}, True)}


class VisionTower(nn.Module):
    """Image -> patch tokens (B x N x vision_hidden), from the configured hidden state: a SigLIP,
    ViT or CLIP vision model, built from the config's sizes or loaded from `vision_path`."""

    def __init__(self, cfg: TinyLlavaConfig):
        super().__init__()
        model_class, config_class, extra, self.drop_cls = TOWERS[cfg.vision_tower]
        self.feature_layer = cfg.vision_feature_layer
        if cfg.vision_path:
            self.model = model_class.from_pretrained(cfg.vision_path, **extra)
        else:
            self.model = model_class(config_class(
                hidden_size=cfg.vision_hidden, intermediate_size=cfg.vision_intermediate,
                num_hidden_layers=cfg.vision_layers, num_attention_heads=cfg.vision_heads,
                image_size=cfg.image_size, patch_size=cfg.patch_size, num_channels=3), **extra)
        self.hidden_size = self.model.config.hidden_size

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if self.feature_layer == -1:
            out = self.model(pixel_values=pixel_values).last_hidden_state
        else:
            out = self.model(pixel_values=pixel_values, output_hidden_states=True).hidden_states[self.feature_layer]
        return out[:, 1:] if self.drop_cls else out  # ViT, CLIP: the CLS token is not a patch


class Connector(nn.Module):
    """2-layer MLP with GELU, as in LLaVA / TinyLLaVA."""

    def __init__(self, vision_hidden: int, lm_hidden: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(vision_hidden, lm_hidden), nn.GELU(), nn.Linear(lm_hidden, lm_hidden))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def build_language_model(cfg: TinyLlavaConfig):
    """A transformers causal LM (Llama or Qwen2 layout: model.embed_tokens, model.layers,
    model.norm, model.rotary_emb, lm_head), untied so the embeddings and the head can live on
    different machines."""
    if cfg.lm_path:
        lm = AutoModelForCausalLM.from_pretrained(cfg.lm_path, tie_word_embeddings=False)
        if not hasattr(lm, "model") or not hasattr(lm.model, "layers"):
            raise ValueError(f"language model at {cfg.lm_path!r} does not have the Llama/Qwen2 layout")
        return lm
    common = dict(vocab_size=cfg.vocab_size, hidden_size=cfg.lm_hidden, intermediate_size=cfg.lm_intermediate,
                  num_hidden_layers=cfg.lm_layers, num_attention_heads=cfg.lm_heads, num_key_value_heads=cfg.lm_heads,
                  max_position_embeddings=cfg.max_positions, tie_word_embeddings=False)
    if cfg.language_model == "llama":
        return LlamaForCausalLM(LlamaConfig(**common))
    return Qwen2ForCausalLM(Qwen2Config(**common))


def run_decoder_layers(layers, rotary_emb: nn.Module, config, hidden: torch.Tensor) -> torch.Tensor:
    """Llama/Qwen2 decoder layers on `hidden` (B x S x d), causal, positions 0..S-1: what the
    decoder's own forward does, for any slice of its layers (the two sides of a cut)."""
    if len(layers) == 0:
        return hidden
    positions = torch.arange(hidden.shape[1], device=hidden.device).unsqueeze(0)
    mask = create_causal_mask(config=config, inputs_embeds=hidden, attention_mask=None,
                              past_key_values=None, position_ids=positions)
    rotary = rotary_emb(hidden, position_ids=positions)
    for layer in layers:
        hidden = layer(hidden, attention_mask=mask, position_embeddings=rotary, position_ids=positions)
    return hidden
