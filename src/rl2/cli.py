"""The ``rl2`` command line. Each command is a thin layer over the Python API.

Exit codes: 0 success; 1 finished, but some inputs failed (e.g. a broken slide in a batch);
2 bad input or usage (one-line message, no traceback); 130 interrupted.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from . import __version__
from .errors import RL2Error

from .cli_common import (CONTEXT, EXIT_INPUT, EXIT_INTERNAL, EXIT_PARTIAL, POSITIVE, bootstrap_option, compute_options, err,
                         print_json, seed_option)


def _report_skipped(skipped) -> None:
    for s in skipped:
        err(f"skipped {s['reason']}")


def _fmt_ci(ci, bootstrap: int = 1) -> str:
    if ci is None:
        return "n/a (--bootstrap 0)" if bootstrap == 0 else "n/a (needs 2+ images)"
    return f"[{ci[0]:.4f}, {ci[1]:.4f}]"


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.4f}"


@click.group(context_settings=CONTEXT)
@click.version_option(__version__, prog_name="rl2")
def cli():
    """RL2: how far H&E images are from real tissue.

    \b
    Typical use:
      rl2 fit real_patches/ -o ref.rl2          # learn real tissue (once)
      rl2 score ref.rl2 generated/              # one number, with a 95% interval
      rl2 score ref.rl2 batch/ --per-image s.csv --json
      rl2 demo                                  # a 1-2 minute tour on bundled CC0 patches

    Images can be folders (searched recursively), glob patterns in quotes ("runs/*/img_*.png"),
    or .txt files that list one path a line. Lower RL2 is better; about 0 means indistinguishable
    from the real held-out images. Run any command with -h for its options.
    """


@cli.command(context_settings=CONTEXT)
@click.argument("real", nargs=-1, required=True)
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Reference file to write (e.g. ref.rl2).")
@click.option("--backbone", default="efficientnet-lite0", show_default=True, help="Feature extractor: efficientnet-lite0, resnet18, resnet18-random-TESTONLY.")
@click.option("--weights", type=click.Path(), help="Backbone weights file (.pth or .safetensors); needed for resnet18 offline.")
@click.option("--readout", help="Feature read-out: gap (default) or, for resnet18, paper (layer4 pooled 2x2 at 256 px, 8192-d).")
@click.option("--dims", default=64, show_default=True, type=click.IntRange(min=2),
              help="Latent dimension (PCA components fed to the flow); at most the training images - 1.")
@click.option("--holdout", default=0.25, show_default=True, type=click.FloatRange(0, 1, min_open=True, max_open=True),
              help="Fraction of real images held out for early stopping and the reference statistics.")
@seed_option("Seed for the split, the flow's init and its training.")
@click.option("--mpp", type=POSITIVE,
              help="Microns per pixel of the real images (recorded; `rl2 qc` tiles slides at it).")
@click.option("--force", is_flag=True, help="Overwrite an existing output file.")
@click.option("--strict", is_flag=True, help="Stop at the first unreadable image instead of skipping it.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary instead of text.")
@compute_options()
def fit(real, output, backbone, weights, readout, dims, holdout, seed, mpp, force, strict, as_json, batch_size, workers, device, quiet):
    """Learn what real tissue looks like from REAL images and save a reference.

    Extracts backbone features, trains a normalizing flow on most of them and keeps the rest
    (--holdout) for early stopping and for the reference statistics.
    """
    from .files import check_output, check_writable
    from .images import collect_images
    from .latents import FlowConfig
    from .reference import fit_reference

    check_output(output, [*real, *collect_images(list(real)).paths, *([weights] if weights else [])], "reference file")
    if Path(output).exists() and not force:
        raise RL2Error(f"{output}: already exists; pass --force to overwrite it")
    check_writable(output)
    ref, log = fit_reference(
        list(real), backbone=backbone, weights=weights, readout=readout,
        config=FlowConfig(pca_dims=dims, seed=seed), holdout=holdout, device=device,
        batch_size=batch_size, workers=workers, strict=strict, progress=not quiet, data_mpp=mpp,
    )
    ref.save(output)
    skipped = [{"path": str(s.path), "reason": s.reason} for s in log.skipped]
    _report_skipped(skipped)
    summary = {"output": output, **ref.meta["counts"], "reference": ref.summary(), "training": ref.meta["training"],
               "skipped_files": skipped}
    if as_json:
        print_json(summary)
    else:
        c = ref.meta["counts"]
        click.echo(f"wrote {output}")
        click.echo(f"  images: {c['used']} used ({c['train']} train, {c['heldout']} held out), {c['skipped']} skipped")
        click.echo(f"  backbone: {ref.identity.name} ({ref.identity.readout}), weights sha256 {ref.identity.weights_sha256[:12]}...")
        click.echo(f"  flow: {ref.dims}-d latents, best epoch {ref.meta['training']['best_epoch']}, "
                   f"held-out NLL {ref.meta['training']['heldout_nll_per_dim']:.3f} nats/dim")
    for w in ref.meta.get("warnings", []):
        err(f"warning: {w}")
    if skipped:
        sys.exit(EXIT_PARTIAL)  # finished, but some inputs failed (listed above)


@cli.command(context_settings=CONTEXT)
@click.argument("reference", type=click.Path())
@click.argument("images", nargs=-1, required=True)
@click.option("--per-image", type=click.Path(dir_okay=False), help="Write one CSV row per image: score, NLL, status.")
@click.option("--force", is_flag=True, help="Overwrite an existing --per-image file.")
@click.option("--weights", type=click.Path(), help="Backbone weights, if the reference's backbone needs a file (resnet18).")
@bootstrap_option()
@seed_option("Bootstrap seed.")
@click.option("--strict", is_flag=True, help="Stop at the first unreadable image instead of skipping it.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (rl2, l2, rl2_unbiased, ci95, n_images, n_skipped, reference, ...).")
@compute_options()
def score(reference, images, per_image, force, weights, bootstrap, seed, strict, as_json, batch_size, workers, device, quiet):
    """Score IMAGES against a REFERENCE made by `rl2 fit`.

    \b
    rl2           RMS distance between latent means, ||mu_ref - mu_set|| / sqrt(d)
    l2            the same distance without the 1/sqrt(d)
    rl2_unbiased  rl2 with the finite-sample terms removed (fair for small sets;
                  can be slightly negative when the sets agree)
    ci95          seeded bootstrap 95% interval of the true (infinite-sample) RL2;
                  both sets are resampled. Small sets have rl2 above it.

    Unreadable images are skipped, listed on stderr (and under "skipped" in --json) and
    make the exit status 1; --strict stops at the first one instead (exit status 2).
    """
    from .files import check_writable
    from .reference import Reference
    from .scores import score as run_score

    ref = Reference.load(reference)
    if per_image:
        if Path(per_image).exists() and not force:
            raise RL2Error(f"{per_image}: already exists; pass --force to overwrite it")
        check_writable(per_image)
    res = run_score(ref, list(images), per_image=per_image, batch_size=batch_size, workers=workers, device=device,
                    weights=weights, bootstrap=bootstrap, seed=seed, strict=strict, progress=not quiet)
    _report_skipped(res.skipped)
    if res.n_duplicates:
        err(f"warning: {res.n_duplicates} image paths were given more than once; each was scored every time")
    if as_json:
        print_json(res.to_dict())
    else:
        _print_score(res, ref, per_image, bootstrap)
    if res.n_skipped:
        sys.exit(EXIT_PARTIAL)  # finished, but some inputs failed (listed above)


def _print_score(res, ref, per_image, bootstrap) -> None:
    click.echo(f"RL2            {res.rl2:.4f}")
    click.echo(f"RL2 unbiased   {_fmt(res.rl2_unbiased)}   95% CI of the true RL2 {_fmt_ci(res.ci95, bootstrap)}")
    click.echo(f"L2             {res.l2:.4f}   (d = {ref.dims})")
    click.echo(f"images         {res.n_images} scored, {res.n_skipped} skipped"
               + (f", {res.non_square} non-square (centre-cropped)" if res.non_square else "")
               + (f", {res.n_ignored} non-image files ignored" if res.n_ignored else ""))
    click.echo(f"per-image      mean score {res.mean_image_score:.4f} "
               f"(held-out real: median {ref.meta['heldout_score_percentiles']['50']:.4f})")
    click.echo(f"reference      {ref.identity.name}/{ref.identity.readout}, weights {ref.identity.weights_sha256[:12]}..., "
               f"fingerprint {ref.fingerprint}")
    if per_image:
        click.echo(f"wrote {per_image}")


@cli.command(context_settings=CONTEXT)
@click.argument("reference", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print the full metadata as JSON.")
def info(reference, as_json):
    """Show what a REFERENCE file holds: backbone, weights, preprocessing, flow, counts."""
    from .reference import Reference

    ref = Reference.load(reference)
    if as_json:
        print_json({"summary": ref.summary(), "meta": ref.meta})
        return
    s = ref.summary()
    pre = s.pop("preprocessing")
    for k, v in s.items():
        click.echo(f"{k:14s} {v}")
    rgb = lambda v: "(" + ", ".join(f"{x:.4g}" for x in v) + ")"  # noqa: E731
    click.echo(f"{'input':14s} {pre['input_size']} px, (x/255 - mean) / std with mean {rgb(pre['mean'])}, std {rgb(pre['std'])}")
    click.echo(f"{'resize':14s} {pre['resize']}")
    click.echo(f"{'colour':14s} {pre['colour']}")
    click.echo(f"{'created':14s} {ref.meta.get('created')} with rl2 {ref.meta.get('rl2_version')}")
    c = ref.meta["counts"]
    click.echo(f"{'images':14s} {c['used']} used ({c['train']} train, {c['heldout']} held out) of {c['inputs']}, "
               f"{c['skipped']} skipped")
    mpp, px = ref.meta.get("data_mpp"), ref.meta.get("data_image_px")
    click.echo(f"{'data':14s} {f'{mpp} um/px' if mpp else 'pixel size not recorded (fit --mpp)'}, images ~{px} px")
    click.echo(f"{'held-out p99':14s} {ref.threshold(99):.4f} (default QC threshold)")


@cli.command(context_settings=CONTEXT)
@click.argument("src")
@click.argument("dst", type=click.Path(file_okay=False))
@click.option("--kind", required=True, help="blur, noise, noise_blend, salt_pepper, occlusion, diffusion or jpeg.")
@click.option("--level", required=True, type=float, help="Severity; 0 is the identity. Units per kind are in the table above.")
@seed_option("Seed; image i uses seed + i.")
@click.option("--rects", default=1, show_default=True, help="occlusion only: number of rectangles sharing the area.")
@click.option("--fill", default="mean", show_default=True,
              help="occlusion only: rectangle colour, 'mean' (the image's mean colour) or R,G,B (0-255).")
@click.option("--force", is_flag=True, help="Overwrite files that already exist in DST.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def degrade(src, dst, kind, level, seed, rects, fill, force, quiet):
    """Write degraded copies of the images in SRC to the folder DST (as PNG, same relative paths).

    DST may not be SRC or inside it. Where two inputs would get the same PNG name (x.jpg and
    x.png), the other keeps its extension (x.jpg.png). Existing files need --force.

    \b
    kind         level means                      example levels
    blur         Gaussian sigma in pixels         0.5 1 2 4
    noise        Gaussian sigma on a 0-1 scale    0.02 0.05 0.1 0.2
    noise_blend  alpha in (1-alpha)*img + alpha*uniform noise
    salt_pepper  fraction of pixels               0.01 0.05 0.2
    occlusion    area fraction covered            0.1 0.3 0.5   (--rects N, --fill mean|R,G,B)
    diffusion    DDPM timestep t of 1000          25 100 400
    jpeg         100 - JPEG quality               50 80 95
    """
    from .degrade import degrade_folder

    options = {}
    if kind == "occlusion":
        rgb = fill
        if fill != "mean":
            try:
                rgb = tuple(int(v) for v in fill.split(","))
            except ValueError:
                rgb = ()
            if len(rgb) != 3 or not all(0 <= v <= 255 for v in rgb):
                raise RL2Error(f"--fill: expected 'mean' or R,G,B with values 0-255, got {fill!r}")
        options = {"n_rects": rects, "fill": rgb}
    elif rects != 1 or fill != "mean":
        raise RL2Error("--rects and --fill apply to --kind occlusion only")
    n, skipped = degrade_folder(src, dst, kind, level, seed=seed, progress=not quiet, force=force, **options)
    for s in skipped:
        err(f"skipped {s}")
    click.echo(f"wrote {n} images to {dst}" + (f" ({len(skipped)} skipped)" if skipped else ""))
    if skipped:
        sys.exit(EXIT_PARTIAL)


@cli.command(context_settings=CONTEXT)
@click.option("--workdir", type=click.Path(file_okay=False), help="Keep the demo's reference and degraded copies here.")
@click.option("--json", "as_json", is_flag=True, help="Print the table as JSON.")
@compute_options()
def demo(workdir, as_json, batch_size, workers, device, quiet):
    """Fit a reference on bundled CC0 PatchCamelyon patches, then score held-out and degraded copies.

    Takes one to two minutes on 2 CPU cores, fully offline.
    """
    from .demo import run_demo

    run_demo(workdir=workdir, as_json=as_json, batch_size=batch_size, workers=workers, device=device, progress=not quiet)


def _register_optional():
    """Commands that live in their own modules (sweep, qc) register themselves here."""
    for mod in ("sweep", "qc"):
        try:
            m = __import__(f"rl2.{mod}_cli", fromlist=["command"])
        except ModuleNotFoundError as e:
            if e.name != f"rl2.{mod}_cli":
                raise
            continue
        cli.add_command(m.command)


_register_optional()


class Terminated(KeyboardInterrupt):
    """SIGTERM (`kill`) or SIGHUP (a closed terminal), handled like Ctrl-C: temporary files go, finished ones stay."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _terminated(signum, frame):
    raise Terminated(signum)


def main(argv=None) -> None:
    import signal

    for stream in (sys.stdout, sys.stderr):  # file names that are not UTF-8 are printed as the bytes they are
        try:
            stream.reconfigure(errors="surrogateescape")
        except (AttributeError, ValueError):
            pass

    previous = {s: signal.signal(s, _terminated) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        _run(argv)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _run(argv) -> None:
    try:
        cli.main(args=argv, prog_name="rl2", standalone_mode=False)
    except (click.exceptions.Abort, KeyboardInterrupt) as e:  # click turns Ctrl-C into Abort
        killed = e if isinstance(e, Terminated) else e.__cause__ if isinstance(e.__cause__, Terminated) else None
        err("terminated" if killed else "interrupted")
        sys.exit(128 + killed.signum if killed else 130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except RL2Error as e:
        err(str(e))
        sys.exit(e.exit_code)
    except MemoryError:
        err("out of memory; try fewer or smaller images, or a smaller --batch-size where the command has one")
        sys.exit(EXIT_INPUT)
    except OSError as e:  # a path the user gave cannot be written or read (e.g. --per-image in a read-only folder)
        if os.environ.get("RL2_DEBUG"):
            raise
        where = e.filename if e.filename is not None else type(e).__name__
        err(f"{where}: {e.strerror or e}")
        sys.exit(EXIT_INPUT)
    except Exception as e:  # a bug, not bad input: still one line, traceback on request
        if os.environ.get("RL2_DEBUG"):
            raise
        err(f"internal error: {type(e).__name__}: {e} (set RL2_DEBUG=1 for a traceback)")
        sys.exit(EXIT_INTERNAL)


if __name__ == "__main__":
    main()
