"""The `rl2` console script: the CLI's imports (torch, ...) take a second or two, and Ctrl-C during them
must end with the same one line as Ctrl-C later, not a traceback."""

import sys


def main() -> None:
    try:
        from .cli import main as run
    except KeyboardInterrupt:
        sys.stderr.write("rl2: interrupted\n")
        sys.exit(130)
    run()
