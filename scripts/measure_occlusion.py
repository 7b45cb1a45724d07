"""RL2 of an image set under one occluding rectangle of growing area, for several fill colours.

Run:  python scripts/measure_occlusion.py REF IMAGES...   (the table in docs/MEASUREMENTS.md used the
PCam reference of scripts/check_pcam.py --save-ref, and ../shared/data/pcam_subset/val)
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import torch
from PIL import Image

from rl2.degrade import _span, occlusion
from rl2.images import collect_images, load_rgb, prepare
from rl2.reference import Reference
from rl2.statistics import LatentStats, score_sets

LEVELS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5)


def noise_fill(img: np.ndarray, area: float, seed: int) -> np.ndarray:
    """Random Erasing: one rectangle of uniform random pixels (not a built-in fill)."""
    h, w = img.shape[:2]
    rh, rw = max(1, round(math.sqrt(area) * h)), max(1, round(math.sqrt(area) * w))
    rng = np.random.default_rng(seed)
    cy, cx = rng.random(2) * (h, w)
    out = img.copy()
    ys, xs = _span(cy, rh, h), _span(cx, rw, w)
    out[ys, xs] = rng.integers(0, 256, out[ys, xs].shape, dtype=np.uint8)
    return out


VARIANTS = {
    "black": lambda a, lv, s: occlusion(a, lv, seed=s, fill=(0, 0, 0)),
    "white": lambda a, lv, s: occlusion(a, lv, seed=s, fill=(255, 255, 255)),
    "grey": lambda a, lv, s: occlusion(a, lv, seed=s, fill=(128, 128, 128)),
    "black, 4 rectangles": lambda a, lv, s: occlusion(a, lv, seed=s, fill=(0, 0, 0), n_rects=4),
    "uniform noise": noise_fill,
    "mean colour (default)": lambda a, lv, s: occlusion(a, lv, seed=s),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("ref")
    ap.add_argument("images", nargs="+")
    args = ap.parse_args()
    ref = Reference.load(args.ref)
    bb = ref.backbone()
    size = bb.identity.preprocessing.input_size
    arrays = [np.asarray(load_rgb(p)) for p in collect_images(args.images).paths]

    def rl2(images) -> float:
        x = torch.from_numpy(np.stack([prepare(Image.fromarray(a), size) for a in images])).permute(0, 3, 1, 2)
        stats = LatentStats(ref.dims, replicates=0)
        for i in range(0, len(x), 64):
            stats.update(ref.latents_of(bb(x[i:i + 64]))[0].cpu().numpy(), range(i, i + len(x[i:i + 64])))
        return score_sets(ref.moments, None, stats)["rl2"]

    print(f"clean {rl2(arrays):.4f}; levels {LEVELS}")
    for name, fn in VARIANTS.items():
        vals = [rl2([fn(a, lv, i) for i, a in enumerate(arrays)]) for lv in LEVELS]
        rises = all(b > a for a, b in zip(vals, vals[1:]))
        print(f"{name:22s} " + " ".join(f"{v:.4f}" for v in vals) + ("  rises" if rises else "  does not rise"))


if __name__ == "__main__":
    main()
