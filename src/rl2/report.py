"""Sweep report: results.json, CSV tables, PNG plots and one self-contained report.html (opens offline).

Every file is written atomically. Plots are rendered with matplotlib's Agg backend (no display needed)
and embedded in the HTML as base64 data URIs, as are the example thumbnails.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
from pathlib import Path

import numpy as np
from PIL import Image

from .degrade import apply
from .files import atomic_write_bytes, atomic_write_text, json_default, json_safe
from .images import load_rgb
from .sweep import METRIC_LABELS, METRICS

THUMB_MAX = 128  # px; larger example images are shrunk for the strip


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _fmt(v, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    return f"{v:.{digits}g}" if abs(v) >= 1e4 or (v and abs(v) < 1e-3) else f"{v:.{digits}f}"


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    _plt().close(fig)
    return buf.getvalue()


def _csv(rows: list[list], header: list[str]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


def _steps(trend: dict) -> str:
    return "; ".join(f"{s['from']:g}->{s['to']:g}" for s in trend["non_monotonic_steps"])


# -- tables -------------------------------------------------------------------------------------------


def sweep_csv(sweep: dict) -> str:
    rows = []
    for f, fam in sweep["families"].items():
        for r in fam["rows"]:
            ci = r["ci95"] or [None, None]
            rows.append([f, r["level"], fam["unit"], r["rl2"], r["rl2_unbiased"], ci[0], ci[1], r["fd"], r["kid"],
                         r["kid_std"]])
    return _csv(rows, ["family", "level", "unit", "rl2", "rl2_unbiased", "ci95_low", "ci95_high", "fd", "kid",
                       "kid_std"])


def trends_csv(sweep: dict) -> str:
    rows = [[f, m, t["rho"], t["p"], t["monotonic"], _steps(t)]
            for f, fam in sweep["families"].items() for m, t in fam["trend"].items()]
    return _csv(rows, ["family", "metric", "spearman_rho", "p_value", "monotonic", "non_monotonic_steps"])


def stability_csv(stability: dict) -> str:
    keys = ["n", "metric", "draws", "value_all", "mean", "std", "p5", "p95", "rel_dev_mean", "rel_dev_p90",
            "rel_dev_max"]
    rows = [[name] + [r[k] for k in keys] for name, c in stability["conditions"].items() for r in c["rows"]]
    return _csv(rows, ["condition"] + keys)


def smallest_n_csv(stability: dict) -> str:
    rows = [[name, m, s["5%"], s["10%"], c["n_all"]]
            for name, c in stability["conditions"].items() for m, s in c["smallest_n"].items()]
    return _csv(rows, ["condition", "metric", "n_within_5pct", "n_within_10pct", "n_all"])


# -- plots --------------------------------------------------------------------------------------------


def _panels(n: int, width: float = 3.2, height: float = 2.6):
    plt = _plt()
    cols = min(n, 4)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False,
                             layout="constrained")
    for ax in axes.flat[n:]:
        ax.axis("off")
    return fig, list(axes.flat[:n])


def _mark_bad(ax, fam: dict, metric: str, values) -> None:
    """Red rings on the points that do not rise above the previous level."""
    bad = {s["to"] for s in fam["trend"][metric]["non_monotonic_steps"]}
    pts = [(lv, v) for lv, v in zip(fam["levels"], values) if lv in bad]
    if pts:
        ax.scatter(*zip(*pts), s=80, facecolors="none", edgecolors="red", linewidths=1.5, zorder=5)


def plot_sweep(sweep: dict, metric: str) -> bytes:
    """One panel per family: ``metric`` against level (RL2 also shows its bias-corrected value and 95% CI)."""
    fams = sweep["families"]
    fig, axes = _panels(len(fams))
    for ax, (f, fam) in zip(axes, fams.items()):
        lv = fam["levels"]
        rows = fam["rows"]
        if metric == "rl2":
            ax.plot(lv, [r["rl2"] for r in rows], "o-", color="C0", label="RL2")
            unb = [np.nan if r["rl2_unbiased"] is None else r["rl2_unbiased"] for r in rows]
            ax.plot(lv, unb, "s--", color="C1", label="bias-corrected")
            ci = [r["ci95"] for r in rows]
            if all(ci):
                ax.fill_between(lv, [c[0] for c in ci], [c[1] for c in ci], color="C1", alpha=0.2, label="95% CI")
            _mark_bad(ax, fam, "rl2", [r["rl2"] for r in rows])
        elif metric == "kid":
            ax.errorbar(lv, [r["kid"] for r in rows], yerr=[r["kid_std"] for r in rows], fmt="o-", color="C2",
                        capsize=2)
            _mark_bad(ax, fam, "kid", [r["kid"] for r in rows])
        else:
            ax.plot(lv, [r[metric] for r in rows], "o-", color="C3")
            _mark_bad(ax, fam, metric, [r[metric] for r in rows])
        rho = fam["trend"][metric]["rho"]
        ax.set_title(f"{f}  (Spearman rho {_fmt(rho, 3)})", fontsize=9)
        ax.set_xlabel(fam["unit"], fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(METRIC_LABELS[metric], fontsize=8)
    if metric == "rl2":
        axes[0].legend(fontsize=7)
    fig.suptitle(f"{METRIC_LABELS[metric]} against degradation level (red ring: no rise from the previous level)",
                 fontsize=10)
    return _png(fig)


def plot_stability(cond: dict, name: str) -> bytes:
    """One panel per metric: mean and 5-95% range over the subsets against N, with +-5% / +-10% bands."""
    fig, axes = _panels(len(METRICS), 3.4, 2.6)
    for ax, m in zip(axes, METRICS):
        rows = [r for r in cond["rows"] if r["metric"] == m]
        n = [r["n"] for r in rows]
        full = cond["value_all"][m]
        for tol, alpha in ((0.10, 0.12), (0.05, 0.2)):
            ax.axhspan(full - tol * abs(full), full + tol * abs(full), color="green", alpha=alpha, lw=0)
        ax.axhline(full, color="green", lw=1, label="all images")
        ax.fill_between(n, [r["p5"] for r in rows], [r["p95"] for r in rows], color="C0", alpha=0.25,
                        label="5-95% of subsets")
        ax.plot(n, [r["mean"] for r in rows], "o-", color="C0", label="mean of subsets")
        ax.set_xscale("log")
        ax.set_xticks(n, [str(v) for v in n])
        ax.minorticks_off()
        ax.set_title(f"{METRIC_LABELS[m]}: within 5% from N={cond['smallest_n'][m]['5%']}", fontsize=8)
        ax.set_xlabel("images N", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=6)
    fig.suptitle(f"Stability with few images: {name} (green bands: +-5% and +-10% of the value on all images)",
                 fontsize=10)
    return _png(fig)


# -- thumbnails ---------------------------------------------------------------------------------------


def thumbnails(sweep: dict) -> dict[str, list[tuple[float, bytes]]]:
    """Family -> [(level, PNG bytes)] of the example image, degraded exactly as in the sweep."""
    ex = sweep["example"]
    img = np.asarray(load_rgb(ex["path"]))
    out = {}
    for f, fam in sweep["families"].items():
        strip = []
        for lv in fam["levels"]:
            arr = img if lv == 0 else apply(img, f, lv, seed=sweep["seed"] + ex["index"])
            pil = Image.fromarray(arr)
            if max(pil.size) > THUMB_MAX:
                pil.thumbnail((THUMB_MAX, THUMB_MAX), Image.LANCZOS)
            buf = io.BytesIO()
            pil.save(buf, format="PNG")
            strip.append((lv, buf.getvalue()))
        out[f] = strip
    return out


# -- HTML ---------------------------------------------------------------------------------------------

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;color:#222;max-width:1400px}
h1{font-size:22px}h2{font-size:18px;margin-top:32px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:13px;margin:8px 0}td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}
th{background:#f3f3f3}td.l,th.l{text-align:left}.bad{background:#fde2e2;color:#a00;font-weight:600}.ok{color:#075}
.strip td{text-align:center;font-size:11px;border:none;padding:2px}.strip img{width:96px;height:96px;image-rendering:auto}
.note{background:#fff8e1;border-left:4px solid #f0b400;padding:8px 12px;font-size:13px}img.plot{max-width:100%}
.small{font-size:12px;color:#555}
"""


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _rho_cell(t: dict) -> str:
    cls = "ok" if t["monotonic"] else "bad"
    steps = _steps(t)
    title = f' title="no rise at {html.escape(steps)}"' if steps else ""
    return f'<td class="{cls}"{title}>{_fmt(t["rho"], 3)}{" *" if steps else ""}</td>'


def render_html(results: dict, plots: dict[str, bytes], thumbs: dict) -> str:
    sweep, stab = results["sweep"], results.get("stability")
    e = html.escape
    ref = sweep["reference"]
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>RL2 degradation sweep</title>"
             f"<style>{CSS}</style></head><body>",
             "<h1>RL2 degradation sweep</h1>",
             f"<p>{sweep['n_images']} images"
             + (f" from <code>{e(' '.join(map(str, results['images'])))}</code>" if results.get("images") else "")
             + (f", {len(sweep['skipped'])} unreadable ones skipped" if sweep["skipped"] else "")
             + "; reference " + (f"<code>{e(str(results['reference_path']))}</code> " if results.get("reference_path") else "")
             + f"(fingerprint <code>{e(ref['fingerprint'] or 'unsaved')}</code>), "
             f"backbone {e(ref['backbone'])}/{e(ref['readout'])}, {ref['latent_dims']}-d latents, "
             f"{ref['n_heldout']} held-out real images. Seed {sweep['seed']}, {sweep['bootstrap']} bootstrap "
             f"replicates. Image i is degraded with seed {sweep['seed']} + i.</p>",
             f"<div class='note'><b>FD and KID are not Inception FID/KID.</b> They are computed on the same "
             f"backbone features as RL2 ({e(sweep['baselines']['feature_source'])}), against "
             f"{e(sweep['baselines']['compared_with'])}. KID subset size {e(sweep['baselines']['kid_subset_size'])}, "
             f"{sweep['baselines']['kid_subsets']} subsets."
             + (f" FD caveat: {e(sweep['baselines']['fd_note'])}." if sweep["baselines"]["fd_note"] else "")
             + "</div>"]

    parts.append("<h2>What each level looks like</h2><p class='small'>One example image "
                 f"(<code>{e(Path(sweep['example']['path']).name)}</code>) at every level of every family, degraded "
                 "exactly as in the sweep, at its own resolution (before resizing for the backbone).</p>"
                 "<table class='strip'>")
    for f, strip in thumbs.items():
        unit = sweep["families"][f]["unit"]
        cells = "".join(f"<td><img alt='{e(f)} {lv:g}' src='{_data_uri(png)}'><br>{lv:g}</td>" for lv, png in strip)
        parts.append(f"<tr><td class='l'><b>{e(f)}</b><br><span class='small'>{e(unit)}</span></td>{cells}</tr>")
    parts.append("</table>")

    parts.append("<h2>Does the score rise with damage? Spearman rho (level vs. score)</h2>"
                 "<p class='small'>Red with *: at least one step where the score does not rise (value at level k+1 "
                 "&le; value at level k); hover for the steps.</p><table><tr><th class='l'>family</th>"
                 + "".join(f"<th>{e(METRIC_LABELS[m])}</th>" for m in METRICS) + "<th class='l'>non-monotonic steps</th></tr>")
    for f, fam in sweep["families"].items():
        steps = "; ".join(f"{m}: {_steps(t)}" for m, t in fam["trend"].items() if t["non_monotonic_steps"])
        parts.append(f"<tr><td class='l'>{e(f)}</td>" + "".join(_rho_cell(fam["trend"][m]) for m in METRICS)
                     + f"<td class='l small'>{e(steps) or 'none'}</td></tr>")
    parts.append("</table>")
    for m in ("rl2", "fd", "kid"):
        parts.append(f"<p><img class='plot' alt='{m} sweep' src='{_data_uri(plots[f'sweep_{m}.png'])}'></p>")

    parts.append("<h2>All values</h2><table><tr><th class='l'>family</th><th>level</th><th>RL2</th>"
                 "<th>bias-corrected</th><th>95% CI (true RL2)</th><th>FD</th><th>KID</th><th>KID std</th></tr>")
    for f, fam in sweep["families"].items():
        for r in fam["rows"]:
            ci = "n/a" if not r["ci95"] else f"[{_fmt(r['ci95'][0])}, {_fmt(r['ci95'][1])}]"
            parts.append(f"<tr><td class='l'>{e(f)}</td><td>{r['level']:g}</td><td>{_fmt(r['rl2'])}</td>"
                         f"<td>{_fmt(r['rl2_unbiased'])}</td><td>{ci}</td><td>{_fmt(r['fd'])}</td>"
                         f"<td>{_fmt(r['kid'])}</td><td>{_fmt(r['kid_std'])}</td></tr>")
    parts.append("</table>")

    if stab:
        parts.append(f"<h2>Stability with few images</h2><p>{stab['repeats']} seeded subsets per N, drawn without "
                     f"replacement. Smallest N that stays within 5% / 10%: the {e(stab['criterion'])}. "
                     f"Headline: <b>{e(stab['headline'])}</b>, because {e(stab['headline_reason'])}.</p>")
        names = [stab["headline"]] + [c for c in stab["conditions"] if c != stab["headline"]]
        parts.append("<table><tr><th class='l'>set</th><th class='l'>metric</th><th>value on all</th>"
                     "<th>smallest N within 5%</th><th>within 10%</th><th>of N</th></tr>")
        for name in names:
            c = stab["conditions"][name]
            for m in METRICS:
                s = c["smallest_n"][m]
                parts.append(f"<tr><td class='l'>{e(name)}</td><td class='l'>{e(METRIC_LABELS[m])}</td>"
                             f"<td>{_fmt(c['value_all'][m])}</td><td>{s['5%'] if s['5%'] is not None else 'never'}</td>"
                             f"<td>{s['10%'] if s['10%'] is not None else 'never'}</td><td>{c['n_all']}</td></tr>")
        parts.append("</table>")
        for name in names:
            parts.append(f"<p><img class='plot' alt='stability {e(name)}' "
                         f"src='{_data_uri(plots[_stability_png(name)])}'></p>")
        parts.append("<table><tr><th class='l'>set</th><th class='l'>metric</th><th>N</th><th>mean</th><th>std</th>"
                     "<th>5%</th><th>95%</th><th>rel. dev. mean</th><th>rel. dev. p90</th></tr>")
        for name in names:
            for r in stab["conditions"][name]["rows"]:
                parts.append(f"<tr><td class='l'>{e(name)}</td><td class='l'>{e(r['metric'])}</td><td>{r['n']}</td>"
                             f"<td>{_fmt(r['mean'])}</td><td>{_fmt(r['std'])}</td><td>{_fmt(r['p5'])}</td>"
                             f"<td>{_fmt(r['p95'])}</td><td>{_fmt(r['rel_dev_mean'], 3)}</td>"
                             f"<td>{_fmt(r['rel_dev_p90'], 3)}</td></tr>")
        parts.append("</table>")
    parts.append("<p class='small'>Files beside this report: results.json, sweep.csv, trends.csv"
                 + (", stability.csv, stability_smallest_n.csv" if stab else "") + " and the PNG plots.</p>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _stability_png(name: str) -> str:
    return "stability_" + "".join(ch if ch.isalnum() else "_" for ch in name) + ".png"


def write_report(results: dict, outdir) -> list[Path]:
    """Write results.json, CSVs, PNGs and report.html for ``{"sweep": ..., "stability": ... or None}``."""
    out = Path(outdir)
    sweep, stab = results["sweep"], results.get("stability")
    files: dict[str, bytes | str] = {
        "sweep.csv": sweep_csv(sweep),
        "trends.csv": trends_csv(sweep),
    }
    plots = {f"sweep_{m}.png": plot_sweep(sweep, m) for m in ("rl2", "fd", "kid")}
    if stab:
        files["stability.csv"] = stability_csv(stab)
        files["stability_smallest_n.csv"] = smallest_n_csv(stab)
        plots.update({_stability_png(name): plot_stability(c, name) for name, c in stab["conditions"].items()})
    files.update(plots)
    files["report.html"] = render_html(results, plots, thumbnails(sweep))
    # A rerun with --force must not leave an earlier run's tables or plots beside the new results: the
    # previous results.json lists what that run wrote, and only those files are removed.
    try:
        earlier = set(json.loads((out / "results.json").read_text()).get("files", []))
    except (OSError, ValueError, AttributeError):
        earlier = set()
    results = {**results, "files": sorted([*files, "results.json"])}
    files["results.json"] = json.dumps(json_safe(results), indent=2, default=json_default, allow_nan=False)
    written = []
    for name, data in files.items():
        (atomic_write_text if isinstance(data, str) else atomic_write_bytes)(out / name, data)
        written.append(out / name)
    for name in earlier - set(files):
        if "/" not in name and not name.startswith("."):
            (out / name).unlink(missing_ok=True)
    return written
