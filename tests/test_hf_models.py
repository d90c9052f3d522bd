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


# --- LoRA ----------------------------------------------------------------------------------

def test_lora_adapters_start_at_the_base_and_alone_train(parts):
    from sltestbed.model import TinyLlava
    from sltestbed.model.lora import is_adapter
    from sltestbed.trainer import set_trainable

    cfg = config(parts)
    base = build_model(cfg, None, vocab_size(cfg))
    after = []
    for rank in (0, 4):  # the adapters are seeded on their own: the global random state moves as without them
        torch.manual_seed(1)
        adapted = build_model(config(parts, **{"lora-rank": rank}), base, vocab_size(cfg))
        after.append(torch.random.get_rng_state())
    assert torch.equal(*after)
    again = TinyLlava(adapted.config)
    adapters = {k: v for k, v in adapted.state_dict().items() if is_adapter(k)}
    assert adapters and all(torch.equal(again.state_dict()[k], v) for k, v in adapters.items())
    # the base's weights under the adapted layers' new names, and the same outputs (lora_B starts at 0)
    assert torch.equal(adapted.state_dict()["lm.model.layers.0.self_attn.q_proj.base_layer.weight"],
                       base.state_dict()["lm.model.layers.0.self_attn.q_proj.weight"])
    both = splits(cfg)
    batch = both.collator([both.train[i] for i in range(4)])
    args = (batch["pixel_values"], batch["input_ids"], batch["lengths"])
    assert torch.allclose(adapted(*args), base(*args), atol=1e-6)
    trained = set_trainable(adapted, ("connector", "lm"))
    names = {n for n, p in adapted.named_parameters() if p.requires_grad}
    assert len(trained) == len(names) and names
    assert all(is_adapter(n) or n.startswith("connector.") for n in names)
    assert any(".self_attn.q_proj.lora_A" in n for n in names) and any(".mlp.down_proj.lora_B" in n for n in names)


def test_lora_on_the_tower_and_bad_targets(parts):
    cfg = config(parts, **{"lora-rank": 2, "lora-parts": "lm,vision", "lora-targets": "q_proj,v_proj"})
    model = build_model(cfg, None, vocab_size(cfg))
    names = [n for n, _ in model.named_parameters() if ".lora_A" in n]
    assert any(n.startswith("vision.") for n in names) and any(n.startswith("lm.") for n in names)
    assert not any(".k_proj.lora" in n for n in names if n.startswith("lm."))
    bad = config(parts, **{"lora-rank": 2, "lora-targets": "query"})
    with pytest.raises(ValueError, match=r"lora targets \['query'\] name no linear layer of the lm part"):
        build_model(bad, None, vocab_size(bad))
    with pytest.raises(ValueError, match="'lora-parts' = 'head' is not allowed"):
        config(parts, **{"lora-rank": 2, "lora-parts": "head"})


def test_a_lora_split_run_trains_the_adapters_and_keeps_node_state_small(parts, tmp_path):
    from sltestbed.model.lora import is_adapter

    vision, language = parts
    keys = {"vision-model": vision, "language-model": language, "base": "none", "num-rounds": 1, "test-fraction": 0.85,
            "public-fraction": 0.05, "cache-dir": str(tmp_path), "lora-rank": 4, "save-model": True, "cut": "lm:1"}
    report, _ = run_in_process(keys)
    assert all(math.isfinite(r.accuracy) for r in report.rounds)
    cfg = ExperimentConfig.from_run_config(keys)
    start = build_model(cfg, None, vocab_size(cfg)).state_dict()
    trained = report.model.state_dict()
    frozen = [k for k in start if ".base_layer." in k]
    assert frozen and all(torch.equal(trained[k], start[k]) for k in frozen)  # the adapted weights never move
    moved = [k for k in start if is_adapter(k) and ".lora_B." in k and not torch.equal(trained[k], start[k])]
    assert any(".layers.0." in k for k in moved) and any(".layers.1." in k for k in moved)  # client's and server's
    # a client's node state: its adapters, the connector and the quantizer, not the model
    from sltestbed.roles import ClientRole
    from sltestbed.splits import client_data
    from sltestbed.trainer import OptimConfig

    role = ClientRole(build_model(cfg, None, vocab_size(cfg)), cfg.cut_layers, client_data(cfg, 0, 2)[0], batch_size=8,
                      seed=0, optim=OptimConfig(1e-3, 10), trainable=cfg.modules)
    kept = role.trainable_state()
    assert any(is_adapter(k) for k in kept) and not any(".base_layer." in k for k in kept)
    assert set(kept) == {k for k, p in role.part.named_parameters() if p.requires_grad}
    assert not any(k.startswith(("vision.", "embed_tokens.")) for k in kept)


# --- a Hugging Face data set ---------------------------------------------------------------

def test_a_local_hugging_face_data_set_through_its_own_columns(parts, tmp_path):
    """A `save_to_disk` data set with columns of its own naming, read through the column keys,
    at the tower's image size, tokenized by the language model's tokenizer, partitioned by
    question type with Dirichlet(0.3); a split run with LoRA trains on it."""
    from hf_parts import save_language_model, save_vqa_dataset
    from sltestbed.splits import client_data

    data = save_vqa_dataset(str(tmp_path / "squares"))
    from datasets import load_from_disk

    texts = [f"{q} {a}".lower() for q, a in zip(load_from_disk(data)["prompt"], load_from_disk(data)["reply"])]
    language = save_language_model(str(tmp_path / "lm"), texts)
    keys = {"dataset": f"hf:{data}", "image-column": "picture", "question-column": "prompt", "answer-column": "reply",
            "type-column": "kind", "vision-model": parts[0], "language-model": language, "partitioner": "dirichlet",
            "alpha": 0.3, "partition-by": "qtype", "base": "none", "num-rounds": 1, "lora-rank": 4, "cut": "lm:1",
            "test-fraction": 0.2, "public-fraction": 0.1, "batch-size": 16, "cache-dir": str(tmp_path / "cache")}
    cfg = ExperimentConfig.from_run_config(keys)
    both = splits(cfg)
    assert both.question_types == ["check", "colour"]
    assert np.asarray(both.train[0]["image"]).shape == (8, 8, 3)  # resized to the tower's 8 x 8
    assert sorted(both.train.unique("answer")) == ["blue", "green", "no", "red", "yes"]
    mixes = [client_data(cfg, p, 2)[0].qtype_index.float().mean().item() for p in range(2)]
    assert abs(mixes[0] - mixes[1]) > 0.05  # Dirichlet(0.3) over the question type: unlike mixes
    report, _ = run_in_process(keys)
    last = report.rounds[-1]
    assert math.isfinite(last.accuracy) and set(last.accuracy_by_type) == {"check", "colour"}


def test_data_set_keys_apply_to_hugging_face_data_sets_only():
    with pytest.raises(ValueError, match="'image-column', 'type-column': for a Hugging Face data set only"):
        ExperimentConfig.from_run_config({"image-column": "picture", "type-column": "kind"})
    with pytest.raises(ValueError, match="'partition-by' = 'image' is not allowed"):
        ExperimentConfig.from_run_config({"partition-by": "image"})


@pytest.mark.flower
def test_flwr_run_trains_with_hugging_face_parts_lora_and_a_local_data_set(parts, tmp_path):
    """The whole path through Flower: towers and language model from local directories, LoRA on,
    a save_to_disk data set, 2 SuperNodes on Dirichlet partitions, device=auto."""
    import csv
    import json
    from pathlib import Path

    from datasets import load_from_disk
    from hf_parts import save_language_model, save_vqa_dataset
    from transformers import AutoModelForCausalLM

    from harness.superlink import simulation_superlink
    from sltestbed.model import TinyLlava

    data = save_vqa_dataset(str(tmp_path / "squares"))
    rows = load_from_disk(data)
    language = save_language_model(str(tmp_path / "lm"), [f"{q} {a}".lower() for q, a in zip(rows["prompt"], rows["reply"])])
    config = {"dataset": f"hf:{data}", "image-column": "picture", "question-column": "prompt", "answer-column": "reply",
              "type-column": "kind", "vision-model": parts[0], "language-model": language, "partitioner": "dirichlet",
              "alpha": 0.3, "partition-by": "qtype", "base": "none", "num-rounds": 2, "lora-rank": 4, "cut": "lm:1",
              "device": "auto", "test-fraction": 0.2, "public-fraction": 0.1, "batch-size": 16, "save-model": True,
              "step-timeout": 60.0, "cache-dir": str(tmp_path / "cache"), "output-dir": str(tmp_path / "results"),
              "run-name": "run"}
    with simulation_superlink(tmp_path / "superlink") as link:
        result = link.submit(Path(__file__).resolve().parent.parent, config, num_supernodes=2,
                             federation_config={"client-resources-num-cpus": 1}, timeout=600)
    assert result.ok, result.describe()
    out = tmp_path / "results" / "run"
    summary = json.loads((out / "summary.json").read_text())
    assert math.isfinite(summary["accuracy"])
    with open(out / "ledger.csv") as f:
        acts = [r for r in csv.DictReader(f) if r["kind"] == "activations"]
    assert acts and all(int(r["serialized_bytes"]) > 0 for r in acts)
    assert summary["bytes"]["up"]["activations"]["ideal"] == sum(int(r["ideal_bytes"]) for r in acts)
    trained = TinyLlava.from_pretrained(str(out / "model")).state_dict()
    saved = AutoModelForCausalLM.from_pretrained(language).state_dict()
    # the adapted weights are the saved language model's, untouched; its unadapted norms too
    assert torch.equal(trained["lm.model.layers.1.self_attn.q_proj.base_layer.weight"],
                       saved["model.layers.1.self_attn.q_proj.weight"])
    assert torch.equal(trained["lm.model.norm.weight"], saved["model.norm.weight"])


def test_a_model_recipe_names_the_hub_parts(monkeypatch, parts):
    """`model=tinyllava-qwen2-0.5b` fills the Hugging Face keys with hub names (read here
    through a stand-in: nothing is downloaded); a key given beside it wins."""
    from sltestbed.model import pretrained

    seen, tower = [], pretrained.vision_fields(parts[0])  # a tower's sizes for the stand-in to give
    monkeypatch.setattr(pretrained, "vision_fields", lambda source: seen.append(source) or tower)
    monkeypatch.setattr(pretrained, "language_fields", lambda source: seen.append(source) or {})
    cfg = ExperimentConfig.from_run_config({"model": "tinyllava-qwen2-0.5b"})
    assert (cfg.vision_model, cfg.language_model, cfg.vision_feature_layer) == (
        "google/siglip-so400m-patch14-384", "Qwen/Qwen2-0.5B", -2)
    assert seen[:2] == ["google/siglip-so400m-patch14-384", "Qwen/Qwen2-0.5B"]
    mine = ExperimentConfig.from_run_config({"model": "tinyllava-qwen2-0.5b", "language-model": parts[1]})
    assert mine.language_model == parts[1]
    with pytest.raises(ValueError, match="'model' = 'llava-13b' is not a recipe; recipes: tinyllava-qwen2-0.5b"):
        ExperimentConfig.from_run_config({"model": "llava-13b"})
