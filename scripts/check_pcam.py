"""Acceptance check on real data: fit on PCam train, score val clean, blurred and noisy.

Run:  python scripts/check_pcam.py [--backbone efficientnet-lite0] [--ref existing.rl2]

Expects ../shared/data/pcam_subset beside the repo. Prints one row per condition and checks that RL2
rises strictly within each family and that clean val has the smallest bias-corrected RL2.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from rl2.degrade import degrade_folder
from rl2.reference import Reference, fit_reference
from rl2.scores import score

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "pcam_subset"
CONDITIONS = [("clean", None, 0), ("blur", "blur", 1), ("blur", "blur", 2), ("noise", "noise", 0.05), ("noise", "noise", 0.1)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--backbone", default="efficientnet-lite0")
    ap.add_argument("--ref", help="use this reference instead of fitting one")
    ap.add_argument("--save-ref", help="save the fitted reference here")
    args = ap.parse_args()
    if args.ref:
        ref = Reference.load(args.ref)
    else:
        ref, _ = fit_reference(DATA / "train", backbone=args.backbone, data_mpp=0.97, progress=False)
        if args.save_ref:
            ref.save(args.save_ref)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for family, kind, level in CONDITIONS:
            images = DATA / "val"
            if kind:
                images = Path(tmp) / f"{kind}_{level}"
                degrade_folder(DATA / "val", images, kind, level)
            r = score(ref, images, progress=False)
            rows.append({"family": family, "level": level, "rl2": r.rl2, "rl2_unbiased": r.rl2_unbiased,
                         "ci95": r.ci95, "n": r.n_images})
    print(f"backbone {ref.identity.name}/{ref.identity.readout}, d={ref.dims}, fingerprint {ref.fingerprint}")
    print(f"{'condition':14s} {'RL2':>8s} {'unbiased':>9s} {'95% CI (true RL2)':>20s}")
    for r in rows:
        print(f"{r['family'] + ' ' + str(r['level']):14s} {r['rl2']:8.4f} {r['rl2_unbiased']:9.4f} "
              f"   [{r['ci95'][0]:.4f}, {r['ci95'][1]:.4f}]")
    ok = True
    for fam in ("blur", "noise"):
        vals = [rows[0]["rl2"]] + [r["rl2"] for r in rows if r["family"] == fam]
        rising = all(b > a for a, b in zip(vals, vals[1:]))
        print(f"{fam}: RL2 strictly increasing from clean: {rising}")
        ok &= rising
    smallest = min(rows, key=lambda r: r["rl2_unbiased"])["family"] == "clean"
    print(f"clean has the smallest bias-corrected RL2: {smallest}")
    print(json.dumps(rows))
    return 0 if ok and smallest else 1


if __name__ == "__main__":
    raise SystemExit(main())
