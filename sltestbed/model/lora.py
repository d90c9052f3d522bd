"""LoRA adapters on the language model (and optionally the vision tower), as TinyLLaVA
fine-tunes: `peft` injects them in place, so the module tree the split cuts through
(`lm.model.layers`, `vision.model`) stays as it is; a frozen weight moves to
`<name>.base_layer.weight` beside its `lora_A` / `lora_B`.

    add_lora(model, rank=8, alpha=16, targets=("q_proj", "v_proj"), parts=("lm",))
    is_adapter("lm.model.layers.0.self_attn.q_proj.lora_A.default.weight")   # True

The adapters' initial weights are seeded on their own (lora_B is zero, so the adapted model
starts equal to the base); every party that builds the model builds the same adapters, and
the global random state is left as it was.
"""

from __future__ import annotations

import torch
from torch import nn

LORA_PARTS = ("lm", "vision")
ADAPTER_MARK = ".lora_"  # in the name of every adapter tensor
BASE_LAYER = ".base_layer"  # where peft keeps the adapted layer's own weights
LORA_SEED = 0


def is_adapter(name: str) -> bool:
    return ADAPTER_MARK in name


def _linear_names(module: nn.Module) -> list[str]:
    return sorted({name.rsplit(".", 1)[-1] for name, m in module.named_modules() if isinstance(m, nn.Linear)})


def add_lora(model, rank: int, alpha: int, targets: tuple[str, ...], parts: tuple[str, ...]) -> None:
    """Adapters of rank `rank` (scale alpha / rank) on the layers named `targets` of the
    language model's decoder (not its head) and, with "vision" in `parts`, on every linear
    layer of the tower. ValueError naming what matched nothing."""
    from peft import LoraConfig, inject_adapter_in_model

    unknown = sorted(set(parts) - set(LORA_PARTS))
    if unknown:
        raise ValueError(f"lora parts {unknown}: choose from {', '.join(LORA_PARTS)}")
    modules = {"lm": (model.lm.model, list(targets)), "vision": (model.vision.model, None)}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(LORA_SEED)
        for part in parts:
            module, names = modules[part]
            names = names or _linear_names(module)
            missing = [t for t in names if t not in _linear_names(module)]
            if missing:
                raise ValueError(f"lora targets {missing} name no linear layer of the {part} part; its linear layers: "
                                 f"{', '.join(_linear_names(module))}")
            inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=alpha, target_modules=names, lora_dropout=0.0), module)


def base_key(name: str) -> str:
    """The name a frozen weight had before adapters were added (`q_proj.base_layer.weight` ->
    `q_proj.weight`): how a checkpoint without adapters names it."""
    return name.replace(BASE_LAYER, "")
