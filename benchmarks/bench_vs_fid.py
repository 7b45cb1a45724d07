"""RL2 vs FID on CPU: images/s, parameter counts and peak memory of both pipelines on the same images.

RL2: `rl2.scores.score(reference, images)` end to end (decode, bicubic resize to 224, EfficientNet-Lite0,
PCA-whitening, flow, bootstrap); "features" is the part spent decoding, resizing and in the backbone.
FID: pytorch-fid as it computes it: ImagePathDataset + DataLoader (batch 50), `InceptionV3([3])` (the FID
Inception, 2048-d pool3; resizes to 299 bilinear inside the network), then mean/covariance and
`calculate_frechet_distance` against a second set's statistics; "features" is `get_activations`.

pytorch-fid needs torchvision, which rl2 never depends on, so this runs in a separate venv:

    python3 -m venv /tmp/tvvenv
    /tmp/tvvenv/bin/pip install torch==2.14.1 torchvision==0.29.1
    /tmp/tvvenv/bin/pip install pytorch-fid -e .          # from the repo root; must leave torch as it is
    /tmp/tvvenv/bin/python benchmarks/bench_vs_fid.py --ref /tmp/pcam_ref.rl2 --json /tmp/bench_vs_fid.json

Offline, the FID Inception weights (downloaded from GitHub) cannot be fetched: the network is built with
pytorch-fid's exact FID architecture and He-initialised random weights. Timing and memory do not depend on
the weights; the FID value printed is meaningless. Each (pipeline, repeat) runs in its own process, alternating
pipelines so both see the same machine load; model loading and one warm-up pass are not timed. Peak RSS is
the process's own high-water mark (VmHWM), which includes Python, torch and the model.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PCAM = ROOT.parent / "shared" / "data" / "pcam_subset"


def _paths(dirs: list[str], n: int, seed: int) -> list[str]:
    from rl2.images import collect_images

    paths = collect_images(dirs).paths
    paths = [str(paths[i]) for i in np.random.default_rng(seed).permutation(len(paths))]
    return (paths * (n // len(paths) + 1))[:n]  # repeat if the folders hold fewer than n


def _peak_mib() -> float:
    # Not getrusage's ru_maxrss: Linux carries it across fork+exec, so a child's would be at least the parent's
    # peak (fitting the reference here). VmHWM belongs to this process's own address space.
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # no /proc: KiB on Linux (bytes on macOS)


def run_rl2(args, paths, warm_paths) -> dict:
    import torch

    import rl2.scores as scores
    from rl2.reference import Reference

    ref = Reference.load(args.ref)
    bb = ref.backbone(device="cpu")
    loaded = _peak_mib()
    scores.score(ref, warm_paths, batch_size=args.rl2_batch, workers=args.workers, device="cpu", progress=False)

    # Time spent inside score()'s feature generator = decode + resize + backbone (decoding runs ahead in threads).
    feat_s, inner = [0.0], scores.iter_features

    def timed(*a, **k):
        it = inner(*a, **k)
        while True:
            t = time.perf_counter()
            fb = next(it, None)
            feat_s[0] += time.perf_counter() - t
            if fb is None:
                return
            yield fb

    scores.iter_features = timed
    t = time.perf_counter()
    res = scores.score(ref, paths, batch_size=args.rl2_batch, workers=args.workers, device="cpu", progress=False)
    total = time.perf_counter() - t
    n = lambda mods: sum(p.numel() for m in mods for p in m.parameters())  # noqa: E731
    return {
        "total_s": total, "features_s": feat_s[0], "n_images": res.n_images, "value": res.rl2,
        "params": {"backbone": n([bb]), "flow": n([ref.flow]),
                   "pca": sum(b.numel() for b in ref.scaler.buffers())},
        "rss_loaded_mib": loaded, "peak_rss_mib": _peak_mib(), "torch_threads": torch.get_num_threads(),
    }


def _fid_inception():
    """pytorch-fid's InceptionV3([3]) with random weights instead of the (unreachable) FID weight download."""
    from unittest import mock

    import torch
    import torchvision
    import pytorch_fid.inception as inc

    with mock.patch.object(inc, "load_state_dict_from_url", return_value=None), \
            mock.patch.object(torchvision.models.inception.Inception3, "load_state_dict"):
        model = inc.InceptionV3([3]).eval()
    # pytorch-fid skips torchvision's init (it always loads weights); the default init shrinks activations
    # ~1e8-fold by pool3. He init keeps them O(1), as trained weights do, so no denormal slowdowns.
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    return model


def run_fid(args, paths, warm_paths) -> dict:
    import torch
    from pytorch_fid import fid_score

    fid_score.tqdm = lambda x: x  # no progress bars
    model = _fid_inception()
    loaded = _peak_mib()
    get = lambda p: fid_score.get_activations(p, model, args.fid_batch, 2048, "cpu", args.fid_workers)  # noqa: E731
    warm = get(warm_paths)  # warm-up; its statistics are the second set's
    mu2, sigma2 = warm.mean(0), np.cov(warm, rowvar=False)

    t = time.perf_counter()
    act = get(paths)
    t_feat = time.perf_counter()
    mu1, sigma1 = act.mean(0), np.cov(act, rowvar=False)
    with contextlib.redirect_stdout(io.StringIO()) as said:
        value = fid_score.calculate_frechet_distance(mu1, sigma1, mu2, sigma2)
    total = time.perf_counter() - t
    return {
        "total_s": total, "features_s": t_feat - t, "n_images": len(act), "value": float(value),
        "sqrtm_retried_with_eps": "singular product" in said.getvalue(), "features_finite": bool(np.isfinite(act).all()),
        "params": {"inception": sum(p.numel() for p in model.parameters())},
        "rss_loaded_mib": loaded, "peak_rss_mib": _peak_mib(), "torch_threads": torch.get_num_threads(),
    }


def child(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    lists = json.loads(Path(args.lists).read_text())  # from the parent, so the FID process never imports rl2
    out = (run_rl2 if args.child == "rl2" else run_fid)(args, lists["timed"], lists["warm"])
    print(json.dumps(out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", nargs="+", default=[str(PCAM / "val"), str(PCAM / "test")])
    ap.add_argument("--n", type=int, default=256, help="images timed per run")
    ap.add_argument("--warm-images", nargs="+", default=[str(PCAM / "train")],
                    help="warm-up images (other than the timed ones); FID's second set of statistics")
    ap.add_argument("--n-warm", type=int, default=50)
    ap.add_argument("--ref", help="RL2 reference; default: fit one on the bundled sample (~30 s)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2, help="torch and BLAS threads, both pipelines")
    ap.add_argument("--workers", type=int, default=2, help="RL2 decode threads (its default)")
    ap.add_argument("--rl2-batch", type=int, default=64, help="RL2's default")
    ap.add_argument("--fid-batch", type=int, default=50, help="pytorch-fid's default")
    ap.add_argument("--fid-workers", type=int, default=0,
                    help="DataLoader worker processes; 0 decodes in the timed process, so its peak RSS counts it")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--child", choices=["rl2", "fid"], help=argparse.SUPPRESS)
    ap.add_argument("--lists", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)

    import torch

    from rl2.reference import Reference, fit_reference

    with tempfile.TemporaryDirectory() as tmp:
        # Children read a private copy, checked here so a bad or stale reference fails before any timing.
        ref = Reference.load(args.ref) if args.ref else fit_reference(ROOT / "src/rl2/data/sample/real", progress=False)[0]
        ref_label, args.ref = args.ref or "fitted on the bundled sample", str(Path(tmp) / "ref.rl2")
        ref.save(args.ref)
        sys.argv += ["--ref", args.ref]  # the last --ref wins in the children
        lists = Path(tmp) / "lists.json"
        lists.write_text(json.dumps({"timed": _paths(args.images, args.n, seed=0),
                                     "warm": _paths(args.warm_images, args.n_warm, seed=1)}))
        env = dict(os.environ, **{k: str(args.threads) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")})
        load_before = os.getloadavg()[0]
        runs = {"rl2": [], "fid": []}
        for r in range(args.repeats):
            for which in (("rl2", "fid") if r % 2 == 0 else ("fid", "rl2")):  # alternate, so drifts in load hit both
                cmd = [sys.executable, __file__, *sys.argv[1:], "--child", which, "--lists", str(lists)]
                p = subprocess.run(cmd, env=env, capture_output=True, text=True)
                if p.returncode:
                    sys.exit(f"{which} run failed:\n{p.stderr[-3000:]}")
                o = json.loads(p.stdout.strip().splitlines()[-1])
                runs[which].append(o)
                print(f"  {which} run {r + 1}: {o['n_images'] / o['total_s']:.2f} images/s end to end, "
                      f"{o['n_images'] / o['features_s']:.2f} features only, peak RSS {o['peak_rss_mib']:.0f} MiB", flush=True)

    med = lambda k, w: statistics.median(o[k] for o in runs[w])  # noqa: E731
    rows = {}
    for w in runs:
        n = runs[w][0]["n_images"]
        rows[w] = {"images_per_s": n / med("total_s", w), "features_images_per_s": n / med("features_s", w),
                   "params": sum(runs[w][0]["params"].values()), "params_detail": runs[w][0]["params"],
                   "seconds_beyond_features": med("total_s", w) - med("features_s", w),
                   "peak_rss_mib": med("peak_rss_mib", w), "rss_after_model_load_mib": med("rss_loaded_mib", w)}
    ratio = {k: rows["rl2"][k] / rows["fid"][k] for k in ("images_per_s", "features_images_per_s")}

    print(f"\n{runs['rl2'][0]['n_images']} images, torch {torch.__version__}, {args.threads} threads, CPU, "
          f"median of {args.repeats}; load average {load_before:.1f} -> {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"{'':28}{'RL2':>14}{'FID':>14}{'RL2/FID':>10}")
    for label, k, fmt in [("images/s, end to end", "images_per_s", "{:.2f}"),
                          ("images/s, features only", "features_images_per_s", "{:.2f}"),
                          ("s beyond features (*)", "seconds_beyond_features", "{:.1f}"),
                          ("parameters (M)", "params", "{:.2f}"),
                          ("peak RSS (MiB)", "peak_rss_mib", "{:.0f}"),
                          ("RSS after model load (MiB)", "rss_after_model_load_mib", "{:.0f}")]:
        a, b = rows["rl2"][k], rows["fid"][k]
        a, b = (a / 1e6, b / 1e6) if k == "params" else (a, b)
        print(f"{label:28}{fmt.format(a):>14}{fmt.format(b):>14}{a / b:>10.2f}")
    print("(*) RL2: whitening + flow + bootstrap; FID: mean/covariance + sqrtm of a 2048x2048 product (fixed cost)")
    print(f"RL2 params: {rows['rl2']['params_detail']}; FID: pytorch-fid InceptionV3([3]) with RANDOM weights "
          f"(no download offline), sqrtm retried with eps: {any(o['sqrtm_retried_with_eps'] for o in runs['fid'])}")
    print(f"RL2 reference: {ref_label} ({ref.moments.n} held-out latents, {ref.dims}-d)")
    print(f"decode: RL2 {args.workers} threads ahead of the network; FID DataLoader num_workers={args.fid_workers}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "config": {**{k: v for k, v in vars(args).items() if k not in ("child", "lists")}, "ref": ref_label},
            "torch": torch.__version__,
            "load_average_before_after": [load_before, os.getloadavg()[0]], "cpus": os.cpu_count(),
            "fid_weights": "random (He init), pytorch-fid's FID Inception architecture; FID value meaningless",
            "median": rows, "ratio_rl2_over_fid": ratio, "runs": runs,
        }, indent=1))


if __name__ == "__main__":
    main()
