"""Any Hugging Face image-question-answer data set, converted to the common record format."""

from __future__ import annotations

import os

import datasets
import numpy as np
from PIL import Image

from .records import check_image_size, vqa_features
from .text import normalize_answer, normalize_question

_SAVED_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")


def load_hf_vqa(
    path_or_name: str,
    split: str | None = "train",
    image_column: str = "image",
    question_column: str = "question",
    answer_column: str = "answer",
    qtype_column: str | None = None,
    image_size: int = 32,
    default_qtype: str = "all",
    max_samples: int | None = None,
) -> datasets.Dataset:
    """Load a local directory or a hub data set and convert it to the common record format.

    A local directory written by `save_to_disk` is read with `datasets.load_from_disk`, any other
    local directory with `datasets.load_dataset(path)`; anything else is a hub name for
    `datasets.load_dataset(name, split=split)`. Images (PIL or arrays) become RGB and are
    resized to image_size x image_size (bilinear); questions and answers are normalised to
    lower-case words (a multi-word answer is joined with "_"). `qtype` comes from `qtype_column`,
    or is `default_qtype` for every row. `image_id` is the row's index in the source split.
    """
    image_size = check_image_size(image_size)
    raw = _load_raw(path_or_name, split)
    columns = [image_column, question_column, answer_column] + ([qtype_column] if qtype_column else [])
    for column in columns:
        if column not in raw.column_names:
            raise ValueError(
                f"column {column!r} not found in {path_or_name!r}; available columns: {', '.join(raw.column_names)}"
            )
    if max_samples is not None:
        raw = raw.select(range(min(max_samples, len(raw))))
    raw = raw.select_columns(columns)

    def convert(batch: dict, indices: list[int]) -> dict:
        n = len(indices)
        return {
            "image": [to_rgb_array(image, image_size) for image in batch[image_column]],
            "question": [normalize_question(q) for q in batch[question_column]],
            "answer": [normalize_answer(a) for a in batch[answer_column]],
            "qtype": [str(t) for t in batch[qtype_column]] if qtype_column else [default_qtype] * n,
            "image_id": list(indices),
        }

    return raw.map(
        convert,
        batched=True,
        with_indices=True,
        remove_columns=raw.column_names,
        features=vqa_features(image_size),
        keep_in_memory=True,  # small once resized; leaves the source directory untouched
        desc="converting to VQA records",
    )


def to_rgb_array(image: object, image_size: int) -> np.ndarray:
    """A PIL image, or an H x W [x C] array, as a uint8 image_size x image_size x 3 RGB array."""
    if not isinstance(image, Image.Image):
        array = np.asarray(image)
        if array.dtype != np.uint8:
            scale = 255.0 if array.size and array.max() <= 1.0 else 1.0  # floats in [0, 1]
            array = np.clip(np.rint(array.astype(np.float64) * scale), 0, 255).astype(np.uint8)
        if array.ndim == 3 and array.shape[-1] == 1:
            array = array[..., 0]
        image = Image.fromarray(array)
    image = image.convert("RGB")
    if image.size != (image_size, image_size):
        image = image.resize((image_size, image_size), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8)


def _load_raw(path_or_name: str, split: str | None) -> datasets.Dataset:
    """The source split as a `datasets.Dataset`, from a local directory or the hub."""
    path = os.path.expanduser(str(path_or_name))
    if os.path.isdir(path):
        if any(os.path.exists(os.path.join(path, marker)) for marker in _SAVED_MARKERS):
            loaded = datasets.load_from_disk(path)
        else:
            loaded = datasets.load_dataset(path, split=split)
    elif _looks_like_path(str(path_or_name)):
        raise FileNotFoundError(f"data set directory not found: {path_or_name!r}")
    else:
        loaded = datasets.load_dataset(path_or_name, split=split)
    if isinstance(loaded, datasets.DatasetDict):
        if split is None or split not in loaded:
            raise ValueError(f"split {split!r} not found in {path_or_name!r}; available splits: {', '.join(loaded)}")
        loaded = loaded[split]
    if not isinstance(loaded, datasets.Dataset):
        raise ValueError(f"{path_or_name!r} did not load as a datasets.Dataset (got {type(loaded).__name__})")
    return loaded


def _looks_like_path(text: str) -> bool:
    """Starts with "/", "." or "~", or has a separator a hub id ("owner/name", one "/") cannot have."""
    if text.startswith(("/", ".", "~")) or text.count("/") > 1:
        return True
    return any(sep in text for sep in (os.sep, os.altsep) if sep and sep != "/")
