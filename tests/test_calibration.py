"""bits="auto": the run config, the client's calibration report and the server's choice."""

import numpy as np
import pytest
import torch

from sltestbed import calibration
from sltestbed.data import VQACollator, build_tokenizer, make_digits_vqa
from sltestbed.experiment import ExperimentConfig
from sltestbed.model import ClientPart, TinyLlava, preset
from sltestbed.quantizers import build_quantizer
from sltestbed.trainer import TensorData


@pytest.fixture(scope="module")
def part_and_data():
    ds = make_digits_vqa(seed=0, image_size=8).select(range(256))
    tok = build_tokenizer([ds])
    torch.manual_seed(0)
    model = TinyLlava(preset("tiny", vocab_size=len(tok), quantizer="learned", bits=8))
    return ClientPart(model, 0), TensorData(ds, VQACollator(tok))


def test_config_accepts_auto_and_resolves_per_modality():
    cfg = ExperimentConfig.from_run_config({"bits": "auto"})
    assert cfg.auto_bits and cfg.name == "parallel-learned-autob-seed0"
    with pytest.raises(ValueError, match="chosen by calibration"):
        cfg.widths
    done = cfg.resolved({"image": 3, "text": 2})
    assert done.widths == {"image": 3, "text": 2} and done.act_bits == 3 and done.bits == "auto"


@pytest.mark.parametrize("overrides, message", [
    ({"bits": "auto", "quantizer": "nf"}, "'bits' = 'auto' needs a quantizer that normalises"),
    ({"bits": "auto", "strategy": "fedavg"}, "has no cut"),
    ({"bits": "auto", "auto-max-rel-mse": 1.5}, "'auto-max-rel-mse'"),
    ({"bits": "auto", "auto-batches": 0}, "'auto-batches'"),
    ({"bits": "many"}, "'bits' = 'many'"),
    ({"image-bits": 9}, "'image-bits' = 9"),
])
def test_bad_auto_settings_name_the_key(overrides, message):
    with pytest.raises(ValueError, match=message):
        ExperimentConfig.from_run_config(overrides)


def test_per_modality_widths_reach_the_model():
    cfg = ExperimentConfig.from_run_config({"image-bits": 4, "bits": 2})
    assert cfg.widths == {"image": 4, "text": 2} and cfg.name == "parallel-learned-image4-text2b-seed0"
    model = TinyLlava(preset("tiny", quantizer="learned", bits=cfg.act_bits, modality_bits=cfg.widths))
    assert model.quant_encoders["image"].bits == 4 and model.quant_encoders["text"].bits == 2


@pytest.mark.parametrize("scheme", ["learned", "uniform"])
def test_normalise_maps_features_onto_the_grid_domain(scheme):
    enc, _ = build_quantizer(scheme, 3, dim=8)
    x = torch.randn(4, 5, 8) * 3 + 1
    z = enc.normalise(x)
    assert z.shape == x.shape and z.min() >= -1 and z.max() <= 1
    if scheme == "uniform":  # min-max: the extremes land on -1 and +1
        assert z.max() == pytest.approx(1.0) and z.min() == pytest.approx(-1.0)
    else:  # identity projection, clipped at mu +- 3 sigma: (x - mu) / (3 sigma)
        expect = ((x - x.mean()) / (3 * x.std())).clamp(-1, 1)
        assert torch.allclose(z, expect, atol=1e-3)


def test_schemes_without_a_normalisation_say_so():
    enc, _ = build_quantizer("nf", 4)
    with pytest.raises(ValueError, match="no normalisation"):
        enc.normalise(torch.randn(10))


def test_calibration_reports_per_batch_and_chooses_by_the_rule(part_and_data):
    part, data = part_and_data
    strict = calibration.calibrate(part, data, 32, 3, seed=0, max_rel_mse=0.005)
    loose = calibration.calibrate(part, data, 32, 3, seed=0, max_rel_mse=0.2)
    assert set(strict) == {"image", "text"}
    for m, rep in strict.items():
        assert len(rep.batch_entropy) == 3 and len(rep.density) == 3
        for density in rep.density:  # each batch's density integrates to 1 on [-1, 1]
            assert np.trapezoid(density, calibration.GRID) == pytest.approx(1.0, abs=0.05)
        assert rep.bits == min(b for b in range(1, 9) if b >= rep.needed_bits)
        assert rep.entropy_bits <= 1.0 + 1e-6  # a density on [-1, 1] has h <= log2(2) = 1 bit
        assert loose[m].bits < rep.bits  # a looser budget needs fewer bits
    assert part.training  # the calibration left the part's mode as it was


def test_combine_takes_each_modalitys_widest_choice():
    reports = {0: {"image": {"bits": 2}, "text": {"bits": 3}}, 1: {"image": {"bits": 4}, "text": {"bits": 1}}}
    assert calibration.combine(reports)["bits"] == {"image": 4, "text": 3}
    with pytest.raises(ValueError, match="no client answered"):
        calibration.combine({})
