"""Deterministic ResNet-18 state dict from key names and shapes alone.

Shared by benchmarks/make_resnet_fixture.py (torchvision venv) and
tests/test_resnet.py, so the fixture needs no stored weights: a seeded CPU
``torch.randn`` is stable across torch versions. Imports only torch.
"""

import math
import zlib

import torch


def recipe_tensor(key: str, shape) -> torch.Tensor:
    shape = tuple(shape)
    if key.endswith("num_batches_tracked"):
        return torch.zeros(shape, dtype=torch.int64)
    g = torch.Generator().manual_seed(zlib.crc32(key.encode()))
    randn = torch.randn(shape, generator=g)
    name = key.rsplit(".", 1)[-1]
    if name == "weight" and len(shape) > 1:  # conv / fc: keep activations O(1)
        gain = 1.0 if key.startswith("fc.") else 2.0
        return randn * math.sqrt(gain / math.prod(shape[1:]))
    if name == "weight":  # BN gamma
        return 1 + 0.1 * randn
    if name == "running_var":  # must stay positive
        return 0.5 + torch.rand(shape, generator=g)
    return 0.1 * randn  # BN beta, running_mean, fc bias


def recipe_state_dict(shapes) -> dict:
    """``shapes``: mapping or iterable of (key, shape) pairs."""
    items = shapes.items() if hasattr(shapes, "items") else shapes
    return {k: recipe_tensor(k, s) for k, s in items}
