"""The auxiliary head of local-loss split learning (Han et al. 2021; CSE-FSL, Mu and Shen 2023).

The client trains its part against a loss of its own: this small head turns the values the
server will receive (the cut's dequantized activations, straight-through to the encoders)
into answer logits, so no gradient has to come down from the server. It lives on the client
only; the server never sees it and the trained model does not contain it.

    pooled = [mean of the image tokens, mean of the question tokens]     (2 x width)
    logits = Linear(GELU(Linear(LayerNorm(pooled))))                     (width hidden units)

Its initial weights come from `seed` alone (the same head on every client), and building it
leaves torch's global random stream where it was.
"""

from __future__ import annotations

import torch
from torch import nn


class LocalHead(nn.Module):
    def __init__(self, width: int, vocab: int, seed: int):
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.norm = nn.LayerNorm(2 * width)
            self.hidden = nn.Linear(2 * width, width)
            self.out = nn.Linear(width, vocab)

    def forward(self, image: torch.Tensor, text: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Answer logits (batch x vocab) from the cut's image (B x N x d) and question tokens
        (B x T x d, padded beyond each sample's length, which is left out of the mean)."""
        positions = torch.arange(text.shape[1], device=text.device)
        mask = (positions[None, :] < lengths.to(text.device)[:, None]).to(text.dtype)
        question = (text * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
        pooled = torch.cat([image.mean(1), question], -1)
        return self.out(nn.functional.gelu(self.hidden(self.norm(pooled))))
