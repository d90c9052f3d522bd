"""Every applicable attack on one observation, scored against the client's true samples, and
the leakage the report stands by: per metric, the best attack.

    report = run_attacks(observation, knowledge, truth)       # a JSON-able dict
    report["best"]["attack_accuracy"]                         # {"value": ..., "attack": ...}
    images = figure_reconstructions(observation, knowledge, truth, samples=8)
    save_figure(images, "reconstructions.png")

An attack's figure is a lower bound on what leaks, so the report's leakage is the maximum
over the attacks run (PSNR, SSIM and attack accuracy; MSE the minimum), each attack named
beside it, with the information ceiling (`ceiling.py`) as the bound from above. The image
attacks share one set of simulated public codes (`public.simulate_codes`) and one split of
the public images for tuning; each gets a stated budget (`InversionBudget` for the decoders
and the codes, `OptimisationBudget`, `TextBudget`), the same at every width.
"""

from __future__ import annotations

import time
from dataclasses import asdict

import torch

from ..label_protocol import label_protocol
from .ceiling import information_ceiling
from .code_classifier import code_classifier_inversion
from .inversion import DECODERS, InversionBudget, learned_inversion
from .labels import answer_candidates, infer_labels, pairwise_accuracy, same_label_pairs
from .metrics import (
    AttackClassifier,
    image_scores,
    label_accuracy,
    mean_image_baseline,
    token_accuracy,
)
from .nearest import K_CHOICES, nearest_code_inversion
from .observation import ClientTruth, Knowledge, Observation, Reconstruction
from .optimisation import OptimisationBudget, rmle_inversion, unsplit_inversion
from .public import PublicCodes, codes_for
from .tokens import TextBudget, learned_tokens, nearest_tokens, positional_prior

LOOKUP_ATTACKS = ("nearest-code", "knn-mean")  # no training: the nearest simulated public codes
DECODER_ATTACKS = tuple(DECODERS)  # learned-inversion, mlp-decoder, conv-decoder
CODE_ATTACKS = LOOKUP_ATTACKS + DECODER_ATTACKS + ("code-classifier",)  # from the simulated public codes
OPTIMISATION_ATTACKS = ("rmle", "unsplit")
IMAGE_ATTACKS = CODE_ATTACKS + OPTIMISATION_ATTACKS
TEXT_ATTACKS = ("nearest-token", "learned-token")
ATTACKS = IMAGE_ATTACKS + TEXT_ATTACKS + ("labels",)
BEST_IMAGE = {"psnr": max, "ssim": max, "attack_accuracy": max, "mse": min}  # metric -> the better end


def applicable(knowledge: Knowledge, labels: str = "server") -> tuple[str, ...]:
    """The attacks that apply: nearest-neighbour token recovery only at cut "connector"; rMLE
    (which needs the client part's weights) only white-box; the code classifier only with the
    public images' classes; label inference only where the labels are meant to stay on the
    client (with labels at the server they are sent: there is nothing to infer)."""
    return tuple(a for a in ATTACKS if (a != "nearest-token" or knowledge.cut_layers == 0)
                 and (a != "rmle" or knowledge.level == "white-box")
                 and (a != "code-classifier" or knowledge.aux_classes is not None)
                 and (a != "labels" or label_protocol(labels).private))


def best_of(results: dict, metrics: dict) -> dict:
    """Per metric, the best value over the attacks that report it and the attack's name."""
    best = {}
    for metric, pick in metrics.items():
        scored = {name: r[metric] for name, r in results.items() if metric in r}
        if scored:
            name = pick(scored, key=lambda n: scored[n])
            best[metric] = {"value": scored[name], "attack": name}
    return best


def train_classifier(knowledge: Knowledge, seed: int = 0, **options) -> AttackClassifier | None:
    """The attack classifier on the clean auxiliary images (None without their classes)."""
    if knowledge.aux_classes is None:
        return None
    return AttackClassifier.fit(knowledge.aux_images, knowledge.aux_classes, seed=seed, **options)


def reconstruct(attack: str, observation: Observation, knowledge: Knowledge, seed: int = 0,
                inversion: InversionBudget | None = None, optimisation: OptimisationBudget | None = None,
                codes: PublicCodes | None = None) -> Reconstruction:
    """One image attack's reconstructions of the observed samples; `codes`: the simulated
    public codes to share between attacks (made here when needed and not given)."""
    inversion, optimisation = inversion or InversionBudget(), optimisation or OptimisationBudget()
    if attack in CODE_ATTACKS:
        codes = codes if codes is not None else codes_for(observation, knowledge, inversion.passes, seed,
                                                          inversion.max_shift)
        if attack == "code-classifier":
            return code_classifier_inversion(observation, knowledge, codes, seed)
        if attack in DECODER_ATTACKS:
            return learned_inversion(observation, knowledge, inversion, seed, attack=attack, codes=codes)
        return nearest_code_inversion(observation, knowledge, seed=seed, codes=codes,
                                      k=1 if attack == "nearest-code" else None, name=attack)
    if attack == "rmle":
        return rmle_inversion(observation, knowledge, optimisation, seed)
    if attack == "unsplit":
        return unsplit_inversion(observation, knowledge, optimisation, seed)
    raise ValueError(f"unknown image attack {attack!r}: choose one of {', '.join(IMAGE_ATTACKS)}")


def score_reconstruction(rec: Reconstruction, knowledge: Knowledge, truth: ClientTruth,
                         classifier: AttackClassifier | None) -> dict:
    target = truth.images[rec.indices]
    out = {**image_scores(rec.images, target), "samples": len(rec.indices), "seconds": rec.seconds,
           "baseline": mean_image_baseline(knowledge.aux_images, target)}
    if classifier is not None and truth.classes is not None:
        out["attack_accuracy"] = classifier.accuracy(rec.images, truth.classes[rec.indices])
    tuning = dict(rec.tuning)
    predicted = tuning.pop("predicted_classes", None)
    if predicted is not None and truth.classes is not None:
        out["predicted_class_accuracy"] = float((torch.tensor(predicted) == truth.classes[rec.indices]).float().mean())
    if tuning:
        out["tuning"] = tuning
    return out


def run_attacks(observation: Observation, knowledge: Knowledge, truth: ClientTruth, *,
                attacks: tuple[str, ...] | None = None, seed: int = 0,
                inversion: InversionBudget | None = None, optimisation: OptimisationBudget | None = None,
                text: TextBudget | None = None, classifier: AttackClassifier | None = None,
                images: dict | None = None, image_samples: int = 8) -> dict:
    """Run `attacks` (default: every applicable one) and score them; the baselines beside
    them. Budgets: the defaults of their classes unless given. `classifier`: a trained
    attack classifier to reuse (else trained here). `images`: a dict that gets the first
    `image_samples` observed images ("truth") and each image attack's reconstructions."""
    inversion, optimisation = inversion or InversionBudget(), optimisation or OptimisationBudget()
    text = text or TextBudget()
    attacks = applicable(knowledge, observation.labels) if attacks is None else tuple(attacks)
    unknown = sorted(set(attacks) - set(ATTACKS))
    if unknown:
        raise ValueError(f"unknown attack(s) {unknown}: choose from {', '.join(ATTACKS)}")
    indices = observation.indices
    report = {
        "quantizer": observation.quantizer, "widths": dict(observation.widths), "level": knowledge.level,
        "cut": knowledge.cut, "labels": observation.labels, "samples": len(indices),
        "batch_size": observation.batch_size, "batches": len(observation.batches), "seed": seed,
        "aux_samples": len(knowledge.aux),
        "budgets": {"inversion": asdict(inversion), "optimisation": asdict(optimisation), "text": asdict(text),
                    "nearest": {"passes": inversion.passes, "k_choices": list(K_CHOICES)}},
        "baselines": {"mean_image": mean_image_baseline(knowledge.aux_images, truth.images[indices])},
        "ceiling": information_ceiling(observation, knowledge),
        "attacks": {},
    }
    codes = None
    if any(a in IMAGE_ATTACKS for a in attacks):
        if classifier is None:
            started = time.perf_counter()
            classifier = train_classifier(knowledge, seed)
            report["baselines"]["classifier_seconds"] = time.perf_counter() - started
        if classifier is not None and truth.classes is not None:
            report["baselines"]["classifier_clean_accuracy"] = classifier.accuracy(truth.images[indices],
                                                                                  truth.classes[indices])
            report["baselines"]["classifier_chance"] = 1.0 / classifier.classes
    for attack in attacks:
        if attack in IMAGE_ATTACKS:
            if codes is None and attack in CODE_ATTACKS:
                codes = codes_for(observation, knowledge, inversion.passes, seed, inversion.max_shift)
            rec = reconstruct(attack, observation, knowledge, seed, inversion, optimisation, codes)
            result = score_reconstruction(rec, knowledge, truth, classifier)
            if images is not None:
                images.setdefault("truth", truth.images[rec.indices[:image_samples]])
                images[attack] = rec.images[:image_samples]
            result["client_part"] = ("surrogate from the base" if attack == "unsplit" else
                                     "client weights" if knowledge.level == "white-box" else "base")
        elif attack in TEXT_ATTACKS:
            fn = nearest_tokens if attack == "nearest-token" else learned_tokens
            tokens = fn(observation, knowledge, text, seed)
            true_ids = truth.input_ids[tokens.indices]
            prior = positional_prior(knowledge, tokens.lengths)
            result = {"token_accuracy": token_accuracy(tokens.input_ids, true_ids, tokens.lengths),
                      "baseline_accuracy": token_accuracy(prior, true_ids, tokens.lengths),
                      "tokens": int(tokens.lengths.sum()), "seconds": tokens.seconds}
        else:
            inferred = infer_labels(observation, knowledge)
            true = truth.labels[inferred.indices]
            candidates = answer_candidates(knowledge)
            majority = torch.mode(knowledge.aux.labels).values
            result = {"method": inferred.attack, "accuracy": label_accuracy(inferred.labels, true),
                      "chance": 1.0 / len(candidates),
                      "majority_baseline": label_accuracy(torch.full_like(true, int(majority)), true),
                      "seconds": inferred.seconds}
            if observation.label_protocol.head_on_client:  # the U-shaped no-knowledge attack too
                pairs = [pairwise_accuracy(same_label_pairs(b.hidden_grads), truth.labels[b.indices])
                         for b in observation.batches]
                zero = [pairwise_accuracy(same_label_pairs(b.hidden_grads, 0.0), truth.labels[b.indices])[0]
                        for b in observation.batches]
                result["pairwise_direction_accuracy"] = sum(p[0] for p in pairs) / len(pairs)
                result["pairwise_zero_threshold_accuracy"] = sum(zero) / len(zero)
                result["pairwise_baseline"] = sum(p[1] for p in pairs) / len(pairs)
        report["attacks"][attack] = result
    results = report["attacks"]
    report["best"] = best_of({n: r for n, r in results.items() if n in IMAGE_ATTACKS}, BEST_IMAGE)
    report["best"].update(best_of({n: r for n, r in results.items() if n in TEXT_ATTACKS}, {"token_accuracy": max}))
    return report


def figure_reconstructions(observation: Observation, knowledge: Knowledge, truth: ClientTruth, *, samples: int = 8,
                           attacks: tuple[str, ...] = ("nearest-code", "learned-inversion", "rmle"), seed: int = 0,
                           inversion: InversionBudget | None = None,
                           optimisation: OptimisationBudget | None = None) -> dict[str, torch.Tensor]:
    """The first `samples` observed images and each attack's reconstructions of them
    ({"truth": n x C x H x W, attack: ...}, in [0, 1]); the attacks run on the whole batches
    that hold them."""
    part = observation.head(samples)
    out = {"truth": truth.images[part.indices[:samples]]}
    for attack in attacks:
        out[attack] = reconstruct(attack, part, knowledge, seed, inversion, optimisation).images[:samples]
    return out


def save_figure(images: dict[str, torch.Tensor], path: str, title: str | None = None) -> None:
    """One row per entry of `images` (truth first), one column per sample, as a PNG or PDF."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(images)
    cols = max(len(v) for v in images.values())
    fig, axes = plt.subplots(len(rows), cols, figsize=(1.1 * cols + 1.2, 1.1 * len(rows) + 0.4), squeeze=False)
    for r, name in enumerate(rows):
        for c in range(cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(images[name]):
                ax.imshow(images[name][c].permute(1, 2, 0).clamp(0, 1).numpy(), interpolation="nearest")
            if c == 0:
                ax.set_ylabel(name, fontsize=7)
    if title:
        fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
