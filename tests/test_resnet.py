"""ResNet-18 vs. torchvision outputs recorded in tests/fixtures (torchvision not needed here).

Regenerate the fixture in a venv with torchvision:
    PYTHONPATH=src /tmp/tvvenv/bin/python benchmarks/make_resnet_fixture.py
"""

import json
import pickle
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file

from _resnet_recipe import recipe_state_dict
from rl2.backbones.resnet import random_resnet18, resnet18

FIXTURE = Path(__file__).parent / "fixtures" / "resnet18_tv_fixture.safetensors"
TOL = dict(atol=1e-4, rtol=1e-4)


@pytest.fixture(scope="module")
def fx():
    with safe_open(str(FIXTURE), "pt") as f:
        meta = f.metadata()
    return load_file(str(FIXTURE)), [(k, tuple(s)) for k, s in json.loads(meta["keys"])]


@pytest.fixture(scope="module")
def model(fx):
    m = resnet18().eval()
    m.load_state_dict(recipe_state_dict(fx[1]), strict=True)
    return m


def test_state_dict_keys_and_shapes_match_torchvision(fx):
    ours = [(k, tuple(v.shape)) for k, v in resnet18().state_dict().items()]
    assert ours == fx[1]


def test_outputs_match_torchvision(fx, model):
    t = fx[0]
    with torch.no_grad():
        x = t["input"]
        torch.testing.assert_close(model.layer4_map(x), t["tv_layer4"], **TOL)
        torch.testing.assert_close(model(x), t["tv_logits"], **TOL)
        torch.testing.assert_close(model.forward_features(x, "gap"), t["tv_gap"], **TOL)
        l4 = t["tv_layer4"]
        torch.testing.assert_close(
            model.forward_features(x, "layer4_2x2"), F.adaptive_avg_pool2d(l4, 2).flatten(1), **TOL
        )
        torch.testing.assert_close(
            model.forward_features(x, "paper"), F.avg_pool2d(l4, 2).flatten(1), **TOL
        )


def test_bn_settings_are_torchvision_defaults(model):
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(bns) == 20
    assert all(m.eps == 1e-5 and m.momentum == 0.1 and m.affine for m in bns)


@pytest.mark.parametrize("size,readout,dim", [
    (256, "paper", 8192), (256, "gap", 512), (256, "layer4_2x2", 2048), (96, "layer4_2x2", 2048),
])
def test_readout_dims(size, readout, dim):
    m = random_resnet18(0).eval()
    with torch.no_grad():
        assert m.forward_features(torch.zeros(1, 3, size, size), readout).shape == (1, dim)


def test_unknown_readout():
    with pytest.raises(ValueError):
        resnet18().forward_features(torch.zeros(1, 3, 64, 64), "nope")


def test_random_resnet18_is_seeded_and_leaves_global_rng():
    state = torch.get_rng_state()
    a, b, c = (random_resnet18(s).state_dict() for s in (3, 3, 4))
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["conv1.weight"], c["conv1.weight"])
    assert not torch.equal(a["fc.weight"], c["fc.weight"])


def test_loading_never_unpickles(monkeypatch, fx):
    def refuse(*a, **k):
        raise AssertionError("pickle used")

    for mod, name in [(pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"), (torch, "load")]:
        monkeypatch.setattr(mod, name, refuse)
    assert FIXTURE.read_bytes()[8:9] == b"{"  # safetensors: u64 header length, then JSON
    t = load_file(str(FIXTURE))
    m = resnet18().eval()
    m.load_state_dict(recipe_state_dict(fx[1]), strict=True)
    assert set(t) == {"input", "tv_logits", "tv_gap", "tv_layer4"}
