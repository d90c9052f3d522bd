"""Optimisation inversion: search for the input whose features match what was observed.

rMLE (He et al., white-box): with the client part's weights known (level "white-box"; at
level "public-base" the attacker assumes the base model's), optimise a guess x' of the batch
of images to minimise
    || Q(f(x')) - observed ||^2 / Var(observed) + tv * TV(x')
where f is the client part, Q the quantizer encoder at the observed width and the observed
values are the dequantized image tokens as they arrived. Q rounds, so its gradient is the
straight-through estimator's (the quantizer's own training path); the learned quantizer's
statistics are per batch, so a whole observed batch is optimised at once. TV is the mean
absolute difference of neighbouring pixels. x' = sigmoid(theta) stays in [0, 1]; it starts
at the auxiliary data's mean image, and when every auxiliary image is grey (equal channels)
one channel is optimised and copied to all (a prior the auxiliary data shows).

UnSplit (Erdogan et al.): the client's weights unknown, the attacker alternates steps on x'
and on a surrogate client part (here initialised from the public base model, quantizer
encoder included) under the same objective: as many steps on x' as rMLE, in rounds, each
round followed by steps on the surrogate's weights.

The budget (iterations, steps per phase, learning rates) is fixed and the same at every
width.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn

from .observation import Knowledge, Observation, Reconstruction, to_pixels


@dataclass(frozen=True)
class OptimisationBudget:
    iterations: int = 1000  # steps on x' (UnSplit: in rounds of x_steps, each followed by weight_steps on the surrogate)
    lr: float = 0.1  # Adam on x' (logits of the image)
    tv: float = 0.02  # weight of the total-variation prior
    x_steps: int = 5  # UnSplit: steps on x' per round
    weight_steps: int = 5  # UnSplit: steps on the surrogate per round
    weight_lr: float = 1e-4  # UnSplit: Adam on the surrogate's weights
    max_samples: int = 64  # whole observed batches until at least this many samples are attacked


def total_variation(x: torch.Tensor) -> torch.Tensor:
    return (x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (x[..., :, 1:] - x[..., :, :-1]).abs().mean()


def _image_values(part, images: torch.Tensor) -> torch.Tensor:
    """The dequantized image tokens (straight-through gradient) the client part sends for `images`."""
    text = torch.zeros(len(images), 1, dtype=torch.long)  # image tokens come before the text: it never reaches them
    return part.encoders["image"](part.features(to_pixels(images), text).image).values


class _Guess(nn.Module):
    """x' = sigmoid(theta), one channel copied to all when the prior is grey."""

    def __init__(self, prior: torch.Tensor, batch: int, grey: bool):
        super().__init__()
        self.channels = prior.shape[0]
        init = torch.logit(prior.clamp(0.02, 0.98))
        init = init[:1] if grey else init
        self.theta = nn.Parameter(init.unsqueeze(0).repeat(batch, 1, 1, 1).contiguous())

    def forward(self) -> torch.Tensor:
        x = torch.sigmoid(self.theta)
        return x.expand(-1, self.channels, -1, -1) if x.shape[1] != self.channels else x


def _invert_batch(part, observed: torch.Tensor, prior: torch.Tensor, grey: bool, budget: OptimisationBudget,
                  surrogate: bool) -> torch.Tensor:
    scale = observed.var().clamp_min(1e-12)
    guess = _Guess(prior, observed.shape[0], grey)
    x_opt = torch.optim.Adam(guess.parameters(), lr=budget.lr)
    weights = [p for p in part.parameters() if p.is_floating_point()]
    w_opt = torch.optim.Adam(weights, lr=budget.weight_lr) if surrogate else None

    def objective():
        x = guess()
        return (_image_values(part, x) - observed).pow(2).mean() / scale + budget.tv * total_variation(x)

    def steps(optimizer, params, count):
        for p in params:
            p.requires_grad_(True)
        for _ in range(count):
            loss = objective()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        for p in params:
            p.requires_grad_(False)

    for p in weights:
        p.requires_grad_(False)
    if surrogate:
        for _ in range(max(budget.iterations // budget.x_steps, 1)):
            steps(x_opt, [guess.theta], budget.x_steps)
            steps(w_opt, weights, budget.weight_steps)
    else:
        steps(x_opt, [guess.theta], budget.iterations)
    return guess().detach()


def _run(observation: Observation, knowledge: Knowledge, budget: OptimisationBudget, seed: int, surrogate: bool,
         name: str) -> Reconstruction:
    started = time.perf_counter()
    aux = knowledge.aux_images
    prior = aux.mean(0)
    grey = bool((aux == aux[:, :1]).all())
    attacked = observation.head(budget.max_samples)
    images = []
    for batch in attacked.batches:
        part = knowledge.client_part(observation.quantizer, observation.widths)  # a fresh copy per batch
        part.train(False)
        images.append(_invert_batch(part, batch.values("image"), prior, grey, budget, surrogate))
    return Reconstruction(name, torch.cat(images), attacked.indices, time.perf_counter() - started)


def rmle_inversion(observation: Observation, knowledge: Knowledge, budget: OptimisationBudget = OptimisationBudget(),
                   seed: int = 0) -> Reconstruction:
    """rMLE with the client part the attacker knows (white-box weights, else the base model's)."""
    return _run(observation, knowledge, budget, seed, surrogate=False, name="rmle")


def unsplit_inversion(observation: Observation, knowledge: Knowledge,
                      budget: OptimisationBudget = OptimisationBudget(), seed: int = 0) -> Reconstruction:
    """UnSplit: alternate steps on x' and on a surrogate client part initialised from the base
    model (the client's weights are not used, whatever the level)."""
    public = Knowledge(knowledge.aux, knowledge.base, knowledge.cut, knowledge.quantizer_options,
                       aux_classes=knowledge.aux_classes)
    return _run(observation, public, budget, seed, surrogate=True, name="unsplit")
