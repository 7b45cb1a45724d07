"""Tissue detection on a slide thumbnail, and the grid of tiles to score.

Method (`tissue_mask`): H&E-stained tissue is coloured (pink/purple) while
glass is grey-white, so tissue is told apart by HSV saturation. The threshold
is Otsu's on the (3x3 median-filtered) saturation histogram, clipped to
[SAT_FLOOR, SAT_CEILING]; near-white and near-black pixels are excluded; the
mask is then cleaned with binary closing, hole filling, opening, and removal
of small components.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from PIL import Image
from scipy import ndimage

from rl2.errors import SlideError
from rl2.slides import Slide, resolve_mpp

#: Lowest saturation threshold. Blank glass, dust and faint JPEG colour noise
#: stay below ~0.03 (histolab no-tissue / almost-white tiles: 95th percentile
#: <= 0.03); when a thumbnail holds no tissue Otsu splits that noise, and the
#: floor keeps it out of the mask.
SAT_FLOOR = 0.07
#: Highest saturation threshold. Pale eosin (stroma, fat septa) sits around
#: 0.1-0.2; on an image that is all tissue Otsu would split dark from pale
#: tissue, and the ceiling keeps the pale part in the mask.
SAT_CEILING = 0.15
#: Side of the median filter applied to saturation before thresholding.
MEDIAN_SIZE = 3
#: Near-white: brightness (HSV value) above this with saturation below
#: WHITE_MAX_SAT is background glass, even when above the saturation threshold
#: (slightly tinted glass or coverslip).
WHITE_MIN_VALUE = 0.90
WHITE_MAX_SAT = 0.10
#: Near-black (HSV value below this) is slide edge, label shadow or black ink;
#: dark pixels have unstable, often high, saturation.
BLACK_MAX_VALUE = 0.15
#: Radius (pixels of the thumbnail) of the square structuring elements:
#: closing bridges the pale gaps between fibres and nuclei, opening removes
#: isolated speckles.
CLOSE_RADIUS = 2
OPEN_RADIUS = 1
#: Components smaller than this fraction of the image (and than MIN_AREA_PX)
#: are dropped: dust, debris, pen specks. 1e-4 of a 2048x1536 thumbnail is
#: ~18x18 px.
MIN_AREA_FRACTION = 1e-4
MIN_AREA_PX = 16


def otsu_threshold(values: np.ndarray, bins: int = 256, value_range=(0.0, 1.0)) -> float:
    """Otsu's threshold: the cut that maximises the between-class variance."""
    hist, edges = np.histogram(values, bins=bins, range=value_range)
    hist = hist.astype(np.float64)
    centers = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)  # pixels at or below each bin
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centers)
    mu0 = m0 / np.maximum(w0, 1)
    mu1 = (m0[-1] - m0) / np.maximum(w1, 1)
    between = w0 * w1 * (mu0 - mu1) ** 2
    return float(edges[int(np.argmax(between[:-1])) + 1])


def saturation_value(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """HSV saturation and value (both in [0, 1]) of an HxWx3 uint8 image."""
    x = rgb[..., :3].astype(np.float32) / 255.0
    v = x.max(axis=-1)
    s = (v - x.min(axis=-1)) / np.maximum(v, 1e-6)
    return s, v


def tissue_mask(thumb_rgb: np.ndarray) -> np.ndarray:
    """Boolean mask of tissue in an RGB thumbnail (HxWx3 uint8); see the module docstring.

    Pen marks are saturated too and end up in the mask; rejecting them is the
    quality score's job, not this function's.
    """
    thumb_rgb = np.asarray(thumb_rgb)
    if thumb_rgb.ndim != 3 or thumb_rgb.shape[-1] < 3:
        raise ValueError(f"expected an HxWx3 RGB array, got shape {thumb_rgb.shape}")
    s, v = saturation_value(thumb_rgb)
    # A 3x3 median removes single-pixel JPEG colour noise on glass, which
    # closing would otherwise grow into specks.
    s = ndimage.median_filter(s, size=MEDIAN_SIZE)
    threshold = float(np.clip(otsu_threshold(s), SAT_FLOOR, SAT_CEILING))
    near_white = (v > WHITE_MIN_VALUE) & (s < WHITE_MAX_SAT)
    near_black = v < BLACK_MAX_VALUE
    mask = (s >= threshold) & ~near_white & ~near_black

    close = np.ones((2 * CLOSE_RADIUS + 1,) * 2, bool)
    opening = np.ones((2 * OPEN_RADIUS + 1,) * 2, bool)
    # border_value=0 would erode tissue touching the image edge after dilation; pad instead.
    pad = CLOSE_RADIUS
    mask = np.pad(mask, pad, mode="edge")
    mask = ndimage.binary_closing(mask, structure=close)[pad:-pad, pad:-pad]
    mask = ndimage.binary_fill_holes(mask)
    mask = ndimage.binary_opening(mask, structure=opening)

    labels, n = ndimage.label(mask)
    if n:
        min_area = max(MIN_AREA_PX, MIN_AREA_FRACTION * mask.size)
        areas = np.bincount(labels.ravel())
        keep = areas >= min_area
        keep[0] = False
        mask = keep[labels]
    return mask


def grid_tiles(slide_dims_l0: tuple[int, int], tile_size_l0: int, stride_l0: int) -> list[tuple[int, int]]:
    """Top-left level-0 corners of a regular grid of tiles that all lie inside the slide.

    The grid starts at (0, 0); a strip narrower than one stride at the right
    and bottom edges is not covered, so no tile reaches past the slide.
    """
    if tile_size_l0 <= 0 or stride_l0 <= 0:
        raise ValueError(f"tile size and stride must be positive, got {tile_size_l0} and {stride_l0}")
    w, h = slide_dims_l0
    return [(x, y)
            for y in range(0, h - tile_size_l0 + 1, stride_l0)
            for x in range(0, w - tile_size_l0 + 1, stride_l0)]


def tissue_fraction(mask: np.ndarray, mask_downsample: float, x0: int, y0: int, size_l0: int) -> float:
    """Fraction of the level-0 square (x0, y0, size_l0) covered by tissue in `mask`.

    `mask_downsample` is level-0 pixels per mask pixel. A tile smaller than a
    mask pixel takes that pixel's value.
    """
    c0 = int(np.floor(x0 / mask_downsample))
    r0 = int(np.floor(y0 / mask_downsample))
    c1 = max(c0 + 1, int(round((x0 + size_l0) / mask_downsample)))
    r1 = max(r0 + 1, int(round((y0 + size_l0) / mask_downsample)))
    window = mask[max(r0, 0):r1, max(c0, 0):c1]
    return float(window.mean()) if window.size else 0.0


@dataclass(frozen=True)
class TilePlan:
    """One tile to score: level-0 top-left (x, y), the pyramid level it is read
    from, its side in level-0 pixels, and the fraction of it that is tissue."""

    x: int
    y: int
    level: int
    size_l0: int
    tissue_fraction: float


class SlidePlan(NamedTuple):
    """What `plan_tiles` returns; unpacks as (thumbnail, mask, mask_downsample, tiles)."""

    thumbnail: Image.Image
    mask: np.ndarray
    mask_downsample: float
    tiles: list[TilePlan]


def plan_tiles(slide: Slide, target_mpp: float, tile_px: int, stride_px: int | None = None,
               min_tissue: float = 0.5, thumb_max: int = 2048, mpp: float | None = None) -> SlidePlan:
    """Plan the tiles of `tile_px` pixels at `target_mpp` µm/px that hold at least `min_tissue` tissue.

    `stride_px` (default `tile_px`, i.e. no overlap) is in output pixels too;
    `mpp` overrides the slide's pixel size (see `resolve_mpp`).
    """
    slide_mpp, _ = resolve_mpp(slide, mpp)
    if target_mpp <= 0 or tile_px <= 0:
        raise SlideError(f"{slide.path}: target mpp and tile size must be positive")
    stride_px = tile_px if stride_px is None else stride_px
    size_l0 = max(1, round(tile_px * target_mpp / slide_mpp))
    stride_l0 = max(1, round(stride_px * target_mpp / slide_mpp))
    level = slide.get_best_level_for_downsample(size_l0 / tile_px)

    thumb = slide.thumbnail(thumb_max)
    mask = tissue_mask(np.asarray(thumb))
    w0, h0 = slide.dimensions
    mask_downsample = (w0 / mask.shape[1] + h0 / mask.shape[0]) / 2

    tiles = []
    for x, y in grid_tiles(slide.dimensions, size_l0, stride_l0):
        frac = tissue_fraction(mask, mask_downsample, x, y, size_l0)
        if frac >= min_tissue:
            tiles.append(TilePlan(x, y, level, size_l0, frac))
    return SlidePlan(thumb, mask, mask_downsample, tiles)
