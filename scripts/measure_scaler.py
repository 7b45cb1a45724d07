"""Feature scaling before PCA: per-feature z-scores (the default), plain centring, or z-scores with a floor.

Run (about 6 minutes on 2 cores; needs ../shared beside the repo and the CMU tiles of scripts/cmu_tiles.py):
    python scripts/cmu_tiles.py ../shared/data/wsi/CMU-1-Small-Region.svs /tmp/cmu_tiles
    python scripts/measure_scaler.py /tmp/cmu_tiles

For each scaling it reports
- on PCam (fit on train, score val): RL2 / bias-corrected RL2 of clean, blur 1, 2 and noise 0.05, 0.1 val,
  the contrast (smallest bias-corrected degraded value over clean RL2) and whether occlusion rises;
- on CMU tiles (fit on half A, score half B with occlusion 0 .. 0.5): whether RL2 rises at every step;
- per-tile QC: the scores of the histolab pen-only tiles (no tissue, green pen) and of a pure-noise tile,
  over the 99th-percentile threshold of a reference fitted on the bundled sample (> 1 means rejected).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import rl2.latents as latents
from rl2.backbones import load_backbone
from rl2.degrade import apply
from rl2.images import collect_images, load_rgb, prepare
from rl2.latents import FlowConfig, to_latent, train_flow

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SAMPLE = Path(__file__).resolve().parents[1] / "src" / "rl2" / "data" / "sample" / "real"
PEN = DATA / "qc_fixtures" / "histolab" / "tiles" / "no-tissue-green-pen.png"
MODES = {"z-score (default)": "z", "centre only": "centre", "z-score, floor 0.1 x median std": "floor0.1"}
ORIGINAL_FIT = latents.FeatureScaler.fit


def scaler_fit(mode):
    def fit(feats, dims):
        x = np.asarray(feats, np.float64)
        mean, std = x.mean(0), x.std(0, ddof=1)
        if mode == "z":
            return ORIGINAL_FIT(feats, dims)
        scale = np.ones_like(std) if mode == "centre" else np.maximum(std, float(mode[5:]) * np.median(std))
        dims = min(dims, x.shape[0] - 1, x.shape[1])
        _, s, vt = np.linalg.svd((x - mean) / scale, full_matrices=False)
        return latents.FeatureScaler(mean, scale, np.ascontiguousarray(vt[:dims].T), s[:dims] ** 2 / (x.shape[0] - 1))
    return fit


def features(bb, paths, kind=None, level=0):
    arrays = []
    for i, p in enumerate(paths):
        a = np.asarray(load_rgb(p))
        arrays.append(prepare(Image.fromarray(apply(a, kind, level, seed=i) if kind else a), 224))
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
    return torch.cat([bb(x[i:i + 64]) for i in range(0, len(x), 64)]).numpy()


def set_scores(train_feats, sets, dims=64):
    order = np.random.default_rng(0).permutation(len(train_feats))
    n_hold = round(0.25 * len(train_feats))
    hold, train = order[:n_hold], order[n_hold:]
    sc = latents.FeatureScaler.fit(train_feats[train], dims)
    flow, _ = train_flow(sc(torch.from_numpy(train_feats[train])), sc(torch.from_numpy(train_feats[hold])),
                         FlowConfig(pca_dims=dims), progress=False)
    lat = lambda f: to_latent(flow, sc(torch.from_numpy(f)))[0].double().numpy()  # noqa: E731
    zr = lat(train_feats[hold])
    mu, vr = zr.mean(0), zr.var(0, ddof=1)
    out = {}
    for name, f in sets.items():
        z = lat(f)
        sq = float((z.mean(0) - mu) @ (z.mean(0) - mu))
        d2 = sq - vr.sum() / len(zr) - z.var(0, ddof=1).sum() / len(z)
        out[name] = (np.sqrt(sq / dims), np.sign(d2) * np.sqrt(abs(d2) / dims))
    return out


def qc_ratios():
    from rl2.reference import fit_reference

    ref, _ = fit_reference(SAMPLE, progress=False, workers=1, data_mpp=0.97)
    bb, thr = ref.backbone(), ref.threshold(99)
    pen = np.asarray(load_rgb(PEN))
    h, w = pen.shape[0] // 2, pen.shape[1] // 2
    tiles = [pen[:h, :w], pen[:h, w:], pen[h:, :w], pen[h:, w:]]
    noise = np.random.default_rng(0).integers(0, 256, (96, 96, 3), dtype=np.uint8)
    x = torch.from_numpy(np.stack([prepare(Image.fromarray(t), 224) for t in tiles + [noise]])).permute(0, 3, 1, 2)
    s = ref.image_distance(ref.latents_of(bb(x))[0]) / thr
    return s[:4], s[4]


def main() -> None:
    cmu = Path(sys.argv[1])
    torch.set_num_threads(2)
    bb = load_backbone()
    pcam_train = features(bb, collect_images(DATA / "pcam_subset" / "train").paths)
    val = collect_images(DATA / "pcam_subset" / "val").paths
    pcam = {"clean": features(bb, val), "blur 1": features(bb, val, "blur", 1), "blur 2": features(bb, val, "blur", 2),
            "noise 0.05": features(bb, val, "noise", 0.05), "noise 0.1": features(bb, val, "noise", 0.1)}
    occ_levels = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5)
    pcam.update({f"occ {lv}": features(bb, val, "occlusion", lv) for lv in occ_levels})
    cmu_a = features(bb, collect_images(cmu / "A").paths)
    cmu_b = collect_images(cmu / "B").paths
    cmu_sets = {f"occ {lv}": features(bb, cmu_b, "occlusion", lv) for lv in (0,) + occ_levels}
    for label, mode in MODES.items():
        latents.FeatureScaler.fit = staticmethod(scaler_fit(mode))
        p = set_scores(pcam_train, pcam)
        contrast = min(p[k][1] for k in ("blur 1", "blur 2", "noise 0.05", "noise 0.1")) / p["clean"][0]
        occ = [p["clean"][0]] + [p[f"occ {lv}"][0] for lv in occ_levels]
        c = set_scores(cmu_a, cmu_sets)
        cocc = [c[f"occ {lv}"][0] for lv in (0,) + occ_levels]
        pen, noise = qc_ratios()
        print(f"\n{label}")
        print("  PCam  " + "  ".join(f"{k} {p[k][0]:.3f}/{p[k][1]:.3f}" for k in ("clean", "blur 1", "blur 2", "noise 0.05", "noise 0.1")))
        print(f"  PCam contrast {contrast:.2f}; occlusion rises at every step: {all(b > a for a, b in zip(occ, occ[1:]))}")
        print(f"  CMU occlusion RL2 {' '.join(f'{v:.3f}' for v in cocc)}; rises: {all(b > a for a, b in zip(cocc, cocc[1:]))}")
        print(f"  QC score / threshold: pen-only tiles {' '.join(f'{v:.2f}' for v in pen)}; pure noise {noise:.2f}", flush=True)
    latents.FeatureScaler.fit = ORIGINAL_FIT


if __name__ == "__main__":
    main()
