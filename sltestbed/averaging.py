"""FedAvg's aggregation, and the weights it moves: what trains, never the frozen rest (every
party holds that already, from the same base).

    part = model_weights(model, ("connector", "quantizers", "lm"))   # the FedAvg baseline's weights
    load_trained(model, fedavg([part_a, part_b], [n_a, n_b]))         # the rest stays as it is
"""

from __future__ import annotations

import torch

from .model.groups import MODULE_GROUPS, trained_weights


def fedavg(states: list[dict[str, torch.Tensor]], weights: list[float]) -> dict[str, torch.Tensor]:
    """Weighted average of state dicts (weights: e.g. each client's number of samples)."""
    if not states or len(states) != len(weights) or sum(weights) <= 0:
        raise ValueError("fedavg needs states with positive total weight")
    total = float(sum(weights))
    return {k: sum(s[k].float() * (w / total) for s, w in zip(states, weights)).to(states[0][k].dtype)
            for k in states[0]}


def model_weights(model: torch.nn.Module, groups=MODULE_GROUPS) -> dict[str, torch.Tensor]:
    """The weights the FedAvg baseline moves: those that train when `groups` do (LoRA: the
    adapters), but the cut's quantizers, which a model without a cut does not use. With every
    group, the whole model but the quantizers."""
    return {k: v for k, v in trained_weights(model, groups).items() if not k.startswith("quant_")}


def load_trained(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load weights that may be a part of `module`'s (what trains): the others keep their
    values. A name the module lacks, or a shape that differs, is a ValueError naming it."""
    own = module.state_dict()
    stray = sorted(k for k in state if k not in own)
    if stray:
        raise ValueError(f"weights the model does not have: {stray[:3]}")
    wrong = sorted(k for k, v in state.items() if tuple(v.shape) != tuple(own[k].shape))
    if wrong:
        raise ValueError(f"weights of another shape: {wrong[:3]}")
    module.load_state_dict(state, strict=False)
