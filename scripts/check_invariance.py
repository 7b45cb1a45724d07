"""Acceptance: the same images scored with batch sizes 1, 7, 64 and 0 or 2 workers give the same scores.

Run:  python scripts/check_invariance.py REF IMAGES...

Prints each configuration's RL2, bias-corrected RL2, CI and mean per-image score, and the largest
relative difference from batch 64 / 2 workers. Exit 1 if any differs by more than 1e-6 relative.
"""

from __future__ import annotations

import argparse

from rl2.reference import Reference
from rl2.scores import score

FIELDS = ("rl2", "l2", "rl2_unbiased", "mean_image_score")


def rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-12)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("ref")
    ap.add_argument("images", nargs="+")
    args = ap.parse_args()
    ref = Reference.load(args.ref)
    configs = [(64, 2), (64, 0), (7, 2), (7, 0), (1, 2), (1, 0)]
    results = {c: score(ref, args.images, batch_size=c[0], workers=c[1], progress=False) for c in configs}
    base = results[configs[0]]
    worst = 0.0
    print(f"{'batch':>5s} {'workers':>7s} {'RL2':>12s} {'unbiased':>12s} {'CI95':>26s} {'max rel diff':>12s}")
    for (bs, w), r in results.items():
        diffs = [rel(getattr(r, f), getattr(base, f)) for f in FIELDS]
        diffs += [rel(a, b) for a, b in zip(r.ci95, base.ci95)]
        worst = max(worst, *diffs)
        print(f"{bs:5d} {w:7d} {r.rl2:12.9f} {r.rl2_unbiased:12.9f} [{r.ci95[0]:.9f}, {r.ci95[1]:.9f}] {max(diffs):12.2e}")
    print(f"{base.n_images} images; largest relative difference {worst:.2e} (limit 1e-6)")
    return 0 if worst <= 1e-6 else 1


if __name__ == "__main__":
    raise SystemExit(main())
