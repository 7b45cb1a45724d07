"""ResNet-18 backbones: the paper's ImageNet one, and a seeded random-init one for tests."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..errors import WeightsError
from . import Backbone, Identity, Preprocessing, load_state_dict_file, sha256_file, sha256_state_dict
from .resnet import random_resnet18, resnet18

OFFICIAL_FILE = "resnet18-f37072fd.pth"
OFFICIAL_URL = "https://download.pytorch.org/models/" + OFFICIAL_FILE
OFFICIAL_SHA256_PREFIX = "f37072fd"  # torch hub names files by their sha256 prefix
IMAGENET = dict(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
# gap: 512-d global average pool at 224 px. paper: the authors' layer4 average-pooled 2x2 at 256 px (8192-d).
READOUTS = {"gap": (224, 512), "paper": (256, 8192)}
RANDOM_SEED = 0


def _features(readout):
    return lambda net, x: net.forward_features(x, readout)


def _hub_cache_file() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / OFFICIAL_FILE


def _download_official() -> Path:
    """Fetch the official checkpoint into the hub cache, verifying its sha256 prefix."""
    dest = _hub_cache_file()
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(OFFICIAL_URL, str(dest), hash_prefix=OFFICIAL_SHA256_PREFIX, progress=True)
    except Exception:
        raise WeightsError(
            f"resnet18 needs ImageNet weights and this machine is offline: get {OFFICIAL_URL} "
            f"and pass --weights PATH, or copy it to {dest}"
        ) from None
    return dest


def _readout(readout):
    readout = readout or "gap"
    if readout not in READOUTS:
        raise WeightsError(f"resnet18 read-outs are {', '.join(READOUTS)}, not {readout!r}")
    return readout


def _wrap(net, name, readout, sha, weights_path):
    size, dim = READOUTS[readout]
    identity = Identity(name, readout, sha, dim, Preprocessing(input_size=size, **IMAGENET))
    return Backbone(net, _features(readout), identity, weights_path)


def build_pretrained(weights: str | None = None, readout: str | None = None) -> Backbone:
    readout = _readout(readout)
    if weights is None:
        cached = _hub_cache_file()
        path = cached if cached.is_file() else None
        if path is None and os.environ.get("RL2_OFFLINE", "") != "1":
            path = _download_official()
        elif path is None:
            raise WeightsError(
                f"resnet18 needs ImageNet weights (RL2_OFFLINE=1): get {OFFICIAL_URL} and pass --weights PATH"
            )
        weights = str(path)
    sha = sha256_file(weights)
    if Path(weights).name == OFFICIAL_FILE and not sha.startswith(OFFICIAL_SHA256_PREFIX):
        raise WeightsError(f"{weights}: sha256 {sha[:12]}... does not match the official checkpoint")
    net = resnet18()
    sd = load_state_dict_file(weights)
    try:
        net.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        raise WeightsError(f"{weights}: not ResNet-18 weights ({str(e).splitlines()[0][:200]})") from None
    return _wrap(net, "resnet18", readout, sha, str(weights))


def build_random(weights: str | None = None, readout: str | None = None) -> Backbone:
    if weights is not None:
        raise WeightsError("resnet18-random-TESTONLY takes no --weights: it is a seeded random init")
    readout = _readout(readout)
    net = random_resnet18(RANDOM_SEED)
    return _wrap(net, "resnet18-random-TESTONLY", readout, sha256_state_dict(net.state_dict()), None)
