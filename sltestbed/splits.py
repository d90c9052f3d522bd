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

from .data import VQACollator, build_tokenizer, load_dataset, load_partition, resolve_dataset_name, split_three
from .experiment import ExperimentConfig
from .model.pretrained import image_normalisation, load_tokenizer
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
                options: tuple = (), vision_model: str = "", language_model: str = "") -> Splits:
    """The splits (module doc) with the images at the model's size. `options`: the data set's
    own options as sorted (key, value) pairs. With a Hugging Face `language_model`, its
    tokenizer (else a word-level one over the data set's text); with a `vision_model`, its
    image processor's normalisation."""
    generated = resolve_dataset_name(dataset)[0] != "hf"  # a stored data set is read as it is: no seed
    ds = load_dataset(dataset, image_size=image_size, **({"seed": seed} if generated else {}), **dict(options))
    train, test, public = split_three(ds, test_fraction, public_fraction, seed=seed)
    tokenizer = load_tokenizer(language_model) if language_model else build_tokenizer([train, test, public])
    collator = VQACollator(tokenizer, *image_normalisation(vision_model))
    qtypes = sorted(set().union(*(split.unique("qtype") for split in (train, test, public) if len(split))))
    if language_model:
        check_answers(collator, {str(a) for split in (train, test, public) if len(split) for a in split.unique("answer")},
                      language_model)
    return Splits(train, test, public, tokenizer, collator, qtypes)


def check_answers(collator: VQACollator, answers: set[str], source: str) -> None:
    """Every answer is predicted as one token (its first, `VQACollator.answer_id`): distinct
    answers need distinct ids under the language model's tokenizer, or ValueError naming them."""
    seen: dict[int, str] = {}
    for answer in sorted(answers):
        token = collator.answer_id(answer)
        if token in seen:
            raise ValueError(f"run config 'language-model' = {source!r}: its tokenizer starts the answers "
                             f"{seen[token]!r} and {answer!r} with the same token: the model predicts an answer's "
                             "first token, so they cannot be told apart")
        seen[token] = answer


def splits(cfg: ExperimentConfig) -> Splits:
    """The run's splits."""
    return load_splits(cfg.dataset, cfg.seed, cfg.test_fraction, cfg.public_fraction, cfg.image_size,
                       cfg.dataset_options(), cfg.vision_model, cfg.language_model)


def vocab_size(cfg: ExperimentConfig) -> int:
    return len(splits(cfg).tokenizer)


def question_types(cfg: ExperimentConfig) -> list[str]:
    """Every question type of the data set, sorted: the index both sides count by."""
    return list(splits(cfg).question_types)


def client_data(cfg: ExperimentConfig, partition_id: int, num_partitions: int) -> tuple[TensorData, TensorData]:
    """One client's training partition and its shard of the held-out test split."""
    return _client_data(cfg.dataset, cfg.seed, cfg.test_fraction, cfg.public_fraction, cfg.image_size,
                        cfg.partitioner, cfg.alpha, partition_id, num_partitions, cfg.vision_model, cfg.language_model,
                        cfg.dataset_options(), cfg.partition_by)


def client_records(cfg: ExperimentConfig, partition_id: int, num_partitions: int):
    """One client's training partition and test shard as data-set records (image ids, text)."""
    return _client_records(cfg.dataset, cfg.seed, cfg.test_fraction, cfg.public_fraction, cfg.image_size,
                           cfg.partitioner, cfg.alpha, partition_id, num_partitions, cfg.vision_model,
                           cfg.language_model, cfg.dataset_options(), cfg.partition_by)


@functools.lru_cache(maxsize=16)
def _client_records(dataset, seed, test_fraction, public_fraction, image_size, partitioner, alpha, partition_id,
                    num_partitions, vision_model="", language_model="", options=(), partition_by="answer"):
    train, test = load_splits(dataset, seed, test_fraction, public_fraction, image_size, options, vision_model,
                              language_model)[:2]
    options = {"alpha": alpha, "min_partition_size": 1} if partitioner == "dirichlet" else {}
    options.update({"partition_by": partition_by} if partitioner != "iid" else {})
    mine = load_partition(train, partition_id, num_partitions, partitioner, seed=seed, **options)
    shard = load_partition(test, partition_id, num_partitions, "iid", seed=seed)
    if len(mine) == 0:
        raise ValueError(f"partition {partition_id} of {num_partitions} is empty")
    return mine, shard


@functools.lru_cache(maxsize=16)
def _client_data(dataset, seed, test_fraction, public_fraction, image_size, partitioner, alpha, partition_id,
                 num_partitions, vision_model="", language_model="", options=(), partition_by="answer"):
    mine, shard = _client_records(dataset, seed, test_fraction, public_fraction, image_size, partitioner, alpha,
                                  partition_id, num_partitions, vision_model, language_model, options, partition_by)
    both = load_splits(dataset, seed, test_fraction, public_fraction, image_size, options, vision_model, language_model)
    collator, qtypes = both.collator, list(both.question_types)
    return TensorData(mine, collator, qtypes), TensorData(shard, collator, qtypes)
