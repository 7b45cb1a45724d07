"""Shared by test_core.py and test_bad_input.py: one small reference per test process, and a CLI runner.

The reference is fitted once (cached in this module, which both test files import) on 40 bundled PCam
patches with a small flow, so either file alone stays well under its time budget.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

import torch

import rl2
from rl2.backbones import load_backbone
from rl2.latents import FlowConfig
from rl2.reference import Reference, fit_reference

SAMPLE = Path(rl2.__file__).parent / "data" / "sample"
REAL = SAMPLE / "real"
HELDOUT = SAMPLE / "heldout"
CONFIG = FlowConfig(pca_dims=16, max_epochs=15, patience=5)


FINGERPRINT_AT_FIT: list[str] = []


@functools.lru_cache(maxsize=None)
def fitted_reference() -> tuple[Reference, Path]:
    """(the in-memory reference as fit_reference returned it, the file it was saved to). Do not mutate."""
    tmp = Path(tempfile.mkdtemp(prefix="rl2-test-ref-"))
    atexit.register(shutil.rmtree, tmp, True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the tiny flow trains several times faster on one thread when cores are shared
    try:
        ref, _ = fit_reference(sorted(REAL.glob("*.png"))[:40], config=CONFIG, workers=0, progress=False)
    finally:
        torch.set_num_threads(threads)
    FINGERPRINT_AT_FIT.append(ref.fingerprint)  # before save, which must not change it
    path = ref.save(tmp / "ref.rl2")
    return ref, path


@functools.lru_cache(maxsize=None)
def default_backbone():
    return load_backbone()


def load_reference() -> Reference:
    """A fresh Reference loaded from the cached file, sharing the cached backbone."""
    ref = Reference.load(fitted_reference()[1])
    ref.backbone(backbone=default_backbone())
    return ref


def heldout(n: int) -> list[Path]:
    return sorted(HELDOUT.glob("*.png"))[:n]


def run_cli(capsys, *args) -> tuple[int, str, str]:
    """Run ``rl2 ARGS`` in this process: (exit code, stdout, stderr)."""
    from rl2.cli import main

    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(err: str, *must_contain: str) -> str:
    """stderr is exactly one ``rl2: ...`` line, with no traceback, that names what it must."""
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one stderr line, got:\n{err}"
    assert lines[0].startswith("rl2: "), lines[0]
    assert "Traceback" not in err and "internal error" not in err, err
    for s in must_contain:
        assert str(s) in lines[0], f"{s!r} not in {lines[0]!r}"
    return lines[0]
