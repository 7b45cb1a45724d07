"""RL2: how far a set of H&E images is from real tissue, in the latent space of a normalizing flow.

Python API::

    from rl2 import fit_reference, Reference, score, RL2Metric
    ref, _ = fit_reference("real_patches/")
    ref.save("ref.rl2")
    result = score(Reference.load("ref.rl2"), "generated/")
    print(result.rl2, result.ci95)
"""

import importlib

__version__ = "0.1.0"

# Imported on first use, so that `rl2 --help` starts fast and Ctrl-C during start-up is caught cleanly.
_API = {
    "RL2Error": "errors", "Reference": "reference", "fit_reference": "reference",
    "score": "scores", "ScoreResult": "scores", "RL2Metric": "metric",
}

__all__ = [*_API, "__version__"]


def __getattr__(name):
    if name in _API:
        return getattr(importlib.import_module(f".{_API[name]}", __name__), name)
    raise AttributeError(f"module 'rl2' has no attribute {name!r}")
