"""CPU throughput of the core pipeline: feature extraction, scoring, and flow fitting on 1,000 images.

Run:  python benchmarks/bench_core.py [--images DIR] [--repeats 3]

Prints medians over repeats (these machines are noisy). Images default to the PCam subset beside the
repo (../shared/data/pcam_subset), falling back to the bundled sample repeated to the needed count.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from rl2.backbones import load_backbone
from rl2.features import RunLog, extract_features
from rl2.images import collect_images
from rl2.latents import FeatureScaler, FlowConfig, train_flow
from rl2.reference import fit_reference
from rl2.scores import score

ROOT = Path(__file__).resolve().parents[1]


def _images(arg: str | None, n: int) -> list[Path]:
    default = ROOT.parent / "shared" / "data" / "pcam_subset"
    paths = collect_images(arg or (default if default.is_dir() else ROOT / "src/rl2/data/sample")).paths
    return (paths * (n // len(paths) + 1))[:n]


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--images")
    ap.add_argument("--n", type=int, default=256, help="images per throughput run")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")

    paths = _images(args.images, args.n)
    bb = load_backbone()
    t = _median_time(lambda: extract_features(bb, paths, RunLog(), workers=args.workers, progress=False), args.repeats)
    print(f"feature extraction (efficientnet-lite0, 224 px): {len(paths) / t:.1f} images/s  (median of {args.repeats})")

    ref_paths = _images(args.images, 1000)
    feats, _ = extract_features(bb, ref_paths, RunLog(), workers=args.workers, progress=False)
    order = np.random.default_rng(0).permutation(len(feats))
    hold, train = order[:250], order[250:]

    def fit_flow():
        cfg = FlowConfig()
        sc = FeatureScaler.fit(feats[train], cfg.pca_dims)
        train_flow(sc(torch.from_numpy(feats[train])), sc(torch.from_numpy(feats[hold])), cfg, progress=False)

    t = _median_time(fit_flow, args.repeats)
    print(f"flow fit on 1,000 images' features (750 train / 250 held out, early stopping): {t:.1f} s  (median)")

    ref, _ = fit_reference(paths[:120], progress=False)
    t = _median_time(lambda: score(ref, paths, workers=args.workers, progress=False), args.repeats)
    print(f"scoring end to end (decode + backbone + flow + bootstrap): {len(paths) / t:.1f} images/s  (median)")
    with torch.no_grad():
        f = torch.from_numpy(feats[:1000])
        t = _median_time(lambda: ref.latents_of(f), args.repeats)
    print(f"flow + scaler only (features -> latents): {1000 / t:.0f} images/s  (median)")


if __name__ == "__main__":
    main()
