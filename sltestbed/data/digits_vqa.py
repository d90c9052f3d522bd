"""digits-VQA: templated questions about scikit-learn's 1,797 real 8 x 8 handwritten digits.

Question types (answers are single words):
    digit    "what digit is this ?"            -> "zero" .. "nine"
    parity   "is it even ?" / "is it odd ?"    -> "yes" / "no"
    greater  "is it greater than k ?", k 0..8  -> "yes" / "no"
    less     "is it less than k ?", k 1..9     -> "yes" / "no"

With k drawn uniformly, "yes" and "no" are equally likely over uniformly distributed digits.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from datasets import Dataset

from .records import check_image_size, check_question_types, make_vqa_dataset
from .text import NUMBER_WORDS

QUESTION_TYPES = ("digit", "parity", "greater", "less")
INTERPOLATIONS = ("nearest", "bilinear")
NUM_IMAGES = 1797


def make_digits_vqa(
    image_size: int = 16,
    question_types: Sequence[str] = QUESTION_TYPES,
    questions_per_image: int | None = None,
    interpolation: str = "nearest",
    seed: int = 0,
) -> Dataset:
    """digits-VQA in the common record format; `image_id` is the index into `load_digits()`.

    `questions_per_image=None` asks one question of every type in `question_types` per image;
    an integer n asks n distinct types per image, sampled with `seed`.
    Rows are ordered by image, then by the order of `question_types`.
    """
    question_types = check_question_types(question_types, QUESTION_TYPES)
    if questions_per_image is not None and not 1 <= questions_per_image <= len(question_types):
        raise ValueError(
            f"questions_per_image must be None or 1..{len(question_types)} "
            f"(the number of question types), got {questions_per_image}"
        )
    images, labels = load_digit_images(image_size, interpolation)
    rng = np.random.default_rng(seed)
    questions, answers, qtypes, image_ids = [], [], [], []
    for image_id, label in enumerate(labels):
        types = question_types
        if questions_per_image is not None:
            picked = rng.choice(len(question_types), size=questions_per_image, replace=False)
            types = [question_types[i] for i in sorted(picked)]
        for qtype in types:
            question, answer = ask(qtype, int(label), rng)
            questions.append(question)
            answers.append(answer)
            qtypes.append(qtype)
            image_ids.append(image_id)
    return make_vqa_dataset(images[image_ids], questions, answers, qtypes, image_ids)


def ask(qtype: str, digit: int, rng: np.random.Generator) -> tuple[str, str]:
    """One (question, answer) pair of type `qtype` about an image of `digit`."""
    if qtype == "digit":
        return "what digit is this ?", NUMBER_WORDS[digit]
    if qtype == "parity":
        asked = "even" if rng.random() < 0.5 else "odd"
        return f"is it {asked} ?", _yes_no((digit % 2 == 0) == (asked == "even"))
    if qtype == "greater":
        k = int(rng.integers(0, 9))
        return f"is it greater than {NUMBER_WORDS[k]} ?", _yes_no(digit > k)
    if qtype == "less":
        k = int(rng.integers(1, 10))
        return f"is it less than {NUMBER_WORDS[k]} ?", _yes_no(digit < k)
    raise ValueError(f"unknown digits-VQA question type {qtype!r}; known: {', '.join(QUESTION_TYPES)}")


def load_digit_images(image_size: int = 16, interpolation: str = "nearest") -> tuple[np.ndarray, np.ndarray]:
    """All 1,797 digits as uint8 N x S x S x 3 images (0..16 scaled to 0..255) and their labels."""
    from sklearn.datasets import load_digits

    image_size = check_image_size(image_size)
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"unknown interpolation {interpolation!r}; known: {', '.join(INTERPOLATIONS)}")
    digits = load_digits()
    images = digits.images.astype(np.float32) * (255.0 / 16.0)  # N x 8 x 8
    images = _resize(images, image_size, interpolation)
    images = np.clip(np.rint(images), 0, 255).astype(np.uint8)
    return np.repeat(images[..., None], 3, axis=-1), digits.target.astype(np.int64)


def _resize(images: np.ndarray, size: int, interpolation: str) -> np.ndarray:
    """Resize N x h x w float images to N x size x size (deterministic)."""
    if interpolation == "nearest":
        rows = np.arange(size) * images.shape[1] // size
        cols = np.arange(size) * images.shape[2] // size
        return images[:, rows][:, :, cols]
    tensor = torch.from_numpy(images)[:, None]
    resized = torch.nn.functional.interpolate(tensor, size=(size, size), mode="bilinear", align_corners=False)
    return resized[:, 0].numpy()


def _yes_no(flag: bool) -> str:
    return "yes" if flag else "no"
