"""Cut tissue tiles from a slide into two disjoint folders, A (to fit a reference on) and B (to sweep).

Default: CMU-1-Small-Region.svs (2220 x 2967 px at 0.499 um/px) in 96 px tiles at 0.5 um/px (native
20x, no overlap), keeping tiles that are at least 50% tissue. That gives a few hundred tiles; coarser
settings give too few (96 px at 1 um/px: under 170 tiles in the whole grid, tissue or not). Tiles
are split by a seeded shuffle, so A and B interleave over the same tissue but never share a pixel.

    PYTHONPATH=src python scripts/cmu_tiles.py /work/shared/data/wsi/CMU-1-Small-Region.svs /tmp/cmu_tiles
    rl2 fit /tmp/cmu_tiles/A -o /tmp/cmu_ref.rl2 --mpp 0.5
    rl2 sweep /tmp/cmu_ref.rl2 /tmp/cmu_tiles/B -o /tmp/acceptance/sweep_cmu
"""

from __future__ import annotations

import argparse
import csv
import io
from pathlib import Path

import numpy as np

from rl2.files import atomic_write_bytes, atomic_write_text
from rl2.slides import open_slide, read_tile
from rl2.tissue import plan_tiles


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("slide")
    ap.add_argument("outdir")
    ap.add_argument("--mpp", type=float, default=0.5, help="target microns per pixel of the tiles")
    ap.add_argument("--tile", type=int, default=96, help="tile side in pixels")
    ap.add_argument("--min-tissue", type=float, default=0.5, help="least tissue fraction of a kept tile")
    ap.add_argument("--seed", type=int, default=0, help="seed of the A/B split")
    a = ap.parse_args(argv)

    out = Path(a.outdir)
    with open_slide(a.slide) as slide:
        plan = plan_tiles(slide, a.mpp, a.tile, min_tissue=a.min_tissue)
        order = np.random.default_rng(a.seed).permutation(len(plan.tiles))
        half = {int(i): ("A" if k < len(order) // 2 else "B") for k, i in enumerate(order)}
        rows = []
        for i, t in enumerate(plan.tiles):
            img = read_tile(slide, t.x, t.y, t.size_l0, a.tile)
            buf = io.BytesIO()
            img.save(buf, format="PNG")
            name = f"{half[i]}/tile_x{t.x:05d}_y{t.y:05d}.png"
            atomic_write_bytes(out / name, buf.getvalue())
            rows.append([name, t.x, t.y, t.size_l0, f"{t.tissue_fraction:.3f}"])
    text = io.StringIO()
    csv.writer(text, lineterminator="\n").writerows([["path", "x", "y", "size_l0", "tissue_fraction"], *rows])
    atomic_write_text(out / "tiles.csv", text.getvalue())
    n_a = sum(v == "A" for v in half.values())
    print(f"{len(rows)} tiles of {a.tile} px at {a.mpp} um/px (>= {a.min_tissue:.0%} tissue): "
          f"{n_a} in {out / 'A'}, {len(rows) - n_a} in {out / 'B'}")


if __name__ == "__main__":
    main()
