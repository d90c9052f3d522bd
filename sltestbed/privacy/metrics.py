"""How much an attack recovered, against the client's true samples.

Images are compared in [0, 1], per image, then averaged over images:
    MSE   mean over pixels and channels of (x_hat - x)^2
    PSNR  10 log10(1 / MSE) (data range 1; an MSE below 1e-10 counts as 1e-10: 100 dB)
    SSIM  torchmetrics' structural similarity: Gaussian window sigma 1.5 (11 x 11), data range
          1, K1 = 0.01, K2 = 0.03, reflection padding at the borders, mean over every pixel
          and channel. (Images smaller than 6 pixels a side use a narrower window.)
Each is reported next to the baseline of guessing the auxiliary data's mean image for every
sample: an attack that does not beat it has learnt nothing about the individual sample.

Attack accuracy: an `AttackClassifier` (a small CNN) trained on clean auxiliary images and
their classes (digits-VQA: the digit), frozen, applied to the reconstructions; its accuracy
on the clients' clean images is reported beside it (the ceiling), and chance (1 / classes).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torchmetrics.functional.image import structural_similarity_index_measure

from .observation import seeded

MIN_MSE = 1e-10
SSIM_SIGMA = 1.5


def _check(recon: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if recon.shape != target.shape or recon.dim() != 4:
        raise ValueError(f"images must be N x C x H x W of one shape, got {tuple(recon.shape)} and {tuple(target.shape)}")
    return recon.detach().float(), target.detach().float()


def mse(recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image mean squared error (N)."""
    recon, target = _check(recon, target)
    return (recon - target).pow(2).flatten(1).mean(1)


def psnr(recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image peak signal-to-noise ratio in dB for a data range of 1 (N)."""
    return -10.0 * torch.log10(mse(recon, target).clamp_min(MIN_MSE))


def ssim_sigma(side: int) -> float:
    """The Gaussian window's sigma: 1.5 (an 11 x 11 window), narrower where the image is too
    small to reflect-pad by the window's half-width (5 pixels)."""
    if side > 5:
        return SSIM_SIGMA
    radius = max(side - 1, 1)  # the window's half-width, int(3.5 sigma + 0.5), must stay below the side
    return max((radius - 0.5) / 3.5, 0.1)


def ssim(recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM (N), see the module doc."""
    recon, target = _check(recon, target)
    sigma = ssim_sigma(min(recon.shape[-2:]))
    return structural_similarity_index_measure(recon, target, gaussian_kernel=True, sigma=sigma, data_range=1.0,
                                               reduction="none")


def image_scores(recon: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """Mean MSE, PSNR and SSIM over the images."""
    return {"mse": float(mse(recon, target).mean()), "psnr": float(psnr(recon, target).mean()),
            "ssim": float(ssim(recon, target).mean())}


def mean_image_baseline(aux_images: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """The scores of guessing the auxiliary images' mean image for every target."""
    guess = aux_images.float().mean(0, keepdim=True).expand_as(target)
    return image_scores(guess, target)


def token_accuracy(predicted: torch.Tensor, true: torch.Tensor, lengths: torch.Tensor) -> float:
    """Fraction of real question tokens (positions < length) recovered exactly."""
    width = int(lengths.max())
    predicted, true = predicted[:, :width], true[:, :width]
    if predicted.shape != true.shape:
        raise ValueError(f"token arrays differ in shape: {tuple(predicted.shape)} and {tuple(true.shape)}")
    real = torch.arange(width).unsqueeze(0) < lengths.unsqueeze(1)
    return float((predicted == true)[real].float().mean())


def label_accuracy(predicted: torch.Tensor, true: torch.Tensor) -> float:
    if predicted.shape != true.shape:
        raise ValueError(f"label arrays differ in shape: {tuple(predicted.shape)} and {tuple(true.shape)}")
    return float((predicted == true).float().mean())


# --- attack accuracy ---------------------------------------------------------------------

class _SmallCNN(nn.Module):
    def __init__(self, channels: int, classes: int, width: int = 32):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2), nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2))
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.2), nn.Linear(8 * width, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x * 2 - 1))


def shift_images(images: torch.Tensor, max_shift: int, generator: torch.Generator, fill: float = 0.0) -> torch.Tensor:
    """Each image translated by a random whole number of pixels in -max_shift..max_shift
    along each axis, the uncovered border filled with `fill`."""
    if max_shift <= 0:
        return images
    n, _, h, w = images.shape
    pad = nn.functional.pad(images, (max_shift,) * 4, value=fill)
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator)
    rows = (dy.view(n, 1) + torch.arange(h).view(1, h)).view(n, 1, h, 1).expand(n, images.shape[1], h, w + 2 * max_shift)
    out = pad.gather(2, rows)
    cols = (dx.view(n, 1) + torch.arange(w).view(1, w)).view(n, 1, 1, w).expand(n, images.shape[1], h, w)
    return out.gather(3, cols)


class AttackClassifier:
    """A small CNN trained on clean auxiliary images to name what a reconstruction shows."""

    def __init__(self, model: nn.Module, classes: int):
        self.model, self.classes = model, classes

    @classmethod
    def fit(cls, images: torch.Tensor, classes: torch.Tensor, *, epochs: int = 30, batch_size: int = 64,
            lr: float = 3e-3, max_shift: int = 1, seed: int = 0) -> AttackClassifier:
        """Train on `images` (N x C x H x W in [0, 1]) and their integer classes, with random
        translations of up to `max_shift` pixels."""
        with seeded(seed):
            generator = torch.Generator().manual_seed(seed)
            num_classes = int(classes.max()) + 1
            model = _SmallCNN(images.shape[1], num_classes)
            steps = epochs * math.ceil(len(images) / batch_size)
            optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
            schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=max(steps, 1))
            background = float(images[..., 0, 0].mean())
            model.train()
            for _ in range(epochs):
                order = torch.randperm(len(images), generator=generator)
                for start in range(0, len(images), batch_size):
                    idx = order[start:start + batch_size]
                    x = shift_images(images[idx], max_shift, generator, background)
                    loss = nn.functional.cross_entropy(model(x), classes[idx])
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    schedule.step()
        model.eval()
        return cls(model, num_classes)

    def save(self, path: str) -> None:
        torch.save({"state": self.model.state_dict(), "classes": self.classes,
                    "channels": self.model.features[0].in_channels}, path)

    @classmethod
    def load(cls, path: str) -> AttackClassifier:
        saved = torch.load(path, weights_only=True)
        model = _SmallCNN(saved["channels"], saved["classes"])
        model.load_state_dict(saved["state"])
        return cls(model.eval(), saved["classes"])

    @torch.no_grad()
    def predict(self, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        return torch.cat([self.model(images[i:i + batch_size].float()).argmax(-1)
                          for i in range(0, len(images), batch_size)])

    def accuracy(self, images: torch.Tensor, classes: torch.Tensor) -> float:
        return label_accuracy(self.predict(images), classes)
