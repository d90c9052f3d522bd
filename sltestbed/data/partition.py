"""Held-out test and public splits and per-client partitions (flwr-datasets partitioners, offline, seeded)."""

from __future__ import annotations

from contextlib import contextmanager

import datasets
import numpy as np
from datasets import Dataset
from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner, PathologicalPartitioner, Partitioner

PARTITIONERS = ("iid", "dirichlet", "pathological")


def split_holdout(
    ds: Dataset, test_fraction: float = 0.2, seed: int = 0, group_column: str | None = "image_id"
) -> tuple[Dataset, Dataset]:
    """Split into (train, test) so that no `group_column` value (image) lands in both.

    round(test_fraction * number of groups), at least 1, of the distinct groups, chosen with
    `seed`, go to the test split; with `group_column=None` (or a data set without that column)
    rows are split instead.
    Both splits keep the original row order and are materialised (no pending index mapping),
    so the partitioners' whole-column scans stay fast.
    """
    train, test, _ = split_three(ds, test_fraction, 0.0, seed, group_column)
    return train, test


def split_three(
    ds: Dataset, test_fraction: float, public_fraction: float, seed: int = 0, group_column: str | None = "image_id"
) -> tuple[Dataset, Dataset, Dataset]:
    """(train, test, public): `split_holdout`'s test split (the same groups for the same seed
    and fraction), then round(public_fraction * number of groups) further groups, from the
    same seeded permutation, for a public split disjoint from both (empty when 0)."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    if not 0.0 <= public_fraction < 1.0:
        raise ValueError(f"public_fraction must be in [0, 1), got {public_fraction}")
    if group_column in ds.column_names:
        groups = np.asarray(ds.with_format(None)[group_column])
    else:
        groups = np.arange(len(ds))
    unique = np.unique(groups)
    num_test = max(1, round(test_fraction * len(unique)))
    num_public = max(1, round(public_fraction * len(unique))) if public_fraction > 0 else 0
    if num_test + num_public >= len(unique):
        raise ValueError(f"test_fraction {test_fraction} and public_fraction {public_fraction} leave no training "
                         f"data ({len(unique)} images/rows in all)")
    order = np.random.default_rng(seed).permutation(unique)
    is_test = np.isin(groups, order[:num_test])
    is_public = np.isin(groups, order[num_test:num_test + num_public])
    return (_take(ds, np.flatnonzero(~is_test & ~is_public)), _take(ds, np.flatnonzero(is_test)),
            _take(ds, np.flatnonzero(is_public)))


def _take(ds: Dataset, indices: np.ndarray) -> Dataset:
    """The rows at `indices`, copied into a new table (in the same format as `ds`)."""
    with _progress_bars_off():
        taken = ds.select(indices).with_format("arrow").flatten_indices()
    fmt = ds.format
    return taken.with_format(
        fmt["type"], columns=fmt["columns"], output_all_columns=fmt["output_all_columns"], **fmt["format_kwargs"]
    )


@contextmanager
def _progress_bars_off():
    was_disabled = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            datasets.enable_progress_bars()


def make_partitioner(
    num_partitions: int,
    partitioner: str = "iid",
    *,
    partition_by: str = "answer",
    alpha: float = 0.5,
    min_partition_size: int = 10,
    self_balancing: bool = False,
    num_classes_per_partition: int = 2,
    class_assignment_mode: str = "random",
    seed: int = 0,
) -> Partitioner:
    """A flwr-datasets partitioner, not yet attached to a data set.

    iid: equal random shares (`partition` shuffles the data set with `seed` first).
    dirichlet: per-label shares ~ Dirichlet(alpha) over `partition_by`; lower `min_partition_size`
        for small data sets (flwr-datasets resamples up to 10 times, then raises).
    pathological: each partition gets exactly `num_classes_per_partition` labels.
    """
    if isinstance(num_partitions, bool) or not isinstance(num_partitions, (int, np.integer)) or num_partitions < 1:
        raise ValueError(f"num_partitions must be an integer >= 1, got {num_partitions!r}")
    if partitioner == "iid":
        return IidPartitioner(num_partitions=num_partitions)
    if partitioner == "dirichlet":
        if alpha <= 0:
            raise ValueError(f"alpha must be > 0, got {alpha}")
        return DirichletPartitioner(
            num_partitions=num_partitions,
            partition_by=partition_by,
            alpha=alpha,
            min_partition_size=min_partition_size,
            self_balancing=self_balancing,
            seed=seed,
        )
    if partitioner == "pathological":
        if class_assignment_mode not in ("random", "deterministic", "first-deterministic"):
            raise ValueError(
                f"unknown class_assignment_mode {class_assignment_mode!r}; "
                "known: random, deterministic, first-deterministic"
            )
        return PathologicalPartitioner(
            num_partitions=num_partitions,
            partition_by=partition_by,
            num_classes_per_partition=num_classes_per_partition,
            class_assignment_mode=class_assignment_mode,
            seed=seed,
        )
    raise ValueError(f"unknown partitioner {partitioner!r}; known: {', '.join(PARTITIONERS)}")


def partition(ds: Dataset, num_partitions: int, partitioner: str = "iid", seed: int = 0, **options) -> list[Dataset]:
    """All `num_partitions` client data sets; the same seed gives the same partitions.

    `options` are `make_partitioner`'s keywords (partition_by, alpha, min_partition_size, ...).
    """
    p = _attached(ds, num_partitions, partitioner, seed, options)
    return [p.load_partition(i) for i in range(num_partitions)]


def load_partition(
    ds: Dataset, partition_id: int, num_partitions: int, partitioner: str = "iid", seed: int = 0, **options
) -> Dataset:
    """One client's data set, identical to `partition(ds, num_partitions, ...)[partition_id]`."""
    p = _attached(ds, num_partitions, partitioner, seed, options)
    if not 0 <= partition_id < num_partitions:
        raise ValueError(f"partition_id must be in 0..{num_partitions - 1}, got {partition_id}")
    return p.load_partition(partition_id)


def _attached(ds: Dataset, num_partitions: int, partitioner: str, seed: int, options: dict) -> Partitioner:
    """A partitioner holding the in-memory data set (shuffled with `seed` first for IID)."""
    p = make_partitioner(num_partitions, partitioner, seed=seed, **options)
    if num_partitions > len(ds):
        raise ValueError(f"cannot split {len(ds)} rows into {num_partitions} partitions")
    column = options.get("partition_by", "answer")
    if partitioner != "iid" and column not in ds.column_names:
        raise ValueError(f"partition_by column {column!r} not found; available columns: {', '.join(ds.column_names)}")
    p.dataset = ds.shuffle(seed=seed) if partitioner == "iid" else ds
    return p
