"""FedAvg's aggregation, and the weights it moves for the federated-learning baseline."""

from __future__ import annotations

import torch


def fedavg(states: list[dict[str, torch.Tensor]], weights: list[float]) -> dict[str, torch.Tensor]:
    """Weighted average of state dicts (weights: e.g. each client's number of samples)."""
    if not states or len(states) != len(weights) or sum(weights) <= 0:
        raise ValueError("fedavg needs states with positive total weight")
    total = float(sum(weights))
    return {k: sum(s[k].float() * (w / total) for s, w in zip(states, weights)).to(states[0][k].dtype)
            for k in states[0]}


def model_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The weights FedAvg moves: the whole model but the (unused) cut quantizers."""
    return {k: v for k, v in model.state_dict().items() if not k.startswith("quant_")}
