"""Frechet distance between Gaussians fitted to features (FID, FVD), in float64.

FD = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^{1/2}).
tr((S1 S2)^{1/2}) is computed as the sum of square roots of the eigenvalues of the symmetric
matrix S1^{1/2} S2 S1^{1/2} (same spectrum as S1 S2), which is numerically stable where a general
matrix square root is not; eigenvalues below 0 from round-off are clipped, and ``eps`` is added
to both diagonals (the usual pytorch-fid remedy) when S1 is singular.
"""

from __future__ import annotations

import numpy as np


def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, D) features -> mean (D,) and unbiased covariance (D, D), float64."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"need (N >= 2, D) features, got {f.shape}")
    return f.mean(0), np.cov(f, rowvar=False)


def _sqrtm_psd(s: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((s + s.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    diff = mu1 - mu2
    r1 = _sqrtm_psd(s1)
    if np.linalg.matrix_rank(s1) < s1.shape[0]:
        offset = eps * np.eye(s1.shape[0])
        r1 = _sqrtm_psd(s1 + offset)
        s2 = s2 + offset
        s1 = s1 + offset
    m = r1 @ s2 @ r1
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)


def frechet_from_features(a: np.ndarray, b: np.ndarray, eps: float = 1e-6) -> float:
    return frechet_distance(*feature_stats(a), *feature_stats(b), eps=eps)
