"""Degradation sweeps and small-sample stability: does a metric rise with damage, and how many images does it need?

For every degradation family (``degrade.FAMILIES``) and level, the images are degraded in memory (image i
with seed ``seed + i``), resized for the backbone and scored with RL2 (plus its bias-corrected value and
95% interval) and with two baselines computed on the *same* backbone features: the Fréchet distance and
KID against the reference's held-out real features. These are not Inception FID/KID: the feature
extractor is the reference's backbone, so the numbers are comparable to each other but not to
published FID values.

Stability: on the features of one set (clean, and a moderately degraded copy), seeded subsets of N
images are scored R times and each metric is compared with its value on all images.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from scipy import stats as sps
from tqdm.auto import tqdm

from .degrade import FAMILIES, apply
from .errors import ImageError, NoImagesError, RL2Error
from .images import collect_images, load_rgb, prepare
from .reference import Reference
from .statistics import DEFAULT_BOOTSTRAP, LatentStats, distance, kid, score_sets

METRICS = ("rl2", "rl2_unbiased", "fd", "kid")
METRIC_LABELS = {"rl2": "RL2", "rl2_unbiased": "RL2 (bias-corrected)", "fd": "FD (backbone features)",
                 "kid": "KID (backbone features)"}
DEFAULT_SIZES = (10, 25, 50, 100, 200, 500)
DEFAULT_REPEATS = 20
# Stability is headlined on a moderately degraded set: on clean real images every metric is near 0, so
# relative deviations from the all-images value are huge whatever N is.
DEFAULT_STABILITY_DEGRADATION = ("blur", 1.0)
STABILITY_QUANTILE = 90  # "stays within x%": this percentile of the R relative deviations is <= x
TOLERANCES = (0.05, 0.10)
CLEAN = ("clean", 0.0)


# -- features of degraded copies ------------------------------------------------------------------


class DegradedFeatures:
    """Images decoded once, and backbone features of their degraded copies, computed on request.

    The decoded images stay in memory (fine for patch sets; a sweep of huge images needs them tiled first).
    Image ``i`` in input order (``collect_images`` order, counting unreadable files too) is degraded with
    seed ``seed + i``, as ``rl2 degrade`` does, so ``rl2 degrade`` + ``rl2 score`` reproduce a sweep's numbers.
    Features of the clean set and of the keys in ``keep`` (``(family, level)`` pairs) are cached, so a sweep
    and a stability run can share them; the rest are computed, used and dropped.
    """

    def __init__(self, reference: Reference, images, seed: int = 0, batch_size: int = 64, workers: int = 2,
                 device: str | None = None, weights: str | None = None, progress: bool = True,
                 keep: Sequence[tuple[str, float]] = ()):
        self.reference, self.seed, self.batch_size = reference, seed, batch_size
        self.workers, self.progress = workers, progress
        self.keep = {_key(f, lv) for f, lv in keep}
        self.backbone = reference.backbone(weights=weights, device=device)
        reference.to(next(self.backbone.buffers()).device)
        self.size = self.backbone.identity.preprocessing.input_size
        imageset = collect_images(images)
        self.paths, self.index, self.arrays, self.skipped = [], [], [], []
        for i, p in enumerate(imageset.paths):
            try:
                self.arrays.append(np.asarray(load_rgb(p)))
                self.paths.append(p)
                self.index.append(i)
            except ImageError as e:
                self.skipped.append(str(e))
        if len(self.arrays) < 2:
            raise NoImagesError(f"{len(self.arrays)} readable images; a sweep needs at least 2")
        self._cache: dict[tuple[str, float], np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.arrays)

    def degraded(self, family: str, level: float, i: int) -> np.ndarray:
        """The i-th readable image degraded at (family, level) with its own seed, at its original size (uint8 RGB)."""
        if float(level) == 0:
            return self.arrays[i]
        return apply(self.arrays[i], family, level, seed=self.seed + self.index[i])

    def _prepared(self, family: str, level: float, i: int) -> np.ndarray:
        return prepare(Image.fromarray(self.degraded(family, level, i)), self.size)

    def features(self, family: str, level: float) -> np.ndarray:
        """Backbone features (N x D, float32) of all images degraded at (family, level); level 0 is shared."""
        key = _key(family, level)
        if key in self._cache:
            return self._cache[key]
        feats = []
        pool = ThreadPoolExecutor(self.workers) if self.workers > 0 else None
        bar = tqdm(total=len(self), desc=f"{key[0]} {key[1]:g}", unit="img", disable=not self.progress, leave=False)
        try:
            for start in range(0, len(self), self.batch_size):
                idx = range(start, min(start + self.batch_size, len(self)))
                fn = lambda i: self._prepared(family, level, i)  # noqa: E731
                arrays = list(pool.map(fn, idx)) if pool else [fn(i) for i in idx]
                x = torch.from_numpy(np.stack(arrays)).to(next(self.backbone.buffers()).device).permute(0, 3, 1, 2)
                feats.append(self.backbone(x).cpu().numpy())
                bar.update(len(idx))
        finally:
            bar.close()
            if pool:
                pool.shutdown()
        out = np.concatenate(feats).astype(np.float32)
        if key == CLEAN or key in self.keep:
            self._cache[key] = out
        return out

    def latents(self, feats: np.ndarray) -> np.ndarray:
        """Latents (N x d, float64) of backbone features, in batches."""
        zs = [self.reference.latents_of(torch.from_numpy(feats[i:i + self.batch_size]))[0].cpu().numpy()
              for i in range(0, len(feats), self.batch_size)]
        return np.concatenate(zs).astype(np.float64)


def _key(family: str, level: float) -> tuple[str, float]:
    return CLEAN if float(level) == 0 else (family, float(level))


# -- metrics ------------------------------------------------------------------------------------------


def frechet_distance_lowrank(x: np.ndarray, y: np.ndarray) -> float:
    """The Fréchet distance of ``statistics.frechet_distance``, computed through the n x m cross-Gram matrix.

    The non-zero eigenvalues of S_x S_y are the squared singular values of Xc Yc^T / sqrt((n-1)(m-1)), so
    tr sqrt(S_x S_y) is the sum of those singular values. Exact, and much faster when n or m is below the
    feature dimension (the D x D eigenproblem is never formed), which is the case in stability runs.
    """
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    n, m = len(x), len(y)
    xc, yc = x - x.mean(0), y - y.mean(0)
    sv = np.linalg.svd(xc @ yc.T, compute_uv=False)
    tr_sqrt = sv.sum() / math.sqrt((n - 1) * (m - 1))
    diff = x.mean(0) - y.mean(0)
    return float(diff @ diff + (xc * xc).sum() / (n - 1) + (yc * yc).sum() / (m - 1) - 2 * tr_sqrt)


def kid_size(n_set: int, n_ref: int) -> int:
    """KID subset size: min(1000, reference held-out count, set size)."""
    return min(1000, n_ref, n_set)


def set_metrics(reference: Reference, z: np.ndarray, feats: np.ndarray, indices=None, bootstrap: int = 0,
                seed: int = 0, kid_subsets: int = 50) -> dict:
    """RL2 (score_sets), FD and KID of one set given its latents ``z`` and backbone features ``feats``."""
    stats = LatentStats(reference.dims, replicates=bootstrap, seed=seed)
    stats.update(z, np.arange(len(z)) if indices is None else indices)
    out = score_sets(reference.moments, reference.latents, stats, seed=seed)
    ref_feats = reference.features
    out["fd"] = frechet_distance_lowrank(feats, ref_feats)
    out["kid"], out["kid_std"] = kid(feats, ref_feats, subsets=kid_subsets,
                                     subset_size=kid_size(len(feats), len(ref_feats)), seed=seed)
    return out


def trend(levels: Sequence[float], values: Sequence[float | None]) -> dict:
    """Spearman rho between level and value, and every step where the value does not rise.

    A step k -> k+1 is non-monotonic when value[k+1] <= value[k] (ties count: a metric that cannot tell two
    levels apart does not rank them).
    """
    lv = [float(a) for a, v in zip(levels, values) if v is not None and math.isfinite(v)]
    vs = [float(v) for v in values if v is not None and math.isfinite(v)]
    rho = p = None
    if len(vs) >= 2 and len(set(vs)) > 1 and len(set(lv)) > 1:
        r = sps.spearmanr(lv, vs)
        # Rounded so that a perfect ranking reads 1.0, not 0.9999999999999999.
        rho, p = round(float(r.statistic if hasattr(r, "statistic") else r.correlation), 12), float(r.pvalue)
    steps = [{"from": lv[k], "to": lv[k + 1], "value_from": vs[k], "value_to": vs[k + 1]}
             for k in range(len(vs) - 1) if vs[k + 1] <= vs[k]]
    return {"rho": rho, "p": p, "monotonic": not steps and len(vs) >= 2, "non_monotonic_steps": steps}


# -- the sweep -----------------------------------------------------------------------------------------


def resolve_levels(families: Sequence[str] | None = None, levels: dict | None = None) -> dict[str, list[float]]:
    """Family -> sorted unique levels with 0 included: the family's defaults unless ``levels`` overrides them.

    ``families`` defaults to all of ``degrade.FAMILIES``; ``levels`` only replaces the levels of the families
    it names.
    Every level is checked once on a tiny image, so a bad family or level fails before any work.
    """
    levels = dict(levels or {})
    families = list(families or FAMILIES)
    unknown = [f for f in list(families) + list(levels) if f not in FAMILIES]
    if unknown:
        raise RL2Error(f"unknown degradation {unknown[0]!r}; valid: {', '.join(FAMILIES)}")
    unused = [f for f in levels if f not in families]
    if unused:
        raise RL2Error(f"levels are given for {', '.join(unused)}, which is not among the families swept")
    out = {}
    for f in families:
        lv = sorted({0.0, *(float(v) for v in levels.get(f, FAMILIES[f].default_levels))})
        probe = np.zeros((16, 16, 3), np.uint8)
        for v in lv:
            apply(probe, f, v)
        out[f] = lv
    return out


def run_sweep(reference: Reference, images, families: Sequence[str] | None = None, levels: dict | None = None,
              seed: int = 0, bootstrap: int = DEFAULT_BOOTSTRAP, batch_size: int = 64, workers: int = 2,
              device: str | None = None, progress: bool = True, weights: str | None = None,
              kid_subsets: int = 50) -> dict:
    """Score every family at every level; returns a JSON-ready dict (see the module docstring).

    ``images`` are paths/folders/patterns as for ``score``, or a :class:`DegradedFeatures` to share decoded
    images and cached features with ``run_stability``. ``levels`` overrides a family's default levels
    (``{"blur": [0, 1, 2]}``); 0 is always added.
    """
    plan = resolve_levels(families, levels)
    src = images if isinstance(images, DegradedFeatures) else DegradedFeatures(
        reference, images, seed=seed, batch_size=batch_size, workers=workers, device=device, weights=weights,
        progress=progress)
    # Bootstrap weights are keyed by image index, so every level resamples the same images (paired).
    per_key: dict[tuple[str, float], dict] = {}

    def metrics(family, level):
        key = _key(family, level)
        if key not in per_key:
            feats = src.features(family, level)
            m = set_metrics(reference, src.latents(feats), feats, indices=src.index, bootstrap=bootstrap, seed=seed,
                            kid_subsets=kid_subsets)
            per_key[key] = {"rl2": m["rl2"], "rl2_unbiased": m["rl2_unbiased"], "ci95": m["ci95"], "l2": m["l2"],
                            "fd": m["fd"], "kid": m["kid"], "kid_std": m["kid_std"]}
        return per_key[key]

    fams = {}
    for f, lv in plan.items():
        rows = [{"level": v, **metrics(f, v)} for v in lv]
        fams[f] = {
            "unit": FAMILIES[f].unit,
            "description": FAMILIES[f].description,
            "levels": lv,
            "rows": rows,
            "trend": {m: trend(lv, [r[m] for r in rows]) for m in METRICS},
        }
    n_ref = len(reference.features)
    d_feat = reference.features.shape[1]
    return {
        "n_images": len(src),
        "skipped": src.skipped,
        "seed": seed,
        "bootstrap": bootstrap,
        "reference": reference.summary(),
        "baselines": {
            "feature_source": f"the reference's backbone ({reference.identity.name}/{reference.identity.readout}), "
                              f"{d_feat}-d; NOT Inception features, so FD/KID here are not FID/KID values comparable "
                              "with published numbers",
            "compared_with": f"the reference's {n_ref} held-out real images (reference.features)",
            "fd_rank_deficient": n_ref <= d_feat,
            "fd_note": (f"the reference side has {n_ref} images for {d_feat} feature dimensions, so its covariance is "
                        "rank-deficient and FD carries a large small-sample bias" if n_ref <= d_feat else ""),
            "kid_subset_size": f"min(1000, {n_ref}, N)",
            "kid_subsets": kid_subsets,
        },
        "example": {"index": src.index[0], "path": str(src.paths[0])},
        "families": fams,
    }


# -- stability with few images -----------------------------------------------------------------------


def smallest_stable_n(sizes: Sequence[int], deviations: Sequence[float | None], tol: float) -> int | None:
    """The smallest N from which the deviation stays <= tol for that N and every larger one (None if never)."""
    best = None
    for n, dev in sorted(zip(sizes, deviations), reverse=True):
        if dev is None or not math.isfinite(dev) or dev > tol:
            break
        best = n
    return best


def _relative(values: np.ndarray, ref_value: float) -> np.ndarray:
    if ref_value == 0 or not math.isfinite(ref_value):
        return np.full(len(values), np.inf)
    return np.abs(values - ref_value) / abs(ref_value)


def stability_of(reference: Reference, z: np.ndarray, feats: np.ndarray, sizes=DEFAULT_SIZES,
                 repeats: int = DEFAULT_REPEATS, seed: int = 0, kid_subsets: int = 50) -> dict:
    """Stability of each metric on one set (latents ``z``, features ``feats``); see ``run_stability``."""
    n_all = len(z)
    ns = sorted({int(n) for n in sizes if 2 <= int(n) < n_all} | {n_all})
    full = set_metrics(reference, z, feats, seed=seed, kid_subsets=kid_subsets)
    rows = []
    for n in ns:
        draws = 1 if n == n_all else repeats
        vals = {m: [] for m in METRICS}
        for r in range(draws):
            idx = np.arange(n_all) if n == n_all else np.sort(np.random.default_rng([seed, n, r]).choice(n_all, n, replace=False))
            m = set_metrics(reference, z[idx], feats[idx], seed=seed, kid_subsets=kid_subsets)
            for k in METRICS:
                vals[k].append(m[k])
        for k in METRICS:
            v = np.asarray(vals[k], np.float64)
            dev = _relative(v, full[k])
            rows.append({
                "n": n, "metric": k, "draws": draws, "value_all": full[k],
                "mean": float(v.mean()), "std": float(v.std(ddof=1)) if draws > 1 else 0.0,
                "p5": float(np.percentile(v, 5)), "p95": float(np.percentile(v, 95)),
                "rel_dev_mean": float(dev.mean()), "rel_dev_p90": float(np.percentile(dev, STABILITY_QUANTILE)),
                "rel_dev_max": float(dev.max()),
                "rel_mean_bias": float((v.mean() - full[k]) / abs(full[k])) if full[k] else None,
            })
    smallest = {}
    for k in METRICS:
        mrows = [r for r in rows if r["metric"] == k]
        smallest[k] = {f"{round(t * 100)}%": smallest_stable_n([r["n"] for r in mrows],
                                                              [r["rel_dev_p90"] for r in mrows], t)
                       for t in TOLERANCES}
    return {"n_all": n_all, "sizes": ns, "value_all": {k: full[k] for k in METRICS}, "rows": rows,
            "smallest_n": smallest}


def run_stability(reference: Reference, images, sizes: Sequence[int] = DEFAULT_SIZES, repeats: int = DEFAULT_REPEATS,
                  seed: int = 0, degradation: tuple[str, float] | None = DEFAULT_STABILITY_DEGRADATION,
                  batch_size: int = 64, workers: int = 2, device: str | None = None, progress: bool = True,
                  weights: str | None = None, kid_subsets: int = 50) -> dict:
    """How each metric varies with the number of images N, relative to its value on all images.

    For each N in ``sizes`` (those below the number of images) plus all images, ``repeats`` seeded subsets are
    drawn without replacement and RL2, bias-corrected RL2, FD and KID computed on each (no bootstrap). Done on
    the clean set and on a copy degraded by ``degradation`` (default blur sigma 1). The headline is the
    degraded set: clean real images score about 0, where a relative deviation is meaningless.

    "Stays within x%" means: the 90th percentile of the R relative deviations |m_sub - m_all| / |m_all| is
    at most x, at that N and at every larger N.
    """
    src = images if isinstance(images, DegradedFeatures) else DegradedFeatures(
        reference, images, seed=seed, batch_size=batch_size, workers=workers, device=device, weights=weights,
        progress=progress, keep=[degradation] if degradation else ())
    conditions = {"clean": CLEAN}
    if degradation and float(degradation[1]) != 0:
        resolve_levels([degradation[0]], {degradation[0]: [degradation[1]]})  # validates the pair
        conditions[f"{degradation[0]} {float(degradation[1]):g}"] = (degradation[0], float(degradation[1]))
    out = {}
    for name, (family, level) in conditions.items():
        feats = src.features(family, level)
        res = stability_of(reference, src.latents(feats), feats, sizes, repeats, seed, kid_subsets)
        out[name] = {"family": None if name == "clean" else family, "level": level, **res}
    headline = list(conditions)[-1]
    return {
        "repeats": repeats,
        "criterion": f"{STABILITY_QUANTILE}th percentile of the relative deviation |m_N - m_all| / |m_all| over "
                     f"{repeats} seeded subsets is within the tolerance at that N and every larger N",
        "headline": headline,
        "headline_reason": ("a moderately degraded set: on clean real images every metric is about 0, so relative "
                            "deviations from the all-images value are not meaningful") if headline != "clean" else
                           "no degraded condition was requested",
        "conditions": out,
    }


def parse_levels(text: str | None) -> dict[str, list[float]]:
    """``"blur=0,1,2;noise=0,0.1"`` -> ``{"blur": [0, 1, 2], "noise": [0, 0.1]}``."""
    out: dict[str, list[float]] = {}
    for part in (text or "").split(";"):
        if not part.strip():
            continue
        name, sep, values = part.partition("=")
        name = name.strip()
        if not sep or not values.strip():
            raise RL2Error(f"--levels: expected family=v1,v2,..., got {part.strip()!r}")
        if name in out:
            raise RL2Error(f"--levels: {name} is given twice; list all its levels once ({name}=v1,v2,...)")
        try:
            out[name] = [float(v) for v in values.split(",")]
        except ValueError:
            raise RL2Error(f"--levels: levels must be numbers separated by single commas, got {values.strip()!r}") from None
        if len(set(out[name])) != len(out[name]):
            raise RL2Error(f"--levels: {name} lists a level twice ({values.strip()})")
    return out

