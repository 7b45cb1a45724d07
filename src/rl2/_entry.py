"""The `rl2` console script: the CLI's imports (torch, ...) take a second or two, and Ctrl-C during them
must end with the same one line as Ctrl-C later, not a traceback."""

import os
import sys


def main() -> None:
    try:
        from .cli import main as run
    except KeyboardInterrupt:
        sys.stderr.write("rl2: interrupted\n")
        sys.exit(130)
    try:
        run()
    except SystemExit as e:
        if e.code in (129, 130, 143):
            # Interrupted: every clean-up has run. Leave now, rather than wait at exit for a decoding
            # thread stuck on a slow or hung file.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(e.code)
        raise
