import json

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, SiglipVisionConfig, SiglipVisionModel

from sltestbed.model import (ClientPart, ServerPart, SplitTinyLlava, TinyLlava, TinyLlavaConfig, cut_profile,
                             parse_cut, preset)


def batch(cfg, b=3, t=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randn(b, 3, cfg.image_size, cfg.image_size, generator=g)
    ids = torch.randint(3, cfg.vocab_size, (b, t), generator=g)
    lengths = torch.tensor([t, t - 2, 1][:b])
    return pixels, ids, lengths


def grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("cut", ["connector", "lm:1"])
@pytest.mark.parametrize("labels", ["server", "u-shaped"])
def test_split_is_exact_with_fp32_passthrough(cut, labels):
    torch.manual_seed(0)
    model = TinyLlava(preset("tiny"))
    pixels, ids, lengths = batch(model.config)
    target = torch.tensor([1, 2, 3])

    ref = model(pixels, ids, lengths)
    torch.nn.functional.cross_entropy(ref, target).backward()
    ref_grads = grads(model)
    model.zero_grad()

    split = SplitTinyLlava(model, cut=cut, labels=labels)
    # the split as it runs across the link: client, detached values, server, gradient back
    quantized = split.client(pixels, ids)
    sent = {m: q.values.detach().requires_grad_(True) for m, q in quantized.items()}
    out = split.server(sent["image"], sent["text"], lengths)
    if labels == "u-shaped":
        server_out = out.detach().requires_grad_(True)
        logits = split.head(server_out)
        torch.nn.functional.cross_entropy(logits, target).backward()
        out.backward(server_out.grad)
    else:
        logits = out
        torch.nn.functional.cross_entropy(logits, target).backward()
    torch.autograd.backward([quantized[m].values for m in sent], [sent[m].grad for m in sent])

    assert (logits - ref).abs().max().item() <= 1e-6
    split_grads = grads(model)
    assert split_grads.keys() == ref_grads.keys()
    for name in ref_grads:
        assert (split_grads[name] - ref_grads[name]).abs().max().item() <= 1e-6, name


def test_client_and_server_parts_hold_disjoint_parameters():
    model = TinyLlava(preset("tiny"))
    for k in (0, 1):
        client, server = ClientPart(model, k), ServerPart(model, k)
        c = {id(p) for p in client.parameters()}
        s = {id(p) for p in server.parameters()}
        assert not c & s
        assert len(c | s) == len(list(model.parameters()))
    # the paper's cut: the whole language model but its embeddings is on the server
    server = ServerPart(model, 0)
    assert all(any(p is q for q in server.parameters()) for p in model.lm.model.layers.parameters())


def test_quantized_split_sends_codes_and_trains():
    torch.manual_seed(0)
    model = TinyLlava(preset("tiny", quantizer="learned", bits=2))
    split = SplitTinyLlava(model)
    pixels, ids, lengths = batch(model.config)
    quantized = split.client(pixels, ids)
    assert quantized["image"].payload.shape == (3, model.config.image_tokens, model.lm_hidden)
    assert quantized["text"].payload.bits == 2
    logits, dist = split(pixels, ids, lengths)
    (logits.sum() + dist).backward()
    assert model.quant_encoders["image"].proj.weight.grad.abs().sum() > 0
    assert model.vision.model.embeddings.patch_embedding.weight.grad.abs().sum() > 0


def test_save_and_load_pretrained_round_trip(tmp_path):
    torch.manual_seed(0)
    model = TinyLlava(preset("tiny", quantizer="learned", bits=3))
    model.save_pretrained(tmp_path / "m")
    loaded = TinyLlava.from_pretrained(str(tmp_path / "m"))
    assert loaded.config == model.config
    pixels, ids, lengths = batch(model.config)
    assert torch.equal(loaded(pixels, ids, lengths), model(pixels, ids, lengths))
    # another quantizer on the same weights: the model weights carry over
    other = TinyLlava.from_pretrained(str(tmp_path / "m"), quantizer="uniform", bits=2)
    assert torch.equal(other(pixels, ids, lengths), model(pixels, ids, lengths))
    assert json.loads((tmp_path / "m" / "config.json").read_text())["bits"] == 3


def test_components_load_from_local_pretrained_paths(tmp_path):
    torch.manual_seed(0)
    vision = SiglipVisionModel(SiglipVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                                  num_attention_heads=2, image_size=8, patch_size=4))
    lm = LlamaForCausalLM(LlamaConfig(vocab_size=40, hidden_size=24, intermediate_size=48, num_hidden_layers=3,
                                      num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=False))
    vision.save_pretrained(tmp_path / "vision")
    lm.save_pretrained(tmp_path / "lm")
    cfg = preset("tiny", vision_path=str(tmp_path / "vision"), lm_path=str(tmp_path / "lm"))
    model = TinyLlava(cfg)
    assert model.lm_hidden == 24 and model.num_lm_layers == 3
    assert torch.equal(model.vision.model.embeddings.patch_embedding.weight, vision.embeddings.patch_embedding.weight)
    assert torch.equal(model.lm.model.layers[2].mlp.up_proj.weight, lm.model.layers[2].mlp.up_proj.weight)
    pixels, ids, lengths = batch(cfg, t=4)
    assert model(pixels, ids.clamp(max=39), lengths).shape == (3, 40)


def test_vit_tower_and_qwen2_language_model():
    model = TinyLlava(preset("tiny", vision_tower="vit", language_model="qwen2"))
    pixels, ids, lengths = batch(model.config)
    ref = model(pixels, ids, lengths)
    logits, _ = SplitTinyLlava(model, "lm:1")(pixels, ids, lengths)
    assert (logits - ref).abs().max() <= 1e-6


@pytest.mark.parametrize("name", ["tiny", "wide"])
def test_the_profile_command_runs_for_each_preset(name, capsys):
    from sltestbed.model import profile

    profile.main(["--preset", name, "--batch", "4"])
    assert capsys.readouterr().out.splitlines()[1].startswith("connector")


def test_cut_profile_counts():
    model = TinyLlava(preset("tiny"))
    pixels, ids, _ = batch(model.config, b=4)
    rows = cut_profile(model, pixels, ids)
    assert [r["cut"] for r in rows] == ["connector", "lm:1"]
    total = sum(p.numel() for p in model.parameters())
    per_sample = (model.config.image_tokens + ids.shape[1]) * model.lm_hidden
    for r in rows:
        assert r["client_parameters"] + r["server_parameters"] == total
        assert r["up_elements_per_sample"] == per_sample + 1  # activations and the label
        assert r["down_elements_per_sample"] == per_sample
    assert rows[1]["client_flops_per_sample"] > rows[0]["client_flops_per_sample"] > 0
    assert rows[1]["client_parameters"] > rows[0]["client_parameters"]
    vocab, d = model.config.vocab_size, model.lm_hidden
    client = cut_profile(model, pixels, ids, labels="client")[0]  # logits down, loss and d loss / d logits up
    assert (client["up_elements_per_sample"], client["down_elements_per_sample"]) == (per_sample + vocab + 1,
                                                                                      per_sample + vocab)
    u = cut_profile(model, pixels, ids, labels="u-shaped")[0]  # the hidden state down, loss and its gradient up
    assert (u["up_elements_per_sample"], u["down_elements_per_sample"]) == (per_sample + d + 1, per_sample + d)
    assert u["client_parameters"] == rows[0]["client_parameters"] + vocab * d  # the head moves to the client


@pytest.mark.parametrize("changes,message", [
    ({"vision_tower": "resnet"}, "unknown vision tower"),
    ({"language_model": "gpt9"}, "unknown language model"),
    ({"image_size": 10, "patch_size": 4}, "multiple of patch_size"),
    ({"lm_path": "/no/such/dir"}, "no such directory"),
    ({"quantizer": "learned", "bits": 0}, "out of range"),
    ({"quantizer": "zip"}, "unknown quantizer"),
])
def test_bad_configuration(changes, message):
    with pytest.raises(ValueError, match=message):
        preset("tiny", **changes)


def test_bad_cut_and_preset():
    with pytest.raises(ValueError, match="out of range"):
        parse_cut("lm:2", 2)
    with pytest.raises(ValueError, match="unknown cut"):
        parse_cut("middle", 2)
    with pytest.raises(ValueError, match="unknown preset"):
        preset("huge")
    with pytest.raises(ValueError, match="no such model directory"):
        TinyLlava.from_pretrained("/no/such/model")
    with pytest.raises(ValueError, match="unknown TinyLlavaConfig key"):
        TinyLlavaConfig.from_dict({"colour": "red"})


def test_a_bare_config_is_the_tiny_preset():
    from sltestbed.model import TinyLlavaConfig, preset

    assert TinyLlavaConfig() == preset("tiny")
