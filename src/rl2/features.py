"""Images -> backbone features, streamed in batches so memory does not grow with the number of images."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from .backbones import Backbone
from .images import Skipped, iter_batches


@dataclass
class FeatureBatch:
    indices: list[int]
    features: torch.Tensor  # float32, on the backbone's device


@dataclass
class RunLog:
    """What happened to the inputs of one extraction run."""

    n_inputs: int = 0
    skipped: list[Skipped] = field(default_factory=list)
    non_square: int = 0


def resolve_device(device: str | torch.device | None) -> torch.device:
    """None or "auto": cuda when available, else cpu. Anything but cpu and cuda[:N] is refused."""
    from .errors import RL2Error

    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise RL2Error(f"device {device!r}: expected cpu, cuda, cuda:N or auto") from None
    if dev.type not in ("cpu", "cuda"):
        raise RL2Error(f"device {device!r}: only cpu and cuda are supported")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RL2Error(f"device {device!r} was asked for, but PyTorch sees no CUDA GPU here")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise RL2Error(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    return dev


def iter_features(
    backbone: Backbone,
    paths: Sequence[Path],
    log: RunLog,
    batch_size: int = 64,
    workers: int = 2,
    strict: bool = False,
    progress: bool = True,
    desc: str = "features",
) -> Iterator[FeatureBatch]:
    """Yield features for readable images, in input order. Unreadable ones are recorded in ``log``."""
    device = next(backbone.buffers()).device
    size = backbone.identity.preprocessing.input_size
    log.n_inputs += len(paths)
    bar = tqdm(total=len(paths), desc=desc, unit="img", disable=not progress, leave=False)
    before = len(log.skipped)
    for batch in iter_batches(paths, size, batch_size, workers, log.skipped, strict):
        x = torch.from_numpy(batch.pixels).to(device).permute(0, 3, 1, 2)
        log.non_square += batch.non_square
        bar.update(len(batch.indices) + len(log.skipped) - before)
        before = len(log.skipped)
        yield FeatureBatch(batch.indices, backbone(x))
    bar.update(len(log.skipped) - before)
    bar.close()


def extract_features(backbone: Backbone, paths: Sequence[Path], log: RunLog, **kw) -> tuple[np.ndarray, list[int]]:
    """All features at once (float32, N x D) with the input indices they belong to. For modest N."""
    feats, idx = [], []
    for fb in iter_features(backbone, paths, log, **kw):
        feats.append(fb.features.cpu().numpy())
        idx += fb.indices
    dim = backbone.identity.feature_dim
    return (np.concatenate(feats) if feats else np.zeros((0, dim), np.float32)), idx
