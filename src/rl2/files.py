"""Writing outputs: atomic file writes (nothing a user made is left half-written by a crash or Ctrl-C), and JSON for numpy values."""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_open(path, mode: str = "wb", **kwargs):
    """Open a temporary file beside ``path``; on a clean exit it replaces ``path``, on an error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~umask())  # mkstemp makes 0600 files; give the usual permissions
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_writable(path) -> None:
    """Fail now, naming ``path``, if a file cannot be written there later (before minutes of work)."""
    from .errors import RL2Error

    path = Path(path)
    if path.is_dir():
        raise RL2Error(f"{path}: is a folder; give a file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise RL2Error(f"{path}: cannot write here ({e.strerror or type(e).__name__})") from None


def atomic_write_bytes(path, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_text(path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8", "surrogateescape"))  # file names that are not UTF-8 survive


def json_safe(o):
    """JSON has no NaN/Infinity: non-finite numbers become null (for json.dumps(allow_nan=False))."""
    import math

    import numpy as np

    if isinstance(o, dict):
        return {k: json_safe(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [json_safe(v) for v in o]
    if isinstance(o, (float, np.floating)) and not math.isfinite(o):
        return None
    return o


def check_output(path, inputs=(), what: str = "output", folder: bool = False) -> None:
    """Refuse an output that is one of the ``inputs`` (files or folders the run reads).

    An output ``folder`` may also neither lie inside an input folder (a later run would read its
    images as input) nor hold an input. Nothing the user made may be lost to an output.
    """
    from .errors import RL2Error

    out = Path(path).expanduser().resolve()
    for item in inputs:
        src = Path(item).expanduser()
        if not src.exists():
            continue
        src = src.resolve()
        if out == src and folder:
            raise RL2Error(f"{path}: the {what} folder may not be the input folder {item}; choose a separate folder")
        if out == src:
            raise RL2Error(f"{path}: the {what} would overwrite the input {item}; choose another name")
        if folder and src.is_dir() and src in out.parents:
            raise RL2Error(f"{path}: the {what} folder may not lie inside the input folder {item}, "
                           "where a later run would read its images as input")
        if folder and out in src.parents:
            raise RL2Error(f"{path}: the {what} folder holds the input {item}; choose a separate folder")


def json_default(o):
    """json.dumps(default=...) for numpy scalars and paths."""
    import numpy as np

    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(type(o).__name__)
