"""The data of a run: the held-out split, the shared tokenizer, each client's partition.

Every party derives the same splits and vocabulary from the same seeded data, so the
server and the clients agree on token ids and question-type indices without sending them.
Everything is cached per process (the clients of a simulation share a process).
"""

from __future__ import annotations

import functools

from .data import VQACollator, build_tokenizer, load_dataset, load_partition, split_holdout
from .experiment import ExperimentConfig
from .trainer import TensorData


@functools.lru_cache(maxsize=4)
def load_splits(dataset: str, seed: int, test_fraction: float, image_size: int, options: tuple = ()):
    """(train, test, tokenizer, collator) with the images at the model's size. `options`: the
    data set's own options as sorted (key, value) pairs."""
    ds = load_dataset(dataset, seed=seed, image_size=image_size, **dict(options))
    train, test = split_holdout(ds, test_fraction=test_fraction, seed=seed)
    tokenizer = build_tokenizer([train, test])
    return train, test, tokenizer, VQACollator(tokenizer)


def splits(cfg: ExperimentConfig):
    """The run's (train, test, tokenizer, collator)."""
    return load_splits(cfg.dataset, cfg.seed, cfg.test_fraction, cfg.image_size)


def vocab_size(cfg: ExperimentConfig) -> int:
    return len(splits(cfg)[2])


@functools.lru_cache(maxsize=4)
def _question_types(dataset: str, seed: int, test_fraction: float, image_size: int) -> tuple[str, ...]:
    train, test, _, _ = load_splits(dataset, seed, test_fraction, image_size)
    return tuple(sorted(set(train.unique("qtype")) | set(test.unique("qtype"))))


def question_types(cfg: ExperimentConfig) -> list[str]:
    """Every question type of the data set, sorted: the index both sides count by."""
    return list(_question_types(cfg.dataset, cfg.seed, cfg.test_fraction, cfg.image_size))


def client_data(cfg: ExperimentConfig, partition_id: int, num_partitions: int) -> tuple[TensorData, TensorData]:
    """One client's training partition and its shard of the held-out test split."""
    return _client_data(cfg.dataset, cfg.seed, cfg.test_fraction, cfg.image_size, cfg.partitioner, cfg.alpha,
                        partition_id, num_partitions)


def client_records(cfg: ExperimentConfig, partition_id: int, num_partitions: int):
    """One client's training partition and test shard as data-set records (image ids, text)."""
    return _client_records(cfg.dataset, cfg.seed, cfg.test_fraction, cfg.image_size, cfg.partitioner, cfg.alpha,
                           partition_id, num_partitions)


@functools.lru_cache(maxsize=16)
def _client_records(dataset, seed, test_fraction, image_size, partitioner, alpha, partition_id, num_partitions):
    train, test, _, _ = load_splits(dataset, seed, test_fraction, image_size)
    options = {"alpha": alpha, "min_partition_size": 1} if partitioner == "dirichlet" else {}
    mine = load_partition(train, partition_id, num_partitions, partitioner, seed=seed, **options)
    shard = load_partition(test, partition_id, num_partitions, "iid", seed=seed)
    if len(mine) == 0:
        raise ValueError(f"partition {partition_id} of {num_partitions} is empty")
    return mine, shard


@functools.lru_cache(maxsize=16)
def _client_data(dataset, seed, test_fraction, image_size, partitioner, alpha, partition_id, num_partitions):
    mine, shard = _client_records(dataset, seed, test_fraction, image_size, partitioner, alpha, partition_id,
                                  num_partitions)
    collator = load_splits(dataset, seed, test_fraction, image_size)[3]
    qtypes = list(_question_types(dataset, seed, test_fraction, image_size))
    return TensorData(mine, collator, qtypes), TensorData(shard, collator, qtypes)
