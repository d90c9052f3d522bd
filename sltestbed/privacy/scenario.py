"""The standard attack scenario, built from a run's names: the data splits, one client's
training partition (the victim), the public auxiliary slice, the base model.

    sc = build_scenario("digits-vqa", preset="tiny", seed=0, num_clients=2, client=0)
    sc.client_data, sc.client_classes, sc.aux, sc.aux_classes, sc.base_dir

The clients' partitions are those of a Flower run with the same names (the training split,
partitioned); the auxiliary slice is drawn from the public split, which is in no client's
partition or test shard, so it is disjoint from every client's data by construction:
`aux_images` whole images (all their questions), chosen with the seed.

Image classes (what the attack classifier names): digits-VQA, the digit; shapes-VQA, the
number of objects in the scene (0-based); other data sets have none.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..base_model import BaseSpec, ensure_base_model
from ..data import load_partition
from ..experiment import ExperimentConfig
from ..model import PRESETS
from ..splits import load_splits
from ..trainer import TensorData

DEFAULTS = ExperimentConfig()


@dataclass
class Scenario:
    dataset: str
    preset: str
    seed: int
    client_data: TensorData
    client_classes: torch.Tensor | None
    aux: TensorData
    aux_classes: torch.Tensor | None
    test_data: TensorData
    vocab_size: int
    base_dir: str | None


def image_classes(dataset: str, records, options: dict | None = None) -> torch.Tensor | None:
    """The class of each record's image (see the module doc), or None."""
    image_ids = np.asarray(records.with_format(None)["image_id"])
    if dataset == "digits-vqa":
        from sklearn.datasets import load_digits

        return torch.from_numpy(load_digits().target[image_ids].astype(np.int64))
    if dataset == "shapes-vqa":
        from ..data.shapes_vqa import generate_scenes

        options = dict(options or {})
        scenes = generate_scenes(options.get("num_images", 2000), options["image_size"], options.get("max_objects", 4),
                                 options.get("seed", 0))
        return torch.tensor([len(scenes[i]) - 1 for i in image_ids], dtype=torch.long)
    return None


def select_images(records, images: int | None, seed: int):
    """The rows of `images` whole images of `records`, chosen with `seed` (all when None)."""
    ids = np.asarray(records.with_format(None)["image_id"])
    unique = np.unique(ids)
    if images is None or images >= len(unique):
        return records
    chosen = np.random.default_rng([seed, 7]).permutation(unique)[:images]
    return records.select(np.flatnonzero(np.isin(ids, chosen)))


def build_scenario(dataset: str = "digits-vqa", *, preset: str = DEFAULTS.preset, seed: int = 0,
                   test_fraction: float = DEFAULTS.test_fraction, public_fraction: float = DEFAULTS.public_fraction,
                   num_clients: int = 2, client: int = 0, partitioner: str = "iid", alpha: float = 0.5,
                   aux_images: int | None = None, base: str = "auto", base_epochs: int = DEFAULTS.base_epochs,
                   base_lr: float = DEFAULTS.base_lr, cache_dir: str = DEFAULTS.cache_dir,
                   dataset_options: dict | None = None, log_fn=None) -> Scenario:
    """See the module doc. `base`: "auto" (the cached base model of these names, trained now
    if missing: the Flower run's `base-epochs` and `base-lr`), a model directory, or "none"."""
    image_size = PRESETS[preset]["image_size"]
    options = tuple(sorted((dataset_options or {}).items()))
    train, test, public, tokenizer, collator, qtypes = load_splits(dataset, seed, test_fraction, public_fraction,
                                                                   image_size, options)
    extra = {"alpha": alpha, "min_partition_size": 1} if partitioner == "dirichlet" else {}
    mine = load_partition(train, client, num_clients, partitioner, seed=seed, **extra)
    aux = select_images(public, aux_images, seed)
    class_options = {**dict(options), "image_size": image_size, "seed": seed}
    client_data, aux_data = TensorData(mine, collator, qtypes), TensorData(aux, collator, qtypes)
    test_data = TensorData(test, collator, qtypes)
    spec = BaseSpec(dataset, preset, None, seed, base_epochs, base_lr, DEFAULTS.base_batch_size, test_fraction, options,
                    public_fraction=public_fraction)
    base_dir = ensure_base_model(base, spec, cache_dir, lambda: (TensorData(train, collator, qtypes), test_data),
                                 len(tokenizer), progress=False, log_fn=log_fn or (lambda _: None))
    return Scenario(dataset, preset, seed, client_data, image_classes(dataset, mine, class_options), aux_data,
                    image_classes(dataset, aux, class_options), test_data, len(tokenizer), base_dir)
