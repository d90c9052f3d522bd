import math

import numpy as np
import pytest

from sltestbed.entropy import code_entropy, kde_entropy, select_bits, silverman_bandwidth

GAUSS_BITS = 0.5 * math.log2(2 * math.pi * math.e)  # 2.047


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kde_entropy_of_standard_normal(seed):
    z = np.random.default_rng(seed).normal(size=20_000)
    assert abs(kde_entropy(z).entropy_bits - GAUSS_BITS) <= 0.03


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kde_entropy_of_uniform_with_boundary_correction(seed):
    z = np.random.default_rng(seed).uniform(-1, 1, 20_000)
    assert abs(kde_entropy(z, support=(-1, 1)).entropy_bits - 1.0) <= 0.03
    # without reflection the plain Gaussian KDE is biased at the edges
    assert kde_entropy(z).entropy_bits - 1.0 > 0.03


def test_kde_scales_with_the_data():
    z = np.random.default_rng(0).normal(size=20_000)
    assert kde_entropy(4 * z).entropy_bits - kde_entropy(z).entropy_bits == pytest.approx(2.0, abs=0.02)


def test_kde_density_integrates_to_one():
    z = np.random.default_rng(0).uniform(-1, 1, 5000)
    kde = kde_entropy(z, support=(-1, 1))
    assert np.trapezoid(kde.density, kde.grid) == pytest.approx(1.0, abs=0.01)


def test_silverman_bandwidth():
    z = np.random.default_rng(0).normal(size=10_000)
    assert silverman_bandwidth(z) == pytest.approx(0.9 * 10_000 ** -0.2, rel=0.05)


def test_code_entropy():
    assert code_entropy(np.array([0, 1, 2, 3] * 100)) == pytest.approx(2.0)
    assert code_entropy(np.zeros(10, dtype=int)) == 0.0


def test_select_bits_reports_and_chooses():
    rng = np.random.default_rng(0)
    peaked = np.clip(rng.normal(0, 1 / 3, 50_000), -1, 1)
    flat = rng.uniform(-1, 1, 50_000)
    loose, tight = select_bits(peaked, max_rel_mse=0.1), select_bits(peaked, max_rel_mse=0.005)
    assert loose.bits < tight.bits
    for choice in (loose, tight):
        assert choice.bits >= choice.needed_bits > choice.bits - 1  # smallest b >= H*
        assert len(choice.rows) == 8 and "H*" in choice.reason
        # high-resolution entropy approximation agrees with the measured code entropy at 4+ bits
        for row in choice.rows[3:]:
            assert row.highres_entropy == pytest.approx(row.code_entropy, abs=0.05)
    # H* = h - log2(sqrt(12 budget var)): for Uniform(-1, 1), h = 1 and var = 1/3
    flat_choice = select_bits(flat, 0.01)
    assert flat_choice.needed_bits == pytest.approx(1 - 0.5 * math.log2(12 * 0.01 / 3), abs=0.03)
    assert flat_choice.bits == 4


@pytest.mark.parametrize("bad,kwargs,message", [
    (np.array([1.0]), {}, "at least 2"),
    (np.array([0.0, np.nan]), {}, "NaN"),
    (np.zeros(100), {}, "constant"),
    (np.linspace(-1, 1, 100), {"max_rel_mse": 0}, "max_rel_mse"),
    (np.linspace(-2, 2, 100), {}, "outside the support"),
])
def test_bad_input(bad, kwargs, message):
    with pytest.raises(ValueError, match=message):
        select_bits(bad, **kwargs)
