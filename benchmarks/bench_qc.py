"""Benchmark `rl2 qc` on one slide: tiles/s, seconds per slide and peak memory, medians over runs.

Each run is a fresh process (so its peak RSS, from resource.getrusage ru_maxrss, is its own) limited to
2 torch threads. "slide s" is the whole qc_slide call (thumbnail, tissue mask, reading, scoring,
outputs) with the reference and backbone already loaded, as in a batch; "load s" is loading them.

    PYTHONPATH=src python benchmarks/bench_qc.py --ref /tmp/acceptance/qc/pcam_ref.rl2 --runs 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_SLIDE = Path(__file__).resolve().parents[2] / "shared" / "data" / "wsi" / "CMU-1-Small-Region.svs"


def one_run(args) -> dict:
    import resource

    import torch

    from rl2.qc import qc_slide
    from rl2.reference import Reference

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    ref = Reference.load(args.ref)
    ref.backbone(device="cpu")
    load_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as out:
        t1 = time.perf_counter()
        s = qc_slide(args.slide, ref, out, save_tiles=args.save_tiles, batch_size=args.batch_size,
                     workers=args.workers, device="cpu", progress=False, force=True,
                     **({"mpp": args.mpp} if args.mpp else {}))
        slide_s = time.perf_counter() - t1
    return {"load_s": load_s, "slide_s": slide_s, "tiles": s["counts"]["scored"], "grid": s["counts"]["grid"],
            "tiles_per_s": s["counts"]["scored"] / slide_s,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ref", required=True)
    ap.add_argument("--slide", default=str(DEFAULT_SLIDE))
    ap.add_argument("--mpp", type=float, help="Slide pixel size, for slides without it.")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--save-tiles", default="none")
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one_run(args)))
        return
    runs = []
    for i in range(args.runs):
        cmd = [sys.executable, __file__, "--one"] + [a for a in sys.argv[1:] if a != "--one"]
        r = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
        runs.append(r)
        print(f"run {i + 1}: {r['tiles']} tiles in {r['slide_s']:.1f} s ({r['tiles_per_s']:.1f} tiles/s), "
              f"load {r['load_s']:.1f} s, peak RSS {r['peak_rss_mib']:.0f} MiB", flush=True)
    med = {k: statistics.median(r[k] for r in runs) for k in ("tiles_per_s", "slide_s", "load_s", "peak_rss_mib")}
    print(f"median over {len(runs)} runs ({Path(args.slide).name}, {runs[0]['tiles']} tissue tiles of "
          f"{runs[0]['grid']}, {args.threads} threads): {med['tiles_per_s']:.1f} tiles/s, {med['slide_s']:.1f} s/slide, "
          f"load {med['load_s']:.1f} s, peak RSS {med['peak_rss_mib']:.0f} MiB")
    print(json.dumps({"runs": runs, "median": med}))


if __name__ == "__main__":
    main()
