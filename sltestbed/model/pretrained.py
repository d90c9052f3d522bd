"""Hugging Face models as the parts of the TinyLLaVA-style model: a vision tower and a causal
language model, each a hub name or a local directory (`from_pretrained`).

    fields = pretrained_fields(vision="path/to/siglip", language="path/to/qwen2")
    TinyLlavaConfig(**{**PRESETS["tiny"], **fields})     # the sizes are the models' own
    tokenizer = load_tokenizer("path/to/qwen2")          # the language model's tokenizer
    RECIPES["tinyllava-qwen2-0.5b"]                       # hub names of a TinyLLaVA member
    mean, std = image_normalisation("path/to/siglip")    # the tower's image processor

`pretrained_fields` reads only the models' configs (no weights): the `TinyLlavaConfig` fields
they decide (the tower's kind, image and patch size, widths and depth; the language model's
kind, vocabulary, widths and depth) and the paths `TinyLlava` loads the weights from. The
connector is sized from the two hidden sizes. A path that looks like one (starting with "/",
"." or "~") must exist; anything else is a hub name, which `from_pretrained` resolves from the
local cache or the hub.
"""

from __future__ import annotations

import functools
import os

VISION_TYPES = {"siglip_vision_model": "siglip", "siglip": "siglip", "vit": "vit", "clip_vision_model": "clip",
                "clip": "clip"}  # a transformers model_type -> the tower kind TinyLlavaConfig names
LANGUAGE_TYPES = {"llama": "llama", "qwen2": "qwen2"}  # decoders with the Llama layout the split needs
DEFAULT_NORMALISATION = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # the in-house data's: pixels to [-1, 1]
SIGLIP_SO400M = "google/siglip-so400m-patch14-384"
# Named recipes (run-config `model`): the TinyLLaVA family members whose language model has
# the Llama layout, as `real_sizes.py` sizes them; keys given beside `model` win
RECIPES = {
    "tinyllava-qwen2-0.5b": {"vision-model": SIGLIP_SO400M, "language-model": "Qwen/Qwen2-0.5B",
                             "vision-feature-layer": -2},
    "tinyllava-tinyllama-1.1b": {"vision-model": SIGLIP_SO400M, "language-model": "TinyLlama/TinyLlama-1.1B-Chat-v1.0",
                                 "vision-feature-layer": -2},
}


def check_source(key: str, source: str) -> None:
    """A path-like `source` must be a directory; ValueError naming the run-config `key`."""
    if source.startswith(("/", ".", "~")) and not os.path.isdir(os.path.expanduser(source)):
        raise ValueError(f"run config '{key}' = {source!r}: no such model directory")


def _config(key: str, source: str):
    from transformers import AutoConfig

    check_source(key, source)
    try:
        return AutoConfig.from_pretrained(os.path.expanduser(source))
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"run config '{key}' = {source!r}: not a loadable Hugging Face model ({first})") from None


@functools.lru_cache(maxsize=16)
def vision_fields(source: str) -> dict:
    """The tower's `TinyLlavaConfig` fields, from its config (a full SigLIP or CLIP model's
    `vision_config` is used)."""
    config = _config("vision-model", source)
    kind = VISION_TYPES.get(config.model_type)
    if kind is None:
        raise ValueError(f"run config 'vision-model' = {source!r} is a {config.model_type!r} model; vision towers "
                         f"known: {', '.join(sorted(VISION_TYPES))}")
    vision = getattr(config, "vision_config", None) or config
    return {"vision_tower": kind, "vision_path": os.path.expanduser(source), "image_size": int(vision.image_size),
            "patch_size": int(vision.patch_size), "vision_hidden": int(vision.hidden_size),
            "vision_layers": int(vision.num_hidden_layers), "vision_heads": int(vision.num_attention_heads),
            "vision_intermediate": int(vision.intermediate_size)}


@functools.lru_cache(maxsize=16)
def language_fields(source: str) -> dict:
    """The language model's `TinyLlavaConfig` fields, from its config."""
    config = _config("language-model", source)
    kind = LANGUAGE_TYPES.get(config.model_type)
    if kind is None:
        raise ValueError(f"run config 'language-model' = {source!r} is a {config.model_type!r} model; language "
                         f"models known (the Llama layout): {', '.join(sorted(LANGUAGE_TYPES))}")
    return {"language_model": kind, "lm_path": os.path.expanduser(source), "vocab_size": int(config.vocab_size),
            "lm_hidden": int(config.hidden_size), "lm_layers": int(config.num_hidden_layers),
            "lm_heads": int(config.num_attention_heads), "lm_intermediate": int(config.intermediate_size),
            "max_positions": int(config.max_position_embeddings)}


def pretrained_fields(vision: str = "", language: str = "", feature_layer: int = 0) -> dict:
    """The `TinyLlavaConfig` fields the given models decide ("" leaves a part to the preset);
    `feature_layer` (0: the preset's) picks the tower's hidden state the connector reads."""
    fields = {}
    if vision:
        fields.update(vision_fields(vision))
    if language:
        fields.update(language_fields(language))
    if feature_layer:
        fields["vision_feature_layer"] = feature_layer
    return fields


def image_normalisation(source: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) of the tower's image processor; the in-house normalisation where the model
    has none ("" included)."""
    if not source:
        return DEFAULT_NORMALISATION
    from transformers import AutoImageProcessor

    try:
        processor = AutoImageProcessor.from_pretrained(os.path.expanduser(source))
    except (OSError, ValueError):
        return DEFAULT_NORMALISATION
    mean, std = getattr(processor, "image_mean", None), getattr(processor, "image_std", None)
    if mean is None or std is None:
        return DEFAULT_NORMALISATION
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def load_tokenizer(source: str):
    """The language model's (fast) tokenizer; its pad token, if it has none, is its end-of-text
    or unknown token (padding is on the right and never attended past a question's length)."""
    from transformers import AutoTokenizer

    check_source("language-model", source)
    try:
        tokenizer = AutoTokenizer.from_pretrained(os.path.expanduser(source))
    except (OSError, ValueError) as exc:
        raise ValueError(f"run config 'language-model' = {source!r}: no tokenizer loads from it ({exc})") from None
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"run config 'language-model' = {source!r}: its tokenizer is not a fast tokenizer")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    if tokenizer.pad_token_id is None:
        raise ValueError(f"run config 'language-model' = {source!r}: its tokenizer has no pad, end or unknown token")
    tokenizer.padding_side = "right"
    return tokenizer
