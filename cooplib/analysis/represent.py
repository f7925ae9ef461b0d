"""Representation analysis of features (N samples x D features) read by `cooplib.models.taps`.

Used to ask whether distillation moves a student's representations toward its teacher's:
every function takes plain feature matrices of a fixed evaluation set, so teacher, each
student and the pure student are compared stage by stage on the same images.

- `linear_cka` (Kornblith et al., ICML 2019): similarity of two representations of the
  same samples, invariant to orthogonal transforms and isotropic scaling; the
  ``debiased`` form uses the unbiased HSIC estimator (Song et al. 2012, as in Nguyen,
  Raghu, Kornblith 2021), whose value for independent features is near 0 rather than
  biased upward at small N / large D.
- `pca_spectrum`: explained variance ratio per principal component.
- `participation_ratio`: effective dimensionality (sum lambda)^2 / sum lambda^2 of the
  covariance eigenvalues; d for isotropic d-dimensional data, 1 for a single direction.
- `principal_angles`: between the top-k principal subspaces of two representations of
  the same samples, in sample space (0 = same subspace, pi/2 = orthogonal).
- `fisher_ratio` (trace of between-class over within-class scatter) and
  `linear_probe_accuracy` (a ridge-classifier probe on a split of the evaluation set):
  class separability.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch


def _np(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().double().numpy()
    x = np.asarray(x, dtype=np.float64)
    return x.reshape(len(x), -1)


def _centered(x) -> np.ndarray:
    x = _np(x)
    return x - x.mean(0, keepdims=True)


def _hsic_unbiased(k: np.ndarray, l: np.ndarray) -> float:
    """Unbiased HSIC estimator (Song et al. 2012) of two Gram matrices, diagonals zeroed."""
    n = len(k)
    k, l = k.copy(), l.copy()
    np.fill_diagonal(k, 0.0)
    np.fill_diagonal(l, 0.0)
    ones = np.ones(n)
    term = np.sum(k * l) + (ones @ k @ ones) * (ones @ l @ ones) / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * (ones @ k @ l @ ones)
    return float(term / (n * (n - 3)))


def linear_cka(x, y, debiased: bool = False) -> float:
    """Linear CKA between representations x (N, Dx) and y (N, Dy) of the same N samples."""
    x, y = _centered(x), _centered(y)
    if len(x) != len(y):
        raise ValueError(f"CKA needs the same samples: {len(x)} vs {len(y)} rows")
    if not debiased:
        xy = np.linalg.norm(y.T @ x) ** 2
        return float(xy / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)))
    if len(x) < 4:
        raise ValueError("debiased CKA needs at least 4 samples")
    k, l = x @ x.T, y @ y.T
    return float(_hsic_unbiased(k, l) / np.sqrt(_hsic_unbiased(k, k) * _hsic_unbiased(l, l)))


def _gram_eigen(x, vectors: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """Squared singular values of the centred data (largest first) and, if asked, its left
    singular vectors (N, r). From the smaller of the two symmetric eigenproblems: the
    N x N Gram matrix when the features (C x H x W of a stage) outnumber the samples,
    else the D x D scatter matrix (left vectors then X V / s): much cheaper than an SVD."""
    xc = _centered(x)
    n, d = xc.shape
    if d >= n:
        w, u = np.linalg.eigh(xc @ xc.T)
        order = np.argsort(w)[::-1]
        return np.clip(w[order], 0.0, None), (u[:, order] if vectors else None)
    w, v = np.linalg.eigh(xc.T @ xc)
    order = np.argsort(w)[::-1]
    w, v = np.clip(w[order], 0.0, None), v[:, order]
    if not vectors:
        return w, None
    keep = w > w[0] * 1e-12
    return w, (xc @ v[:, keep]) / np.sqrt(w[keep])


def _eigenvalues(x) -> np.ndarray:
    """Covariance eigenvalues, largest first."""
    w, _ = _gram_eigen(x, vectors=False)
    return w / max(1, len(_np(x)) - 1)


def pca_spectrum(x, k: int | None = None) -> np.ndarray:
    """Explained variance ratio of the principal components (the first `k`), summing to 1."""
    ev = _eigenvalues(x)
    ratio = ev / ev.sum()
    return ratio if k is None else ratio[:k]


def participation_ratio(x) -> float:
    """Effective dimensionality (sum lambda)^2 / sum lambda^2 of the covariance spectrum."""
    ev = _eigenvalues(x)
    return float(ev.sum() ** 2 / np.sum(ev ** 2))


def _sample_basis(x, k: int) -> np.ndarray:
    """Orthonormal basis (N, k) of the top-k principal subspace of x in sample space (the
    leading left singular vectors of the centred data): coordinate-free, so networks of
    different widths compare."""
    return _gram_eigen(x)[1][:, :k]


def principal_angles(x, y, k: int = 10) -> np.ndarray:
    """Principal angles (radians, ascending) between the top-k principal subspaces of two
    representations x (N, Dx) and y (N, Dy) of the same N samples, in sample space (as
    SVCCA does before its CCA step): 0 = the same subspace, pi/2 = orthogonal. Invariant
    to any invertible linear map of the features that keeps the top-k subspace."""
    bx, by = _sample_basis(x, k), _sample_basis(y, k)
    if len(bx) != len(by):
        raise ValueError(f"principal angles need the same samples: {len(bx)} vs {len(by)} rows")
    s = np.linalg.svd(bx.T @ by, compute_uv=False)
    return np.sort(np.arccos(np.clip(s, -1.0, 1.0)))


def fisher_ratio(x, y) -> float:
    """trace(S_between) / trace(S_within): spread of class means over spread within classes."""
    x, y = _np(x), np.asarray(y)
    mu = x.mean(0)
    between = within = 0.0
    for c in np.unique(y):
        xc = x[y == c]
        between += len(xc) * np.sum((xc.mean(0) - mu) ** 2)
        within += np.sum((xc - xc.mean(0)) ** 2)
    return float(between / within)


def linear_probe_accuracy(x, y, train_fraction: float = 0.5, seed: int = 0) -> float:
    """Top-1 (%) of a linear probe fitted on a stratified half of the samples (standardised
    features) and tested on the other half. The probe is a ridge-regression classifier
    (least squares on +-1 class targets, closed form): a logistic regression ranks the
    same representations alike but costs minutes on thousands of features on a CPU."""
    from sklearn.linear_model import RidgeClassifier
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = _np(x), np.asarray(y)
    xa, xb, ya, yb = train_test_split(x, y, train_size=train_fraction, stratify=y, random_state=seed)
    probe = make_pipeline(StandardScaler(), RidgeClassifier(alpha=1.0))
    probe.fit(xa, ya)
    return float(100.0 * probe.score(xb, yb))


def cka_matrix(a: dict, b: dict, debiased: bool = True) -> pd.DataFrame:
    """CKA of every stage of `a` (rows) against every stage of `b` (columns)."""
    return pd.DataFrame({nb: {na: linear_cka(fa, fb, debiased) for na, fa in a.items()} for nb, fb in b.items()})


def stage_summary(features: dict, y) -> pd.DataFrame:
    """Per stage: feature dimension, effective dimension, top-1 PC's variance share,
    Fisher ratio and linear-probe top-1."""
    rows = []
    for stage, f in features.items():
        ratio = pca_spectrum(f)
        rows.append({"stage": stage, "features": _np(f).shape[1], "effective dim": participation_ratio(f),
                     "PC1 share": float(ratio[0]), "Fisher ratio": fisher_ratio(f, y),
                     "probe top-1 %": linear_probe_accuracy(f, y)})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- features of trained runs

def evaluation_set(config, limit: int | None = None):
    """The fixed evaluation set of a run's config: its test images, normalised as the
    training loop does (``(x/255 - mean)/std``), and labels; the first `limit` if given."""
    from ..data import DeviceLoader
    from ..engine.experiment import load_data

    data = load_data(config)
    x, y = data.x_test[:limit], data.y_test[:limit]
    loader = DeviceLoader(x, y, 256, device="cpu", mean=data.mean, std=data.std)
    return loader.normalize(x), y.numpy()


def run_features(run_dir, x: torch.Tensor, stages=("layer1", "layer2", "layer3", "pool")) -> dict:
    """Features of a run's deployed network (last-epoch weights) at the named stages,
    read by forward hooks (`cooplib.models.taps.collect`), as (N, features) numpy arrays."""
    from ..engine.experiment import load_learner
    from ..models.taps import collect

    net = load_learner(run_dir, "last").deployable()
    return {k: v.numpy() for k, v in collect(net, x, stages).items()}
