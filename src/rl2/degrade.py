"""Image degradations for checking that the quality metric rises with damage.

Every function takes an HxWx3 numpy image, either uint8 (0..255) or float32/float64
in [0, 1], and returns a new image of the same shape and dtype, clipped to the valid
range (uint8 results are rounded). Level 0 returns an exact copy, a larger level means
more damage, and random families are deterministic for a given ``seed``.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

from rl2.errors import RL2Error

__all__ = [
    "FAMILIES",
    "Family",
    "apply",
    "degrade_pil",
    "diffusion_forward",
    "gaussian_blur",
    "gaussian_noise",
    "jpeg",
    "noise_blend",
    "occlusion",
    "salt_and_pepper",
]

DIFFUSION_STEPS = 1000
_BETAS = np.linspace(1e-4, 0.02, DIFFUSION_STEPS)
# _ALPHABAR[t] = prod_{s=1..t} (1 - beta_s); the leading 1 makes t=0 the identity.
_ALPHABAR = np.concatenate([[1.0], np.cumprod(1.0 - _BETAS)])


MAX_BLUR_SIGMA = 100.0  # px; far beyond any patch's detail, and the filter's memory grows with it


def _check_image(img: np.ndarray) -> None:
    if not isinstance(img, np.ndarray) or img.ndim != 3 or img.shape[2] != 3:
        shape = getattr(img, "shape", None)
        raise RL2Error(f"expected an HxWx3 numpy image, got shape {shape}")
    if img.dtype not in (np.uint8, np.float32, np.float64):
        raise RL2Error(f"expected a uint8, float32 or float64 image, got {img.dtype}")


def _check_level(kind: str, level, lo: float, hi: float = math.inf) -> float:
    try:
        value = float(level)
    except (TypeError, ValueError):
        raise RL2Error(f"{kind} level must be a number, got {level!r}") from None
    if not (lo <= value <= hi and math.isfinite(value)):  # also rejects NaN and infinity
        raise RL2Error(f"{kind} level {level!r} is out of range [{lo:g}, {hi:g}]")
    return value


def _to_float(img: np.ndarray) -> np.ndarray:
    if img.dtype == np.uint8:
        return img.astype(np.float64) / 255.0
    return img.astype(np.float64)


def _from_float(x: np.ndarray, dtype: np.dtype) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    if dtype == np.uint8:
        return np.rint(x * 255.0).astype(np.uint8)
    return x.astype(dtype)


def gaussian_blur(img: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    """Gaussian blur with standard deviation ``sigma`` in pixels (``seed`` unused)."""
    _check_image(img)
    sigma = _check_level("blur", sigma, 0.0, MAX_BLUR_SIGMA)
    if sigma == 0:
        return img.copy()
    # Sigma 0 on the channel axis blurs each channel separately.
    out = gaussian_filter(_to_float(img), sigma=(sigma, sigma, 0), mode="reflect")
    return _from_float(out, img.dtype)


def gaussian_noise(img: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    """Additive i.i.d. Gaussian noise with standard deviation ``sigma`` on a 0-1 scale."""
    _check_image(img)
    sigma = _check_level("noise", sigma, 0.0)
    if sigma == 0:
        return img.copy()
    rng = np.random.default_rng(seed)
    out = _to_float(img) + sigma * rng.standard_normal(img.shape)
    return _from_float(out, img.dtype)


def noise_blend(img: np.ndarray, alpha: float, seed: int = 0) -> np.ndarray:
    """Blend with noise: ``(1 - alpha) * image + alpha * noise``, ``alpha`` in [0, 1].

    The noise is i.i.d. uniform on [0, 1] per pixel and channel: it spans the full
    image range with mean 0.5 and needs no clipping, so ``alpha = 1`` is pure noise.
    """
    _check_image(img)
    alpha = _check_level("noise_blend", alpha, 0.0, 1.0)
    if alpha == 0:
        return img.copy()
    rng = np.random.default_rng(seed)
    out = (1.0 - alpha) * _to_float(img) + alpha * rng.random(img.shape)
    return _from_float(out, img.dtype)


def salt_and_pepper(img: np.ndarray, p: float, seed: int = 0) -> np.ndarray:
    """Set a fraction ``p`` of pixels (all channels) to black or white, half each.

    Pixels are taken in a seeded random order, so for one seed the pixels hit at a
    lower ``p`` are also hit, with the same colour, at a higher ``p``.
    """
    _check_image(img)
    p = _check_level("salt_pepper", p, 0.0, 1.0)
    if p == 0:
        return img.copy()
    h, w = img.shape[:2]
    order = np.random.default_rng(seed).permutation(h * w)[: int(round(p * h * w))]
    white = 255 if img.dtype == np.uint8 else 1.0
    out = img.copy().reshape(h * w, 3)
    out[order[0::2]] = 0
    out[order[1::2]] = white
    return out.reshape(img.shape)


def _span(centre: float, length: int, size: int) -> slice:
    # Grow around a fixed centre and shift inside the image rather than crop, so the
    # span keeps its length and a longer span contains a shorter one.
    start = min(max(int(math.floor(centre - length / 2 + 0.5)), 0), size - length)
    return slice(start, start + length)


def occlusion(
    img: np.ndarray,
    area: float,
    seed: int = 0,
    n_rects: int = 1,
    fill: str | tuple[int, int, int] = "mean",
) -> np.ndarray:
    """Paint ``n_rects`` flat rectangles covering a fraction ``area``.

    Each rectangle has the image's aspect ratio and ``area / n_rects`` of its area,
    centred at a seeded random point (shifted inside the image where needed). Centres
    do not depend on ``area``, so the occluded region only grows with the level;
    rectangles may overlap, which makes the covered area less than the target.
    ``fill`` is ``"mean"`` (the image's own mean colour, as Cutout's zero in normalised
    inputs) or an RGB tuple in 0..255. The default removes tissue without adding a
    high-contrast edge: with black, RL2 plateaued between 5% and 20% area on PCam
    (docs/MEASUREMENTS.md), so the score did not rise with the damage.
    """
    _check_image(img)
    area = _check_level("occlusion", area, 0.0, 1.0)
    if not isinstance(n_rects, (int, np.integer)) or n_rects < 1:
        raise RL2Error(f"occlusion n_rects must be a positive integer, got {n_rects!r}")
    if isinstance(fill, str):
        if fill != "mean":
            raise RL2Error(f"occlusion fill must be 'mean' or an RGB tuple in 0..255, got {fill!r}")
    else:
        fill_values = np.asarray(fill, dtype=np.float64)
        if fill_values.shape != (3,) or not np.all((fill_values >= 0) & (fill_values <= 255)):
            raise RL2Error(f"occlusion fill must be 'mean' or an RGB tuple in 0..255, got {fill!r}")
    if area == 0:
        return img.copy()
    h, w = img.shape[:2]
    scale = math.sqrt(area / n_rects)
    rh = min(h, max(1, int(round(scale * h))))
    rw = min(w, max(1, int(round(scale * w))))
    if isinstance(fill, str):  # the mean colour, in the image's own dtype and scale
        colour = img.reshape(-1, 3).astype(np.float64).mean(0)
        colour = colour.round() if img.dtype == np.uint8 else colour
    else:
        colour = fill_values.round() if img.dtype == np.uint8 else fill_values / 255.0
    centres = np.random.default_rng(seed).random((n_rects, 2)) * (h, w)
    out = img.copy()
    for cy, cx in centres:
        out[_span(cy, rh, h), _span(cx, rw, w)] = colour.astype(img.dtype)
    return out


def diffusion_forward(img: np.ndarray, t: int, seed: int = 0) -> np.ndarray:
    """DDPM forward process at timestep ``t`` (integer 0..1000).

    Linear beta schedule from 1e-4 to 0.02 over T=1000 steps, on the image mapped
    to [-1, 1]: ``x_t = sqrt(abar_t) * x_0 + sqrt(1 - abar_t) * eps`` with
    ``abar_t = prod_{s=1..t} (1 - beta_s)``, then mapped back and clipped.
    """
    _check_image(img)
    value = _check_level("diffusion", t, 0, DIFFUSION_STEPS)
    if value != int(value):
        raise RL2Error(f"diffusion level must be an integer timestep, got {t!r}")
    t = int(value)
    if t == 0:
        return img.copy()
    rng = np.random.default_rng(seed)
    x0 = _to_float(img) * 2.0 - 1.0
    abar = _ALPHABAR[t]
    xt = math.sqrt(abar) * x0 + math.sqrt(1.0 - abar) * rng.standard_normal(img.shape)
    return _from_float((xt + 1.0) / 2.0, img.dtype)


def jpeg(
    img: np.ndarray, level: float | None = None, seed: int = 0, quality: int | None = None
) -> np.ndarray:
    """JPEG re-compression through PIL; ``level = 100 - quality`` (``seed`` unused).

    Level 0 (quality 100) is the identity, with no re-compression; level L in 1..99
    re-encodes at quality 100 - L. Pass either ``level`` or ``quality`` (1..100);
    ``quality=q`` is the same as ``level=100 - q``. Float images are rounded to
    8 bits for encoding.
    """
    _check_image(img)
    if (level is None) == (quality is None):
        raise RL2Error("jpeg takes exactly one of level and quality")
    if quality is not None:
        q = _check_level("jpeg quality", quality, 1, 100)
        if q != int(q):
            raise RL2Error(f"jpeg quality must be an integer, got {quality!r}")
        level = 100 - int(q)
    value = _check_level("jpeg", level, 0, 99)
    if value != int(value):
        raise RL2Error(f"jpeg level must be an integer, got {level!r}")
    if value == 0:
        return img.copy()
    as_uint8 = img if img.dtype == np.uint8 else _from_float(_to_float(img), np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(as_uint8).save(buffer, format="JPEG", quality=100 - int(value))
    buffer.seek(0)
    decoded = np.asarray(Image.open(buffer).convert("RGB"))
    if img.dtype == np.uint8:
        return decoded.copy()
    return _from_float(decoded / 255.0, img.dtype)


@dataclass(frozen=True)
class Family:
    """A degradation family: its function, default level sweep and level unit."""

    name: str
    fn: Callable[..., np.ndarray]
    default_levels: tuple[float, ...]
    unit: str
    description: str


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family("blur", gaussian_blur, (0, 0.5, 1, 1.5, 2, 3, 4), "sigma (px)",
               "Gaussian blur, per channel."),
        Family("noise", gaussian_noise, (0, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3),
               "sigma (0-1 scale)", "Additive i.i.d. Gaussian noise."),
        Family("noise_blend", noise_blend, (0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5), "alpha",
               "Blend (1-alpha)*image + alpha*uniform noise."),
        Family("salt_pepper", salt_and_pepper, (0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3),
               "pixel fraction", "Pixels set to black or white, half each."),
        Family("occlusion", occlusion, (0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5), "area fraction",
               "Rectangles of the image's mean colour (or a given colour) over the image."),
        Family("diffusion", diffusion_forward, (0, 10, 25, 50, 100, 200, 400), "timestep",
               "DDPM forward noising, linear betas 1e-4..0.02, T=1000."),
        Family("jpeg", jpeg, (0, 50, 70, 80, 90, 95, 98), "100 - quality",
               "JPEG re-compression at quality 100 - level."),
    )
}


def apply(img: np.ndarray, kind: str, level: float, seed: int = 0, **options) -> np.ndarray:
    """Apply the degradation family ``kind`` at ``level``; options go to its function."""
    family = FAMILIES.get(kind)
    if family is None:
        raise RL2Error(f"unknown degradation {kind!r}; valid: {', '.join(FAMILIES)}")
    return family.fn(img, level, seed=seed, **options)


def degrade_pil(pil_image: Image.Image, kind: str, level: float, seed: int = 0,
                **options) -> Image.Image:
    """``apply`` for a PIL image (converted to RGB first); returns an RGB PIL image."""
    arr = np.asarray(pil_image.convert("RGB"))
    return Image.fromarray(apply(arr, kind, level, seed=seed, **options))


def _output_paths(paths, src, dst):
    """Where each degraded copy goes: DST/<path relative to SRC> as .png (SRC a folder), else DST/<name>.png.

    Inputs whose PNG names would clash (``x.jpg`` beside ``x.png``) keep their extension in the name
    (``x.jpg.png``), so no copy overwrites another.
    """
    from collections import Counter
    from pathlib import Path

    src_p, dst = Path(src), Path(dst)
    rels = [p.relative_to(src_p) if src_p.is_dir() else Path(p.name) for p in paths]
    counts = Counter(r.with_suffix(".png") for r in rels)
    outs = [dst / (r.with_suffix(".png") if counts[r.with_suffix(".png")] == 1 else r.with_name(r.name + ".png"))
            for r in rels]
    if len(set(outs)) != len(outs):
        clash = next(o for o, n in Counter(outs).items() if n > 1)
        raise RL2Error(f"{clash}: two inputs would be written to this file; rename one of them")
    return outs


def degrade_folder(src, dst, kind: str, level: float, seed: int = 0, progress: bool = False,
                   force: bool = False, **options) -> tuple[int, list[str]]:
    """Write degraded PNG copies of every image under ``src`` to ``dst``, keeping relative paths.

    Image i (in sorted order) uses ``seed + i``, so copies differ from one another but reruns are
    identical. ``options`` go to the family's function (e.g. ``n_rects``, ``fill`` for occlusion).
    Each file is written atomically. ``dst`` may not be, or lie inside, the source folder, and
    existing files are overwritten only with ``force``. Returns (written, one-line reasons for skipped files).
    """
    from pathlib import Path

    from tqdm.auto import tqdm

    from .images import collect_images, load_rgb
    from .files import atomic_write_bytes

    apply(np.zeros((16, 16, 3), np.uint8), kind, level, **options)  # a bad kind, level or option fails up front
    src_p, dst_p = Path(src).resolve(), Path(dst).resolve()
    if src_p.is_dir() and (dst_p == src_p or src_p in dst_p.parents):
        raise RL2Error(f"{dst}: the output folder may not be the input folder or inside it")
    paths = collect_images(src).paths
    outs = _output_paths(paths, src, dst)
    inputs = {p.resolve() for p in paths}
    for o in outs:
        if o.resolve() in inputs:
            raise RL2Error(f"{o}: is one of the input images; choose another output folder")
        if o.exists() and not force:
            raise RL2Error(f"{o}: already exists; pass --force to overwrite (or choose an empty folder)")
    written, skipped = 0, []
    for i, (p, o) in enumerate(tqdm(list(zip(paths, outs)), desc=f"{kind} {level:g}", unit="img",
                                    disable=not progress, leave=False)):
        try:
            out = Image.fromarray(apply(np.asarray(load_rgb(p)), kind, level, seed=seed + i, **options))
        except RL2Error as e:
            skipped.append(str(e))
            continue
        buf = io.BytesIO()
        out.save(buf, format="PNG")
        atomic_write_bytes(o, buf.getvalue())
        written += 1
    return written, skipped
