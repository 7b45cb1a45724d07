"""Measurements behind docs/MEASUREMENTS.md: backbone, read-out, latent dimension and flow size.

  python scripts/measure_configs.py features efficientnet-lite0            # cache features (minutes)
  python scripts/measure_configs.py features resnet18-random-TESTONLY paper
  python scripts/measure_configs.py eval efficientnet-lite0 64,4,128 32,4,128 64,0,0
                                       (dims,transforms,hidden; transforms 0 = PCA-whitening only)

Fits on PCam train (450 train / 150 held out, seed 0) and prints RL2 / bias-corrected RL2 of PCam val:
clean, blur sigma 1 and 2, noise sigma 0.05 and 0.1. Features are cached in --cache (default /tmp/rl2-measure).
"""

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from rl2 import degrade
from rl2.backbones import load_backbone
from rl2.images import collect_images, load_rgb, prepare
from rl2.latents import FeatureScaler, FlowConfig, to_latent, train_flow
from rl2.statistics import distance

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "pcam_subset"
CONDITIONS = [("clean_0", "blur", 0), ("blur_1", "blur", 1), ("blur_2", "blur", 2), ("noise_0.05", "noise", 0.05), ("noise_0.1", "noise", 0.1)]


def features(name, readout, cache: Path):
    bb = load_backbone(name, readout=readout)
    size = bb.identity.preprocessing.input_size

    def run(arrays):
        return np.concatenate([bb(torch.from_numpy(np.stack(arrays[i : i + 64])).permute(0, 3, 1, 2)).numpy()
                               for i in range(0, len(arrays), 64)])

    train = [np.asarray(load_rgb(p)) for p in collect_images(DATA / "train").paths]
    val = [np.asarray(load_rgb(p)) for p in collect_images(DATA / "val").paths]
    out = {"train": run([prepare(Image.fromarray(a), size) for a in train])}
    for key, kind, level in CONDITIONS:
        out[key] = run([prepare(Image.fromarray(degrade.apply(a, kind, level, seed=i)), size) for i, a in enumerate(val)])
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(cache / f"{name}-{readout or 'gap'}.npz", **out)


def evaluate(name, readout, configs, cache: Path):
    data = np.load(cache / f"{name}-{readout or 'gap'}.npz")
    feats = data["train"]
    order = np.random.default_rng(0).permutation(len(feats))
    hold, train = order[:150], order[150:]
    for dims, transforms, hidden in configs:
        scaler = FeatureScaler.fit(feats[train], dims)
        if transforms:
            cfg = FlowConfig(pca_dims=dims, transforms=transforms, hidden=hidden)
            flow, _ = train_flow(scaler(torch.from_numpy(feats[train])), scaler(torch.from_numpy(feats[hold])), cfg, progress=False)
            latent = lambda f: to_latent(flow, scaler(torch.from_numpy(f)))[0].double().numpy()  # noqa: E731
        else:
            latent = lambda f: scaler(torch.from_numpy(f)).double().numpy()  # noqa: E731
        zr = latent(feats[hold])
        cells = []
        for key, _, _ in CONDITIONS:
            z = latent(data[key])
            o = distance(zr.mean(0), zr.var(0, ddof=1), len(zr), z.mean(0), z.var(0, ddof=1), len(z))
            cells.append(f"{key}={o['rl2']:.3f}/{o['rl2_unbiased']:.3f}")
        print(name, readout or "gap", f"d={dims} transforms={transforms} hidden={hidden}", " ".join(cells), flush=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["features", "eval"])
    ap.add_argument("backbone")
    ap.add_argument("rest", nargs="*", help="read-out (features) or dims,transforms,hidden configs (eval)")
    ap.add_argument("--readout")
    ap.add_argument("--cache", type=Path, default=Path("/tmp/rl2-measure"))
    a = ap.parse_args()
    if a.what == "features":
        features(a.backbone, (a.rest[0] if a.rest else a.readout), a.cache)
    else:
        evaluate(a.backbone, a.readout, [tuple(int(v) for v in c.split(",")) for c in a.rest], a.cache)
