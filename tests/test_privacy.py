import math

import numpy as np
import pytest
import torch
from scipy.ndimage import correlate

from sltestbed.data import VQACollator, build_tokenizer, make_digits_vqa
from sltestbed.model import ClientPart, TinyLlava, preset
from sltestbed.privacy import (
    AttackClassifier,
    ClientTruth,
    InversionBudget,
    Knowledge,
    Observation,
    OptimisationBudget,
    TextBudget,
    image_scores,
    infer_labels,
    labels_from_hidden_grads,
    labels_from_logit_grads,
    learned_inversion,
    mean_image_baseline,
    mse,
    nearest_tokens,
    psnr,
    record_observation,
    rmle_inversion,
    run_attacks,
    ssim,
    to_pixels,
    to_unit,
    token_accuracy,
)
from sltestbed.privacy.metrics import shift_images
from sltestbed.trainer import TensorData

SMALL = InversionBudget(steps=300, passes=2, hidden=32, batch_size=64)


@pytest.fixture(scope="module")
def digits():
    """digits-VQA at 8 x 8, one question per image: the first 200 images are the client's,
    the next 500 the attacker's auxiliary slice; image classes are the digits."""
    from sklearn.datasets import load_digits

    ds = make_digits_vqa(image_size=8, questions_per_image=1, seed=0)
    collator = VQACollator(build_tokenizer([ds]))
    classes = torch.from_numpy(load_digits().target)
    client, aux = ds.select(range(200)), ds.select(range(200, 700))
    return {"client": TensorData(client, collator), "aux": TensorData(aux, collator),
            "client_classes": classes[:200], "aux_classes": classes[200:700], "vocab": len(collator.tokenizer)}


def tiny_model(digits, **changes):
    torch.manual_seed(0)
    return TinyLlava(preset("tiny", vocab_size=digits["vocab"], **changes))


def knowledge(digits, base, **kw):
    return Knowledge(aux=digits["aux"], base=base, aux_classes=digits["aux_classes"], **kw)


# --- metrics against hand computations ------------------------------------------------------

def test_mse_and_psnr_by_hand():
    target = torch.zeros(2, 3, 8, 8)
    recon = torch.full_like(target, 0.1)
    recon[1] = 0.5
    assert torch.allclose(mse(recon, target), torch.tensor([0.01, 0.25]))
    assert torch.allclose(psnr(recon, target), torch.tensor([20.0, 10 * math.log10(4)]))
    assert float(psnr(target, target)[0]) == pytest.approx(100.0)  # MSE floored at 1e-10
    scores = image_scores(recon, target)
    assert scores["mse"] == pytest.approx(0.13) and scores["psnr"] == pytest.approx((20 + 10 * math.log10(4)) / 2)
    with pytest.raises(ValueError, match="one shape"):
        mse(recon, target[:, :1])


def _ssim_reference(x: np.ndarray, y: np.ndarray, sigma: float = 1.5) -> float:
    """SSIM of two H x W images in [0, 1], written from the definition: Gaussian window
    (radius int(3.5 sigma + 0.5)), mirror padding without repeating the edge, mean over all
    pixels; population (co)variances; C1 = (0.01)^2, C2 = (0.03)^2."""
    radius = int(3.5 * sigma + 0.5)
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    g = np.exp(-t**2 / (2 * sigma**2))
    g /= g.sum()
    window = np.outer(g, g)

    def blur(a):
        return correlate(a, window, mode="mirror")

    mx, my = blur(x), blur(y)
    vx, vy = np.maximum(blur(x * x) - mx**2, 0), np.maximum(blur(y * y) - my**2, 0)
    cxy = blur(x * y) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return float(s.mean())


@pytest.mark.parametrize("side", [8, 16])
def test_ssim_matches_a_second_implementation(side):
    g = torch.Generator().manual_seed(side)
    target = torch.rand(3, 1, side, side, generator=g, dtype=torch.float64)
    recon = (target + 0.2 * torch.randn(3, 1, side, side, generator=g, dtype=torch.float64)).clamp(0, 1)
    ours = ssim(recon, target)
    reference = [_ssim_reference(r[0].numpy(), t[0].numpy()) for r, t in zip(recon, target)]
    assert ours.tolist() == pytest.approx(reference, abs=1e-5)
    assert torch.allclose(ssim(target, target), torch.ones(3), atol=1e-6)


def test_token_accuracy_counts_real_tokens_only():
    true = torch.tensor([[5, 6, 7, 0], [8, 9, 0, 0]])
    pred = torch.tensor([[5, 1, 7, 3], [8, 9, 4, 4]])
    assert token_accuracy(pred, true, torch.tensor([3, 2])) == pytest.approx(4 / 5)


def test_shift_images_translates_and_fills():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    g = torch.Generator().manual_seed(0)
    out = shift_images(x.repeat(20, 1, 1, 1), 1, g, fill=-1.0)
    for img in out:  # each output is the input shifted by whole pixels, borders filled
        kept = img[img >= 0]
        assert kept.numel() >= 9 and set(kept.tolist()) <= set(range(16))
    assert torch.equal(shift_images(x, 0, g), x)


def test_pixel_mapping_round_trip(digits):
    images = to_unit(digits["client"].pixel_values)
    assert float(images.min()) >= 0 and float(images.max()) <= 1
    assert torch.allclose(to_pixels(images), digits["client"].pixel_values, atol=1e-6)


# --- attacks ------------------------------------------------------------------------------

def test_learned_inversion_beats_the_mean_image_at_fp32(digits):
    torch.set_num_threads(1)
    model = tiny_model(digits)
    obs = record_observation(model, digits["client"], batch_size=32, seed=0)
    know = knowledge(digits, model)
    rec = learned_inversion(obs, know, SMALL, seed=0)
    target = to_unit(digits["client"].pixel_values)[rec.indices]
    attack = image_scores(rec.images, target)
    baseline = mean_image_baseline(know.aux_images, target)
    assert rec.images.shape == target.shape and len(rec.indices) == len(digits["client"])
    assert attack["psnr"] > baseline["psnr"] + 3.0, (attack, baseline)
    assert attack["mse"] < 0.6 * baseline["mse"]
    assert attack["ssim"] > baseline["ssim"] + 0.1


def _without_times(report):
    if isinstance(report, dict):
        return {k: _without_times(v) for k, v in report.items() if "seconds" not in k}
    return report


def test_same_seed_same_attack_numbers(digits):
    model = tiny_model(digits, quantizer="learned", bits=2)
    truth = ClientTruth.of(digits["client"], digits["client_classes"])
    know = knowledge(digits, tiny_model(digits))
    budget = InversionBudget(steps=40, passes=1, hidden=32)
    optim = OptimisationBudget(iterations=20, max_samples=32)
    classifier = AttackClassifier.fit(know.aux_images, digits["aux_classes"], epochs=2, seed=0)
    runs = []
    for _ in range(2):
        obs = record_observation(model, digits["client"], batch_size=32, seed=3, labels="client")
        report = run_attacks(obs, know, truth, attacks=("learned-inversion", "rmle", "nearest-token", "labels"),
                             seed=1, inversion=budget, optimisation=optim, classifier=classifier)
        runs.append(_without_times(report))
    assert runs[0] == runs[1]
    other = run_attacks(obs, know, truth, attacks=("learned-inversion",), seed=2, inversion=budget,
                        classifier=classifier)
    assert other["attacks"]["learned-inversion"]["mse"] != runs[0]["attacks"]["learned-inversion"]["mse"]


def test_rmle_white_box_beats_the_mean_image(digits):
    model = tiny_model(digits)
    obs = record_observation(model, digits["client"], batch_size=32, seed=0, max_samples=32)
    know = knowledge(digits, model, client_state=ClientPart(model, 0).state_dict(), level="white-box")
    rec = rmle_inversion(obs, know, OptimisationBudget(iterations=150, max_samples=32), seed=0)
    target = to_unit(digits["client"].pixel_values)[rec.indices]
    assert len(rec.indices) == 32
    assert image_scores(rec.images, target)["mse"] < mean_image_baseline(know.aux_images, target)["mse"]


def test_tokens_through_the_two_bit_learned_quantizer(digits):
    model = tiny_model(digits, quantizer="learned", bits=2)
    obs = record_observation(model, digits["client"], batch_size=32, seed=0)
    tokens = nearest_tokens(obs, knowledge(digits, tiny_model(digits)), TextBudget())
    true = digits["client"].input_ids[tokens.indices]
    assert token_accuracy(tokens.input_ids, true, tokens.lengths) > 0.9


# --- labels -------------------------------------------------------------------------------

def test_logit_gradients_give_the_labels_exactly(digits):
    model = tiny_model(digits, quantizer="learned", bits=2)
    obs = record_observation(model, digits["client"], batch_size=32, seed=0, labels="client")
    inferred = infer_labels(obs, knowledge(digits, model))
    assert torch.equal(inferred.labels, digits["client"].labels[inferred.indices])
    # by hand: softmax - onehot, scaled by 1 / B
    logits = torch.randn(5, 7, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 3, 6, 3, 2])
    grads = (torch.softmax(logits, -1) - torch.nn.functional.one_hot(y, 7)) / 5
    assert torch.equal(labels_from_logit_grads(grads, logits), y)


def test_u_shaped_gradient_attack_beats_chance(digits):
    model = tiny_model(digits)
    obs = record_observation(model, digits["client"], batch_size=50, seed=0, labels="u-shaped")
    assert all(b.hidden_grads.shape == b.hidden.shape for b in obs.batches)
    know = knowledge(digits, model)
    candidates = torch.unique(digits["aux"].labels)
    true = digits["client"].labels[obs.indices]
    accuracy = float((infer_labels(obs, know).labels == true).float().mean())
    assert accuracy > 0.9  # chance: 1 / len(candidates)
    # a head the client has moved away from the public one: still far above chance
    noisy = model.lm.lm_head.weight + 0.3 * model.lm.lm_head.weight.std() * torch.randn(
        model.lm.lm_head.weight.shape, generator=torch.Generator().manual_seed(1))
    labels = torch.cat([labels_from_hidden_grads(b.hidden_grads, b.hidden, noisy, candidates) for b in obs.batches])
    assert float((labels == true).float().mean()) > 3.0 / len(candidates)


# --- the interface ------------------------------------------------------------------------

def test_observation_keeps_whole_batches_and_knowledge_checks_levels(digits):
    model = tiny_model(digits)
    obs = record_observation(model, digits["client"], batch_size=32, seed=0)
    assert obs.batch_size == 32 and len(obs) == len(digits["client"])
    assert sorted(obs.indices.tolist()) == list(range(len(digits["client"])))
    head = obs.head(40)
    assert [len(b) for b in head.batches] == [32, 32]
    assert isinstance(head, Observation) and head.quantizer == "fp32" and head.widths == {"image": 32, "text": 32}
    with pytest.raises(ValueError, match="white-box"):
        knowledge(digits, model, level="white-box")
    with pytest.raises(ValueError, match="labels"):
        record_observation(model, digits["client"], labels="nowhere")


def test_the_trained_quantizer_level_simulates_the_clients_codes(digits):
    """The learned quantizer's projection trains on the client: through the identity projection
    the attacker's codes differ from what the client sent; with the client's trained encoders
    (the trained-quantizer level) they are the same, and nothing else of the client is used."""
    from sltestbed.privacy import quantizer_state
    from sltestbed.privacy.public import simulate_codes

    base = tiny_model(digits)
    client = tiny_model(digits, quantizer="learned", bits=2)
    client.load_weights(base.state_dict())
    with torch.no_grad():  # a projection the client has trained away from the identity
        for encoder in client.quant_encoders.values():
            encoder.proj.weight.add_(0.3 * torch.randn_like(encoder.proj.weight))
    aux = digits["aux"]
    sent = ClientPart(client, 0)(aux.pixel_values[:32], aux.input_ids[:32, :1])["image"].values

    def simulated(**kw):
        know = Knowledge(aux=aux, base=base, **kw)
        part = know.client_part("learned", {"image": 2, "text": 2})
        return part.encoders["image"](part.features(aux.pixel_values[:32], aux.input_ids[:32, :1]).image).values

    trained = quantizer_state(ClientPart(client, 0).state_dict())
    assert sorted(trained) == ["encoders.image.proj.bias", "encoders.image.proj.weight",
                               "encoders.text.proj.bias", "encoders.text.proj.weight"]
    assert torch.equal(simulated(level="trained-quantizer", quantizer=trained), sent)
    assert not torch.equal(simulated(), sent)
    assert quantizer_state(ClientPart(tiny_model(digits, quantizer="uniform", bits=2), 0).state_dict()) is None
    with pytest.raises(ValueError, match="trained-quantizer"):
        knowledge(digits, base, level="trained-quantizer")
    with pytest.raises(ValueError, match="not the quantizer"):
        knowledge(digits, base, level="trained-quantizer", quantizer={"vision.weight": torch.zeros(1)})
