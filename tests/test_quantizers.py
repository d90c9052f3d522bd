import itertools
import math
from fractions import Fraction
from statistics import NormalDist

import pytest
import torch
from torch.autograd.functional import vjp

from sltestbed.quantizers import SCHEMES, build_quantizer, dequantize, implied_bits, scheme_class

SHAPES = [(1,), (7,), (3, 5), (2, 3, 7), (2, 3, 5, 7)]


def bits_of(name):
    return [None] if name in ("fp32", "fp16", "bf16") else list(scheme_class(name).bits_range)


@pytest.mark.parametrize("name", SCHEMES)
def test_forward_values_equal_dequantized_payload(name):
    """Every bit width and shape: the training path's values are the wire path's reconstruction,
    and each code field costs exactly b bits per element."""
    for bits in bits_of(name):
        for shape in SHAPES:
            torch.manual_seed(0)
            x = torch.randn(shape)
            enc, dec = build_quantizer(name, bits, dim=shape[-1])
            out = enc(x)
            assert out.values.shape == x.shape, (bits, shape)
            assert torch.equal(out.values.detach(), dequantize(out.payload)), (bits, shape)
            assert torch.equal(dequantize(enc.encode(x)), dequantize(out.payload)), (bits, shape)
            assert dec(out.values).shape == x.shape
            codes = [f for f in out.payload.fields if f.is_codes]
            if name != "topk":
                assert all(f.numel == x.numel() and f.ideal_bits == x.numel() * bits for f in codes), (bits, shape)


# --- straight-through gradients ---------------------------------------------------------------
#
# Each scheme's values are exact reconstructions in the forward pass and carry the gradient of
# a differentiable "pre-rounding" map backwards. The expected gradient is computed here from
# each scheme's documented formula, in float64, with torch.autograd.functional.vjp.

def _fsq_reference(bits):
    """Mentzer et al.: bound(z) = tanh(z + shift) * half_l - offset, scaled by 1 / floor(L/2)."""
    L = 2**bits
    half_l = (L - 1) * (1 + 1e-3) / 2
    offset = 0.5 if L % 2 == 0 else 0.0
    shift = math.atanh(offset / half_l)
    return lambda z: (torch.tanh(z + shift) * half_l - offset) / (L // 2)


def _learned_reference(z_of_u_clip=3.0):
    """u = W x + b; q_min, q_max = mu -+ 3 sigma of u (whole tensor, unbiased std);
    z = 2 (clip(u) - q_min + 1e-4) / (q_max - q_min + 1e-4) - 1."""
    def z(u):
        mu, sigma = u.mean(), u.std()
        lo, hi = mu - z_of_u_clip * sigma, mu + z_of_u_clip * sigma
        return 2 * (torch.clamp(u, lo, hi) - lo + 1e-4) / (hi - lo + 1e-4) - 1
    return z


def _linear(layer):
    if layer is None:
        return lambda x: x
    w, b = layer.weight.detach().double(), layer.bias.detach().double()
    return lambda x: x @ w.T + b


def _grad_through_values(enc, x, g):
    x = x.clone().requires_grad_(True)
    enc(x).values.backward(g)
    return x.grad


def _ste_cases():
    """(scheme, bits, options, reference map or None for the identity)."""
    for name in SCHEMES:
        for bits in bits_of(name):
            if name == "uniform":
                for options in ({}, {"per_channel": True}, {"stochastic": True}, {"per_channel": True, "stochastic": True}):
                    yield name, bits, options
            elif name in ("learned", "fsq"):
                for projection in (False, True):
                    yield name, bits, {"projection": projection}
            else:
                yield name, bits, {}


@pytest.mark.parametrize("name", SCHEMES)
def test_straight_through_gradient_is_exactly_the_documented_one(name):
    g_gen = torch.Generator().manual_seed(1)
    x = torch.randn(6, 10, 8, generator=torch.Generator().manual_seed(0)) * 1.5
    for scheme, bits, options in _ste_cases():
        if scheme != name:
            continue
        case = (bits, options)
        enc, _ = build_quantizer(name, bits, dim=8, **options)
        if getattr(enc, "proj", None) is not None:  # a projection that is not the identity
            with torch.no_grad():
                enc.proj.weight.copy_(torch.eye(8) + 0.3 * torch.randn(8, 8, generator=g_gen))
                enc.proj.bias.copy_(0.1 * torch.randn(8, generator=g_gen))
        g = torch.randn(x.shape, generator=g_gen)
        got = _grad_through_values(enc, x, g)
        if name == "fsq":
            ref, project = _fsq_reference(bits), _linear(enc.proj)
            _, expected = vjp(lambda t, ref=ref, project=project: ref(project(t)), x.double(), g.double())
        elif name == "learned":
            ref, project = _learned_reference(), _linear(enc.proj)
            _, expected = vjp(lambda t, ref=ref, project=project: ref(project(t)), x.double(), g.double())
        else:  # every other scheme rounds x itself: the gradient passes unchanged
            assert torch.equal(got, g), case
            continue
        assert expected.abs().max() > 0
        assert torch.allclose(got.double(), expected, rtol=1e-4, atol=1e-5 * float(expected.abs().max())), case


def test_learned_gradient_flows_through_the_statistics():
    """The clip range mu -+ 3 sigma is differentiable: a gradient on one element reaches all."""
    enc, _ = build_quantizer("learned", 2, projection=False)
    x = torch.randn(50, generator=torch.Generator().manual_seed(0))
    g = torch.zeros(50)
    g[0] = 1.0
    grad = _grad_through_values(enc, x, g)
    assert (grad[1:] != 0).all()


def test_learned_quantizer_gradient_reaches_both_projections():
    torch.manual_seed(0)
    enc, dec = build_quantizer("learned", 2, dim=16)
    out = enc(torch.randn(4, 8, 16))
    (dec(out.values).pow(2).mean() + 0.25 * out.loss).backward()
    assert enc.proj.weight.grad.abs().sum() > 0 and dec.proj.weight.grad.abs().sum() > 0


# --- reconstruction against each scheme's definition -------------------------------------------

def test_learned_values_are_exactly_the_grid_and_within_half_a_step():
    """2^b levels {-1 + 2 j / (L-1)} (the float32 nearest each, +-1 included), every one used
    on 200,000 Gaussian values, and the nearest level to the normalised feature."""
    x = torch.randn(200_000, generator=torch.Generator().manual_seed(0))
    z = _learned_reference()(x.double())
    for bits in range(1, 9):
        L = 2**bits
        grid = torch.tensor([float(Fraction(2 * j, L - 1) - 1) for j in range(L)], dtype=torch.float64).float()
        values = build_quantizer("learned", bits, projection=False)[0](x).values.detach()
        assert torch.equal(values.unique(), grid), bits
        assert (values.double() - z).abs().max() <= 1 / (L - 1) + 1e-6, bits


def test_fsq_matches_its_definition():
    z = torch.randn(4000, generator=torch.Generator().manual_seed(0)) * 2
    for bits in range(2, 9):
        L = 2**bits
        bound = _fsq_reference(bits)
        expected = torch.round(bound(z) * (L // 2)) / (L // 2)  # round(bound(z)) / floor(L/2)
        got = build_quantizer("fsq", bits)[0](z).values.detach()
        assert torch.equal(got, expected), bits
        assert got.unique().numel() <= L and got.min() >= -1 and got.max() <= 1 - 2 / L + 1e-7
        assert (got.double() - bound(z.double())).abs().max() <= 0.5 / (L // 2) + 1e-6, bits


def test_uniform_error_is_at_most_half_a_step():
    x = torch.randn(64, 8, generator=torch.Generator().manual_seed(0)) * torch.linspace(0.1, 5, 8) + torch.arange(8.0)
    tol = 1e-6 * float(x.abs().max())
    for bits in range(1, 9):
        top = 2**bits - 1
        for per_channel in (False, True):
            lo = x.amin(0) if per_channel else x.min()
            hi = x.amax(0) if per_channel else x.max()
            step = (hi - lo) / top
            for stochastic in (False, True):
                enc, _ = build_quantizer("uniform", bits, per_channel=per_channel, stochastic=stochastic)
                x_hat = enc(x).values.detach()
                err = (x - x_hat).abs()
                # round to nearest: half a step; floor(v + U[0, 1)): less than a step
                assert (err <= (step if stochastic else step / 2) + tol).all(), (bits, per_channel, stochastic)
                assert ((x_hat >= lo - tol) & (x_hat <= hi + tol)).all()


def _nf_levels(bits):
    """QLoRA's NormalFloat: 2^(b-1) positive and 2^(b-1) - 1 negative normal quantiles,
    an exact zero, scaled to [-1, 1]."""
    n = 2**bits
    offset = 1 - 0.5 * (1 / (2 * n) + 1 / (2 * (n - 1)))
    ppf = NormalDist().inv_cdf

    def quantiles(count):  # linspace(offset, 0.5, count + 1) without its last point
        return [ppf(offset + (0.5 - offset) * i / count) for i in range(count)]

    levels = sorted(quantiles(n // 2) + [0.0] + [-q for q in quantiles(n // 2 - 1)])
    top = max(abs(v) for v in levels)
    return torch.tensor([v / top for v in levels], dtype=torch.float64)


def test_nf_rounds_each_block_to_its_nearest_level():
    x = torch.randn(10, 70, generator=torch.Generator().manual_seed(0)) * torch.exp(torch.randn(10, 70))
    flat = x.reshape(-1).double()
    blocks = torch.nn.functional.pad(flat, (0, (-flat.numel()) % 64)).view(-1, 64)
    absmax = blocks.abs().amax(1).repeat_interleave(64)[: flat.numel()]
    for bits in range(2, 9):
        levels = _nf_levels(bits)
        assert levels[0] == -1 and levels[-1] == 1 and (levels == 0).sum() == 1 and levels.numel() == 2**bits
        x_hat = build_quantizer("nf", bits)[0](x).values.detach().reshape(-1).double()
        scaled, got = flat / absmax, x_hat / absmax
        distance = (scaled[:, None] - levels[None, :]).abs()
        assert (distance.amin(1) - (scaled - got).abs()).abs().max() < 1e-6, bits  # the nearest level
        assert ((got[:, None] - levels[None, :]).abs().amin(1) < 1e-6).all(), bits  # a level
        half_gap = float((levels[1:] - levels[:-1]).max()) / 2
        assert ((flat - x_hat).abs() <= absmax * half_gap + 1e-6).all(), bits


def test_nf_block_larger_than_the_tensor_costs_nothing_extra():
    """A block size past the tensor's size is one block: encoding and decoding work in O(n),
    whatever the block size says (a received payload may say 2^32 - 1)."""
    x = torch.randn(3, 5, generator=torch.Generator().manual_seed(0))
    whole = build_quantizer("nf", 4, block_size=15)[0].encode(x)
    for bs in (2**62, 2**32 - 1, 16):  # the first fails at once where the work grows with bs
        p = build_quantizer("nf", 4, block_size=bs)[0].encode(x)
        assert p.params == (bs,) and p.fields[1].numel == 1
        assert torch.equal(p.fields[0].data, whole.fields[0].data) and torch.equal(p.fields[1].data, whole.fields[1].data)
        assert torch.equal(dequantize(p), dequantize(whole))


def test_topk_keeps_the_largest_magnitudes_exactly_as_float16():
    x = torch.randn(1000, generator=torch.Generator().manual_seed(0)) * 3
    for bits in range(1, 9):
        k = math.ceil(1000 * bits / 16)
        p = build_quantizer("topk", bits)[0].encode(x)
        assert p.fields[0].numel == k and p.fields[1].numel == 1000
        assert p.ideal_bits == 16 * k + 1000  # more than b bits per element, honestly
        x_hat = dequantize(p)
        kept = x_hat != 0
        assert int(kept.sum()) == k, bits
        assert torch.equal(x_hat[kept], x[kept].half().float()), bits
        assert x[kept].abs().min() >= x[~kept].abs().max(), bits


def test_passthrough_values_are_torch_casts():
    assert implied_bits("fp32") == 32 and implied_bits("fp16") == 16 and implied_bits("bf16") == 16
    x = torch.randn(3, 40, generator=torch.Generator().manual_seed(0)) * 1e3
    for name, cast in (("fp32", torch.float32), ("fp16", torch.float16), ("bf16", torch.bfloat16)):
        enc, _ = build_quantizer(name)
        assert torch.equal(enc(x).values.detach(), x.to(cast).float()), name
        assert torch.equal(dequantize(enc.encode(x)), x.to(cast).float()), name


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
    assert all(a > b for a, b in itertools.pairwise(errors)), errors


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
    for bits in range(2, 9):
        assert torch.allclose(torch.tensor(nf_levels(bits), dtype=torch.float64), _nf_levels(bits), atol=1e-12)


def test_bad_bits_or_names():
    for name, bits, message in [
        ("learned", 0, "out of range"), ("learned", 9, "out of range"), ("nf", 1, "out of range"),
        ("fsq", 1, "out of range"), ("fp16", 8, "16 bits"), ("nope", 2, "unknown quantizer"),
    ]:
        with pytest.raises(ValueError, match=message):
            build_quantizer(name, bits, dim=4)


@pytest.mark.parametrize("name", SCHEMES)
def test_bad_features(name):
    for bad, message in [
        (torch.tensor([1.0, float("nan"), 2.0]), "NaN or Inf"),
        (torch.tensor([1.0, float("inf"), 2.0]), "NaN or Inf"),
        (torch.empty(0, 3), "empty"),
        (torch.ones(3, 3, dtype=torch.int64), "floating-point"),
    ]:
        enc, _ = build_quantizer(name, None if name.startswith(("fp", "bf")) else 4, dim=bad.shape[-1])
        with pytest.raises(ValueError, match=message):
            enc.encode(bad)
        with pytest.raises(ValueError, match=message):
            enc(bad)


def test_unknown_option_is_named():
    with pytest.raises(ValueError, match="block_size"):
        build_quantizer("uniform", 2, block_size=3)
