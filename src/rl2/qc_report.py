"""QC report: the per-slide thumbnail overlay and the run's index.html.

Heatmap colours: green at the reference's median held-out real score, yellow at the threshold, red at
twice the threshold's distance from the median and beyond. The tissue outline is drawn in blue.
"""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from .files import atomic_write_text

REPORT_MAX = 1024  # longer side of thumbnail.png
OUTLINE = (0, 90, 255)
ALPHA = 0.35
GALLERY_TOTAL = 24  # tiles per gallery section in index.html


def score_colours(scores: np.ndarray, threshold: float, median: float) -> np.ndarray:
    """RGB (N x 3, 0..255) for scores: green -> yellow at the threshold -> red."""
    span = max(threshold - median, 1e-6)
    t = np.clip((np.asarray(scores, float) - median) / (2 * span), 0, 1)  # 0.5 at the threshold
    r = np.clip(2 * t, 0, 1)
    g = np.clip(2 - 2 * t, 0, 1)
    return np.stack([r, g * 0.8, np.zeros_like(t)], 1) * 255


def render_thumbnail(thumb: Image.Image, mask: np.ndarray, xy: np.ndarray, size_l0: int, scores: np.ndarray,
                     threshold: float, dims_l0, median: float = 1.0) -> Image.Image:
    """The slide thumbnail with scored tiles coloured by score and the tissue mask outlined."""
    scale = min(1.0, REPORT_MAX / max(thumb.size))
    size = (max(1, round(thumb.width * scale)), max(1, round(thumb.height * scale)))
    base = np.asarray(thumb.resize(size, Image.LANCZOS) if size != thumb.size else thumb, dtype=np.float32)
    # Worst score wherever tiles overlap (stride < tile), so a bad tile is never painted over.
    heat = np.full(base.shape[:2], -np.inf)
    fx, fy = size[0] / dims_l0[0], size[1] / dims_l0[1]
    for (x, y), s in zip(xy, scores):
        c0, r0 = int(x * fx), int(y * fy)
        c1, r1 = max(c0 + 1, round((x + size_l0) * fx)), max(r0 + 1, round((y + size_l0) * fy))
        np.maximum(heat[r0:r1, c0:c1], s, out=heat[r0:r1, c0:c1])
    painted = np.isfinite(heat)
    if painted.any():
        colours = score_colours(heat[painted], threshold, median)
        base[painted] = (1 - ALPHA) * base[painted] + ALPHA * colours
    m = np.asarray(Image.fromarray(mask).resize(size, Image.NEAREST))
    edge = m & ~ndimage.binary_erosion(m, border_value=0)
    edge = ndimage.binary_dilation(edge, iterations=1) if min(size) > 200 else edge
    base[edge] = OUTLINE
    return Image.fromarray(base.round().clip(0, 255).astype(np.uint8))


def legend(threshold: float, median: float) -> str:
    return (f"tile colour: green = score {median:.2f} (median real), yellow = threshold {threshold:.2f}, "
            f"red = {2 * threshold - median:.2f} or more; blue line = tissue outline")


def _img(src: str, title: str, width: int | None = None) -> str:
    w = f' width="{width}"' if width else ""
    return f'<img src="{html.escape(src)}" title="{html.escape(title)}" alt="{html.escape(title)}" loading="lazy"{w}>'


def write_index(outdir: Path, results: list[dict], settings: dict) -> Path:
    """index.html over the slides of one run; images are referenced by paths relative to ``outdir``."""
    esc = html.escape
    thr = settings["threshold"]
    rows, worst, border = [], [], []
    median = 1.0
    for r in results:
        name = r["name"]
        if r["status"] == "failed":
            rows.append(f'<tr class="failed"><td>{esc(name)}</td><td colspan="6">failed: {esc(r["error"])}</td></tr>')
            continue
        median = r.get("real_median_score", median)
        c = r["counts"]
        note = "; ".join(r.get("warnings", []))
        rows.append(
            f"<tr><td><a href=\"{esc(name)}/tiles.csv\">{esc(name)}</a><br><small>{esc(r['status'])}"
            f"{'<br>' + esc(note) if note else ''}</small></td>"
            f"<td><a href=\"{esc(name)}/thumbnail.png\">{_img(name + '/thumbnail.png', name, 240)}</a></td>"
            f"<td>{c['grid']}</td><td>{c['scored']}</td><td>{c['kept']}</td><td>{c['low_quality']}</td>"
            f"<td>{c['low_tissue']}</td></tr>")
        for g in r.get("gallery", []):
            item = (g["score"], name, g)
            (worst if g["kind"] == "rejected" else border).append(item)
    worst = sorted(worst, key=lambda t: -t[0])[:GALLERY_TOTAL]
    border = sorted(border, key=lambda t: -t[0])[:GALLERY_TOTAL]

    def gallery(items):
        if not items:
            return "<p>none</p>"
        cells = []
        for s, n, g in items:
            x, y = g["x"], g["y"]
            img = _img(n + "/" + g["file"], f"{n} x={x} y={y}", 128)
            cells.append(f"<figure>{img}<figcaption>{esc(n)}<br>({x}, {y}) score {s:.3f}</figcaption></figure>")
        return '<div class="gallery">' + "".join(cells) + "</div>"

    n_failed = sum(r["status"] == "failed" for r in results)
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>RL2 slide QC</title>
<style>
body{{font-family:sans-serif;margin:1.5em}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;vertical-align:top;text-align:right}} td:first-child{{text-align:left}}
tr.failed td{{color:#b00;text-align:left}} .gallery{{display:flex;flex-wrap:wrap;gap:8px}}
figure{{margin:0;font-size:11px;text-align:center}} figure img{{image-rendering:pixelated}}
</style></head><body>
<h1>RL2 slide QC</h1>
<p>{len(results)} slides ({n_failed} failed). This run: tiles of {settings['tile_px']} px at {settings['target_mpp']:.3f} um/px,
stride {settings['stride_px']} px; a tile is scored when at least {settings['min_tissue']:.0%} of it is tissue and kept
when its score is at most {thr:.3f} ({esc(settings['threshold_source'])}). Reference {esc(settings['reference'])}.</p>
<p><small>{esc(legend(thr, median))}</small></p>
<table><tr><th>slide</th><th>thumbnail</th><th>grid tiles</th><th>scored</th><th>kept</th><th>low quality</th><th>low tissue</th></tr>
{chr(10).join(rows)}
</table>
<h2>Worst rejected tiles</h2>
{gallery(worst)}
<h2>Borderline kept tiles (highest scores under the threshold)</h2>
{gallery(border)}
</body></html>
"""
    path = Path(outdir) / "index.html"
    atomic_write_text(path, page)
    return path
