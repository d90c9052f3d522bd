"""Learned inversion: a decoder from what the server receives back to the image, trained on
the attacker's public data (He et al.'s inverse network, and two plainer decoders beside it).

Each decoder is trained on the simulated public codes (`public.simulate_codes`: exactly what
the server would receive for the public images, at the observed quantizer, widths and batch
size) against the public images, then applied to the client's observed values. Three
architectures, one training routine and one budget, the same at every width:

    learned-inversion  a linear embedding of each token plus a learned position embedding, a
                       small pre-norm transformer encoder over the N tokens (the vision tower
                       mixes information across patches, so the inverse must too), a linear
                       map of each token to its patch of pixels, a convolutional refinement
    mlp-decoder        the N x d values flattened, two hidden layers, one output per pixel
    conv-decoder       the tokens as a grid of d-channel pixels, convolutions, nearest
                       upsampling to the image size, convolutions

Every decoder ends in a sigmoid to [0, 1]; when every public image is grey (equal channels)
the channels' mean is copied to all (a prior the public data shows). Loss: mean squared
error against the image in [0, 1]. Tuning on public data only: the decoder trains on the
public images' fitting part and the checkpoint with the lowest validation MSE (every
`eval_every` steps, on the held-out public images) is the one applied to the observation;
training stops early after `patience` checks without a better one (at most `steps`).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass

import torch
from torch import nn

from .observation import Knowledge, Observation, Reconstruction, seeded
from .public import PublicCodes, codes_for, simulate_codes


@dataclass(frozen=True)
class InversionBudget:
    """The decoder's size and training budget (the same for every quantizer and width)."""

    steps: int = 1500  # optimizer steps
    batch_size: int = 64  # decoder training batch
    lr: float = 2e-3
    passes: int = 4  # passes of the public data through the client part (each a fresh batch grouping)
    max_shift: int = 0  # random translations of the public images (pixels), 0: none
    hidden: int = 96  # learned-inversion: token width; mlp-decoder: 4x this per hidden layer
    layers: int = 1
    heads: int = 4
    refine: int = 16  # channels of the convolutional refinement (conv-decoder: twice this)
    eval_every: int = 100  # steps between validation checks (the best checkpoint is kept)
    patience: int = 5  # checks without a better validation MSE before training stops (0: never stops early)


def _grid(num_tokens: int, image_size: int) -> tuple[int, int]:
    """(tokens per side, pixels per token side) of the image tokens' square grid."""
    grid = math.isqrt(num_tokens)
    if grid * grid != num_tokens or image_size % grid:
        raise ValueError(f"{num_tokens} image tokens do not tile a {image_size} x {image_size} image")
    return grid, image_size // grid


def _finish(images: torch.Tensor, grey: bool) -> torch.Tensor:
    return images.mean(1, keepdim=True).expand_as(images) if grey else images


class InverseNetwork(nn.Module):
    """The learned inversion's decoder (module doc)."""

    def __init__(self, num_tokens: int, dim: int, image_size: int, channels: int = 3, hidden: int = 96,
                 layers: int = 1, heads: int = 4, refine: int = 16, grey: bool = False):
        super().__init__()
        self.grey = grey
        self.grid, self.patch = _grid(num_tokens, image_size)
        self.channels = channels
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
        return _finish(torch.sigmoid(coarse + self.refine(coarse)), self.grey)


class MLPDecoder(nn.Module):
    """The N x d values flattened, two hidden layers of 4 x `hidden` units, a pixel each out."""

    def __init__(self, num_tokens: int, dim: int, image_size: int, channels: int = 3, hidden: int = 96,
                 grey: bool = False, **_):
        super().__init__()
        self.grey, self.shape = grey, (channels, image_size, image_size)
        width = 4 * hidden
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(num_tokens * dim, width), nn.GELU(), nn.Linear(width, width),
                                 nn.GELU(), nn.Linear(width, channels * image_size * image_size))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return _finish(torch.sigmoid(self.net(tokens.float())).view(-1, *self.shape), self.grey)


class ConvDecoder(nn.Module):
    """The tokens as a grid of d-channel pixels: convolutions, nearest upsampling by the
    patch size, convolutions, 2 x `refine` channels."""

    def __init__(self, num_tokens: int, dim: int, image_size: int, channels: int = 3, refine: int = 16,
                 grey: bool = False, **_):
        super().__init__()
        hidden = 2 * refine
        self.grey = grey
        self.grid, patch = _grid(num_tokens, image_size)
        self.net = nn.Sequential(
            nn.Conv2d(dim, hidden, 3, padding=1), nn.GELU(), nn.Conv2d(hidden, hidden, 3, padding=1), nn.GELU(),
            nn.Upsample(scale_factor=patch, mode="nearest"), nn.Conv2d(hidden, hidden, 3, padding=1), nn.GELU(),
            nn.Conv2d(hidden, channels, 3, padding=1))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        b, n, d = tokens.shape
        grid = tokens.float().transpose(1, 2).reshape(b, d, self.grid, self.grid)
        return _finish(torch.sigmoid(self.net(grid)), self.grey)


DECODERS = {"learned-inversion": InverseNetwork, "mlp-decoder": MLPDecoder, "conv-decoder": ConvDecoder}


def build_decoder(attack: str, codes: PublicCodes, budget: InversionBudget) -> nn.Module:
    if attack not in DECODERS:
        raise ValueError(f"unknown decoder attack {attack!r}: choose one of {', '.join(DECODERS)}")
    _, n, d = codes.values.shape
    return DECODERS[attack](n, d, codes.images.shape[-1], codes.images.shape[1], hidden=budget.hidden,
                            layers=budget.layers, heads=budget.heads, refine=budget.refine, grey=codes.grey)


@torch.no_grad()
def _validation_mse(net: nn.Module, values: torch.Tensor, images: torch.Tensor, batch: int = 512) -> float:
    net.eval()
    total = sum(float(nn.functional.mse_loss(net(values[i:i + batch]), images[i:i + batch], reduction="sum"))
                for i in range(0, len(values), batch))
    net.train()
    return total / images.numel()


def train_decoder(attack: str, codes: PublicCodes, budget: InversionBudget = InversionBudget(),
                  seed: int = 0) -> tuple[nn.Module, dict]:
    """One decoder trained on the fitting part of `codes`, its checkpoint chosen on the
    validation part; (decoder, {"validation_mse", "best_step", "steps"})."""
    generator = torch.Generator().manual_seed(seed + 1)
    values, images = codes.part(validation=False)
    val_values, val_images = codes.part(validation=True)
    with seeded(seed):
        net = build_decoder(attack, codes, budget)
        optimizer = torch.optim.AdamW(net.parameters(), lr=budget.lr, weight_decay=1e-4)
        total = max(budget.steps, 4)  # the warm-up takes at least 2 steps: OneCycleLR divides by its length - 1
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=budget.lr, total_steps=total,
                                                       pct_start=max(0.05, 2 / total))
        net.train()
        best = (_validation_mse(net, val_values, val_images), 0, copy.deepcopy(net.state_dict()))
        order, position = torch.randperm(len(values), generator=generator), 0
        step = 0
        for step in range(1, budget.steps + 1):
            if position + budget.batch_size > len(values):
                order, position = torch.randperm(len(values), generator=generator), 0
            idx = order[position:position + budget.batch_size]
            position += budget.batch_size
            loss = nn.functional.mse_loss(net(values[idx]), images[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            if step % budget.eval_every == 0 or step == budget.steps:
                score = _validation_mse(net, val_values, val_images)
                if score < best[0]:
                    best = (score, step, copy.deepcopy(net.state_dict()))
                elif budget.patience and step - best[1] >= budget.patience * budget.eval_every:
                    break
        net.load_state_dict(best[2])
    return net.eval(), {"validation_mse": best[0], "best_step": best[1], "steps": step}


def train_inverse_network(knowledge: Knowledge, quantizer: str, widths: dict[str, int], batch_size: int,
                          budget: InversionBudget = InversionBudget(), seed: int = 0,
                          attack: str = "learned-inversion") -> nn.Module:
    """A decoder trained on the public data's image tokens as the server would receive them
    with this quantizer, these widths and this client batch size."""
    codes = simulate_codes(knowledge, quantizer, widths, batch_size, budget.passes, seed, budget.max_shift)
    return train_decoder(attack, codes, budget, seed)[0]


@torch.no_grad()
def invert(net: nn.Module, observation: Observation) -> torch.Tensor:
    """The decoder applied to every observed batch's image tokens."""
    return torch.cat([net(b.values("image")) for b in observation.batches])


def learned_inversion(observation: Observation, knowledge: Knowledge, budget: InversionBudget = InversionBudget(),
                      seed: int = 0, net: nn.Module | None = None, attack: str = "learned-inversion",
                      codes: PublicCodes | None = None) -> Reconstruction:
    """Train the decoder `attack` on the public data (unless given; `codes`: the simulated
    public codes, made here when not given) and reconstruct every observed image."""
    started = time.perf_counter()
    tuning = {}
    if net is None:
        if codes is None:
            codes = codes_for(observation, knowledge, budget.passes, seed, budget.max_shift)
        net, tuning = train_decoder(attack, codes, budget, seed)
    images = invert(net, observation)
    return Reconstruction(attack, images, observation.indices, time.perf_counter() - started, tuning)
