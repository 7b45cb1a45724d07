"""What every ``rl2`` command shares: exit codes, help layout, error lines, JSON output, compute options.

A module of its own so that cli.py and the command modules it registers (sweep_cli, qc_cli) can all import
it without importing each other.
"""

from __future__ import annotations

import json

import click

from .files import json_default, json_safe

EXIT_PARTIAL = 1  # finished, but some inputs failed or were skipped
EXIT_INPUT = 2  # bad input or usage
EXIT_INTERNAL = 3  # a bug

CONTEXT = dict(help_option_names=["-h", "--help"], max_content_width=100)


# Control characters (a newline in a file name, say) are shown escaped, so every message stays one line.
_ESCAPES = {c: f"\\x{c:02x}" for c in range(32)} | {10: "\\n", 13: "\\r", 9: "\\t"}


def err(msg: str) -> None:
    click.echo("rl2: " + str(msg).translate(_ESCAPES), err=True)


def print_json(obj) -> None:
    """One strict JSON object on stdout (non-finite numbers as null)."""
    click.echo(json.dumps(json_safe(obj), indent=2, default=json_default, allow_nan=False))


def seed_option(help: str):
    from .statistics import SEED_MAX

    return click.option("--seed", default=0, show_default=True, type=click.IntRange(0, SEED_MAX), help=help)


class PositiveFinite(click.ParamType):
    """A finite number above 0 (click's FloatRange lets inf and nan through)."""

    name = "number"

    def convert(self, value, param, ctx):
        import math

        try:
            v = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not (math.isfinite(v) and v > 0):
            self.fail(f"{value!r} must be a finite number above 0", param, ctx)
        return v


POSITIVE = PositiveFinite()


def _check_device(ctx, param, value):
    from .errors import RL2Error
    from .features import resolve_device

    try:
        resolve_device(value)
    except RL2Error as e:
        raise click.BadParameter(str(e)) from None
    return value


def bootstrap_option(what: str = "the 95% interval"):
    """--bootstrap: 0 for none, else enough replicates to place 2.5% and 97.5% percentiles."""
    from .errors import RL2Error
    from .statistics import DEFAULT_BOOTSTRAP, MIN_BOOTSTRAP, check_bootstrap

    def check(ctx, param, value):
        try:
            check_bootstrap(value, 0)
        except RL2Error as e:
            raise click.BadParameter(str(e).removeprefix("bootstrap: ")) from None
        return value

    return click.option("--bootstrap", default=DEFAULT_BOOTSTRAP, show_default=True, type=click.IntRange(min=0),
                        callback=check, help=f"Bootstrap replicates for {what}: 0 for none, else at least {MIN_BOOTSTRAP}.")


def compute_options(batch_size: int = 64, what: str = "Images", workers_help: str = "Decoding threads"):
    """--batch-size, --workers, --device and --quiet, for commands that run the network."""

    def wrap(f):
        f = click.option("--batch-size", default=batch_size, show_default=True, type=click.IntRange(min=1),
                         help=f"{what} per forward pass (does not change results).")(f)
        f = click.option("--workers", default=2, show_default=True, type=click.IntRange(min=0),
                         help=f"{workers_help}; 0 = the main thread only (does not change results).")(f)
        f = click.option("--device", default="auto", show_default=True, callback=_check_device,
                         help="cpu, cuda, cuda:1 ... or auto (cuda when available).")(f)
        f = click.option("--quiet", "-q", is_flag=True, help="No progress bars.")(f)
        return f

    return wrap
