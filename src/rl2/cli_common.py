"""What every ``rl2`` command shares: exit codes, help layout, error lines, JSON output, compute options.

A module of its own so that cli.py and the command modules it registers (sweep_cli, qc_cli) can all import
it without importing each other.
"""

from __future__ import annotations

import json

import click

from .files import json_default

EXIT_PARTIAL = 1  # finished, but some inputs failed or were skipped
EXIT_INPUT = 2  # bad input or usage
EXIT_INTERNAL = 3  # a bug

CONTEXT = dict(help_option_names=["-h", "--help"], max_content_width=100)


def err(msg: str) -> None:
    click.echo(f"rl2: {msg}", err=True)


def print_json(obj) -> None:
    click.echo(json.dumps(obj, indent=2, default=json_default))


def compute_options(batch_size: int = 64, what: str = "Images", workers_help: str = "Decoding threads"):
    """--batch-size, --workers, --device and --quiet, for commands that run the network."""

    def wrap(f):
        f = click.option("--batch-size", default=batch_size, show_default=True,
                         help=f"{what} per forward pass (does not change results).")(f)
        f = click.option("--workers", default=2, show_default=True,
                         help=f"{workers_help}; 0 = the main thread only (does not change results).")(f)
        f = click.option("--device", default="auto", show_default=True,
                         help="cpu, cuda, cuda:1 ... or auto (cuda when available).")(f)
        f = click.option("--quiet", "-q", is_flag=True, help="No progress bars.")(f)
        return f

    return wrap
