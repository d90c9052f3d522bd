"""The information ceiling: how many bits per sample crossed the cut, which bounds what any
attack can learn, beside how many bits the sample itself holds.

For a sample X and what the server received of its batch, Z (every code of the batch: the
learned quantizer's statistics are per batch),
    I(X; Z) <= H(Z) <= E[length of any prefix-free code of Z],
so the batch's wire message entropy coded (`codec.encode(..., entropy=True)`: a code table
fitted to the message and sent with it, ANS words; fixed-width packing where that is smaller;
header and checksum counted), divided by the batch's samples, is a ceiling on the bits per
sample any attack can extract: `coded_bits_per_sample`, per modality. `raw_bits_per_sample`
is the same message packed at fixed width. Float payloads (fp32, fp16) count their raw bits.

Beside it, from the public data, what there is to learn:
    image_bits  sum over pixels (and channels, one where the images are grey) of the
                empirical entropy of the pixel's value across the distinct public images: the
                entropy of the images were their pixels independent, an upper estimate of
                H(image)
    class_bits  the entropy of the public images' classes (digits-VQA: the digit, about
                log2 10 = 3.32 bits): the least the channel must carry to tell the class
    text_bits   the same sum over question positions of the empirical token entropy
Where the coded bits per sample exceed class_bits, the channel is wide enough to tell the
class of every image; no width below that is shown here for the tasks of this testbed.
"""

from __future__ import annotations

import math

import torch

from .. import codec
from ..quantizers import Payload
from .observation import Knowledge, Observation


def _entropy(counts: torch.Tensor) -> float:
    p = counts[counts > 0].double() / counts.sum()
    return float(-(p * p.log2()).sum())


def column_entropy_bits(values: torch.Tensor) -> float:
    """Sum over columns of an n x m integer array of each column's empirical entropy (bits)."""
    total = 0.0
    for column in values.T:
        _, counts = torch.unique(column, return_counts=True)
        total += _entropy(counts)
    return total


def image_entropy_bits(images: torch.Tensor) -> float:
    """The sum of per-pixel entropies of N x C x H x W images in [0, 1] (as 8-bit levels),
    over the distinct images; grey images (equal channels) count one channel."""
    if bool((images == images[:, :1]).all()):
        images = images[:, :1]
    levels = (images.clamp(0, 1) * 255).round().to(torch.int64).flatten(1)
    return column_entropy_bits(torch.unique(levels, dim=0))


def text_entropy_bits(input_ids: torch.Tensor, lengths: torch.Tensor) -> float:
    """The sum over question positions of the empirical token entropy (padding is a token)."""
    width = int(lengths.max())
    ids = input_ids[:, :width].clone()
    ids[torch.arange(width).unsqueeze(0) >= lengths.unsqueeze(1)] = -1
    return column_entropy_bits(ids)


def class_entropy_bits(classes: torch.Tensor | None) -> float:
    if classes is None:
        return math.nan
    return _entropy(torch.unique(classes, return_counts=True)[1])


def message_bits(received, entropy: bool) -> int:
    """Bits of one modality's message of one batch: the encoded payload (header included), or
    32 bits per value where a raw tensor was kept."""
    if isinstance(received, Payload):
        return 8 * len(codec.encode(received, entropy=entropy).data)
    return 32 * received.numel()


def information_ceiling(observation: Observation, knowledge: Knowledge) -> dict:
    """Per modality the coded and raw bits per sample that crossed (module doc), and the
    public data's image, class and text entropy estimates."""
    samples = len(observation)
    out = {}
    for modality in ("image", "text"):
        if not all(modality in b.payloads for b in observation.batches):
            continue
        coded = sum(message_bits(b.payloads[modality], True) for b in observation.batches)
        raw = sum(message_bits(b.payloads[modality], False) for b in observation.batches)
        out[modality] = {"coded_bits_per_sample": coded / samples, "raw_bits_per_sample": raw / samples}
    aux = knowledge.aux
    out["image_bits"] = image_entropy_bits(knowledge.aux_images)
    out["class_bits"] = class_entropy_bits(knowledge.aux_classes)
    out["text_bits"] = text_entropy_bits(aux.input_ids, aux.lengths)
    return out
