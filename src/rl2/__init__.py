"""RL2: how far a set of H&E images is from real tissue, in the latent space of a normalizing flow.

Python API::

    from rl2 import fit_reference, Reference, score, RL2Metric
    ref, _ = fit_reference("real_patches/")
    ref.save("ref.rl2")
    result = score(Reference.load("ref.rl2"), "generated/")
    print(result.rl2, result.ci95)
"""

__version__ = "0.1.0"

from .errors import RL2Error  # noqa: E402
from .reference import Reference, fit_reference  # noqa: E402
from .scores import ScoreResult, score  # noqa: E402
from .metric import RL2Metric  # noqa: E402

__all__ = ["RL2Error", "Reference", "fit_reference", "score", "ScoreResult", "RL2Metric", "__version__"]
