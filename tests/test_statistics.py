"""The bootstrap interval covers the true RL2 about 95% of the time on Gaussian latents."""

import math

import numpy as np

from rl2.statistics import LatentStats, RefMoments, score_sets


def _coverage(offset: float, sims: int = 120, d: int = 8, n_ref: int = 60, n_set: int = 40) -> float:
    rng = np.random.default_rng(123)
    true_rl2 = math.sqrt(offset**2)  # the same offset in every dimension: RMS = offset
    hits = 0
    for s in range(sims):
        ref = rng.normal(size=(n_ref, d))
        z = rng.normal(size=(n_set, d)) + offset
        stats = LatentStats(d, replicates=200, seed=s)
        stats.update(z, range(n_set))
        out = score_sets(RefMoments(ref.mean(0), ref.var(0, ddof=1), n_ref), ref, stats, seed=s)
        lo, hi = out["ci95"]
        hits += lo <= true_rl2 <= hi
    return hits / sims


def test_interval_covers_true_distance():
    cov = _coverage(0.4)
    assert 0.88 <= cov <= 0.99, cov


def test_interval_includes_zero_for_identical_distributions_mostly():
    assert _coverage(0.0) >= 0.88
