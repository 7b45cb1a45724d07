"""``rl2 demo``: fit on the bundled CC0 sample, then score held-out and degraded copies of held-out patches."""

from __future__ import annotations

import json
import tempfile
import time
from importlib import resources
from pathlib import Path

import click

from .degrade import degrade_folder
from .latents import FlowConfig
from .reference import fit_reference
from .scores import score

# (label, kind, level); kind None = the clean held-out patches.
CONDITIONS = [
    ("clean held-out", None, 0),
    ("blur sigma=1", "blur", 1),
    ("blur sigma=2", "blur", 2),
    ("noise sigma=0.05", "noise", 0.05),
    ("noise sigma=0.1", "noise", 0.1),
    ("salt & pepper 5%", "salt_pepper", 0.05),
    ("occlusion 20%", "occlusion", 0.2),
    ("diffusion t=100", "diffusion", 100),
    ("jpeg quality 20", "jpeg", 80),
]


# 90 training patches cannot support 64 whitened dimensions: the weakest principal components are
# estimated so poorly that single degraded images land 100+ units out and dominate the set means.
# 16 dimensions separated degradations as well on PCam (docs/MEASUREMENTS.md).
DEMO_DIMS = 16


def sample_dir() -> Path:
    return Path(str(resources.files("rl2") / "data" / "sample"))


def run_demo(workdir=None, as_json=False, batch_size=64, workers=2, device=None, progress=True) -> list[dict]:
    t0 = time.time()
    tmp = None
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="rl2-demo-")
        workdir = tmp.name
    work = Path(workdir)
    sample = sample_dir()
    say = (lambda *a: None) if as_json else click.echo
    say(f"RL2 demo: fitting a reference on {len(list((sample / 'real').glob('*.png')))} bundled CC0 PCam patches "
        f"(efficientnet-lite0, offline)...")
    ref, _ = fit_reference(sample / "real", config=FlowConfig(pca_dims=DEMO_DIMS), batch_size=batch_size, workers=workers,
                           device=device, progress=progress)
    ref.save(work / "demo_ref.rl2")
    rows = []
    for label, kind, level in CONDITIONS:
        images = sample / "heldout"
        if kind is not None:
            images = work / f"{kind}_{level}"
            degrade_folder(sample / "heldout", images, kind, level, seed=0, force=True)  # its own workdir
        r = score(ref, images, batch_size=batch_size, workers=workers, device=device, progress=progress)
        rows.append({"condition": label, "kind": kind, "level": level, "rl2": r.rl2, "ci95": r.ci95,
                     "rl2_unbiased": r.rl2_unbiased, "mean_image_score": r.mean_image_score, "n_images": r.n_images})
    if as_json:
        click.echo(json.dumps({"rows": rows, "reference": ref.summary(), "seconds": time.time() - t0}, indent=2))
    else:
        say("")
        say(f"{'condition':20s} {'RL2':>7s} {'unbiased':>9s} {'95% CI (true RL2)':>18s} {'per-image':>9s}")
        for r in rows:
            ci = f"[{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}]"
            say(f"{r['condition']:20s} {r['rl2']:7.3f} {r['rl2_unbiased']:9.3f} {ci:>18s} {r['mean_image_score']:9.3f}")
        say("")
        say(f"{rows[0]['n_images']} held-out patches per row; reference fingerprint {ref.fingerprint}; "
            f"{time.time() - t0:.0f} s.")
        say("Lower is closer to real tissue. 'unbiased' removes the small-sample offset, so clean images sit near 0.")
        if workdir and tmp is None:
            say(f"Reference and degraded copies kept in {work}")
    if tmp is not None:
        tmp.cleanup()
    return rows
