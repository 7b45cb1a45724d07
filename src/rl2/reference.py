"""The reference: what real tissue looks like, fitted once and saved as one safetensors file.

The file holds tensors (feature scaler, flow weights, held-out real latents and features, per-image
held-out scores) and JSON metadata (backbone identity, preprocessing, flow config, counts, versions,
creation time, and a sha256 of every tensor byte so tampering is caught). Loading never unpickles.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from . import __version__
from .backbones import DEFAULT_BACKBONE, Backbone, Identity, load_backbone
from .files import atomic_write_bytes
from .errors import NoImagesError, ReferenceFileError, RL2Error, WeightsError
from .features import RunLog, extract_features, resolve_device
from .images import collect_images
from .latents import FeatureScaler, FlowConfig, build_flow, to_latent, train_flow
from .statistics import RefMoments, check_seed

FORMAT = "rl2-reference"
FORMAT_VERSION = 1
MIN_IMAGES = 20
MIN_SPLIT = 5  # least images on either side of the train / held-out split
RECOMMENDED_TRAIN = 200  # below this, fit warns that the reference is likely unreliable
MAX_STORED_FEATURES = 5000  # held-out features kept for the FD/KID baselines
def _payload_sha256(tensors: dict[str, torch.Tensor], meta: dict) -> str:
    """sha256 of every tensor (name, shape, bytes) and of the metadata (without this checksum)."""
    h = hashlib.sha256()
    h.update(json.dumps({k: v for k, v in meta.items() if k != "payload_sha256"}, sort_keys=True).encode())
    for k in sorted(tensors):
        h.update(k.encode())
        h.update(str(tuple(tensors[k].shape)).encode())
        h.update(tensors[k].contiguous().numpy().tobytes())
    return h.hexdigest()


@dataclass
class Reference:
    identity: Identity
    scaler: FeatureScaler
    flow: torch.nn.Module
    flow_config: FlowConfig
    moments: RefMoments
    latents: np.ndarray  # held-out real latents, n x d
    features: np.ndarray  # held-out real backbone features (for FD/KID), m x D
    image_scores: np.ndarray  # held-out per-image latent distances
    image_nll: np.ndarray  # held-out per-image NLL, nats per dimension
    meta: dict = field(default_factory=dict)
    path: Path | None = None  # the file it was loaded from or saved to
    _backbone: Backbone | None = field(default=None, repr=False)

    @property
    def dims(self) -> int:
        return self.scaler.dims

    @property
    def fingerprint(self) -> str:
        """Short id of this reference, printed with every score."""
        return self.meta.get("payload_sha256", "")[:16]

    def summary(self) -> dict:
        """The part of the identity that every score carries."""
        return {
            "backbone": self.identity.name,
            "readout": self.identity.readout,
            "weights_sha256": self.identity.weights_sha256,
            "preprocessing": self.identity.preprocessing.to_dict(),
            "latent_dims": self.dims,
            "flow": f"zuko NSF, {self.flow_config.transforms} transforms, hidden {self.flow_config.hidden}",
            "n_heldout": self.moments.n,
            "fingerprint": self.fingerprint,
        }

    # -- the backbone ---------------------------------------------------------------------------
    def backbone(self, weights: str | None = None, device: str | None = None, backbone: Backbone | None = None) -> Backbone:
        """The backbone this reference was made with; refuses weights whose sha256 differs.

        ``backbone``: an already built backbone to use instead (checked against the reference's identity).
        """
        if backbone is not None:
            check_compatible(self.identity, backbone.identity)
            self._backbone = backbone
        elif self._backbone is None or weights is not None:
            bb = load_backbone(self.identity.name, weights=weights, readout=self.identity.readout)
            check_compatible(self.identity, bb.identity)
            self._backbone = bb
        return self._backbone.to(resolve_device(device))

    def to(self, device) -> "Reference":
        self.scaler.to(device)
        self.flow.to(device)
        if self._backbone is not None:
            self._backbone.to(device)
        return self

    @torch.no_grad()
    def latents_of(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Backbone features -> (latents, NLL in nats per dimension)."""
        dev = self.scaler.mean.device
        z, logp = to_latent(self.flow, self.scaler(feats.to(dev)))
        return z, -logp / self.dims

    def image_distance(self, z: torch.Tensor) -> np.ndarray:
        """Per-image score: RMS latent distance to the reference mean (about 1 for real images)."""
        mu = torch.as_tensor(self.moments.mean, dtype=torch.float64, device=z.device)
        return ((z.double() - mu) ** 2).mean(1).sqrt().cpu().numpy()

    def threshold(self, percentile: float = 99.0) -> float:
        """A per-image score threshold: this percentile of the held-out real images' scores."""
        return float(np.percentile(self.image_scores, percentile))

    # -- file I/O -------------------------------------------------------------------------------
    def _sealed(self) -> tuple[dict[str, torch.Tensor], dict]:
        """The tensors and metadata as saved, with the checksum that is also the fingerprint."""
        t = {f"scaler.{k}": v.cpu() for k, v in self.scaler.state_dict().items()}
        t.update({f"flow.{k}": v.cpu().contiguous() for k, v in self.flow.state_dict().items()})
        t["ref.latent_mean"] = torch.from_numpy(np.asarray(self.moments.mean, np.float64))
        t["ref.latent_var"] = torch.from_numpy(np.asarray(self.moments.var, np.float64))
        t["ref.latents"] = torch.from_numpy(np.ascontiguousarray(self.latents, np.float32))
        t["ref.features"] = torch.from_numpy(np.ascontiguousarray(self.features, np.float32))
        t["ref.image_scores"] = torch.from_numpy(np.asarray(self.image_scores, np.float64))
        t["ref.image_nll"] = torch.from_numpy(np.asarray(self.image_nll, np.float64))
        meta = dict(self.meta)
        meta.update(
            format=FORMAT,
            format_version=FORMAT_VERSION,
            identity=self.identity.to_dict(),
            flow_config=self.flow_config.to_dict(),
            n_heldout=int(self.moments.n),
        )
        meta["payload_sha256"] = _payload_sha256(t, meta)
        return t, meta

    def save(self, path: str | os.PathLike) -> Path:
        from safetensors.torch import save

        t, self.meta = self._sealed()
        atomic_write_bytes(Path(path), save(t, metadata={"rl2": json.dumps(self.meta)}))
        self.path = Path(path)
        return self.path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Reference":
        from safetensors import safe_open

        path = Path(path)
        if path.is_dir():
            raise ReferenceFileError(f"{path}: is a folder; expected a reference file made by `rl2 fit`")
        if not path.is_file():
            raise ReferenceFileError(f"{path}: reference file not found")
        try:
            with safe_open(str(path), framework="pt") as f:
                raw = (f.metadata() or {}).get("rl2")
                t = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:
            reason = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
            raise ReferenceFileError(f"{path}: not a readable RL2 reference (truncated or corrupt: {reason})") from None
        try:
            meta = json.loads(raw)
        except (TypeError, ValueError):
            raise ReferenceFileError(f"{path}: safetensors file without RL2 metadata; not an RL2 reference") from None
        if not isinstance(meta, dict):
            raise ReferenceFileError(f"{path}: safetensors file without RL2 metadata; not an RL2 reference")
        if meta.get("format") != FORMAT:
            raise ReferenceFileError(f"{path}: not an RL2 reference (format {meta.get('format')!r})")
        if meta.get("format_version") != FORMAT_VERSION:
            raise ReferenceFileError(
                f"{path}: reference format {meta.get('format_version')} needs another rl2 version (this is {__version__})"
            )
        if _payload_sha256(t, meta) != meta.get("payload_sha256"):
            raise ReferenceFileError(f"{path}: checksum mismatch; the file was modified or damaged after it was written")
        try:
            identity = Identity.from_dict(meta["identity"])
            cfg = FlowConfig(**meta["flow_config"])
            scaler = FeatureScaler(
                t["scaler.mean"], t["scaler.scale"], t["scaler.components"], t["scaler.eigvals"]
            )
            flow = build_flow(scaler.dims, cfg)
            flow.load_state_dict({k[5:]: v for k, v in t.items() if k.startswith("flow.")}, strict=True)
            flow.eval().requires_grad_(False)
            latents = t["ref.latents"].numpy()
            moments = RefMoments(t["ref.latent_mean"].numpy(), t["ref.latent_var"].numpy(), len(latents))
        except (KeyError, TypeError, RuntimeError, ValueError) as e:
            raise ReferenceFileError(f"{path}: reference is incomplete or inconsistent ({str(e).splitlines()[0][:160]})") from None
        return cls(
            identity, scaler, flow, cfg, moments, latents, t["ref.features"].numpy(),
            t["ref.image_scores"].numpy(), t["ref.image_nll"].numpy(), meta, path,
        )


def check_compatible(expected: Identity, found: Identity, what: str = "backbone") -> None:
    """Refuse to mix features from different backbones, read-outs, weights or preprocessing."""
    a, b = expected.to_dict(), found.to_dict()
    flat = lambda d: {**{k: v for k, v in d.items() if k != "preprocessing"},  # noqa: E731
                      **{f"preprocessing.{k}": v for k, v in d["preprocessing"].items()}}
    a, b = flat(a), flat(b)
    for key in a:
        if a[key] != b.get(key):
            show = (lambda v: str(v)[:12] + "...") if key == "weights_sha256" else str
            raise WeightsError(f"incompatible {what}: the reference was made with {key} {show(a[key])}, "
                               f"but this run uses {show(b.get(key))}; refit the reference or use its settings")


def _typical_side(paths, sample: int = 50) -> int | None:
    """Median shorter side of (up to) the first ``sample`` images, read from headers only."""
    from PIL import Image

    sides = []
    for p in paths[:sample]:
        try:
            with Image.open(p) as im:
                sides.append(min(im.size))
        except Exception:
            continue
    return int(np.median(sides)) if sides else None


def fit_reference(
    images: Sequence[str | os.PathLike] | str | os.PathLike,
    backbone: str = DEFAULT_BACKBONE,
    weights: str | None = None,
    readout: str | None = None,
    config: FlowConfig | None = None,
    holdout: float = 0.25,
    device: str | None = None,
    batch_size: int = 64,
    workers: int = 2,
    strict: bool = False,
    progress: bool = True,
    data_mpp: float | None = None,
) -> tuple[Reference, RunLog]:
    """Learn what real tissue looks like from a set of real images.

    The readable images are shuffled (seeded) and split: ``1 - holdout`` train the scaler and flow, the
    held-out rest stops training early and provides the reference statistics, so the statistics are never
    computed on the images the flow was fitted to. ``data_mpp`` (microns per pixel of the real images)
    is recorded so that slide QC can tile slides at the same magnification.
    """
    cfg = config or FlowConfig()
    if not 0 < holdout < 1:
        raise RL2Error(f"holdout must lie strictly between 0 and 1, got {holdout}")
    check_seed(cfg.seed)
    if data_mpp is not None and not (isinstance(data_mpp, (int, float)) and 0 < data_mpp < math.inf):
        raise RL2Error(f"data_mpp (microns per pixel) must be a finite number above 0, got {data_mpp!r}")
    if cfg.pca_dims < 2:
        raise RL2Error(f"the latent dimension (--dims) must be at least 2, got {cfg.pca_dims}")
    dev = resolve_device(device)
    bb = load_backbone(backbone, weights=weights, readout=readout).to(dev)
    imageset = collect_images(images)
    log = RunLog()
    feats, idx = extract_features(
        bb, imageset.paths, log, batch_size=batch_size, workers=workers, strict=strict, progress=progress, desc="real features"
    )
    if len(feats) < MIN_IMAGES:
        raise NoImagesError(f"only {len(feats)} readable real images; a reference needs at least {MIN_IMAGES}")
    order = np.random.default_rng(cfg.seed).permutation(len(feats))
    n_hold = int(round(holdout * len(feats)))
    if n_hold < MIN_SPLIT or len(feats) - n_hold < MIN_SPLIT:
        raise RL2Error(f"holdout {holdout} of {len(feats)} images leaves {len(feats) - n_hold} to train on and "
                       f"{n_hold} held out; each needs at least {MIN_SPLIT}")
    hold, train = order[:n_hold], order[n_hold:]

    scaler = FeatureScaler.fit(feats[train], cfg.pca_dims)
    warnings = []
    if scaler.dims < cfg.pca_dims:
        warnings.append(f"latent dimension lowered from {cfg.pca_dims} to {scaler.dims} "
                        f"(at most the {len(train)} training images - 1)")
        cfg = dataclasses.replace(cfg, pca_dims=scaler.dims)  # the file records what was really used
    if len(train) < RECOMMENDED_TRAIN:
        warnings.append(f"only {len(train)} training images; a reliable reference wants {RECOMMENDED_TRAIN} or more")
    x_train = scaler(torch.from_numpy(feats[train]))
    x_hold = scaler(torch.from_numpy(feats[hold]))
    flow, history = train_flow(x_train, x_hold, cfg, progress=progress)

    z, logp = to_latent(flow, x_hold)
    z = z.double().numpy()
    n, d = z.shape
    moments = RefMoments(z.mean(0), z.var(0, ddof=1), n)
    # Leave-one-out means, so a held-out image is not compared with a mean that contains itself.
    loo = (z.sum(0) - z) / (n - 1)
    image_scores = np.sqrt(((z - loo) ** 2).sum(1) / d)
    image_nll = (-logp.double().numpy()) / d
    keep = hold[: MAX_STORED_FEATURES]
    meta = {
        "rl2_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "torch_version": torch.__version__,
        "counts": {
            "inputs": log.n_inputs,
            "skipped": len(log.skipped),
            "used": int(len(feats)),
            "train": int(len(train)),
            "heldout": int(n_hold),
            "non_square": log.non_square,
        },
        "holdout": holdout,
        "data_mpp": data_mpp,
        "data_image_px": _typical_side(imageset.paths),
        "training": {
            "epochs_run": history["epochs_run"],
            "best_epoch": history["best_epoch"],
            "heldout_nll_per_dim": float(image_nll.mean()),
        },
        "warnings": warnings,
        "heldout_score_percentiles": {
            str(p): float(np.percentile(image_scores, p)) for p in (50, 90, 95, 99)
        },
    }
    ref = Reference(bb.identity, scaler, flow, cfg, moments, z.astype(np.float32), feats[keep],
                    image_scores, image_nll, meta, _backbone=bb)
    ref.meta = ref._sealed()[1]  # the fingerprint exists before the file does; saving gives the same one
    return ref, log
