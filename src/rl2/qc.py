"""Slide quality control: tile a slide, score every tissue tile against a reference, keep or reject it.

For each slide: a thumbnail gives the tissue mask (`rl2.tissue`); a regular grid of tiles at the target
pixel size is laid over the slide; every grid tile with at least `min_tissue` tissue is read, resized to
the backbone's input and scored with the reference's per-image score (RMS latent distance to the
held-out real mean; about 1 for real tissue). A tile is kept when its score is at most the threshold
(default: the 99th percentile of the reference's held-out real scores).

Outputs (OUTDIR/<slide-stem>/): tiles.csv, thumbnail.png (tissue outline + score heatmap), tile PNGs
(`save_tiles`), gallery/ (worst rejected and borderline kept tiles) and summary.json. A slide's folder is
built under a temporary name and renamed when complete, so summary.json present means done. Pixels are
streamed in batches: memory does not grow with the size of the slide.
"""

from __future__ import annotations

import csv
import hashlib
import heapq
import io
import json
import math
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from . import __version__
from .errors import RL2Error, SlideError
from .files import check_output, umask
from .images import collect_images, prepare
from .qc_report import render_thumbnail, write_index
from .reference import Reference
from .slides import open_slide, read_tile, resolve_mpp
from .tissue import grid_tiles, tissue_fraction, tissue_mask

SAVE_TILES = ("kept", "rejected", "all", "none")
DEFAULT_PERCENTILE = 99.0
DEFAULT_TILE_PX = 224  # when the reference does not record its images' size
MAX_UPSAMPLE = 4  # coarser slides than 1/4 of the target pixel size are refused: tiles would be mostly blur
THUMB_MAX = 2048  # longer side of the thumbnail the tissue mask is computed on
GALLERY_SIZE = 12  # worst rejected and borderline kept tiles kept per slide for the report
SLIDE_SUFFIXES = (".svs", ".tif", ".tiff", ".ndpi", ".vms", ".vmu", ".scn", ".mrxs", ".svslide", ".bif",
                  ".dcm", ".png", ".jpg", ".jpeg", ".bmp", ".webp")


# -- settings -------------------------------------------------------------------------------------
def resolve_threshold(reference: Reference, threshold: float | None, percentile: float | None) -> tuple[float, str]:
    """(threshold, where it came from). An explicit threshold wins; else a percentile of held-out real scores."""
    if threshold is not None and percentile is not None:
        raise RL2Error("give --threshold or --percentile, not both")
    if threshold is not None:
        if not (threshold > 0 and math.isfinite(threshold)):
            raise RL2Error(f"--threshold must be a positive number, got {threshold}")
        return float(threshold), "--threshold"
    p = DEFAULT_PERCENTILE if percentile is None else float(percentile)
    if not 0 < p <= 100:
        raise RL2Error(f"--percentile must be in (0, 100], got {p}")
    return reference.threshold(p), f"{p:g}th percentile of {len(reference.image_scores)} held-out real scores"


def qc_settings(reference: Reference, target_mpp=None, tile_px=None, stride_px=None, min_tissue=0.5,
                threshold=None, percentile=None, save_tiles="rejected", mpp=None) -> dict:
    """Validate the options and fill in the defaults from the reference. Raises RL2Error (bad input)."""
    source = "--target-mpp" if target_mpp is not None else "the reference's data_mpp"
    target_mpp = target_mpp if target_mpp is not None else reference.meta.get("data_mpp")
    if target_mpp is None:
        raise RL2Error("the reference does not record its images' pixel size (fit it with --mpp); "
                       "pass --target-mpp MICRONS_PER_PIXEL to choose the tiling resolution")
    if not (target_mpp > 0 and math.isfinite(target_mpp)):
        raise RL2Error(f"{source} must be a positive number, got {target_mpp}; pass --target-mpp MICRONS_PER_PIXEL")
    if mpp is not None and not (mpp > 0 and math.isfinite(mpp)):
        raise RL2Error(f"--mpp must be a positive number, got {mpp}")
    tile_px = int(tile_px if tile_px is not None else reference.meta.get("data_image_px") or DEFAULT_TILE_PX)
    stride_px = int(stride_px if stride_px is not None else tile_px)
    if tile_px < 16 or stride_px < max(1, tile_px // 8):
        raise RL2Error(f"tile size must be at least 16 px and the stride at least 1/8 of it (got {tile_px} and {stride_px} px); "
                       "smaller strides score each spot over 64 times")
    if not 0 <= min_tissue <= 1:
        raise RL2Error(f"--min-tissue must be between 0 and 1, got {min_tissue}")
    if save_tiles not in SAVE_TILES:
        raise RL2Error(f"--save-tiles must be one of {', '.join(SAVE_TILES)}, got {save_tiles!r}")
    thr, thr_source = resolve_threshold(reference, threshold, percentile)
    return {
        "target_mpp": float(target_mpp), "tile_px": tile_px, "stride_px": stride_px,
        "min_tissue": float(min_tissue), "threshold": thr, "threshold_source": thr_source,
        "save_tiles": save_tiles, "mpp_override": mpp, "reference": reference.fingerprint,
    }


def _slide_settings(path: Path, settings: dict) -> dict:
    """What must match for an existing result to be reused: the settings and the slide file itself."""
    st = path.stat()
    return {**settings, "slide_bytes": st.st_size, "slide_mtime_ns": st.st_mtime_ns}


def load_done(slide_dir: Path, settings: dict) -> dict | None:
    """The summary of an earlier run with the same settings, or None."""
    try:
        summary = json.loads((slide_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    return summary if summary.get("settings") == settings else None


# -- the engine -----------------------------------------------------------------------------------
def _png(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _reason(kept: bool, scored: bool, score: float, threshold: float) -> str:
    if not scored:
        return "low tissue"
    return "kept" if kept else f"low quality (score {score:.3f} > {threshold:.3f})"


def _batches(indices: np.ndarray, size: int):
    for i in range(0, len(indices), size):
        yield indices[i:i + size]


def qc_slide(
    slide_path: str | os.PathLike,
    reference: Reference,
    outdir: str | os.PathLike,
    target_mpp: float | None = None,
    mpp: float | None = None,
    tile_px: int | None = None,
    stride_px: int | None = None,
    min_tissue: float = 0.5,
    threshold: float | None = None,
    percentile: float | None = None,
    save_tiles: str = "rejected",
    batch_size: int = 32,
    workers: int = 2,
    device: str | None = None,
    progress: bool = True,
    force: bool = False,
    name: str | None = None,
    settings: dict | None = None,
) -> dict:
    """QC one slide into ``outdir/<name>/`` (name: the slide's stem) and return its summary.

    ``mpp`` is the slide's pixel size where its metadata lacks one; ``target_mpp`` (default the
    reference's ``data_mpp``) and ``tile_px`` (default the reference's image size) set the tiles.
    ``stride_px`` (default ``tile_px``) is in target pixels. A slide already done with the same settings
    is not redone unless ``force``; its summary is returned with ``"status": "skipped"``.
    """
    slide_path = Path(slide_path)
    settings = settings or qc_settings(reference, target_mpp, tile_px, stride_px, min_tissue, threshold,
                                       percentile, save_tiles, mpp)
    outdir = Path(outdir)
    name = name or slide_path.stem
    final = outdir / name
    if not slide_path.is_file():
        raise SlideError(f"{slide_path}: cannot open slide: file not found")
    full_settings = _slide_settings(slide_path, settings)
    if not force and (done := load_done(final, full_settings)) is not None:
        return {**done, "status": "skipped"}

    t0 = time.perf_counter()
    outdir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=outdir, prefix=f".{name}.partial-"))
    tmp.chmod(0o777 & ~umask())  # mkdtemp makes 0700 folders; the result gets the usual permissions
    try:
        with open_slide(slide_path) as slide:
            summary = _run(slide, reference, settings, tmp, batch_size, workers, device, progress, name)
        summary.update(settings=full_settings, seconds=round(time.perf_counter() - t0, 3))
        summary["tiles_per_s"] = round(summary["counts"]["scored"] / summary["seconds"], 2) if summary["seconds"] else None
        # summary.json is written last: its presence marks a complete result.
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2))
        if final.exists():
            old = Path(tempfile.mkdtemp(dir=outdir, prefix=f".{name}.old-"))
            os.replace(final, old / "x")
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {**summary, "status": "done"}


def _run(slide, reference, settings, out: Path, batch_size, workers, device, progress, name) -> dict:
    override = settings["mpp_override"]
    # --mpp fills in a missing pixel size; it does not overrule the slide's own metadata.
    slide_mpp, mpp_source = resolve_mpp(slide, None if slide.mpp is not None else override)
    warnings = []
    if override is not None and slide.mpp is not None and abs(override - slide.mpp) > 1e-3 * slide.mpp:
        warnings.append(f"--mpp {override:g} ignored: the slide metadata gives {slide.mpp:.4f} um/px")
    if mpp_source.startswith("estimated"):
        warnings.append(f"pixel size {slide_mpp:.3f} um/px {mpp_source}; pass --mpp to set it")
    tile_px, thr = settings["tile_px"], settings["threshold"]
    size_l0 = max(1, round(tile_px * settings["target_mpp"] / slide_mpp))
    stride_l0 = max(1, round(settings["stride_px"] * settings["target_mpp"] / slide_mpp))
    tile_mpp = size_l0 * slide_mpp / tile_px  # the pixel size tiles really have, after rounding
    level = slide.get_best_level_for_downsample(size_l0 / tile_px)
    if size_l0 * MAX_UPSAMPLE < tile_px:
        raise SlideError(f"{slide.path}: the slide ({slide_mpp:.3f} um/px) is over {MAX_UPSAMPLE}x coarser than the "
                         f"target ({settings['target_mpp']:.3f} um/px); check --target-mpp and --mpp")
    if size_l0 < tile_px:
        warnings.append(f"the slide ({slide_mpp:.3f} um/px) is coarser than the target "
                        f"({settings['target_mpp']:.3f} um/px); tiles are upsampled")

    thumb = slide.thumbnail(THUMB_MAX)
    mask = tissue_mask(np.asarray(thumb))
    w0, h0 = slide.dimensions
    mask_ds = (w0 / mask.shape[1] + h0 / mask.shape[0]) / 2
    xy = np.array(grid_tiles(slide.dimensions, size_l0, stride_l0), dtype=np.int64).reshape(-1, 2)
    if len(xy) == 0:
        raise SlideError(f"{slide.path}: the slide ({w0}x{h0} px) is smaller than one tile ({size_l0} px at level 0); "
                         "check --tile-px, --target-mpp and --mpp")
    frac = np.array([tissue_fraction(mask, mask_ds, x, y, size_l0) for x, y in xy], dtype=np.float64)
    scored = frac >= settings["min_tissue"]
    scores = np.full(len(xy), np.nan)

    bb = reference.backbone(device=device)
    reference.to(next(bb.buffers()).device)
    input_size = bb.identity.preprocessing.input_size
    save = settings["save_tiles"]
    if save != "none":
        for sub in ("kept", "rejected") if save == "all" else (save,):
            (out / "tiles" / sub).mkdir(parents=True, exist_ok=True)
    worst, border = [], []  # heaps of (score, x, y, png) for the report gallery

    def read(i):
        img = read_tile(slide, int(xy[i, 0]), int(xy[i, 1]), size_l0, tile_px)
        return img, prepare(img, input_size)

    todo = np.flatnonzero(scored)
    bar = tqdm(total=len(todo), desc=name[:30], unit="tile", disable=not progress, leave=False)
    pool = ThreadPoolExecutor(max(1, workers))
    pending = []
    try:
        chunks = list(_batches(todo, batch_size))
        pending = [pool.submit(read, i) for i in chunks[0]] if chunks else []
        for k, chunk in enumerate(chunks):
            tiles = [f.result() for f in pending]
            # Read the next batch while the network runs on this one.
            pending = [pool.submit(read, i) for i in chunks[k + 1]] if k + 1 < len(chunks) else []
            x = torch.from_numpy(np.stack([a for _, a in tiles])).to(next(bb.buffers()).device).permute(0, 3, 1, 2)
            z, _ = reference.latents_of(bb(x))
            s = reference.image_distance(z)
            scores[chunk] = s
            for i, (img, _), sc in zip(chunk, tiles, s):
                kept = bool(sc <= thr)
                if save == "all" or save == ("kept" if kept else "rejected"):
                    img.save(out / "tiles" / ("kept" if kept else "rejected") / f"x{xy[i, 0]}_y{xy[i, 1]}.png")
                heap = border if kept else worst
                item = (float(sc), int(xy[i, 0]), int(xy[i, 1]))
                if len(heap) < GALLERY_SIZE:
                    heapq.heappush(heap, (*item, _png(img)))
                elif item[0] > heap[0][0]:
                    heapq.heapreplace(heap, (*item, _png(img)))
            bar.update(len(chunk))
    finally:
        for f in pending:
            f.cancel()
        pool.shutdown(wait=True)
        bar.close()

    kept = scored & (scores <= thr)
    with open(out / "tiles.csv", "w", newline="", encoding="utf-8", errors="surrogateescape") as f:
        w = csv.writer(f)
        w.writerow(["x", "y", "level", "mpp", "tissue_fraction", "score", "kept", "reason"])
        for i in range(len(xy)):
            sc = "" if not scored[i] else f"{scores[i]:.4f}"
            w.writerow([xy[i, 0], xy[i, 1], level, f"{tile_mpp:.4f}", f"{frac[i]:.3f}", sc, int(kept[i]),
                        _reason(kept[i], scored[i], scores[i], thr)])

    gallery = []
    (out / "gallery").mkdir()
    for kind, heap in (("rejected", worst), ("kept", border)):
        for sc, x, y, png in sorted(heap, reverse=True):
            rel = f"gallery/{kind}_x{x}_y{y}.png"
            (out / rel).write_bytes(png)
            gallery.append({"kind": kind, "x": x, "y": y, "score": round(sc, 4), "file": rel})

    real_median = float(np.median(reference.image_scores))
    render_thumbnail(thumb, mask, xy[scored], size_l0, scores[scored], thr, slide.dimensions,
                     real_median).save(out / "thumbnail.png")
    s_ok = scores[scored]
    return {
        "slide": str(slide.path), "name": name, "format": slide.format, "dimensions": list(slide.dimensions),
        "slide_mpp": slide_mpp, "mpp_source": mpp_source, "tile_mpp": tile_mpp, "tile_size_l0": size_l0,
        "stride_l0": stride_l0, "level": level, "threshold": thr, "real_median_score": real_median,
        "counts": {"grid": int(len(xy)), "scored": int(scored.sum()), "kept": int(kept.sum()),
                   "low_tissue": int((~scored).sum()), "low_quality": int((scored & ~kept).sum())},
        "scores": ({"median": float(np.median(s_ok)), "p90": float(np.percentile(s_ok, 90)), "max": float(s_ok.max())}
                   if len(s_ok) else None),
        "tissue_fraction_of_slide": float(mask.mean()),
        "gallery": gallery, "warnings": warnings, "rl2_version": __version__,
        "reference": reference.summary(),
    }


# -- batches of slides ----------------------------------------------------------------------------
def expand_slides(inputs: Sequence[str | os.PathLike]) -> list[Path]:
    """Slide paths from files, folders (recursive), glob patterns and list files, as images are found."""
    return collect_images(list(inputs), SLIDE_SUFFIXES, "slides").paths


def output_names(paths: Sequence[Path]) -> list[str]:
    """Folder name per slide: its stem, plus a short hash of its path where two stems collide."""
    stems = [p.stem for p in paths]
    return [s if stems.count(s) == 1 else f"{s}-{hashlib.sha1(str(p.resolve()).encode()).hexdigest()[:6]}"
            for s, p in zip(stems, paths)]


def qc_batch(
    slides: Sequence[str | os.PathLike],
    reference: Reference,
    outdir: str | os.PathLike,
    progress: bool = True,
    force: bool = False,
    on_result=None,
    **options,
) -> list[dict]:
    """QC many slides; one broken slide is reported (``"status": "failed"``) and the rest go on.

    ``options`` are those of `qc_slide`. Writes ``outdir/index.html`` at the end and returns one dict per
    slide (its summary, or ``{"slide", "name", "status": "failed", "error"}``). ``on_result`` is called
    with each as it comes.
    """
    compute = {k: options.pop(k) for k in ("batch_size", "workers", "device") if k in options}
    settings = qc_settings(reference, **options)
    paths = expand_slides(slides)
    check_output(outdir, [*slides, *paths], "qc output", folder=True)
    results = []
    for path, name in zip(tqdm(paths, desc="slides", unit="slide", disable=not progress or len(paths) < 2), output_names(paths)):
        try:
            res = qc_slide(path, reference, outdir, name=name, settings=settings, force=force, progress=progress, **compute)
        except (KeyboardInterrupt, MemoryError):
            raise
        except Exception as e:  # any failure of one slide is reported, and the batch goes on
            msg = str(e) if isinstance(e, RL2Error) else f"{path}: {type(e).__name__}: {e}"
            res = {"slide": str(path), "name": name, "status": "failed", "error": msg}
        results.append(res)
        if on_result:
            on_result(res)
    write_index(Path(outdir), results + _earlier_results(Path(outdir), {r["name"] for r in results}), settings)
    return results


def _earlier_results(outdir: Path, names: set[str]) -> list[dict]:
    """Summaries of slides that earlier runs left in ``outdir``, so index.html lists every slide there."""
    out = []
    for d in sorted(p for p in outdir.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name not in names):
        try:
            summary = json.loads((d / "summary.json").read_text())
        except (OSError, ValueError):
            continue
        out.append({**summary, "name": d.name, "status": "from an earlier run (its settings are in its summary.json)"})
    return out
