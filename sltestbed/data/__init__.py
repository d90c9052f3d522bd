"""VQA data sets for the split-learning testbed, all in one record format (see `records`).

    ds = load_dataset("digits-vqa", image_size=16, seed=0)
    ds = load_dataset("shapes-vqa", num_images=2000, max_objects=4, seed=0)
    ds = load_dataset("hf", path_or_name="/data/my_vqa", image_size=32)   # or "hf:/data/my_vqa"
    train, test = split_holdout(ds, test_fraction=0.2, seed=0)
    clients = partition(train, num_partitions=4, partitioner="dirichlet", alpha=0.5, seed=0)
    tokenizer = build_tokenizer([train, test])
    loader = make_loader(clients[0], VQACollator(tokenizer), batch_size=64, shuffle=True, seed=0)
"""

from __future__ import annotations

import inspect

from datasets import Dataset

from .collate import VQACollator, make_loader
from .digits_vqa import make_digits_vqa
from .hf_loader import load_hf_vqa
from .partition import PARTITIONERS, load_partition, make_partitioner, partition, split_holdout, split_three
from .records import COLUMNS, make_vqa_dataset
from .shapes_vqa import generate_scenes, make_shapes_vqa, render_scene
from .answer_stats import answer_counts, majority_baseline
from .tokenizer import build_tokenizer

DATASETS = {
    "digits-vqa": make_digits_vqa,
    "shapes-vqa": make_shapes_vqa,
    "hf": load_hf_vqa,
}


def resolve_dataset_name(name: str) -> tuple[str, dict]:
    """(registry key, the options the name implies): "hf:<path or hub name>" is ("hf",
    {"path_or_name": ...}). A name of no registered data set raises `ValueError`."""
    key = str(name).strip().lower().replace("_", "-")
    if key.startswith("hf:"):
        return "hf", {"path_or_name": str(name).strip()[3:]}
    if key not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; known: {', '.join(DATASETS)} (or 'hf:<path or hub name>')")
    return key, {}


def load_dataset(name: str, **options) -> Dataset:
    """Build or load the data set registered under `name` ("digits-vqa", "shapes-vqa", "hf").

    "hf:<path or hub name>" is short for `load_dataset("hf", path_or_name=...)`.
    Options go to the data set's function; unknown ones raise `ValueError` listing the accepted ones.
    """
    key, implied = resolve_dataset_name(name)
    options = {**implied, **options}
    build = DATASETS[key]
    parameters = inspect.signature(build).parameters
    unknown = sorted(set(options) - set(parameters))
    if unknown:
        raise ValueError(
            f"unknown option(s) {', '.join(unknown)} for data set {key!r}; accepted: {', '.join(parameters)}"
        )
    missing = [n for n, p in parameters.items() if p.default is inspect.Parameter.empty and n not in options]
    if missing:
        raise ValueError(f"data set {key!r} needs option(s): {', '.join(missing)}")
    return build(**options)


__all__ = [
    "COLUMNS",
    "DATASETS",
    "PARTITIONERS",
    "VQACollator",
    "answer_counts",
    "build_tokenizer",
    "generate_scenes",
    "load_dataset",
    "load_hf_vqa",
    "load_partition",
    "majority_baseline",
    "make_digits_vqa",
    "make_loader",
    "make_partitioner",
    "make_shapes_vqa",
    "make_vqa_dataset",
    "partition",
    "render_scene",
    "split_holdout",
    "split_three",
]
