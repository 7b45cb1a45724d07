"""`rl2 qc`: tile slides, score every tissue tile against a reference, keep or reject each tile."""

from __future__ import annotations

import json
import sys

import click

from .cli_common import CONTEXT, EXIT_INPUT, EXIT_PARTIAL, POSITIVE, compute_options, err


@click.command("qc", context_settings=CONTEXT)
@click.argument("slides", nargs=-1, required=True)
@click.option("--ref", "reference", required=True, type=click.Path(dir_okay=False), help="Reference made by `rl2 fit`.")
@click.option("-o", "--output", "outdir", required=True, type=click.Path(file_okay=False), help="Output folder (one sub-folder per slide, plus index.html).")
@click.option("--mpp", type=POSITIVE, help="Pixel size (um/px) for slides whose metadata lacks it; slide metadata wins when present.")
@click.option("--target-mpp", type=POSITIVE, help="Pixel size to tile at. Default: that of the reference's real images (fit --mpp).")
@click.option("--tile-px", type=int, help="Tile side in pixels at --target-mpp. Default: the reference's image size, else 224.")
@click.option("--stride-px", type=int, help="Step between tiles in pixels at --target-mpp, at least 1/8 of the tile. Default: the tile size (no overlap).")
@click.option("--min-tissue", default=0.5, show_default=True, help="Minimum tissue fraction for a tile to be scored.")
@click.option("--threshold", type=float, help="Keep tiles whose score is at most this.")
@click.option("--percentile", type=float, help="Threshold = this percentile of the reference's held-out real scores [default: 99].")
@click.option("--save-tiles", type=click.Choice(["kept", "rejected", "all", "none"]), default="rejected", show_default=True,
              help="Which scored tiles to write as PNG (low-tissue tiles are never read, so never saved).")
@click.option("--weights", type=click.Path(), help="Backbone weights, if the reference's backbone needs a file (resnet18).")
@click.option("--force", is_flag=True, help="Redo slides that are already done with the same settings.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON list of per-slide results.")
@compute_options(batch_size=32, what="Tiles", workers_help="Tile-reading threads")
def command(slides, reference, outdir, mpp, target_mpp, tile_px, stride_px, min_tissue, threshold, percentile,
            save_tiles, weights, force, as_json, batch_size, workers, device, quiet):
    """Quality-control SLIDES (whole-slide files, plain images, or folders of them) into OUTPUT.

    \b
    Each slide gets OUTPUT/<slide-stem>/ with tiles.csv (x, y, level, mpp, tissue_fraction, score,
    kept, reason), thumbnail.png (tissue outline + score heatmap), tiles/, gallery/ and summary.json;
    OUTPUT/index.html lists all slides. A slide already done with the same settings is skipped.
    The default threshold is the 99th percentile of the reference's held-out real per-image scores:
    about 1 in 100 clean tiles like the reference's is rejected.

    Exit code 0: all slides done; 1: some slides failed (reported, the others are done);
    2: bad options, or every slide failed.
    """
    from .qc import qc_batch
    from .reference import Reference

    ref = Reference.load(reference)
    if weights:
        ref.backbone(weights=weights)

    def report(r):
        if as_json:
            return
        if r["status"] == "failed":
            err(f"FAILED {r['error']}")
            return
        for w in r.get("warnings", []):
            err(f"{r['name']}: {w}")
        c = r["counts"]
        what = "already done (--force to redo)" if r["status"] == "skipped" else f"{r['seconds']:.1f} s"
        click.echo(f"{r['name']}: {c['scored']} tissue tiles of {c['grid']}, {c['kept']} kept, "
                   f"{c['low_quality']} low quality; {what}")

    results = qc_batch(list(slides), ref, outdir, progress=not quiet, force=force, on_result=report,
                       target_mpp=target_mpp, mpp=mpp, tile_px=tile_px, stride_px=stride_px, min_tissue=min_tissue,
                       threshold=threshold, percentile=percentile, save_tiles=save_tiles,
                       batch_size=batch_size, workers=workers, device=device)
    n_failed = sum(r["status"] == "failed" for r in results)
    if as_json:
        click.echo(json.dumps(results, indent=2))
    else:
        click.echo(f"wrote {outdir}/index.html ({len(results) - n_failed} slides done, {n_failed} failed)")
    if n_failed:
        sys.exit(EXIT_INPUT if n_failed == len(results) else EXIT_PARTIAL)
