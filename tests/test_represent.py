"""Representation measures against their closed forms."""
from __future__ import annotations

import numpy as np
import pytest

from cooplib.analysis import represent


def gauss(n, d, seed=0):
    return np.random.default_rng(seed).standard_normal((n, d))


def test_cka_invariant_to_orthogonal_transform_and_isotropic_scaling():
    x = gauss(200, 12)
    q, _ = np.linalg.qr(gauss(12, 12, seed=1))
    for debiased in (False, True):
        assert represent.linear_cka(x, x @ q, debiased) == pytest.approx(1.0, abs=1e-9)
        assert represent.linear_cka(x, 5.0 * x, debiased) == pytest.approx(1.0, abs=1e-9)
    y = gauss(200, 7, seed=2)
    assert represent.linear_cka(x, 3.0 * y) == pytest.approx(represent.linear_cka(x, y), rel=1e-9)
    # not invariant to an arbitrary linear map (so the test can fail)
    a = gauss(12, 12, seed=3) * np.linspace(0.1, 3, 12)
    assert represent.linear_cka(x, x @ a) < 0.99


def test_debiased_cka_of_independent_features_is_near_zero():
    x, y = gauss(100, 500, seed=0), gauss(100, 500, seed=1)
    assert abs(represent.linear_cka(x, y, debiased=True)) < 0.05
    assert represent.linear_cka(x, y) > 0.5  # the biased estimator is far from 0 when d >> n


def test_participation_ratio_and_spectrum():
    x = gauss(20000, 6)
    assert represent.participation_ratio(x) == pytest.approx(6.0, rel=0.02)
    line = np.outer(gauss(300, 1)[:, 0], np.ones(5))
    assert represent.participation_ratio(line) == pytest.approx(1.0, abs=1e-6)
    ratio = represent.pca_spectrum(x * np.array([3, 1, 1, 1, 1, 1]))
    assert ratio.sum() == pytest.approx(1.0) and ratio[0] == pytest.approx(9 / 14, rel=0.05)


def test_principal_angles():
    x = gauss(300, 10)
    q, _ = np.linalg.qr(gauss(10, 10, seed=1))
    assert np.allclose(represent.principal_angles(x, x, k=4), 0.0, atol=1e-6)
    assert np.allclose(represent.principal_angles(x, 2.0 * x @ q, k=10), 0.0, atol=1e-6)
    basis, _ = np.linalg.qr(gauss(300, 6, seed=2) - gauss(300, 6, seed=2).mean(0))  # centred, orthonormal
    e, f = basis[:, :3] @ gauss(3, 5, seed=3), basis[:, 3:] @ gauss(3, 8, seed=4)  # orthogonal sample subspaces
    assert np.allclose(represent.principal_angles(e, f, k=3), np.pi / 2, atol=1e-6)
    assert not np.allclose(represent.principal_angles(x, gauss(300, 10, seed=5), k=3), 0.0, atol=0.1)


def test_separability():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 100)
    separated = rng.standard_normal((300, 4)) + 10 * np.eye(3, 4)[y]
    mixed = rng.standard_normal((300, 4))
    assert represent.fisher_ratio(separated, y) > 10 * represent.fisher_ratio(mixed, y)
    assert represent.linear_probe_accuracy(separated, y) > 95
    assert represent.linear_probe_accuracy(mixed, y) < 60
    # Fisher ratio of two points per class at distance 2 from means at distance 2: closed form
    pts, lab = np.array([[-1.0], [1.0], [9.0], [11.0]]), np.array([0, 0, 1, 1])
    assert represent.fisher_ratio(pts, lab) == pytest.approx((4 * 25) / 4)
