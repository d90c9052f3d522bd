"""The attacks on one training run, from its config: the attacker's knowledge (the public
slice, a base model, the client weights the protocol sent the server), the clients' true
samples to score against, each knowledge level, and what is written to the run directory.

    report, images = attack_run(cfg, observation, base, client_state, clients)

The public pool is the splits' public split (`public-fraction` of the images, `splits`): in
no client's training partition or test shard, so no client's data is in it and none of it
ever crosses the cut. The public slice is `public-size` whole images of it, drawn with the
run's seed; the pool is split off whether or not the run attacks, so every accuracy is the
same with and without attacks.

Knowledge levels, weakest first (each attack runs at each level that applies):
    public-base    the attacker's own base model, trained like the run's (same recipe,
                   preset and seed) on the public pool only: no client's data touched it
                   (`public_base_dir`). The default.
    trained-quantizer  the public base with the client's trained quantizer encoders (the
                   learned quantizer's projections, read from the first client after
                   training, outside the protocol and its byte count): what the server
                   would know if it were given them to decode the codes. Only where the
                   quantizer has weights (learned).
    private-base   the run's base model, which split fine-tuning starts from. With
                   base=auto it is the centralized reference trained on the training split,
                   i.e. on the clients' data: every attacked image was in its training set.
                   A stronger level, kept for comparison.
    white-box      the client part's current weights on top, where the protocol sends them
                   through the server (sequential split learning and SplitFed).
With a base of the run's own (a model directory) or none (seeded random weights), that model
is public: it is the public-base level and there is no private-base level.

Written beside the run's results: privacy.json (every attack's scores next to its baselines,
per knowledge level), reconstructions.npz (the first observed images and their
reconstructions, uint8) and observation.pt (what the server kept and the client weights it
was sent, and the client's trained quantizer: `python -m sltestbed.privacy RUN_DIR` runs the
attacks again from them).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import replace

import numpy as np
import torch

from ..base_model import BaseSpec, ensure_base_model
from ..experiment import ExperimentConfig
from ..model import TinyLlava
from ..splits import client_data, client_records, splits
from ..trainer import TensorData
from .inversion import InversionBudget
from .metrics import AttackClassifier
from .observation import ClientTruth, Knowledge, Observation, quantizer_state, to_unit
from .suite import ATTACKS, OPTIMISATION_ATTACKS, applicable, run_attacks
from .scenario import image_classes, select_images

PRIVACY_FILE = "privacy.json"
RECONSTRUCTIONS_FILE = "reconstructions.npz"
OBSERVATION_FILE = "observation.pt"
ATTACK_SETS = {"inversion": tuple(a for a in ATTACKS if a not in OPTIMISATION_ATTACKS), "all": ATTACKS}


def public_base_dir(cfg: ExperimentConfig, log=print) -> str:
    """The attacker's public base model: the run's base recipe on the public pool alone,
    trained now unless cached (module doc)."""
    both = splits(cfg)

    def data():  # collated only when the model must be trained; its "held-out" accuracy is on the pool itself
        pool = TensorData(both.public, both.collator, list(both.question_types))
        return pool, pool

    return ensure_base_model("auto", replace(BaseSpec.of(cfg), pool="public"), cfg.cache_dir, data, len(both.tokenizer),
                             progress=False, log_fn=lambda m: log(f"public {m}"))


def knowledge_bases(cfg: ExperimentConfig, base: TinyLlava, log=print) -> dict[str, TinyLlava]:
    """The base model of each level below white-box (module doc)."""
    if cfg.base != "auto":
        return {"public-base": base}
    return {"public-base": TinyLlava.from_pretrained(public_base_dir(cfg, log)), "private-base": base}


def public_slice(cfg: ExperimentConfig) -> tuple[TensorData, torch.Tensor | None]:
    """The attacker's auxiliary data and its image classes (see the module doc)."""
    both = splits(cfg)
    records = select_images(both.public, cfg.public_size, cfg.seed)
    return TensorData(records, both.collator, list(both.question_types)), image_classes(cfg.dataset, records,
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
    key = json.dumps([cfg.dataset, cfg.seed, cfg.test_fraction, cfg.public_fraction, cfg.image_size, cfg.public_size])
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
               log=print, trained_quantizer: dict | None = None) -> tuple[dict, dict]:
    """Every attack of `cfg.attack` at each knowledge level that applies (module doc): the
    public base always; with it the client's trained quantizer (`trained_quantizer`: a client
    part's state, of which only the quantizer encoders are used) where it has weights; the
    run's base where it is not public; white-box where the server was sent client weights
    (`client_state`). `base`: the run's base model. Returns the report and, per level, the
    first images and their reconstructions."""
    if cfg.attack not in ATTACK_SETS:
        raise ValueError(f"attack {cfg.attack!r}: choose one of {', '.join(ATTACK_SETS)}")
    aux, aux_classes = public_slice(cfg)
    truth = client_truth(cfg, clients)
    classifier = attack_classifier(cfg, aux, aux_classes)
    bases = knowledge_bases(cfg, base, log)
    quantizer = quantizer_state(trained_quantizer)
    levels = {"public-base": (bases["public-base"], None, None)}
    if quantizer is not None:
        levels["trained-quantizer"] = (bases["public-base"], None, quantizer)
    if "private-base" in bases:
        levels["private-base"] = (bases["private-base"], None, None)
    if client_state is not None:
        levels["white-box"] = (base, client_state, None)
    report = {"attack": cfg.attack, "public_images": cfg.public_size, "levels": {}}
    images = {}
    for level, (model, state, trained) in levels.items():
        knowledge = Knowledge(aux, model, cfg.cut, client_state=state, level=level, aux_classes=aux_classes,
                              quantizer=trained)
        attacks = tuple(a for a in applicable(knowledge, observation.labels) if a in ATTACK_SETS[cfg.attack])
        log(f"attacks ({level}): {', '.join(attacks)} on {len(observation)} observed samples")
        images[level] = {}
        report["levels"][level] = run_attacks(observation, knowledge, truth, attacks=attacks, seed=cfg.seed,
                                              inversion=InversionBudget(steps=cfg.attack_steps), classifier=classifier,
                                              images=images[level])
    return report, images


def summary(report: dict) -> dict:
    """The headline numbers per level: the best attack per metric (the leakage), per image
    attack PSNR, SSIM, attack accuracy (and the mean-image baseline), token and label
    accuracy, and the coded bits per image sample (the ceiling)."""
    out = {}
    for level, r in report["levels"].items():
        row = {"samples": r["samples"], "baseline_psnr": r["baselines"]["mean_image"]["psnr"],
               "best": {k: v for k, v in r.get("best", {}).items()}}
        if "image" in r.get("ceiling", {}):
            row["ceiling_bits_per_image"] = r["ceiling"]["image"]["coded_bits_per_sample"]
        for attack, a in r["attacks"].items():
            keys = ("psnr", "ssim", "attack_accuracy") if "psnr" in a else ("token_accuracy",) if "token_accuracy" in a \
                else ("accuracy",)
            row[attack] = {k: a[k] for k in keys if k in a}
        out[level] = row
    return out


def write(directory: str, report: dict, images: dict, observation: Observation | None = None,
          client_state: dict | None = None, trained_quantizer: dict | None = None) -> None:
    with open(os.path.join(directory, PRIVACY_FILE), "w") as f:
        json.dump(report, f, indent=2)
    arrays = {f"{level}/{name}": (t.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
              for level, per in images.items() for name, t in per.items()}
    np.savez_compressed(os.path.join(directory, RECONSTRUCTIONS_FILE), **arrays)
    if observation is not None:
        torch.save({"observation": observation, "client_state": client_state,
                    "trained_quantizer": quantizer_state(trained_quantizer)}, os.path.join(directory, OBSERVATION_FILE))
