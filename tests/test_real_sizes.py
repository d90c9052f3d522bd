"""The real-size models built on the meta device: each component's weights within 1% of its
published count, and the cuts' arithmetic (tokens x width)."""

import pytest

from sltestbed.model.real_sizes import (PUBLISHED, component_parameters, language_model_size, mpsl_vit_cut,
                                        tinyllava_cut)
from sltestbed.model.openelm import make_divisible, openelm_270m


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_parameters_are_within_one_percent_of_the_published_count(name):
    ours, published = component_parameters(name), PUBLISHED[name].parameters
    assert abs(ours / published - 1) <= 0.01, (name, ours, published)


def test_openelm_schedule_grows_heads_and_ffn_over_the_layers():
    shape = openelm_270m()
    assert len(shape.layers) == 16 and shape.hidden_size == 1280
    assert (shape.layers[0].query_heads, shape.layers[0].kv_heads, shape.layers[0].ffn_dim) == (12, 3, 768)
    assert (shape.layers[-1].query_heads, shape.layers[-1].kv_heads, shape.layers[-1].ffn_dim) == (20, 5, 5120)
    assert make_divisible(640, 256) == 768 and make_divisible(100, 64) == 128  # never > 10% below


def test_the_connector_cut_sends_image_and_text_tokens_at_the_lm_width():
    cut = tinyllava_cut("qwen2-0.5b", text_tokens=10)
    assert cut.cut_elements == {"image": 729 * 896, "text": 10 * 896}
    assert cut.up_elements == cut.down_elements + 1
    lm = language_model_size("qwen2-0.5b")
    assert lm.tied and cut.server_params == lm.parameters  # the tied head: a server-side copy
    assert cut.client_params == component_parameters("siglip-so400m-384") + (1152 * 896 + 896) + (896 * 896 + 896) + lm.embedding
    assert cut.client_flops_per_sample > 2 * 400e6 * 729  # at least 2 FLOPs a weight a token through the tower


def test_the_mpsl_cut_is_the_vit_tokenizer():
    cut = mpsl_vit_cut()
    assert cut.cut_elements == {"image": 197 * 768}
    assert cut.client_params == 3 * 16 * 16 * 768 + 768 + 768 + 197 * 768  # conv, bias, CLS, positions
    assert cut.client_params + cut.server_params == cut.fedavg_params


@pytest.mark.parametrize("bad, message", [
    (lambda: language_model_size("gpt-5"), "unknown language model 'gpt-5'"),
    (lambda: component_parameters("resnet"), "unknown component 'resnet'"),
    (lambda: tinyllava_cut("phi-2", text_tokens=0), "text_tokens must be a positive integer"),
])
def test_bad_names_are_refused(bad, message):
    with pytest.raises(ValueError, match=message):
        bad()
