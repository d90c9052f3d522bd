"""Hugging Face towers and language models as the model's parts, from local directories: the
run config reaches them, their weights are the saved ones, the data goes through their
tokenizer and image processor, and a split run trains with them."""

import math

import numpy as np
import pytest
import torch

from app.in_process import run_in_process
from hf_parts import IMAGE_MEAN, IMAGE_STD, save_parts, train_tokenizer
from sltestbed.base_model import BaseSpec, build_model
from sltestbed.data import VQACollator
from sltestbed.experiment import ExperimentConfig
from sltestbed.splits import check_answers, splits, vocab_size


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    return save_parts(str(tmp_path_factory.mktemp("hf")))


def config(parts, **keys):
    vision, language = parts
    return ExperimentConfig.from_run_config({"vision-model": vision, "language-model": language, **keys})


def test_the_run_config_reaches_the_models_and_their_sizes(parts):
    from transformers import AutoModelForCausalLM, SiglipVisionModel

    cfg = config(parts, **{"vision-feature-layer": -2, "cut": "lm:1"})
    assert cfg.image_size == 8 and cfg.lm_layers == 2 and cfg.cut_layers == 1
    model = build_model(cfg, None, vocab_size(cfg))
    assert model.config.vision_tower == "siglip" and model.config.language_model == "qwen2"
    assert model.config.vision_feature_layer == -2 and model.vision.feature_layer == -2
    saved_vision = SiglipVisionModel.from_pretrained(parts[0]).state_dict()
    saved_lm = AutoModelForCausalLM.from_pretrained(parts[1]).state_dict()
    for name, tensor in saved_vision.items():
        assert torch.equal(model.vision.model.state_dict()[name], tensor), name
    for name, tensor in saved_lm.items():
        assert torch.equal(model.lm.state_dict()[name], tensor), name
    assert model.connector.net[0].in_features == 16 and model.lm_hidden == 16
    # the base model's cache is keyed by the parts: another model, another base
    assert BaseSpec.of(cfg).key() != BaseSpec.of(ExperimentConfig()).key()
    assert dict(BaseSpec.of(cfg).models) == {"vision-model": parts[0], "language-model": parts[1],
                                            "vision-feature-layer": -2}


def test_the_data_goes_through_the_models_tokenizer_and_image_processor(parts):
    cfg = config(parts)
    both = splits(cfg)
    assert both.tokenizer.name_or_path == parts[1] and len(both.tokenizer) == vocab_size(cfg)
    batch = both.collator([both.train[0]])
    pixel = np.asarray(both.train[0]["image"], dtype=np.float32)[0, 0] / 255.0
    expected = (pixel - np.asarray(IMAGE_MEAN)) / np.asarray(IMAGE_STD)
    assert torch.allclose(batch["pixel_values"][0, :, 0, 0], torch.tensor(expected, dtype=torch.float32), atol=1e-5)
    question = str(both.train[0]["question"])
    assert batch["input_ids"][0, : batch["lengths"][0]].tolist() == both.tokenizer(question, add_special_tokens=False)["input_ids"]
    answer = str(both.train[0]["answer"])
    assert int(batch["labels"][0]) == both.tokenizer(" " + answer, add_special_tokens=False)["input_ids"][0]
    # the preset's own parts keep the word-level tokenizer: one token per answer, as before
    plain = splits(ExperimentConfig())
    assert plain.collator.answer_id("seven") == plain.tokenizer.convert_tokens_to_ids("seven")


def test_answers_that_share_a_first_token_are_named(parts):
    letters = train_tokenizer(["abcdefghijklmnopqrstuvwxyz ?"], vocab_size=260)  # no merges: one byte a token
    letters.pad_token = letters.eos_token
    with pytest.raises(ValueError, match="starts the answers 'one' and 'seven' with the same token"):
        check_answers(VQACollator(letters), {"six", "seven", "one"}, "letters")


def test_bad_model_keys_are_named(parts, tmp_path):
    with pytest.raises(ValueError, match="'vision-model' = '/nope': no such model directory"):
        ExperimentConfig.from_run_config({"vision-model": "/nope"})
    with pytest.raises(ValueError, match="'language-model'.*is a 'siglip_vision_model' model"):
        ExperimentConfig.from_run_config({"language-model": parts[0]})
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="'vision-model'.*not a loadable Hugging Face model"):
        ExperimentConfig.from_run_config({"vision-model": str(tmp_path / "empty")})
    with pytest.raises(ValueError, match="'vision-feature-layer' = 5 is out of range"):
        config(parts, **{"vision-feature-layer": 5})
    with pytest.raises(ValueError, match="'cut'"):
        config(parts, cut="lm:2")  # the loaded language model has 2 layers: at least one stays on the server


def test_a_clip_tower_drops_its_class_token(tmp_path):
    from transformers import CLIPVisionConfig, CLIPVisionModel

    CLIPVisionModel(CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                     image_size=8, patch_size=4)).save_pretrained(tmp_path)
    cfg = ExperimentConfig.from_run_config({"vision-model": str(tmp_path)})
    model = build_model(cfg, None, vocab_size(cfg))
    assert model.config.vision_tower == "clip"
    assert model.image_tokens(torch.zeros(2, 3, 8, 8)).shape == (2, 4, model.lm_hidden)  # 4 patches, no CLS


def test_a_split_run_trains_with_the_hugging_face_parts(parts, tmp_path):
    vision, language = parts
    keys = {"vision-model": vision, "language-model": language, "base": "none", "num-rounds": 1, "test-fraction": 0.85,
            "public-fraction": 0.05, "cache-dir": str(tmp_path)}
    report, _ = run_in_process(keys)
    assert all(math.isfinite(r.accuracy) for r in report.rounds)
    up = [r for r in report.ledger.rows if r.direction == "up" and r.kind == "activations"]
    image_tokens = 4  # 8 x 8 images, 4 x 4 patches
    assert up and all(r.bits == 2 for r in up)
    assert any(r.elements % (image_tokens * 16) == 0 for r in up)
    assert report.cfg.image_size == 8 and report.cfg.language_model == language


def test_a_missing_tower_directory_fails_before_any_work():
    with pytest.raises(ValueError, match="no such model directory"):
        run_in_process({"vision-model": "./not-here"})
