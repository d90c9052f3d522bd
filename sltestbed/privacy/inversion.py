"""Learned inversion (He et al.'s inverse network): a decoder from what the server receives
back to the image, trained on auxiliary data.

The attacker pushes its auxiliary images through its copy of the client part and the same
quantizer at the same widths, in batches of the clients' batch size (the learned quantizer's
statistics are per batch), each pass over the data in a fresh random grouping, and trains
the decoder on exactly what the server receives: the dequantized values of the image tokens
(B x N x d). The decoder is then applied to the client's observed values. The architecture
and the training budget are the same at every width.

Decoder: a linear embedding of each token plus a learned position embedding, a small
pre-norm transformer encoder over the N tokens (the vision tower mixes information across
patches, so the inverse must too), a linear map of each token to its patch of pixels, and a
convolutional refinement of the assembled image; sigmoid to [0, 1]. When every auxiliary
image is grey (equal channels), the channels' mean is copied to all (a prior the auxiliary
data shows). Loss: mean squared error against the image in [0, 1].
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from torch import nn

from .metrics import shift_images
from .observation import Knowledge, Observation, Reconstruction, seeded, to_pixels


@dataclass(frozen=True)
class InversionBudget:
    """The decoder's size and training budget (the same for every quantizer and width)."""

    steps: int = 1500  # optimizer steps
    batch_size: int = 64  # decoder training batch
    lr: float = 2e-3
    passes: int = 4  # passes of the auxiliary data through the client part (each a fresh batch grouping)
    max_shift: int = 0  # random translations of the auxiliary images (pixels), 0: none
    hidden: int = 96
    layers: int = 1
    heads: int = 4
    refine: int = 16  # channels of the convolutional refinement


class InverseNetwork(nn.Module):
    def __init__(self, num_tokens: int, dim: int, image_size: int, channels: int = 3, hidden: int = 96,
                 layers: int = 1, heads: int = 4, refine: int = 16, grey: bool = False):
        super().__init__()
        self.grey = grey
        grid = math.isqrt(num_tokens)
        if grid * grid != num_tokens or image_size % grid:
            raise ValueError(f"{num_tokens} image tokens do not tile a {image_size} x {image_size} image")
        self.grid, self.patch, self.channels = grid, image_size // grid, channels
        self.embed = nn.Linear(dim, hidden)
        self.position = nn.Parameter(torch.zeros(1, num_tokens, hidden))
        layer = nn.TransformerEncoderLayer(hidden, heads, 2 * hidden, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.mixer = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(hidden)
        self.to_patch = nn.Linear(hidden, channels * self.patch * self.patch)
        self.refine = nn.Sequential(nn.Conv2d(channels, refine, 3, padding=1), nn.GELU(),
                                    nn.Conv2d(refine, channels, 3, padding=1))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """B x N x d dequantized image tokens -> B x C x H x W images in [0, 1]."""
        h = self.norm(self.mixer(self.embed(tokens.float()) + self.position))
        b, g, p, c = h.shape[0], self.grid, self.patch, self.channels
        patches = self.to_patch(h).view(b, g, g, c, p, p)
        coarse = patches.permute(0, 3, 1, 4, 2, 5).reshape(b, c, g * p, g * p)
        images = torch.sigmoid(coarse + self.refine(coarse))
        return images.mean(1, keepdim=True).expand_as(images) if self.grey else images


@torch.no_grad()
def aux_features(knowledge: Knowledge, quantizer: str, widths: dict[str, int], batch_size: int, passes: int,
                 max_shift: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(values, images): the dequantized image tokens the server would receive for the
    auxiliary images, pass after pass, each pass in a fresh random grouping into batches of
    `batch_size`; images in [0, 1] (randomly translated when `max_shift` > 0)."""
    part = knowledge.client_part(quantizer, widths)
    images = knowledge.aux_images
    background = float(images[..., 0, 0].mean())
    text = torch.zeros(1, 1, dtype=torch.long)  # the image tokens never see the text (it comes after them)
    values, targets = [], []
    for _ in range(passes):
        order = torch.randperm(len(images), generator=generator)
        for start in range(0, len(images), batch_size):
            x = shift_images(images[order[start:start + batch_size]], max_shift, generator, background)
            feats = part.features(to_pixels(x), text.expand(len(x), 1))
            values.append(part.encoders["image"](feats.image).values)
            targets.append(x)
    return torch.cat(values), torch.cat(targets)


def train_inverse_network(knowledge: Knowledge, quantizer: str, widths: dict[str, int], batch_size: int,
                          budget: InversionBudget = InversionBudget(), seed: int = 0) -> InverseNetwork:
    """The decoder, trained on the auxiliary data's image tokens as the server would receive
    them with this quantizer, these widths and this client batch size."""
    generator = torch.Generator().manual_seed(seed)
    values, images = aux_features(knowledge, quantizer, widths, batch_size, budget.passes, budget.max_shift, generator)
    with seeded(seed):
        net = InverseNetwork(values.shape[1], values.shape[2], images.shape[-1], images.shape[1], budget.hidden,
                             budget.layers, budget.heads, budget.refine, grey=bool((images == images[:, :1]).all()))
        optimizer = torch.optim.AdamW(net.parameters(), lr=budget.lr, weight_decay=1e-4)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=budget.lr, total_steps=max(budget.steps, 1),
                                                       pct_start=0.05)
        net.train()
        order, position = torch.randperm(len(values), generator=generator), 0
        for _ in range(budget.steps):
            if position + budget.batch_size > len(values):
                order, position = torch.randperm(len(values), generator=generator), 0
            idx = order[position:position + budget.batch_size]
            position += budget.batch_size
            loss = nn.functional.mse_loss(net(values[idx]), images[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    return net.eval()


@torch.no_grad()
def invert(net: InverseNetwork, observation: Observation) -> torch.Tensor:
    """The decoder applied to every observed batch's image tokens."""
    return torch.cat([net(b.values("image")) for b in observation.batches])


def learned_inversion(observation: Observation, knowledge: Knowledge, budget: InversionBudget = InversionBudget(),
                      seed: int = 0, net: InverseNetwork | None = None) -> Reconstruction:
    """Train the inverse network on the auxiliary data (unless given) and reconstruct every
    observed image."""
    started = time.perf_counter()
    if net is None:
        net = train_inverse_network(knowledge, observation.quantizer, observation.widths, observation.batch_size,
                                    budget, seed)
    images = invert(net, observation)
    return Reconstruction("learned-inversion", images, observation.indices, time.perf_counter() - started)
