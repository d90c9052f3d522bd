"""The attacks on one training run, from its config: the attacker's knowledge (the public
slice, the base model, the client weights the protocol sent the server), the clients' true
samples to score against, each knowledge level, and what is written to the run directory.

    report, images = attack_run(cfg, observation, base, client_state, clients)

The public slice is `public-size` whole images of the held-out split, drawn with the run's
seed: images no client trains on (so it is disjoint from every client's partition), and
drawing it there leaves every client's data, and so every accuracy, as it is without attacks.

Written beside the run's results: privacy.json (every attack's scores next to its baselines,
per knowledge level), reconstructions.npz (the first observed images and their
reconstructions, uint8) and observation.pt (what the server kept and the client weights it
was sent: `python -m sltestbed.privacy RUN_DIR` runs the attacks again from them).
"""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import torch

from ..experiment import ExperimentConfig
from ..splits import client_data, client_records, question_types, splits
from ..trainer import TensorData
from .inversion import InversionBudget
from .metrics import AttackClassifier
from .observation import ClientTruth, Knowledge, Observation, to_unit
from .run import ATTACKS, applicable, run_attacks
from .scenario import image_classes, select_images

PRIVACY_FILE = "privacy.json"
RECONSTRUCTIONS_FILE = "reconstructions.npz"
OBSERVATION_FILE = "observation.pt"
ATTACK_SETS = {"inversion": ("learned-inversion", "nearest-token", "learned-token", "labels"), "all": ATTACKS}


def public_slice(cfg: ExperimentConfig) -> tuple[TensorData, torch.Tensor | None]:
    """The attacker's auxiliary data and its image classes (see the module doc)."""
    _, test, _, collator = splits(cfg)
    records = select_images(test, cfg.public_size, cfg.seed)
    return TensorData(records, collator, question_types(cfg)), image_classes(cfg.dataset, records,
                                                                            {"image_size": cfg.image_size})


def client_truth(cfg: ExperimentConfig, clients) -> ClientTruth:
    """Every client's training data, in partition order (for scoring only)."""
    clients = sorted(clients, key=lambda c: c.partition)
    datas = [client_data(cfg, c.partition, c.num_partitions)[0] for c in clients]
    width = max(d.input_ids.shape[1] for d in datas)
    classes = [image_classes(cfg.dataset, client_records(cfg, c.partition, c.num_partitions)[0],
                             {"image_size": cfg.image_size}) for c in clients]
    return ClientTruth(torch.cat([to_unit(d.pixel_values) for d in datas]),
                       torch.cat([torch.nn.functional.pad(d.input_ids, (0, width - d.input_ids.shape[1])) for d in datas]),
                       torch.cat([d.lengths for d in datas]), torch.cat([d.labels for d in datas]),
                       None if any(c is None for c in classes) else torch.cat(classes))


def attack_classifier(cfg: ExperimentConfig, aux: TensorData, aux_classes) -> AttackClassifier | None:
    """The classifier of the clean public images, cached beside the base models (the same for
    every width and strategy of a data set, seed and public slice)."""
    if aux_classes is None:
        return None
    key = json.dumps([cfg.dataset, cfg.seed, cfg.test_fraction, cfg.image_size, cfg.public_size])
    path = os.path.join(cfg.cache_dir, f"attack-classifier-{hashlib.sha256(key.encode()).hexdigest()[:16]}.pt")
    if os.path.isfile(path):
        return AttackClassifier.load(path)
    classifier = AttackClassifier.fit(to_unit(aux.pixel_values), aux_classes, seed=cfg.seed)
    os.makedirs(cfg.cache_dir, exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    classifier.save(tmp)
    os.replace(tmp, path)
    return classifier


def attack_run(cfg: ExperimentConfig, observation: Observation, base, client_state: dict | None, clients,
               log=print) -> tuple[dict, dict]:
    """Every attack of `cfg.attack` at each knowledge level that applies: the public base
    always, white-box where the server was sent client weights (`client_state`). Returns the
    report and, per level, the first images and their reconstructions."""
    if cfg.attack not in ATTACK_SETS:
        raise ValueError(f"attack {cfg.attack!r}: choose one of {', '.join(ATTACK_SETS)}")
    aux, aux_classes = public_slice(cfg)
    truth = client_truth(cfg, clients)
    classifier = attack_classifier(cfg, aux, aux_classes)
    levels = {"public-base": None} | ({"white-box": client_state} if client_state is not None else {})
    report = {"attack": cfg.attack, "public_images": cfg.public_size, "levels": {}}
    images = {}
    for level, state in levels.items():
        knowledge = Knowledge(aux, base, cfg.cut, client_state=state, level=level, aux_classes=aux_classes)
        attacks = tuple(a for a in applicable(knowledge) if a in ATTACK_SETS[cfg.attack])
        log(f"attacks ({level}): {', '.join(attacks)} on {len(observation)} observed samples")
        images[level] = {}
        report["levels"][level] = run_attacks(observation, knowledge, truth, attacks=attacks, seed=cfg.seed,
                                              inversion=InversionBudget(steps=cfg.attack_steps), classifier=classifier,
                                              images=images[level])
    return report, images


def summary(report: dict) -> dict:
    """The headline numbers per level: per image attack PSNR, SSIM, attack accuracy (and the
    mean-image baseline), token and label accuracy."""
    out = {}
    for level, r in report["levels"].items():
        row = {"samples": r["samples"], "baseline_psnr": r["baselines"]["mean_image"]["psnr"]}
        for attack, a in r["attacks"].items():
            keys = ("psnr", "ssim", "attack_accuracy") if "psnr" in a else ("token_accuracy",) if "token_accuracy" in a \
                else ("accuracy",)
            row[attack] = {k: a[k] for k in keys if k in a}
        out[level] = row
    return out


def write(directory: str, report: dict, images: dict, observation: Observation | None = None,
          client_state: dict | None = None) -> None:
    with open(os.path.join(directory, PRIVACY_FILE), "w") as f:
        json.dump(report, f, indent=2)
    arrays = {f"{level}/{name}": (t.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
              for level, per in images.items() for name, t in per.items()}
    np.savez_compressed(os.path.join(directory, RECONSTRUCTIONS_FILE), **arrays)
    if observation is not None:
        torch.save({"observation": observation, "client_state": client_state}, os.path.join(directory, OBSERVATION_FILE))
