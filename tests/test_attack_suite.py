"""The attack suite: the reported leakage is the best attack, the lookup every attack must
match, tuning on public data only, the information ceiling, labels only where private."""

import math
from dataclasses import replace

import pytest
import torch

from sltestbed import codec
from sltestbed.base_model import BaseSpec
from sltestbed.data import VQACollator, build_tokenizer, make_digits_vqa
from sltestbed.model import TinyLlava, preset
from sltestbed.privacy import (
    AttackClassifier,
    ClientTruth,
    InversionBudget,
    Knowledge,
    information_ceiling,
    nearest_code_inversion,
    record_observation,
    run_attacks,
    simulate_codes,
    train_decoder,
)
from sltestbed.privacy.labels import cluster_threshold, pairwise_accuracy, same_label_pairs
from sltestbed.privacy.nearest import choose_k, nearest
from sltestbed.privacy.public import distinct_images
from sltestbed.privacy.suite import IMAGE_ATTACKS, applicable
from sltestbed.trainer import TensorData

SMALL = InversionBudget(steps=150, passes=2, hidden=32, eval_every=50)
SUITE = ("nearest-code", "knn-mean", "code-classifier", "learned-inversion", "mlp-decoder", "conv-decoder")


@pytest.fixture(scope="module")
def digits():
    """digits-VQA at 8 x 8, two questions per image: the first 200 rows are the client's, the
    next 600 (300 images) the attacker's public slice; classes are the digits."""
    from sklearn.datasets import load_digits

    ds = make_digits_vqa(image_size=8, questions_per_image=2, seed=0)
    collator = VQACollator(build_tokenizer([ds]))
    target = torch.from_numpy(load_digits().target)
    classes = target[torch.tensor(ds["image_id"])]
    client, aux = ds.select(range(200)), ds.select(range(200, 800))
    return {"client": TensorData(client, collator), "aux": TensorData(aux, collator),
            "client_classes": classes[:200], "aux_classes": classes[200:800], "vocab": len(collator.tokenizer)}


def tiny(digits, **changes):
    torch.manual_seed(0)
    return TinyLlava(preset("tiny", vocab_size=digits["vocab"], **changes))


@pytest.fixture(scope="module")
def trained(digits):
    """The tiny preset trained for 10 epochs on the public rows: a base like the runs' (whose
    features tell the digits apart), made from public data only."""
    from sltestbed.trainer import stage_regime, train_stage

    torch.set_num_threads(1)
    model = tiny(digits)
    train_stage(model, model, digits["aux"], stage_regime("full", 10, 3e-3)[0], 64, 0, progress=False)
    return model


@pytest.fixture(scope="module")
def classifier(digits):
    know = Knowledge(aux=digits["aux"], base=tiny(digits), aux_classes=digits["aux_classes"])
    return AttackClassifier.fit(know.aux_images, digits["aux_classes"], epochs=15, seed=0)


def _run(digits, classifier, truth=None, attacks=SUITE, bits=2, quantizer="learned", images=None, base=None):
    from sltestbed.base_model import build_model
    from sltestbed.experiment import ExperimentConfig

    torch.set_num_threads(1)
    base = base if base is not None else tiny(digits)
    client = build_model(ExperimentConfig(quantizer=quantizer, bits=bits), base, digits["vocab"])
    obs = record_observation(client, digits["client"], batch_size=50, seed=0)
    know = Knowledge(aux=digits["aux"], base=base, aux_classes=digits["aux_classes"])
    truth = truth or ClientTruth.of(digits["client"], digits["client_classes"])
    return run_attacks(obs, know, truth, attacks=attacks, seed=0, inversion=SMALL, classifier=classifier,
                       images=images)


@pytest.fixture(scope="module")
def report(digits, classifier):
    return _run(digits, classifier)


def test_the_reported_leakage_is_the_best_of_the_attacks_run(report):
    attacks = report["attacks"]
    assert set(attacks) == set(SUITE)
    for metric, pick in (("psnr", max), ("ssim", max), ("attack_accuracy", max), ("mse", min)):
        values = {name: a[metric] for name, a in attacks.items()}
        best = report["best"][metric]
        assert best["value"] == pick(values.values())
        assert values[best["attack"]] == best["value"]
    # the attacks differ, so "best" is a choice (a copy of one attack's scores would not be the max of all)
    assert len({round(a["attack_accuracy"], 6) for a in attacks.values()}) > 1


def test_the_nearest_public_code_recognises_the_digits_at_fp32(digits, classifier, trained):
    report = _run(digits, classifier, attacks=("nearest-code",), quantizer="fp32", bits=0, base=trained)
    scores = report["attacks"]["nearest-code"]
    assert scores["attack_accuracy"] > 0.9, scores
    assert scores["psnr"] > report["baselines"]["mean_image"]["psnr"]


def test_no_attack_reads_the_attacked_samples(digits, classifier):
    """The true samples poisoned (noise images, shuffled classes, labels and tokens): every
    reconstruction, and every choice made on the public data, is the same."""
    clean_truth = ClientTruth.of(digits["client"], digits["client_classes"])
    g = torch.Generator().manual_seed(5)
    poisoned = ClientTruth(torch.rand(clean_truth.images.shape, generator=g), clean_truth.input_ids.flip(0),
                           clean_truth.lengths, clean_truth.labels.flip(0), clean_truth.classes.flip(0))
    clean, dirty = {}, {}
    a = _run(digits, classifier, clean_truth, images=clean)
    b = _run(digits, classifier, poisoned, images=dirty)
    for name in SUITE:
        assert torch.equal(clean[name], dirty[name]), name
        assert a["attacks"][name].get("tuning") == b["attacks"][name].get("tuning"), name
    assert a["attacks"]["nearest-code"]["attack_accuracy"] != b["attacks"]["nearest-code"]["attack_accuracy"]


def test_the_public_base_never_trains_on_the_clients_data(tmp_path, monkeypatch):
    """The attacker's base model is the same whatever the training and test splits hold."""
    from sltestbed.experiment import ExperimentConfig
    from sltestbed.privacy import after_training

    cfg = ExperimentConfig.from_run_config({"base-epochs": 1, "cache-dir": str(tmp_path / "a")})
    first = TinyLlava.from_pretrained(after_training.public_base_dir(cfg, log=lambda _: None))
    real = after_training.splits(cfg)
    poison = lambda split: split.map(lambda r: {**r, "question": "poison " + r["question"]})  # noqa: E731
    monkeypatch.setattr(after_training, "splits", lambda _: real._replace(train=poison(real.train), test=poison(real.test)))
    cfg = ExperimentConfig.from_run_config({"base-epochs": 1, "cache-dir": str(tmp_path / "b")})
    second = TinyLlava.from_pretrained(after_training.public_base_dir(cfg, log=lambda _: None))
    for (k, v), w in zip(first.state_dict().items(), second.state_dict().values()):
        assert torch.equal(v, w), k
    assert BaseSpec.of(cfg).key() != replace(BaseSpec.of(cfg), pool="public").key()


def test_the_public_pool_is_in_no_clients_data():
    """Every image the attacker knows is outside every client's partition and test shard."""
    from sltestbed.experiment import ExperimentConfig
    from sltestbed.privacy import after_training
    from sltestbed.splits import client_records

    cfg = ExperimentConfig()
    clients = set()
    for partition in range(3):
        for records in client_records(cfg, partition, 3):
            clients |= set(records.with_format(None)["image_id"])
    public = set(after_training.splits(cfg).public.with_format(None)["image_id"])
    aux, _ = after_training.public_slice(cfg)
    assert public and not public & clients
    assert len(public) >= cfg.public_size and aux.pixel_values.shape[0] >= cfg.public_size


def test_public_codes_split_by_image_and_decoders_choose_on_validation(digits):
    know = Knowledge(aux=digits["aux"], base=tiny(digits), aux_classes=digits["aux_classes"])
    codes = simulate_codes(know, "learned", {"image": 2, "text": 2}, 50, passes=2, seed=0)
    held = set(codes.image_ids[codes.validation].tolist())
    fit = set(codes.image_ids[~codes.validation].tolist())
    assert held and fit and not held & fit  # no image on both sides
    assert len(codes.values) == 2 * len(digits["aux"])
    assert torch.equal(distinct_images(know.aux_images)[codes.rows], codes.image_ids)
    net, tuning = train_decoder("mlp-decoder", codes, SMALL, seed=0)
    assert tuning["best_step"] % SMALL.eval_every == 0 or tuning["best_step"] == tuning["steps"]
    k, scores = choose_k(codes)
    assert scores[k] == min(scores.values())


def test_nearest_is_the_euclidean_nearest():
    keys = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 3.0]])
    queries = torch.tensor([[0.9, 0.1], [0.1, 2.0], [-1.0, -1.0]])
    assert nearest(queries, keys, 2).tolist() == [[1, 0], [2, 0], [0, 1]]


def test_nearest_code_needs_no_training(digits):
    """The lookup answers with public images only: every reconstruction is a public image."""
    know = Knowledge(aux=digits["aux"], base=tiny(digits), aux_classes=digits["aux_classes"])
    obs = record_observation(tiny(digits, quantizer="learned", bits=1), digits["client"], batch_size=50, seed=0)
    rec = nearest_code_inversion(obs, know)
    public = know.aux_images.flatten(1)
    assert all(bool((public == image.flatten()).all(1).any()) for image in rec.images)


def test_the_ceiling_counts_the_bits_that_crossed(digits):
    model = tiny(digits, quantizer="learned", bits=1)
    obs = record_observation(model, digits["client"], batch_size=50, seed=0)
    know = Knowledge(aux=digits["aux"], base=tiny(digits), aux_classes=digits["aux_classes"])
    ceiling = information_ceiling(obs, know)
    payloads = [b.payloads["image"] for b in obs.batches]
    n, tokens, dim = payloads[0].shape
    header = codec.header_size(3, len(payloads[0].params), len(payloads[0].fields))
    by_hand = sum(8 * header + math.ceil(p.numel / 8) * 8 for p in payloads) / len(obs)
    assert ceiling["image"]["raw_bits_per_sample"] == pytest.approx(by_hand)
    assert ceiling["image"]["raw_bits_per_sample"] >= tokens * dim  # one bit a value, at least
    assert ceiling["image"]["coded_bits_per_sample"] <= ceiling["image"]["raw_bits_per_sample"]
    assert ceiling["class_bits"] == pytest.approx(math.log2(10), abs=0.05)  # ten digits, about evenly
    assert 0 < ceiling["image_bits"] <= 64 * 8  # 64 grey pixels of at most 8 bits each


def test_cluster_threshold_where_zero_fails():
    """Every pair points the same way (cosines all positive): the fixed threshold 0 calls every
    pair "same label"; the threshold from the cosines separates them."""
    g = torch.Generator().manual_seed(0)
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2])
    basis = torch.linalg.qr(torch.randn(16, 4, generator=g)).Q.T  # 4 orthonormal directions
    common, directions = basis[3], basis[:3]  # one the whole batch shares, one per label
    grads = common + directions[labels] + 0.05 * torch.randn(8, 16, generator=g)  # cosines: ~1 same, ~0.5 not
    off = ~torch.eye(8, dtype=torch.bool)
    unit = torch.nn.functional.normalize(grads, dim=-1)
    assert bool(((unit @ unit.T)[off] > 0).all())
    zero, _ = pairwise_accuracy(same_label_pairs(grads, 0.0), labels)
    chosen, _ = pairwise_accuracy(same_label_pairs(grads), labels)
    assert zero == pytest.approx(14 / 56)  # "same" for every pair: right for the 14 same-label ones of 56
    assert chosen == 1.0
    assert cluster_threshold(torch.tensor([0.1, 0.12, 0.9, 0.95])) == pytest.approx((0.11 + 0.925) / 2)
    # a tight top cluster above a broad spread: the threshold falls between them, not inside the spread
    spread = torch.cat([torch.linspace(-0.9, 0.3, 60), torch.full((12,), 0.95) + torch.linspace(-0.02, 0.02, 12)])
    assert 0.3 < cluster_threshold(spread) < 0.93


def test_labels_are_attacked_only_where_they_stay_on_the_client(digits):
    know = Knowledge(aux=digits["aux"], base=tiny(digits), aux_classes=digits["aux_classes"])
    assert "labels" not in applicable(know, "server")
    assert "labels" in applicable(know, "client") and "labels" in applicable(know, "u-shaped")
    assert "rmle" not in applicable(know) and "unsplit" in applicable(know)  # rMLE needs the client's weights
    assert set(applicable(know)) & set(IMAGE_ATTACKS) == set(IMAGE_ATTACKS) - {"rmle"}
