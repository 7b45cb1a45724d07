"""The feature scaler: whitened real features, and no blow-up from channels that are dead on real tissue."""

import numpy as np
import torch

from rl2.latents import FeatureScaler


def _features(n=200, d=40, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 8)) @ rng.normal(size=(8, d)) + rng.normal(scale=0.1, size=(n, d))
    x[:, 0] = 1e-6 * rng.normal(size=n)  # a channel (almost) dead on real tissue, as after ReLU6
    return x


def test_real_features_are_whitened():
    x = _features()
    z = FeatureScaler.fit(x, 8)(torch.from_numpy(x)).double().numpy()
    assert np.allclose(z.mean(0), 0, atol=1e-6) and np.allclose(z.var(0, ddof=1), 1, atol=1e-4)


def test_a_dead_channel_waking_up_does_not_dominate():
    x = _features()
    sc = FeatureScaler.fit(x, 8)
    odd = x[:1].copy()
    odd[0, 0] = 1.0  # about one feature-unit of activation where real images had ~1e-6
    shift = (sc(torch.from_numpy(odd)) - sc(torch.from_numpy(x[:1]))).norm().item()
    # Per-feature z-scoring would move it ~1e6 whitened units; on the raw covariance it barely counts.
    assert shift < 10
