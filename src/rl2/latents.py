"""Features -> latents: a feature scaler (standardize, then PCA-whiten) and a neural spline flow (zuko).

The flow is trained by maximum likelihood on the scaled features of the real training split, so real
images map to a standard Gaussian. Everything here is seeded, and the training loop keeps the epoch
with the best held-out likelihood (early stopping).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import zuko
from tqdm.auto import tqdm


@dataclass(frozen=True)
class FlowConfig:
    """Sizes chosen by measurement on PCam (see README, 'How the defaults were chosen')."""

    pca_dims: int = 64  # latent dimension d; capped by the number of training images
    transforms: int = 4
    hidden: int = 128
    bins: int = 8
    lr: float = 1e-3
    weight_decay: float = 1e-5
    batch_size: int = 128
    max_epochs: int = 400
    patience: int = 30
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


class FeatureScaler(torch.nn.Module):
    """z-score each feature, then project on the top principal components and whiten them.

    z-scoring makes channels that are nearly constant on real tissue sensitive: ink or noise that wakes
    one up moves the image far in latent space, which is what lets the per-image score reject pen
    marks. The price is that a few such images can dominate a set's mean (docs/MEASUREMENTS.md,
    "Feature scaling", has both sides measured). Statistics are computed in float64; whitening divides
    by sqrt(eigenvalue + eps) so that near-zero components do not blow up.
    """

    def __init__(self, mean, scale, components, eigvals):
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float64))
        self.register_buffer("scale", torch.as_tensor(scale, dtype=torch.float64))
        self.register_buffer("components", torch.as_tensor(components, dtype=torch.float64))  # D x d
        self.register_buffer("eigvals", torch.as_tensor(eigvals, dtype=torch.float64))

    @classmethod
    def fit(cls, feats: np.ndarray, dims: int) -> "FeatureScaler":
        x = np.asarray(feats, dtype=np.float64)
        mean = x.mean(0)
        scale = x.std(0, ddof=1)
        scale = np.where(scale > 1e-8, scale, 1.0)  # constant features (e.g. dead ReLUs) stay zero
        xs = (x - mean) / scale
        dims = min(dims, x.shape[0] - 1, x.shape[1])
        # SVD of the data matrix; sign fixed so the same data always gives the same components.
        _, s, vt = np.linalg.svd(xs, full_matrices=False)
        comps = np.ascontiguousarray(vt[:dims].T)
        signs = np.sign(comps[np.abs(comps).argmax(0), range(dims)])
        comps = comps * signs
        eig = s[:dims] ** 2 / (x.shape[0] - 1)
        return cls(mean, scale, comps, eig)

    @property
    def dims(self) -> int:
        return self.components.shape[1]

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        x = (feats.to(self.mean.dtype) - self.mean) / self.scale
        return ((x @ self.components) / torch.sqrt(self.eigvals + 1e-6)).float()


def build_flow(dims: int, cfg: FlowConfig) -> zuko.flows.NSF:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return zuko.flows.NSF(dims, transforms=cfg.transforms, hidden_features=(cfg.hidden, cfg.hidden), bins=cfg.bins)


def _nll(flow, x):
    return -flow().log_prob(x).mean()


def train_flow(train: torch.Tensor, val: torch.Tensor, cfg: FlowConfig, progress: bool = True):
    """Maximum-likelihood training with Adam; returns the flow at the best validation epoch and a history."""
    flow = build_flow(train.shape[1], cfg)
    opt = torch.optim.AdamW(flow.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    best, best_state, best_epoch, history = math.inf, None, -1, []
    bar = tqdm(range(cfg.max_epochs), desc="flow", unit="epoch", disable=not progress, leave=False)
    for epoch in bar:
        flow.train()
        order = torch.randperm(len(train), generator=gen)
        for i in range(0, len(train), cfg.batch_size):
            loss = _nll(flow, train[order[i : i + cfg.batch_size]])
            opt.zero_grad()
            loss.backward()
            opt.step()
        flow.eval()
        with torch.no_grad():
            tr, va = float(_nll(flow, train)), float(_nll(flow, val))
        history.append((epoch, tr / train.shape[1], va / train.shape[1]))
        bar.set_postfix(train=f"{tr / train.shape[1]:.3f}", val=f"{va / train.shape[1]:.3f}")
        if va < best - 1e-4:
            best, best_epoch = va, epoch
            best_state = {k: v.detach().clone() for k, v in flow.state_dict().items()}
        elif epoch - best_epoch >= cfg.patience:
            break
    bar.close()
    flow.load_state_dict(best_state)
    flow.eval().requires_grad_(False)
    return flow, {"epochs_run": len(history), "best_epoch": best_epoch, "history": history}


FLOW_CHUNK = 64  # rows per flow call; every call is padded to exactly this many rows


@torch.no_grad()
def to_latent(flow: zuko.flows.NSF, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Scaled features -> (latents z, log-likelihood log p(x) in nats), in padded chunks of FLOW_CHUNK rows.

    BLAS picks different kernels for different row counts (GEMV for one row), so the flow's float32 MLPs
    would give results that differ by ~1e-4 between batch sizes. One fixed shape makes every image's
    result independent of the batch it arrives in.
    """
    dist = flow()
    zs, lps = [], []
    for i in range(0, len(x), FLOW_CHUNK):
        c = x[i : i + FLOW_CHUNK]
        n = len(c)
        if n < FLOW_CHUNK:
            c = torch.cat([c, c.new_zeros((FLOW_CHUNK - n, *c.shape[1:]))])
        z, ladj = dist.transform.call_and_ladj(c)
        zs.append(z[:n])
        lps.append((dist.base.log_prob(z) + ladj)[:n])
    if not zs:
        return x.new_zeros((0, x.shape[1])), x.new_zeros((0,))
    return torch.cat(zs), torch.cat(lps)
