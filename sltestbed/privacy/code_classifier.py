"""The code classifier: the class of each observed image read straight from its codes.

A multinomial logistic regression (scikit-learn) from the flattened dequantized image tokens
to the public images' classes (the digit), fitted on the simulated public codes' fitting part,
its inverse regularisation C chosen on the validation images from `C_CHOICES` (the most
accurate; ties: the smaller C), then refitted on every public code. Its reconstruction of a
sample is the mean public image of the class it names, so it is scored like every image
attack (the attack classifier on the reconstruction); `predicted_class_accuracy` is the
fraction of classes it named right, reported beside it. Needs the public images' classes.
"""

from __future__ import annotations

import time
import warnings

import numpy as np
import torch

from .observation import Knowledge, Observation, Reconstruction
from .public import PublicCodes, code_classes, observed_values

C_CHOICES = (0.01, 0.1, 1.0, 10.0)


def _fit(values: torch.Tensor, classes: torch.Tensor, c: float, seed: int):
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return LogisticRegression(C=c, max_iter=500, random_state=seed).fit(values.flatten(1).double().numpy(),
                                                                            classes.numpy())


def code_classifier_inversion(observation: Observation, knowledge: Knowledge, codes: PublicCodes,
                              seed: int = 0) -> Reconstruction:
    started = time.perf_counter()
    classes = code_classes(knowledge, codes)
    if classes is None:
        raise ValueError("the code classifier needs the public images' classes")
    fit, val = ~codes.validation, codes.validation
    scores = {c: float((_fit(codes.values[fit], classes[fit], c, seed).predict(codes.values[val].flatten(1).double()
                                                                              .numpy()) == classes[val].numpy()).mean())
              for c in C_CHOICES}
    best = max(C_CHOICES, key=lambda c: (scores[c], -c))
    model = _fit(codes.values, classes, best, seed)
    predicted = torch.from_numpy(model.predict(observed_values(observation).flatten(1).double().numpy()).astype(np.int64))
    means = {int(k): codes.images[classes == k].mean(0) for k in torch.unique(classes)}
    images = torch.stack([means[int(k)] for k in predicted])
    tuning = {"C": best, "validation_accuracy": {str(c): v for c, v in scores.items()}}
    tuning["predicted_classes"] = predicted.tolist()
    return Reconstruction("code-classifier", images, observation.indices, time.perf_counter() - started, tuning)
