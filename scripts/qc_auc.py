"""How well does the RL2 tile score find damaged regions of a real slide? AUC per damage kind.

Reads the CMU-1-Small-Region slide, keeps the tissue tiles of the `rl2 qc` grid (tiles at the
reference's pixel size and tile size), and makes damaged copies of the slide at level 0 in which a known
set of regions (a checkerboard of 2x2-tile blocks, and its complement, so every tile is damaged in
exactly one copy) has blur, noise or pen-like strokes (colours from the HistoQC pen rows of he.tsv).
Every tissue tile is scored clean and damaged, exactly as `rl2 qc` scores it (read_tile, prepare,
backbone, flow, latent distance), and each kind gets the Mann-Whitney AUC of

- the RL2 score (higher = worse), and
- the variance of the Laplacian of the grey tile (HistoQC-style blur score; lower = blurrier = worse),

at separating damaged from clean tiles. Option A uses a given reference (e.g. PCam, --ref). Option B
(--fit-half) fits a reference on clean tiles from the top half of the slide and evaluates on the bottom
half. The slide is small (2220 x 2967 px), so this experiment holds it in memory; `rl2 qc` never does.

    PYTHONPATH=src python scripts/qc_auc.py --ref pcam_ref.rl2 --fit-half --out /tmp/acceptance/qc/auc
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter
from scipy import ndimage
from scipy.stats import rankdata

from rl2.images import prepare
from rl2.reference import Reference, fit_reference
from rl2.slides import Slide, open_slide, read_tile
from rl2.tissue import grid_tiles, tissue_fraction, tissue_mask

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CMU = DATA / "wsi" / "CMU-1-Small-Region.svs"
HE_TSV = DATA / "qc_fixtures" / "histoqc" / "pen_markings_he" / "he.tsv"
BLOCK = 2  # damage regions are BLOCK x BLOCK tiles
# kind -> (function name, severity). Blur sigma in microns, noise sigma on a 0..1 scale, at level 0.
DAMAGES = {
    "blur 1 um": ("blur", 1.0),
    "blur 3 um": ("blur", 3.0),
    "noise 0.05": ("noise", 0.05),
    "noise 0.15": ("noise", 0.15),
    "pen": ("pen", None),
}


def auc(damaged, clean) -> float:
    """P(damaged > clean) + P(tie)/2, by the Mann-Whitney rank formula."""
    damaged, clean = np.asarray(damaged, float), np.asarray(clean, float)
    ranks = rankdata(np.concatenate([damaged, clean]))
    n1, n0 = len(damaged), len(clean)
    return float((ranks[:n1].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def laplacian_variance(tile: Image.Image) -> float:
    grey = np.asarray(tile.convert("L"), dtype=np.float64) / 255.0
    return float(ndimage.laplace(grey).var())


def pen_colours() -> np.ndarray:
    rows = [r for r in csv.DictReader(open(HE_TSV), delimiter="\t") if r["Class"] == "1"]
    rgb = np.array([[int(r["R"]), int(r["G"]), int(r["B"])] for r in rows], float)
    return rgb[rgb.min(1) < 200]  # drop the near-white row: not ink


def damage_image(img: np.ndarray, regions, kind: str, level, mpp: float, tile: int, rng) -> np.ndarray:
    """A copy of ``img`` (HxWx3 uint8, level 0) with ``regions`` (x0, y0, x1, y1) damaged; ``tile``: tile side."""
    out = img.copy()
    if kind == "blur":
        s = level / mpp
        full = np.stack([ndimage.gaussian_filter(img[..., c].astype(np.float32), s) for c in range(3)], -1)
    elif kind == "noise":
        full = img.astype(np.float32) + rng.normal(0, level * 255, img.shape)
    if kind in ("blur", "noise"):
        for x0, y0, x1, y1 in regions:
            out[y0:y1, x0:x1] = np.clip(full[y0:y1, x0:x1], 0, 255).round().astype(np.uint8)
        return out
    # Pen: a soft-edged, translucent scribble through every tile of each region (clipped to it); ink
    # absorbs light, so it multiplies the pixels below it by its colour.
    colours = pen_colours()
    out = out.astype(np.float32)
    for x0, y0, x1, y1 in regions:
        canvas = Image.new("L", (x1 - x0, y1 - y0), 0)
        cells = rng.permutation([(i, j) for i in range(BLOCK) for j in range(BLOCK)])
        pts = [((i + rng.uniform(0.2, 0.8)) * tile, (j + rng.uniform(0.2, 0.8)) * tile) for i, j in cells]
        ImageDraw.Draw(canvas).line(pts, fill=255, width=int(rng.uniform(0.3, 0.6) * tile), joint="curve")
        m = np.asarray(canvas.filter(ImageFilter.GaussianBlur(tile * 0.05)), np.float32)[..., None] / 255
        m *= rng.uniform(0.6, 0.95)  # opacity
        ink = colours[rng.integers(len(colours))] / 255
        out[y0:y1, x0:x1] *= 1 - m + m * ink
    return np.clip(out, 0, 255).round().astype(np.uint8)


class Scorer:
    """Scores tiles the way `rl2 qc` does: read_tile -> prepare -> backbone -> flow -> latent distance."""

    def __init__(self, ref: Reference, size_l0: int, tile_px: int, batch_size: int = 32):
        self.ref, self.size_l0, self.tile_px, self.bs = ref, size_l0, tile_px, batch_size
        self.bb = ref.backbone(device="cpu")
        self.input = self.bb.identity.preprocessing.input_size

    def __call__(self, slide: Slide, xy) -> tuple[np.ndarray, np.ndarray]:
        scores, lapvar = [], []
        for i in range(0, len(xy), self.bs):
            tiles = [read_tile(slide, x, y, self.size_l0, self.tile_px) for x, y in xy[i:i + self.bs]]
            lapvar += [laplacian_variance(t) for t in tiles]
            x = torch.from_numpy(np.stack([prepare(t, self.input) for t in tiles])).permute(0, 3, 1, 2)
            z, _ = self.ref.latents_of(self.bb(x))
            scores.append(self.ref.image_distance(z))
        return np.concatenate(scores), np.array(lapvar)


def fit_half_reference(slide: Slide, mask, mask_ds, size_l0, tile_px, tile_mpp, stride_l0, out: Path) -> Reference:
    """Option B: a reference fitted on overlapping clean tissue tiles of the slide's top half."""
    folder = out / "optionB_train_tiles"
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.png"):  # from an earlier run, perhaps with other settings
        old.unlink()
    h_half = slide.dimensions[1] // 2
    n = 0
    for x, y in grid_tiles(slide.dimensions, size_l0, stride_l0):
        if y + size_l0 <= h_half and tissue_fraction(mask, mask_ds, x, y, size_l0) >= 0.5:
            read_tile(slide, x, y, size_l0, tile_px).save(folder / f"x{x}_y{y}.png")
            n += 1
    print(f"option B: fitting a reference on {n} overlapping tiles from the top half")
    ref, _ = fit_reference(folder, progress=False, workers=1, data_mpp=tile_mpp)
    ref.save(out / "optionB_cmu_top_half.rl2")
    return ref


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ref", help="Option A reference (e.g. fitted on PCam with --mpp 0.97).")
    ap.add_argument("--fit-half", action="store_true", help="Also run option B (reference from the top half).")
    ap.add_argument("--target-mpp", type=float, help="Tiling pixel size (default: the --ref reference's, else 0.97).")
    ap.add_argument("--tile-px", type=int, help="Tile size (default: the --ref reference's, else 96).")
    ap.add_argument("--min-tissue", type=float, default=0.5)
    ap.add_argument("--train-overlap", type=int, default=4, help="Option B training stride = tile / this.")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="/tmp/acceptance/qc/auc")
    args = ap.parse_args()
    torch.set_num_threads(2)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)

    ref_a = Reference.load(args.ref) if args.ref else None
    target_mpp = args.target_mpp or (ref_a.meta.get("data_mpp") if ref_a else None) or 0.97
    tile_px = args.tile_px or (ref_a.meta.get("data_image_px") if ref_a else None) or 96

    clean_slide = open_slide(CMU)
    mpp = clean_slide.mpp
    size_l0 = round(tile_px * target_mpp / mpp)
    tile_mpp = size_l0 * mpp / tile_px
    w, h = clean_slide.dimensions
    img = np.asarray(clean_slide.read_region_rgb(0, 0, 0, w, h))
    thumb = clean_slide.thumbnail(2048)
    mask = tissue_mask(np.asarray(thumb))
    mask_ds = (w / mask.shape[1] + h / mask.shape[0]) / 2
    xy = [(x, y) for x, y in grid_tiles((w, h), size_l0, size_l0)
          if tissue_fraction(mask, mask_ds, x, y, size_l0) >= args.min_tissue]
    bottom = np.array([y >= h // 2 for _, y in xy])
    print(f"{len(xy)} tissue tiles of {tile_px} px at {tile_mpp:.3f} um/px ({size_l0} px at level 0); "
          f"{bottom.sum()} in the bottom half")

    # Regions: BLOCK x BLOCK tiles of the grid; parity p damages the blocks whose (bx + by) % 2 == p.
    block_l0 = BLOCK * size_l0
    parity = {(x, y): ((x // block_l0) + (y // block_l0)) % 2 for x, y in xy}
    regions = {p: [(bx * block_l0, by * block_l0, min(w, (bx + 1) * block_l0), min(h, (by + 1) * block_l0))
                   for bx in range(w // block_l0 + 1) for by in range(h // block_l0 + 1) if (bx + by) % 2 == p]
               for p in (0, 1)}

    refs = {}
    if ref_a:
        refs["A"] = ref_a
    if args.fit_half:
        refs["B"] = fit_half_reference(clean_slide, mask, mask_ds, size_l0, tile_px, tile_mpp, max(1, size_l0 // args.train_overlap), out)
    scorers = {k: Scorer(r, size_l0, tile_px) for k, r in refs.items()}

    t0 = time.perf_counter()
    results = {k: {"clean": s(clean_slide, xy)} for k, s in scorers.items()}
    for name, (kind, level) in DAMAGES.items():
        damaged = {}
        for p in (0, 1):
            dimg = damage_image(img, regions[p], kind, level, mpp, size_l0, rng)
            if name in ("blur 3 um", "noise 0.05", "pen") and p == 0:
                Image.fromarray(dimg).save(out / f"CMU_{name.replace(' ', '_')}_parity0.png")
            dslide = Slide(Path(f"{name}-{p}"), image=Image.fromarray(dimg), mpp=mpp, format="PNG")
            sel = [i for i, t in enumerate(xy) if parity[t] == p]
            for k, s in scorers.items():
                sc, lv = s(dslide, [xy[i] for i in sel])
                damaged.setdefault(k, [np.zeros(len(xy)), np.zeros(len(xy))])
                damaged[k][0][sel], damaged[k][1][sel] = sc, lv
        for k in scorers:
            results[k][name] = tuple(damaged[k])
    print(f"scored in {time.perf_counter() - t0:.0f} s")

    rows = []
    for k, res in results.items():
        thr = refs[k].threshold(99)
        for subset, sel in (("all", np.ones(len(xy), bool)), ("bottom half", bottom)):
            if k == "B" and subset == "all":
                continue  # the top half trained B
            cs, cl = res["clean"][0][sel], res["clean"][1][sel]
            for name in DAMAGES:
                ds, dl = res[name][0][sel], res[name][1][sel]
                rows.append({
                    "reference": k, "tiles": subset, "damage": name, "n_clean": int(sel.sum()), "n_damaged": int(sel.sum()),
                    "auc_rl2": auc(ds, cs), "auc_laplacian_var": auc(-dl, -cl),
                    "rejected_damaged_p99": float((ds > thr).mean()), "rejected_clean_p99": float((cs > thr).mean()),
                    "median_score_clean": float(np.median(cs)), "median_score_damaged": float(np.median(ds)),
                })
    with open(out / "auc.json", "w") as f:
        json.dump({"tile_px": tile_px, "tile_mpp": tile_mpp, "n_tissue_tiles": len(xy), "rows": rows,
                   "references": {k: {"fingerprint": r.fingerprint, "p99": r.threshold(99),
                                      "heldout_median": float(np.median(r.image_scores))} for k, r in refs.items()}},
                  f, indent=2)
    with open(out / "tile_scores.csv", "w", newline="") as f:
        wr = csv.writer(f)
        wr.writerow(["reference", "x", "y", "condition", "score", "laplacian_var"])
        for k, res in results.items():
            for cond, (sc, lv) in res.items():
                for (x, y), s_, l_ in zip(xy, sc, lv):
                    wr.writerow([k, x, y, cond, f"{s_:.4f}", f"{l_:.6f}"])
    print(f"\n{'ref':3} {'tiles':11} {'damage':11} {'n':>4} {'AUC RL2':>8} {'AUC LapVar':>10} "
          f"{'rej dmg@p99':>11} {'rej clean@p99':>13} {'med clean':>9} {'med dmg':>8}")
    for r in rows:
        print(f"{r['reference']:3} {r['tiles']:11} {r['damage']:11} {r['n_clean']:4d} {r['auc_rl2']:8.3f} "
              f"{r['auc_laplacian_var']:10.3f} {r['rejected_damaged_p99']:11.2f} {r['rejected_clean_p99']:13.2f} "
              f"{r['median_score_clean']:9.3f} {r['median_score_damaged']:8.3f}")


if __name__ == "__main__":
    main()
