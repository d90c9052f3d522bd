import math

import pytest
import torch

from sltestbed.quantizers import SCHEMES, build_quantizer, dequantize, implied_bits, scheme_class

SHAPES = [(1,), (7,), (3, 5), (2, 3, 7), (2, 3, 5, 7)]


def all_schemes_and_bits():
    for name in SCHEMES:
        for b in scheme_class(name).bits_range:
            yield name, b


@pytest.mark.parametrize("name,bits", list(all_schemes_and_bits()))
@pytest.mark.parametrize("shape", SHAPES)
def test_forward_values_equal_dequantized_payload(name, bits, shape):
    torch.manual_seed(0)
    x = torch.randn(shape)
    enc, dec = build_quantizer(name, bits, dim=shape[-1])
    out = enc(x)
    assert out.values.shape == x.shape
    assert torch.equal(out.values.detach(), dequantize(out.payload))
    assert torch.equal(dequantize(enc.encode(x)), dequantize(out.payload))
    assert dec(out.values).shape == x.shape


@pytest.mark.parametrize("name,bits", [(n, b) for n, b in all_schemes_and_bits() if n not in ("topk",)])
def test_codes_cost_bits_per_element(name, bits):
    x = torch.randn(4, 9, 6)
    p = build_quantizer(name, bits, dim=6)[0].encode(x)
    assert p.fields[0].numel == x.numel()
    assert p.fields[0].ideal_bits == x.numel() * bits


def test_topk_counts_mask_and_values():
    x = torch.randn(1000)
    p = build_quantizer("topk", 2)[0].encode(x)
    k = math.ceil(1000 * 2 / 16)
    assert p.fields[0].numel == k and p.fields[1].numel == 1000
    assert p.ideal_bits == 16 * k + 1000  # more than 2 bits per element, honestly
    kept = dequantize(p)
    assert (kept != 0).sum() == k
    assert kept.abs().max() == pytest.approx(x.abs().max().item(), rel=1e-3)


def test_passthrough_bits_are_implied():
    assert implied_bits("fp32") == 32 and implied_bits("fp16") == 16 and implied_bits("bf16") == 16
    x = torch.randn(3, 4)
    assert torch.equal(dequantize(build_quantizer("fp32")[0].encode(x)), x)
    assert torch.equal(dequantize(build_quantizer("fp16")[0].encode(x)), x.half().float())


@pytest.mark.parametrize("name", ["learned", "uniform", "nf", "fsq"])
def test_reconstruction_error_falls_as_bits_grow(name):
    torch.manual_seed(0)
    x = torch.randn(64, 32)
    errors = []
    for b in scheme_class(name).bits_range:
        enc, _ = build_quantizer(name, b, dim=32)
        out = enc(x)
        target = x if name in ("uniform", "nf") else enc.prepare(x).detach() if name == "fsq" else None
        if name == "learned":
            u = x  # identity projection at init: values approximate the normalised features
            mu, sigma = u.mean(), u.std()
            target = 2 * (u.clamp(mu - 3 * sigma, mu + 3 * sigma) - (mu - 3 * sigma)) / (6 * sigma) - 1
        errors.append((out.values.detach() - target).pow(2).mean().item())
    assert all(a > b for a, b in zip(errors, errors[1:])), errors


def test_learned_quantizer_gradient_reaches_projection():
    torch.manual_seed(0)
    enc, dec = build_quantizer("learned", 2, dim=16)
    x = torch.randn(4, 8, 16)
    out = enc(x)
    loss = dec(out.values).pow(2).mean() + 0.25 * out.loss
    loss.backward()
    assert enc.proj.weight.grad is not None and enc.proj.weight.grad.abs().sum() > 0
    assert dec.proj.weight.grad.abs().sum() > 0


def test_learned_distortion_loss_falls_on_fixed_batch():
    torch.manual_seed(0)
    enc, _ = build_quantizer("learned", 2, dim=16)
    x = torch.randn(8, 10, 16) * torch.linspace(0.1, 3, 16)
    opt = torch.optim.Adam(enc.parameters(), lr=1e-2)
    losses = []
    for _ in range(60):
        out = enc(x)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    assert losses[-1] < 0.7 * losses[0], (losses[0], losses[-1])


def test_learned_levels_include_plus_minus_one():
    enc, _ = build_quantizer("learned", 2, dim=4, projection=False)
    x = torch.randn(1000, 4, generator=torch.Generator().manual_seed(0))
    values = enc(x).values.unique()
    assert values.tolist() == pytest.approx([-1, -1 / 3, 1 / 3, 1])


def test_fsq_matches_vector_quantize_pytorch():
    vqp = pytest.importorskip("vector_quantize_pytorch")
    torch.manual_seed(0)
    for bits in range(2, 9):
        L = 2**bits
        d = 2  # the library's flat indices are float32 sums: exact only below 2^24 codes
        theirs = vqp.FSQ(levels=[L] * d)
        ours, _ = build_quantizer("fsq", bits)
        z = torch.randn(2, 50, d) * 2
        expected, indices = theirs(z)
        got = ours(z).values
        assert torch.allclose(got, expected, atol=1e-6), bits
        # same per-dimension level indices
        level_idx = theirs.indices_to_level_indices(indices).reshape(-1)
        assert torch.equal(ours.encode(z).fields[0].data.reshape(-1).long(), level_idx.long())


def test_uniform_stochastic_rounding_is_unbiased_and_seeded():
    x = torch.cat([torch.tensor([0.0, 1.0]), torch.full((200_000,), 0.3)])
    a = build_quantizer("uniform", 1, stochastic=True, seed=3)[0].encode(x)
    b = build_quantizer("uniform", 1, stochastic=True, seed=3)[0].encode(x)
    assert torch.equal(a.fields[0].data, b.fields[0].data)
    mean = dequantize(a).mean().item()
    assert mean == pytest.approx(x.mean().item(), abs=5e-3)
    deterministic = dequantize(build_quantizer("uniform", 1)[0].encode(x)).mean().item()
    assert abs(deterministic - x.mean().item()) > 0.1  # round-to-nearest is biased here


def test_uniform_per_channel_uses_one_scale_per_channel():
    x = torch.randn(10, 6) * torch.arange(1, 7)
    p = build_quantizer("uniform", 4, per_channel=True)[0].encode(x)
    assert p.fields[1].numel == 6 and p.fields[2].numel == 6
    per_tensor = dequantize(build_quantizer("uniform", 4)[0].encode(x))
    assert (dequantize(p) - x).pow(2).mean() < (per_tensor - x).pow(2).mean()


def test_nf_levels_are_normal_quantiles_with_zero():
    from sltestbed.quantizers import nf_levels
    nf4 = nf_levels(4)
    assert len(nf4) == 16 and 0.0 in nf4 and nf4[0] == -1.0 and nf4[-1] == 1.0
    assert nf4[7] == 0.0 and nf4[8] == pytest.approx(0.0796, abs=1e-4)  # QLoRA's NF4 table
    assert nf4[6] == pytest.approx(-0.0911, abs=1e-4) and nf4[1] == pytest.approx(-0.6962, abs=1e-4)


@pytest.mark.parametrize("name,bits,message", [
    ("learned", 0, "out of range"), ("learned", 9, "out of range"), ("nf", 1, "out of range"),
    ("fsq", 1, "out of range"), ("fp16", 8, "16 bits"), ("nope", 2, "unknown quantizer"),
])
def test_bad_bits_or_names(name, bits, message):
    with pytest.raises(ValueError, match=message):
        build_quantizer(name, bits, dim=4)


@pytest.mark.parametrize("name", SCHEMES)
@pytest.mark.parametrize("bad,message", [
    (torch.tensor([1.0, float("nan"), 2.0]), "NaN or Inf"),
    (torch.tensor([1.0, float("inf"), 2.0]), "NaN or Inf"),
    (torch.empty(0, 3), "empty"),
    (torch.ones(3, 3, dtype=torch.int64), "floating-point"),
])
def test_bad_features(name, bad, message):
    enc, _ = build_quantizer(name, None if name.startswith(("fp", "bf")) else 4, dim=bad.shape[-1])
    with pytest.raises(ValueError, match=message):
        enc.encode(bad)
    with pytest.raises(ValueError, match=message):
        enc(bad)


def test_unknown_option_is_named():
    with pytest.raises(ValueError, match="block_size"):
        build_quantizer("uniform", 2, block_size=3)
