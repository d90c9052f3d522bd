"""The attacker's public data as the server would receive it: simulated public codes, and the
split of the public images that every attack tunes on.

Every attack that learns (the decoders) or looks up (the nearest-code attacks) starts from
the same `PublicCodes`: the attacker pushes its public images through its copy of the client
part and the same quantizer at the same widths, in batches of the clients' batch size (the
learned quantizer's statistics are per batch), each pass over the data in a fresh random
grouping, and keeps exactly what the server would receive: the dequantized values of the
image tokens (B x N x d).

Tuning: the public images (distinct images, not rows: a public image has several questions)
are split once, with the seed, into a fitting part and a validation part (`VALIDATION`, a
fifth). An attack fits on the first and chooses its hyperparameters (a decoder's checkpoint,
the number of neighbours) on the second; the client's observed samples are never read for
it. The split and the codes depend on the public data, the attacker's model, the widths, the
batch size and the seed only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .metrics import shift_images
from .observation import Knowledge, Observation, to_pixels

VALIDATION = 0.2  # fraction of the distinct public images held out for tuning


@dataclass
class PublicCodes:
    """Simulated public codes, row by row: `values` (M x N x d, what the server would get),
    `images` (M x C x H x W in [0, 1]), `rows` (the public row each came from),
    `image_ids` (its distinct public image) and `validation` (True for rows of the held-out
    images)."""

    values: torch.Tensor
    images: torch.Tensor
    rows: torch.Tensor
    image_ids: torch.Tensor
    validation: torch.Tensor

    def part(self, validation: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(values, images) of the fitting part (False) or the validation part (True)."""
        rows = self.validation == validation
        return self.values[rows], self.images[rows]

    @property
    def grey(self) -> bool:
        """Every public image has equal channels: a prior the public data shows."""
        return bool((self.images == self.images[:, :1]).all())


def distinct_images(images: torch.Tensor) -> torch.Tensor:
    """For each row, the index of its image among the distinct images (rows of one image share it)."""
    _, inverse = torch.unique(images.flatten(1), dim=0, return_inverse=True)
    return inverse


def validation_images(count: int, seed: int, fraction: float = VALIDATION) -> torch.Tensor:
    """A boolean mask over `count` distinct images: the held-out ones (at least one, and at
    least one left to fit on when there are two or more)."""
    held = min(max(1, round(fraction * count)), max(count - 1, 1))
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed + 101))
    mask = torch.zeros(count, dtype=torch.bool)
    mask[order[:held]] = True
    return mask


@torch.no_grad()
def simulate_codes(knowledge: Knowledge, quantizer: str, widths: dict[str, int], batch_size: int, passes: int,
                   seed: int, max_shift: int = 0) -> PublicCodes:
    """The public codes of `passes` passes over the public rows (module doc); `max_shift`:
    random translations of the public images (pixels), 0 for none."""
    generator = torch.Generator().manual_seed(seed)
    part = knowledge.client_part(quantizer, widths)
    images = knowledge.aux_images
    ids = distinct_images(images)
    held = validation_images(int(ids.max()) + 1, seed)[ids]
    background = float(images[..., 0, 0].mean())
    text = torch.zeros(1, 1, dtype=torch.long)  # the image tokens never see the text (it comes after them)
    values, targets, rows = [], [], []
    for _ in range(passes):
        order = torch.randperm(len(images), generator=generator)
        for start in range(0, len(images), batch_size):
            idx = order[start:start + batch_size]
            x = shift_images(images[idx], max_shift, generator, background)
            feats = part.features(to_pixels(x), text.expand(len(x), 1))
            values.append(part.encoders["image"](feats.image).values)
            targets.append(x)
            rows.append(idx)
    rows = torch.cat(rows)
    return PublicCodes(torch.cat(values), torch.cat(targets), rows, ids[rows], held[rows])


def codes_for(observation: Observation, knowledge: Knowledge, passes: int, seed: int,
              max_shift: int = 0) -> PublicCodes:
    """The public codes at the observation's quantizer, widths and client batch size."""
    return simulate_codes(knowledge, observation.quantizer, observation.widths, observation.batch_size, passes, seed,
                          max_shift)


def code_classes(knowledge: Knowledge, codes: PublicCodes) -> torch.Tensor | None:
    """The class of each public code's image (None where the public images have none)."""
    return None if knowledge.aux_classes is None else knowledge.aux_classes[codes.rows]


def observed_values(observation: Observation) -> torch.Tensor:
    """Every observed batch's dequantized image tokens, in observation order (n x N x d)."""
    return torch.cat([b.values("image") for b in observation.batches])
