"""The common VQA record format: one row per question, as a Hugging Face `datasets.Dataset`.

Columns:
    image     uint8 H x W x 3 (`datasets.Array3D`, so `with_format("numpy"/"torch")` stacks fast;
              note that those formats upcast integers to int64)
    question  str, lower-case words and " ?" as separate tokens
    answer    str, one lower-case word
    qtype     str, the question type's name
    image_id  int, which source image the row asks about (several rows can share one image)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from datasets import Array3D, Dataset, Features, Value

COLUMNS = ("image", "question", "answer", "qtype", "image_id")
MIN_IMAGE_SIZE = 4


def check_image_size(image_size: int, minimum: int = MIN_IMAGE_SIZE) -> int:
    """Return `image_size` as an int, or raise `ValueError` if it is not an integer >= `minimum`."""
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)):
        raise ValueError(f"image_size must be an integer, got {image_size!r}")
    if image_size < minimum:
        raise ValueError(f"image_size must be at least {minimum}, got {image_size}")
    return int(image_size)


def check_question_types(question_types: Sequence[str], known: Sequence[str]) -> list[str]:
    """The requested question types as a list, or `ValueError` naming an unknown or missing one."""
    if isinstance(question_types, str):
        question_types = [question_types]
    question_types = list(question_types)
    if not question_types:
        raise ValueError(f"no question types given; known: {', '.join(known)}")
    for qtype in question_types:
        if qtype not in known:
            raise ValueError(f"unknown question type {qtype!r}; known: {', '.join(known)}")
    if len(set(question_types)) != len(question_types):
        raise ValueError(f"question types repeated: {question_types}")
    return question_types


def vqa_features(image_size: int) -> Features:
    """The `datasets.Features` of a VQA data set with square RGB images of side `image_size`."""
    return Features(
        {
            "image": Array3D(shape=(image_size, image_size, 3), dtype="uint8"),
            "question": Value("string"),
            "answer": Value("string"),
            "qtype": Value("string"),
            "image_id": Value("int64"),
        }
    )


def make_vqa_dataset(
    images: np.ndarray,
    questions: Sequence[str],
    answers: Sequence[str],
    qtypes: Sequence[str],
    image_ids: Sequence[int],
) -> Dataset:
    """Build the record-format `Dataset` from an N x S x S x 3 uint8 array and N-long columns."""
    images = np.ascontiguousarray(images, dtype=np.uint8)
    if images.ndim != 4 or images.shape[1] != images.shape[2] or images.shape[3] != 3:
        raise ValueError(f"images must be N x S x S x 3, got shape {images.shape}")
    n = len(images)
    for name, column in (("questions", questions), ("answers", answers), ("qtypes", qtypes), ("image_ids", image_ids)):
        if len(column) != n:
            raise ValueError(f"{name} has {len(column)} entries but there are {n} images")
    columns = {
        "image": _image_storage(images),
        "question": list(questions),
        "answer": list(answers),
        "qtype": list(qtypes),
        "image_id": [int(i) for i in image_ids],
    }
    return Dataset.from_dict(columns, features=vqa_features(images.shape[1]))


def _image_storage(images: np.ndarray):
    """Images as Arrow nested lists: several times faster to ingest than a list of arrays."""
    try:
        from datasets.features.features import numpy_to_pyarrow_listarray
    except ImportError:  # a `datasets` without the helper: the slower, public route
        return list(images)
    return numpy_to_pyarrow_listarray(images)
