"""A torchmetrics-style accumulator for training loops: ``update(images)`` then ``compute()``.

State is a few float64 sums on the images' device, so it never holds a dataset. Tensors are
N x 3 x H x W, uint8 or float in [0, 1], on CPU or GPU; they are resized on the device (torch bicubic,
antialiased), which can differ from the file pipeline's Pillow resize by about one grey level.
"""

from __future__ import annotations

import os

import torch

from .images import MIN_SIDE
from .reference import Reference
from .statistics import LatentStats, check_bootstrap, score_sets


class RL2Metric:
    def __init__(self, reference: Reference | str | os.PathLike, device: str | torch.device | None = None, weights: str | None = None,
                 bootstrap: int = 0, seed: int = 0, backbone=None):
        """``bootstrap`` > 0 adds 95% intervals (weights are then drawn on the CPU for each image).

        ``backbone``: an already built backbone to reuse; it must have the reference's identity.
        ``reference``: a Reference, or the path of a reference file.
        """
        if isinstance(reference, (str, os.PathLike)):
            reference = Reference.load(reference)
        self.reference = reference
        self.backbone = reference.backbone(weights=weights, device=str(device) if device is not None else None,
                                           backbone=backbone)
        self.device = next(self.backbone.buffers()).device
        reference.to(self.device)
        check_bootstrap(bootstrap, seed)
        self.bootstrap, self.seed = bootstrap, seed
        self.reset()

    def reset(self) -> None:
        d = self.reference.dims
        self.n = 0
        self.sum = torch.zeros(d, dtype=torch.float64, device=self.device)
        self.sumsq = torch.zeros(d, dtype=torch.float64, device=self.device)
        self._boot = LatentStats(d, self.bootstrap, self.seed) if self.bootstrap else None

    @torch.no_grad()
    def update(self, images: torch.Tensor) -> None:
        if not isinstance(images, torch.Tensor):
            raise TypeError(f"RL2Metric.update expects a torch.Tensor, got {type(images).__name__} (torch.from_numpy?)")
        if images.dtype != torch.uint8 and not images.is_floating_point():
            raise ValueError(f"RL2Metric.update expects uint8 (0-255) or float (0-1) images, got {images.dtype}")
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"RL2Metric.update expects N x 3 x H x W images, got shape {tuple(images.shape)}")
        if min(images.shape[2:]) < MIN_SIDE:  # as for files: too small to carry tissue texture
            raise ValueError(f"RL2Metric.update expects images of at least {MIN_SIDE} px a side, got {tuple(images.shape)}")
        if images.is_floating_point() and not bool(((images >= 0) & (images <= 1)).all()):  # also catches NaN
            raise ValueError("RL2Metric.update expects finite float images in [0, 1] (or uint8)")
        z, _ = self.reference.latents_of(self.backbone(images.to(self.device)))
        z = z.double()
        if self._boot is not None:
            self._boot.update(z.cpu().numpy(), range(self.n, self.n + len(z)))
        self.n += len(z)
        self.sum += z.sum(0)
        self.sumsq += (z * z).sum(0)

    def compute(self) -> dict:
        """rl2, l2, rl2_unbiased, d2_unbiased, ci95 (None without bootstrap), n_images, reference."""
        if self.n == 0:
            raise ValueError("RL2Metric.compute called before any update")
        stats = self._boot or LatentStats(self.reference.dims, replicates=0)
        stats.n = self.n
        stats.sum = self.sum.cpu().numpy()
        stats.sumsq = self.sumsq.cpu().numpy()
        out = score_sets(self.reference.moments, self.reference.latents, stats, seed=self.seed)
        out["n_images"] = self.n
        out["reference"] = self.reference.summary()
        return out
