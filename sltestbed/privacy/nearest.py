"""Nearest public codes: no gradient step, a lookup. The attacker simulates the codes of its
public images (`public.simulate_codes`) and answers each observed sample with the public
image whose code is nearest.

    nearest-code   the image of the single nearest public code (k = 1): what a lookup
                   recognises, the floor every learned attack must reach
    knn-mean       the mean image of the k nearest public codes

"Nearest" is Euclidean after one of `METRICS` maps the dequantized image tokens (N x d) to a
vector: flattened as they are ("euclidean"), each value standardised by the public codes'
mean and deviation ("standardized"), flattened and scaled to unit length ("cosine"), or each
token scaled to unit length ("token-cosine"). The metric, and knn-mean's k (1, 2, 4, ..., 64),
are chosen on the public validation images, answered from the fitting images' codes: with the
public images' classes, the metric that names the most validation classes right (k = 1),
else the one with the lowest MSE; k, the lowest MSE. Then every public code is looked up.

Distances are computed in blocks, so memory stays at `block` x public rows.
"""

from __future__ import annotations

import time

import torch

from .observation import Knowledge, Observation, Reconstruction
from .public import PublicCodes, code_classes, codes_for, observed_values

K_CHOICES = (1, 2, 4, 8, 16, 32, 64)
METRICS = ("euclidean", "standardized", "cosine", "token-cosine")


def embed(values: torch.Tensor, metric: str, reference: torch.Tensor) -> torch.Tensor:
    """n x N x d values as the vectors `metric` compares (module doc); `reference`: the public
    codes whose statistics "standardized" uses."""
    if metric == "euclidean":
        return values.flatten(1)
    if metric == "standardized":
        flat = reference.flatten(1)
        return (values.flatten(1) - flat.mean(0)) / (flat.std(0) + 1e-6)
    if metric == "cosine":
        return torch.nn.functional.normalize(values.flatten(1).double(), dim=1)
    if metric == "token-cosine":
        return torch.nn.functional.normalize(values.double(), dim=-1).flatten(1)
    raise ValueError(f"unknown metric {metric!r}: choose one of {', '.join(METRICS)}")


def choose_metric(codes: PublicCodes, classes: torch.Tensor | None = None) -> tuple[str, dict[str, float]]:
    """The metric (module doc) and each metric's validation score: class accuracy with
    `classes` (one per public code), else MSE."""
    fit_values, fit_images = codes.part(validation=False)
    val_values, val_images = codes.part(validation=True)
    scores = {}
    for metric in METRICS:
        found = nearest(embed(val_values, metric, fit_values), embed(fit_values, metric, fit_values), 1)[:, 0]
        if classes is not None:
            fit_classes, val_classes = classes[~codes.validation], classes[codes.validation]
            scores[metric] = float((fit_classes[found] == val_classes).float().mean())
        else:
            scores[metric] = -float((fit_images[found] - val_images).pow(2).mean())
    best = max(METRICS, key=lambda m: scores[m])  # ties: the first, the plainest
    return best, {m: abs(v) for m, v in scores.items()}


def nearest(queries: torch.Tensor, keys: torch.Tensor, k: int, block: int = 1024) -> torch.Tensor:
    """Indices (n x k) of the k rows of `keys` nearest each row of `queries` (both flattened
    to vectors), nearest first; ties go to the lower index."""
    q, keys = queries.flatten(1).double(), keys.flatten(1).double()
    k = min(k, len(keys))
    key_norms = keys.pow(2).sum(1)
    out = []
    for start in range(0, len(q), block):
        part = q[start:start + block]
        distances = key_norms.unsqueeze(0) - 2 * part @ keys.T  # |q|^2 is the same along a row
        out.append(torch.topk(distances, k, dim=1, largest=False, sorted=True).indices)
    return torch.cat(out)


def lookup(queries: torch.Tensor, keys: torch.Tensor, images: torch.Tensor, k: int, metric: str = "euclidean",
           reference: torch.Tensor | None = None) -> torch.Tensor:
    """The mean of the images of the k nearest keys, per query (values compared by `metric`,
    standardised by `reference`, default the keys)."""
    reference = keys if reference is None else reference
    return images[nearest(embed(queries, metric, reference), embed(keys, metric, reference), k)].mean(1)


def choose_k(codes: PublicCodes, metric: str = "euclidean", choices=K_CHOICES) -> tuple[int, dict[int, float]]:
    """The k with the lowest MSE when the fitting part's codes answer the validation part's
    (ties: the smaller k); (k, {k: validation MSE})."""
    fit_values, fit_images = codes.part(validation=False)
    val_values, val_images = codes.part(validation=True)
    scores = {k: float((lookup(val_values, fit_values, fit_images, k, metric) - val_images).pow(2).mean())
              for k in choices if k <= len(fit_values)}
    best = min(scores, key=lambda k: (scores[k], k))
    return best, scores


def nearest_code_inversion(observation: Observation, knowledge: Knowledge, passes: int = 4, seed: int = 0,
                           codes: PublicCodes | None = None, k: int | None = 1,
                           name: str = "nearest-code") -> Reconstruction:
    """Each observed sample answered with its nearest public code's image (k = 1), or the
    mean of the k nearest; k=None chooses k on the public validation images (`knn-mean`).
    The metric is chosen on them too (module doc)."""
    started = time.perf_counter()
    if codes is None:
        codes = codes_for(observation, knowledge, passes, seed)
    classes = code_classes(knowledge, codes)
    metric, metric_scores = choose_metric(codes, classes)
    tuning = {"metric": metric, "validation_" + ("accuracy" if classes is not None else "mse"): metric_scores}
    if k is None:
        k, scores = choose_k(codes, metric)
        tuning.update({"k": k, "validation_mse": {str(c): v for c, v in scores.items()}})
    images = lookup(observed_values(observation), codes.values, codes.images, k, metric)
    return Reconstruction(name, images, observation.indices, time.perf_counter() - started, tuning)


def knn_mean_inversion(observation: Observation, knowledge: Knowledge, passes: int = 4, seed: int = 0,
                       codes: PublicCodes | None = None) -> Reconstruction:
    return nearest_code_inversion(observation, knowledge, passes, seed, codes, k=None, name="knn-mean")
