"""``rl2 sweep``: degradation sweep, small-sample stability and an offline HTML report."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from . import __version__
from .degrade import FAMILIES
from .cli_common import CONTEXT, EXIT_PARTIAL, bootstrap_option, compute_options, err, seed_option
from .errors import RL2Error
from .files import check_output

FEW_IMAGES = 50



def _ints(text: str, what: str) -> list[int]:
    try:
        out = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise RL2Error(f"{what}: expected comma-separated integers, got {text!r}") from None
    if any(v < 2 for v in out):
        raise RL2Error(f"{what}: every size must be at least 2")
    return out


def _degradation(text: str):
    if text.strip().lower() in ("", "none"):
        return None
    name, sep, level = text.partition("=")
    try:
        return name.strip(), float(level)
    except ValueError:
        raise RL2Error(f"--stability-on: expected family=level (e.g. blur=1), got {text!r}") from None


def _f(v, digits=3) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def _n(v) -> str:
    return "never" if v is None else str(v)


@click.command("sweep", context_settings=CONTEXT)
@click.argument("reference", type=click.Path())
@click.argument("images", nargs=-1, required=True)
@click.option("-o", "--output", "outdir", required=True, type=click.Path(file_okay=False),
              help="Folder for results.json, CSV tables, PNG plots and report.html.")
@click.option("--families", help=f"Comma-separated families to sweep (default all: {','.join(FAMILIES)}).")
@click.option("--levels", help='Override levels of some families, e.g. "blur=0,1,2;noise=0,0.1" (0 is always added).')
@bootstrap_option("RL2's 95% interval")
@click.option("--repeats", default=20, show_default=True, type=click.IntRange(min=1), help="Seeded subsets per N in the stability run.")
@click.option("--sizes", default="10,25,50,100,200,500", show_default=True,
              help="Subset sizes N for the stability run; all images is always added.")
@click.option("--stability-on", default="blur=1", show_default=True,
              help="Degraded set for the stability headline (family=level), besides the clean set; 'none' for clean only.")
@click.option("--no-stability", is_flag=True, help="Skip the stability run.")
@seed_option("Seed: image i is degraded with seed + i; also subsets and bootstrap.")
@click.option("--weights", type=click.Path(), help="Backbone weights, if the reference's backbone needs a file (resnet18).")
@click.option("--force", is_flag=True, help="Overwrite an existing report in OUTDIR.")
@click.option("--json", "as_json", is_flag=True, help="Print results.json to stdout instead of the tables.")
@compute_options(workers_help="Decoding and degradation threads")
def command(reference, images, outdir, families, levels, bootstrap, repeats, sizes, stability_on, no_stability, seed,
            weights, force, as_json, batch_size, workers, device, quiet):
    """Degrade IMAGES at increasing levels of every family and check that the scores rise.

    \b
    For each family and level: RL2, its bias-corrected value and 95% interval, and the Frechet
    distance and KID on the same backbone features (not Inception FID/KID). Spearman rho between
    level and score per family and metric; steps where a score does not rise are flagged.
    Stability: seeded subsets of N images, each metric against its value on all images, on the
    clean set and on a degraded copy (--stability-on); the smallest N within 5% and 10%.
    Writes results.json, sweep.csv, trends.csv, stability*.csv, PNG plots and a self-contained
    report.html to OUTDIR.
    """
    from .reference import Reference
    from .report import write_report
    from .sweep import DegradedFeatures, parse_levels, resolve_levels, run_stability, run_sweep

    out = Path(outdir)
    check_output(out, images, "sweep output", folder=True)
    if (out / "results.json").exists() and not force:
        raise RL2Error(f"{out}: already holds a report; pass --force to overwrite it")
    fams = None
    if families is not None:
        fams = [f.strip() for f in families.split(",") if f.strip()]
        if not fams:
            raise RL2Error("--families: give at least one family (or leave the option out for all)")
    plan = resolve_levels(fams, parse_levels(levels))  # fails on bad input before any work
    degradation = None if no_stability else _degradation(stability_on)
    if degradation:
        resolve_levels([degradation[0]], {degradation[0]: [degradation[1]]})
    size_list = _ints(sizes, "--sizes")

    ref = Reference.load(reference)
    src = DegradedFeatures(ref, list(images), seed=seed, batch_size=batch_size, workers=workers, device=device,
                           weights=weights, progress=not quiet, keep=[degradation] if degradation else ())
    for s in src.skipped:
        err(f"skipped {s}")
    if len(src) < FEW_IMAGES:
        err(f"warning: only {len(src)} images; FD, KID and the stability run mean little below {FEW_IMAGES}")
    sweep = run_sweep(ref, src, families=list(plan), levels=plan, seed=seed, bootstrap=bootstrap)
    stab = None if no_stability else run_stability(ref, src, sizes=size_list, repeats=repeats, seed=seed,
                                                   degradation=degradation)
    results = {"rl2_version": __version__, "reference_path": str(reference), "images": list(images),
               "sweep": sweep, "stability": stab}
    write_report(results, out)
    if as_json:
        click.echo((out / "results.json").read_text())
    else:
        _print_tables(ref, sweep, stab, out)
    if src.skipped:
        sys.exit(EXIT_PARTIAL)  # finished, but some inputs could not be read (listed above)


def _print_tables(ref, sweep, stab, out) -> None:
    click.echo(f"{sweep['n_images']} images, reference {ref.fingerprint} ({ref.identity.name}); Spearman rho of "
               "level vs. score (* = a step where the score does not rise)")
    click.echo(f"{'family':12s} {'levels':>6s} {'RL2':>7s} {'RL2-unb':>8s} {'FD':>7s} {'KID':>7s}  non-monotonic steps")
    for f, fam in sweep["families"].items():
        cells = []
        for m, w in (("rl2", 7), ("rl2_unbiased", 8), ("fd", 7), ("kid", 7)):
            t = fam["trend"][m]
            cells.append(f"{_f(t['rho']) + ('*' if t['non_monotonic_steps'] else ''):>{w}s}")
        steps = "; ".join(f"{m}: " + ", ".join(f"{s['from']:g}->{s['to']:g}" for s in t["non_monotonic_steps"])
                          for m, t in fam["trend"].items() if t["non_monotonic_steps"])
        click.echo(f"{f:12s} {len(fam['levels']):6d} {' '.join(cells)}  {steps or '-'}")
    click.echo("FD and KID use the reference's backbone features (not Inception).")
    if stab:
        for name in [stab["headline"]] + [c for c in stab["conditions"] if c != stab["headline"]]:
            c = stab["conditions"][name]
            click.echo(f"\nstability on {name} ({stab['repeats']} subsets per N, all = {c['n_all']}): "
                       "smallest N within 5% / 10% of the all-images value (p90 of subsets)")
            for m, s in c["smallest_n"].items():
                click.echo(f"  {m:13s} value {c['value_all'][m]:10.4f}   5%: {_n(s['5%']):>5s}   10%: {_n(s['10%']):>5s}")
    click.echo(f"\nwrote {out / 'report.html'} (and results.json, CSV tables, PNG plots)")

