"""The data of a run: three disjoint splits of its images, the shared tokenizer, each
client's partition.

    train    the clients' training data (partitioned among them)
    test     the held-out split, sharded among the clients for evaluation
    public   the attacker's public pool: in no client's training data or test shard
             (`public-fraction` of the images; attacks draw their public slice from it)

Every party derives the same splits and vocabulary from the same seeded data, so the
server and the clients agree on token ids and question-type indices without sending them.
Everything is cached per process (the clients of a simulation share a process).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

from datasets import Dataset

from .data import VQACollator, build_tokenizer, load_dataset, load_partition, split_three
from .experiment import ExperimentConfig
from .trainer import TensorData


class Splits(NamedTuple):
    train: Dataset
    test: Dataset
    public: Dataset
    tokenizer: object
    collator: VQACollator
    question_types: list[str]  # every question type of the data set, sorted: the index both sides count by


@functools.lru_cache(maxsize=4)
def load_splits(dataset: str, seed: int, test_fraction: float, public_fraction: float, image_size: int,
                options: tuple = ()) -> Splits:
    """The splits (module doc) with the images at the model's size. `options`: the data set's
    own options as sorted (key, value) pairs."""
    ds = load_dataset(dataset, seed=seed, image_size=image_size, **dict(options))
    train, test, public = split_three(ds, test_fraction, public_fraction, seed=seed)
    tokenizer = build_tokenizer([train, test, public])
    qtypes = sorted(set().union(*(split.unique("qtype") for split in (train, test, public) if len(split))))
    return Splits(train, test, public, tokenizer, VQACollator(tokenizer), qtypes)


def splits(cfg: ExperimentConfig) -> Splits:
    """The run's splits."""
    return load_splits(cfg.dataset, cfg.seed, cfg.test_fraction, cfg.public_fraction, cfg.image_size)


def vocab_size(cfg: ExperimentConfig) -> int:
    return len(splits(cfg).tokenizer)


def question_types(cfg: ExperimentConfig) -> list[str]:
    """Every question type of the data set, sorted: the index both sides count by."""
    return list(splits(cfg).question_types)


def client_data(cfg: ExperimentConfig, partition_id: int, num_partitions: int) -> tuple[TensorData, TensorData]:
    """One client's training partition and its shard of the held-out test split."""
    return _client_data(cfg.dataset, cfg.seed, cfg.test_fraction, cfg.public_fraction, cfg.image_size,
                        cfg.partitioner, cfg.alpha, partition_id, num_partitions)


def client_records(cfg: ExperimentConfig, partition_id: int, num_partitions: int):
    """One client's training partition and test shard as data-set records (image ids, text)."""
    return _client_records(cfg.dataset, cfg.seed, cfg.test_fraction, cfg.public_fraction, cfg.image_size,
                           cfg.partitioner, cfg.alpha, partition_id, num_partitions)


@functools.lru_cache(maxsize=16)
def _client_records(dataset, seed, test_fraction, public_fraction, image_size, partitioner, alpha, partition_id,
                    num_partitions):
    train, test = load_splits(dataset, seed, test_fraction, public_fraction, image_size)[:2]
    options = {"alpha": alpha, "min_partition_size": 1} if partitioner == "dirichlet" else {}
    mine = load_partition(train, partition_id, num_partitions, partitioner, seed=seed, **options)
    shard = load_partition(test, partition_id, num_partitions, "iid", seed=seed)
    if len(mine) == 0:
        raise ValueError(f"partition {partition_id} of {num_partitions} is empty")
    return mine, shard


@functools.lru_cache(maxsize=16)
def _client_data(dataset, seed, test_fraction, public_fraction, image_size, partitioner, alpha, partition_id,
                 num_partitions):
    mine, shard = _client_records(dataset, seed, test_fraction, public_fraction, image_size, partitioner, alpha,
                                  partition_id, num_partitions)
    both = load_splits(dataset, seed, test_fraction, public_fraction, image_size)
    collator, qtypes = both.collator, list(both.question_types)
    return TensorData(mine, collator, qtypes), TensorData(shard, collator, qtypes)
