"""Scores: RL2 of an image set against a reference, with its interval, plus per-image scores.

Streaming: images go through backbone -> scaler -> flow in batches; only float64 sums are kept, and
per-image rows are written to a CSV as they come. Memory does not grow with the number of images.
"""

from __future__ import annotations

import csv
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .errors import NoImagesError
from .backbones import Backbone
from .features import RunLog, iter_features
from .files import _umask
from .images import collect_images
from .reference import Reference
from .statistics import DEFAULT_BOOTSTRAP, LatentStats, score_sets


@dataclass
class ScoreResult:
    rl2: float
    l2: float
    rl2_unbiased: float | None
    d2_unbiased: float | None
    ci95: list[float] | None
    n_images: int
    n_skipped: int
    reference: dict
    skipped: list[dict] = field(default_factory=list)
    n_ignored: int = 0
    non_square: int = 0
    mean_image_score: float | None = None

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _sets_result(ref: Reference, stats: LatentStats, seed: int, log: RunLog | None, ignored: int, img_sum: float):
    out = score_sets(ref.moments, ref.latents, stats, seed=seed)
    skipped = [{"path": str(s.path), "reason": s.reason} for s in (log.skipped if log else [])]
    return ScoreResult(
        rl2=out["rl2"], l2=out["l2"], rl2_unbiased=out["rl2_unbiased"], d2_unbiased=out["d2_unbiased"],
        ci95=out["ci95"], n_images=stats.n, n_skipped=len(skipped),
        reference=ref.summary(), skipped=skipped, n_ignored=ignored,
        non_square=log.non_square if log else 0, mean_image_score=img_sum / stats.n,
    )


class _CsvRows:
    """Per-image CSV, streamed to a temporary file and renamed at the end (atomic)."""

    HEADER = ["index", "path", "score", "nll_per_dim", "status"]

    def __init__(self, path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, self.tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
        self.f = os.fdopen(fd, "w", newline="")
        self.w = csv.writer(self.f)
        self.w.writerow(self.HEADER)

    def write(self, rows):
        """Rows of one batch and the skips before it; batches arrive in input order."""
        for i, path, sc, nll, status in sorted(rows, key=lambda r: r[0]):
            fmt = lambda v: "" if v is None else f"{v:.6f}"  # noqa: E731
            self.w.writerow([i, str(path), fmt(sc), fmt(nll), status])

    def close(self, ok: bool):
        self.f.close()
        if ok:
            os.replace(self.tmp, self.path)
        else:
            Path(self.tmp).unlink(missing_ok=True)


def score(
    reference: Reference,
    images: Sequence[str | os.PathLike] | str | os.PathLike,
    per_image: str | os.PathLike | None = None,
    batch_size: int = 64,
    workers: int = 2,
    device: str | None = None,
    weights: str | None = None,
    bootstrap: int = DEFAULT_BOOTSTRAP,
    seed: int = 0,
    strict: bool = False,
    progress: bool = True,
    backbone: Backbone | None = None,
) -> ScoreResult:
    """Score a set of image files against ``reference``.

    ``images``: folders (recursive), glob patterns, list files or image paths. Unreadable images are
    skipped, counted and listed in the result (or raise, with ``strict``). ``per_image`` writes a CSV
    with each image's latent distance to the reference mean and its NLL. ``backbone``: an already built
    backbone to reuse; it must have the reference's identity (else WeightsError says what differs).
    """
    imageset = collect_images(images)
    bb = reference.backbone(weights=weights, device=device, backbone=backbone)
    reference.to(next(bb.buffers()).device)
    stats = LatentStats(reference.dims, replicates=bootstrap, seed=seed)
    log = RunLog()
    csv_out = _CsvRows(per_image) if per_image else None
    img_sum, ok, written_skips = 0.0, False, 0

    def skipped_rows():
        nonlocal written_skips
        new = log.skipped[written_skips:]
        written_skips = len(log.skipped)
        return [(s.index, s.path, None, None, "skipped: " + s.reason) for s in new]

    try:
        for fb in iter_features(bb, imageset.paths, log, batch_size, workers, strict, progress, desc="scoring"):
            z, nll = reference.latents_of(fb.features)
            stats.update(z.cpu().numpy(), fb.indices)
            dist = reference.image_distance(z)
            img_sum += float(dist.sum())
            if csv_out:
                rows = zip(fb.indices, [imageset.paths[i] for i in fb.indices], dist, nll.cpu().numpy(), ["ok"] * len(dist))
                csv_out.write(skipped_rows() + list(rows))
        if csv_out:
            csv_out.write(skipped_rows())
        if stats.n == 0:
            raise NoImagesError(f"none of the {log.n_inputs} images could be read (first: {log.skipped[0].reason})")
        ok = True
    finally:
        if csv_out:
            csv_out.close(ok)
    return _sets_result(reference, stats, seed, log, len(imageset.ignored), img_sum)
