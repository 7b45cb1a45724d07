"""Scores: RL2 of an image set against a reference, with its interval, plus per-image scores.

Streaming: images go through backbone -> scaler -> flow in batches; only float64 sums are kept, and
per-image rows are written to a CSV as they come. Memory does not grow with the number of images.
"""

from __future__ import annotations

import contextlib
import csv
import os
from dataclasses import dataclass, field
from typing import Sequence


from .errors import NoImagesError
from .backbones import Backbone
from .features import RunLog, iter_features
from .files import atomic_open, check_output
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
    n_duplicates: int = 0  # paths given more than once; each was scored every time
    non_square: int = 0
    mean_image_score: float | None = None

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _sets_result(ref: Reference, stats: LatentStats, seed: int, log: RunLog | None, imageset, img_sum: float):
    out = score_sets(ref.moments, ref.latents, stats, seed=seed)
    skipped = [{"path": str(s.path), "reason": s.reason} for s in (log.skipped if log else [])]
    return ScoreResult(
        rl2=out["rl2"], l2=out["l2"], rl2_unbiased=out["rl2_unbiased"], d2_unbiased=out["d2_unbiased"],
        ci95=out["ci95"], n_images=stats.n, n_skipped=len(skipped),
        reference=ref.summary(), skipped=skipped, n_ignored=len(imageset.ignored), n_duplicates=imageset.n_duplicates,
        non_square=log.non_square if log else 0, mean_image_score=img_sum / stats.n,
    )


CSV_HEADER = ["index", "path", "score", "nll_per_dim", "status"]


def _write_rows(writer, rows) -> None:
    """Rows of one batch and the skips before it, in input order (batches arrive in input order)."""
    fmt = lambda v: "" if v is None else f"{v:.6f}"  # noqa: E731
    for i, path, sc, nll, status in sorted(rows, key=lambda r: r[0]):
        writer.writerow([i, str(path), fmt(sc), fmt(nll), status])


def score(
    reference: Reference | str | os.PathLike,
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
    """Score a set of image files against ``reference`` (a Reference, or the path of a reference file).

    ``images``: folders (recursive), glob patterns, list files or image paths. Unreadable images are
    skipped, counted and listed in the result (or raise, with ``strict``). ``per_image`` writes a CSV
    with each image's latent distance to the reference mean and its NLL. ``backbone``: an already built
    backbone to reuse; it must have the reference's identity (else WeightsError says what differs).
    """
    if isinstance(reference, (str, os.PathLike)):
        reference = Reference.load(reference)
    imageset = collect_images(images)
    if per_image:
        inputs = [*([images] if isinstance(images, (str, os.PathLike)) else images), *imageset.paths, reference.path, weights]
        check_output(per_image, [p for p in inputs if p], "per-image CSV")
    bb = reference.backbone(weights=weights, device=device, backbone=backbone)
    reference.to(next(bb.buffers()).device)
    stats = LatentStats(reference.dims, replicates=bootstrap, seed=seed)
    log = RunLog()
    img_sum, written_skips = 0.0, 0

    def skipped_rows():
        nonlocal written_skips
        new = log.skipped[written_skips:]
        written_skips = len(log.skipped)
        # The reason begins with the path, which has a column of its own.
        return [(s.index, s.path, None, None, "skipped: " + s.reason.removeprefix(f"{s.path}: ")) for s in new]

    # The CSV is streamed to a temporary file that replaces ``per_image`` only if the run succeeds.
    with atomic_open(per_image, "w", newline="", encoding="utf-8", errors="surrogateescape") if per_image else contextlib.nullcontext() as f:
        writer = csv.writer(f) if f else None
        if writer:
            writer.writerow(CSV_HEADER)
        for fb in iter_features(bb, imageset.paths, log, batch_size, workers, strict, progress, desc="scoring"):
            z, nll = reference.latents_of(fb.features)
            stats.update(z.cpu().numpy(), fb.indices)
            dist = reference.image_distance(z)
            img_sum += float(dist.sum())
            if writer:
                paths = [imageset.paths[i] for i in fb.indices]
                _write_rows(writer, skipped_rows() + list(zip(fb.indices, paths, dist, nll.cpu().numpy(), ["ok"] * len(dist))))
        if writer:
            _write_rows(writer, skipped_rows())
        if stats.n == 0:
            raise NoImagesError(f"none of the {log.n_inputs} images could be read (first: {log.skipped[0].reason})")
    return _sets_result(reference, stats, seed, log, imageset, img_sum)
