"""The model's module groups (what `train-modules` names) and which parameters train when
some of them do: a group's own, or in a group with LoRA adapters only the adapters.

    trainable_parameters(model, ("connector", "lm"))   # the connector, and the LM's adapters if any
    trained_weights(model, ("connector", "lm"))        # the same by name: what averaging moves
"""

from __future__ import annotations

import torch
from torch import nn

from .lora import is_adapter

MODULE_GROUPS = ("vision", "connector", "quantizers", "lm")


def module_group(model, group: str) -> list[nn.Module]:
    return {
        "vision": [model.vision], "connector": [model.connector],
        "quantizers": [model.quant_encoders, model.quant_decoders], "lm": [model.lm],
    }[group]


def trainable_parameters(model, groups) -> list[nn.Parameter]:
    """The parameters that train when `groups` do: theirs, and in a group with LoRA adapters
    (model config `lora_parts`) only the adapters."""
    adapted = model.config.lora_part_names if model.config.lora_rank else ()
    params = []
    for group in groups:
        for module in module_group(model, group):
            params += [p for name, p in module.named_parameters() if group not in adapted or is_adapter(f".{name}")]
    return params


def trained_weights(model, groups) -> dict[str, torch.Tensor]:
    """The model's weights that train when `groups` do, by name (what averaging moves)."""
    trained = {id(p) for p in trainable_parameters(model, groups)}
    return {name: p.detach() for name, p in model.named_parameters() if id(p) in trained}
