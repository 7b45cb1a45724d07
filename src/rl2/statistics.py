"""Latents -> statistics: streaming float64 moments, a streaming bootstrap, and distances between sets.

Memory never grows with the number of images: a :class:`LatentStats` holds sums (d numbers each)
and, for the bootstrap, B weighted sums. The bootstrap is a Poisson bootstrap: every image gets an
independent Poisson(1) weight per replicate, drawn from a generator keyed by (seed, image index).
So replicates do not depend on batch size, worker count or the order in which batches arrive.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import linalg

from .errors import RL2Error

DEFAULT_BOOTSTRAP = 200
MIN_BOOTSTRAP = 20  # fewer replicates cannot place the 2.5% and 97.5% percentiles at all


def check_bootstrap(replicates: int, seed: int) -> None:
    """0 replicates (no interval) or at least MIN_BOOTSTRAP; seeds are 0 .. 2**32 - 1."""
    if not (replicates == 0 or replicates >= MIN_BOOTSTRAP) or int(replicates) != replicates:
        raise RL2Error(f"bootstrap: {replicates!r} replicates cannot give a 95% interval; use 0 (none) or at least {MIN_BOOTSTRAP}")
    check_seed(seed)


SEED_MAX = 2**32 - 1


def check_seed(seed: int) -> None:
    if not isinstance(seed, (int, np.integer)) or not 0 <= seed <= SEED_MAX:
        raise RL2Error(f"seed must be an integer from 0 to {SEED_MAX}, got {seed!r}")


def poisson_weights(seed: int, indices, replicates: int) -> np.ndarray:
    """One row of Poisson(1) bootstrap weights per image, keyed by its index: shape (len(indices), B)."""
    return np.stack([np.random.default_rng([seed, int(i)]).poisson(1.0, replicates) for i in indices])


class LatentStats:
    """Streaming first and second moments (per dimension) of a latent set, in float64.

    ``update(z, indices)`` may be called in any batch size; ``indices`` are global image positions
    (used only to key the bootstrap weights).
    """

    def __init__(self, dims: int, replicates: int = DEFAULT_BOOTSTRAP, seed: int = 0):
        check_bootstrap(replicates, seed)
        self.dims, self.replicates, self.seed = dims, replicates, seed
        self.n = 0
        self.sum = np.zeros(dims)
        self.sumsq = np.zeros(dims)
        self.boot_n = np.zeros(replicates)
        self.boot_sum = np.zeros((replicates, dims))
        self.boot_sumsq = np.zeros((replicates, dims))

    def update(self, z, indices) -> None:
        z = np.asarray(z, dtype=np.float64)
        self.n += len(z)
        self.sum += z.sum(0)
        self.sumsq += (z * z).sum(0)
        if self.replicates:
            w = poisson_weights(self.seed, indices, self.replicates)  # n x B
            self.boot_n += w.sum(0)
            self.boot_sum += w.T @ z
            self.boot_sumsq += w.T @ (z * z)

    @property
    def mean(self) -> np.ndarray:
        return self.sum / self.n

    @property
    def var(self) -> np.ndarray:
        """Unbiased per-dimension variance (NaN below 2 images)."""
        if self.n < 2:
            return np.full(self.dims, np.nan)
        return (self.sumsq - self.n * self.mean**2) / (self.n - 1)


@dataclass
class RefMoments:
    """What a reference keeps of its held-out real latents."""

    mean: np.ndarray
    var: np.ndarray
    n: int


def distance(mu_ref, var_ref, n_ref, mu_set, var_set, n_set) -> dict:
    """RL2 and its bias-corrected version from two sets of moments.

    E||m_ref - m_set||^2 = ||mu_ref - mu_set||^2 + tr(S_ref)/n_ref + tr(S_set)/n_set, so subtracting the
    two trace terms gives an unbiased estimate of the squared distance of the true means. That estimate
    can be negative when the sets agree; ``rl2_unbiased`` is sign(D2) * sqrt(|D2| / d) so it stays
    unbiased in sign and comparable in scale.
    """
    d = len(mu_ref)
    diff = np.asarray(mu_ref) - np.asarray(mu_set)
    sq = float(diff @ diff)
    out = {"l2": math.sqrt(sq), "rl2": math.sqrt(sq / d), "d2_unbiased": None, "rl2_unbiased": None}
    if n_set >= 2 and n_ref >= 2:
        d2 = sq - float(np.sum(var_ref)) / n_ref - float(np.sum(var_set)) / n_set
        out["d2_unbiased"] = d2
        out["rl2_unbiased"] = math.copysign(math.sqrt(abs(d2) / d), d2)
    return out


def bootstrap_reference(ref_latents: np.ndarray, replicates: int, seed: int):
    """Multinomial bootstrap of the stored reference latents: (B x d means, B x d variances, n)."""
    rng = np.random.default_rng([seed, 2**31])  # a stream apart from the set's Poisson weights
    z = np.asarray(ref_latents, dtype=np.float64)
    n = len(z)
    idx = rng.integers(0, n, size=(replicates, n))
    # Resample counts (B x n) instead of gathering B x n x d copies, which took gigabytes for large references.
    counts = np.stack([np.bincount(row, minlength=n) for row in idx]).astype(np.float64)
    mean = counts @ z / n
    var = (counts @ (z * z) - n * mean**2) / (n - 1)
    return mean, var, n


def score_sets(ref: RefMoments, ref_latents: np.ndarray | None, stats: LatentStats, seed: int = 0) -> dict:
    """The full score dict: rl2, l2, rl2_unbiased and (from 2 images up) a bootstrap 95% interval.

    ``ci95`` is an interval for the population RL2, the distance that infinitely many images would
    give. It comes from the bootstrap distribution of the bias-corrected squared distance, re-centred on
    the estimate (the replicates centre on the plug-in distance), percentile method, clipped at 0. Both the scored set and the reference's held-out latents are
    resampled, so the interval includes the reference's own sampling noise.
    """
    out = distance(ref.mean, ref.var, ref.n, stats.mean, stats.var, stats.n)
    out["ci95"] = None
    if stats.n >= 2 and stats.replicates and ref_latents is not None:
        r_mean, r_var, r_n = bootstrap_reference(ref_latents, stats.replicates, seed)
        ok = np.flatnonzero(stats.boot_n >= 2)
        if len(ok) == 0:  # possible with very few replicates and 2 images; no interval rather than a crash
            return out
        bn = stats.boot_n[ok][:, None]
        s_mean = stats.boot_sum[ok] / bn
        s_var = (stats.boot_sumsq[ok] - bn * s_mean**2) / (bn - 1)
        d2 = [distance(r_mean[i], r_var[i], r_n, s_mean[j], s_var[j], int(bn[j, 0]))["d2_unbiased"]
              for j, i in enumerate(ok)]
        # In the bootstrap world the "true" squared distance is the plug-in one (l2^2), so the replicates
        # centre there; shift them to centre on the bias-corrected estimate before taking percentiles.
        d = len(ref.mean)
        shift = out["d2_unbiased"] - out["l2"] ** 2
        lo, hi = np.percentile(np.asarray(d2) + shift, [2.5, 97.5])
        out["ci95"] = [math.sqrt(max(lo, 0.0) / d), math.sqrt(max(hi, 0.0) / d)]
    return out


# Baselines on backbone features (not latents): what peers report. Not Inception FID.


def frechet_distance(x: np.ndarray, y: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (float64).

    tr(sqrt(S1 S2)) is computed as the sum of square roots of the eigenvalues of S1 S2, which are real
    and non-negative for two PSD matrices; this avoids sqrtm's trouble with singular covariances.
    """
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    mu1, mu2 = x.mean(0), y.mean(0)
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    eig = linalg.eigvals(s1 @ s2).real
    tr_sqrt = np.sqrt(np.clip(eig, 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt)


def kid(x: np.ndarray, y: np.ndarray, subsets: int = 50, subset_size: int = 1000, seed: int = 0) -> tuple[float, float]:
    """Kernel Inception Distance (unbiased MMD^2 with the cubic polynomial kernel): mean and std over subsets."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    d = x.shape[1]
    m = min(subset_size, len(x), len(y))
    if m < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(subsets):
        a = x[rng.choice(len(x), m, replace=False)]
        b = y[rng.choice(len(y), m, replace=False)]
        kxx = (a @ a.T / d + 1) ** 3
        kyy = (b @ b.T / d + 1) ** 3
        kxy = (a @ b.T / d + 1) ** 3
        mmd = (kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1)) - 2 * kxy.mean()
        vals.append(mmd)
    return float(np.mean(vals)), float(np.std(vals))
