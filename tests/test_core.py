"""The core: invariance to batching, small N, the reference file, streaming statistics, bias correction,
RL2Metric against score(), and the CLI's output contract."""

from __future__ import annotations

import csv
import json
import math
import os
import pickle
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from _rl2_core_helpers import (
    FINGERPRINT_AT_FIT,
    default_backbone,
    fitted_reference,
    heldout,
    load_reference,
    run_cli,
)
from rl2 import RL2Metric
from rl2 import scores as scores_mod
from rl2.errors import RL2Error
from rl2.features import RunLog, extract_features
from rl2.reference import Reference
from rl2.scores import score
from rl2.statistics import LatentStats, RefMoments, distance, poisson_weights, score_sets

REL = 1e-6


def close(a, b, rel=REL):
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(close(x, y, rel) for x, y in zip(a, b))
    return math.isclose(a, b, rel_tol=rel, abs_tol=1e-12)


@pytest.fixture(scope="module")
def ref_path():
    return fitted_reference()[1]


# -- batch size and worker invariance (acceptance) --------------------------------------------------


def test_score_invariant_to_batch_size_and_workers():
    paths = heldout(8)  # batch size 7 gives batches of 7 and 1
    ref = load_reference()
    results = {(bs, w): score(ref, paths, batch_size=bs, workers=w, bootstrap=100, progress=False)
               for bs, w in [(64, 2), (64, 0), (7, 2), (1, 0)]}
    base = results[(64, 2)]
    assert base.n_images == 8 and base.ci95 is not None and base.rl2_unbiased is not None
    for key, r in results.items():
        for field in ("rl2", "l2", "rl2_unbiased", "d2_unbiased", "ci95", "mean_image_score"):
            assert close(getattr(r, field), getattr(base, field)), (key, field, getattr(r, field), getattr(base, field))


def test_backbone_features_invariant_to_batch_size():
    bb = default_backbone()
    paths = heldout(4)
    feats = {bs: extract_features(bb, paths, RunLog(), batch_size=bs, workers=0, progress=False)[0]
             for bs in (1, 3, 4)}
    scale = np.abs(feats[4]).max()
    for bs in (1, 3):
        assert np.abs(feats[bs] - feats[4]).max() <= REL * scale, bs


def test_latents_invariant_to_batch_size():
    """The flow's float32 MLPs hit different BLAS kernels for different row counts (GEMV for one row):
    unchunked, one image alone differed from the same image in a batch by up to 3e-4."""
    ref = load_reference()
    gen = torch.Generator().manual_seed(0)
    real = torch.from_numpy(fitted_reference()[0].features)  # held-out real features
    noisy = real[:5] * (1 + 0.5 * torch.rand(real[:5].shape, generator=gen))  # off the real manifold too
    feats = torch.cat([real, noisy])
    z_all, nll_all = ref.latents_of(feats)
    for bs in (1, 7):
        parts = [ref.latents_of(feats[i:i + bs]) for i in range(0, len(feats), bs)]
        z = torch.cat([p[0] for p in parts])
        nll = torch.cat([p[1] for p in parts])
        assert (z - z_all).abs().max() <= REL * z_all.abs().max(), bs
        assert (nll - nll_all).abs().max() <= REL * nll_all.abs().max(), bs


# -- small N -------------------------------------------------------------------------------------


def test_one_image():
    r = score(load_reference(), heldout(1), progress=False)
    assert r.n_images == 1 and r.n_skipped == 0
    assert math.isfinite(r.rl2) and r.rl2 > 0
    assert r.ci95 is None and r.rl2_unbiased is None and r.d2_unbiased is None
    assert math.isclose(r.l2, r.rl2 * math.sqrt(load_reference().dims))


def test_two_images():
    r = score(load_reference(), heldout(2), progress=False)
    assert r.n_images == 2
    assert r.rl2_unbiased is not None and math.isfinite(r.rl2_unbiased)
    assert r.ci95 is not None and len(r.ci95) == 2 and 0 <= r.ci95[0] <= r.ci95[1]


def test_two_images_with_no_usable_bootstrap_replicate_give_no_interval():
    """With 2 images a Poisson replicate often has < 2 images; should none qualify, there is no interval."""
    ref = load_reference()
    z = np.random.default_rng(0).normal(size=(2, ref.dims))
    stats = LatentStats(ref.dims, replicates=20, seed=0)
    stats.update(z, [0, 1])
    stats.boot_n[:] = np.minimum(stats.boot_n, 1)  # as if every replicate had drawn fewer than 2 images
    out = score_sets(ref.moments, ref.latents, stats, seed=0)
    assert out["ci95"] is None and out["rl2_unbiased"] is not None


@pytest.mark.parametrize("kw", [dict(replicates=5), dict(replicates=-1), dict(seed=-1), dict(seed=2**32)])
def test_bootstrap_settings_are_checked(kw):
    with pytest.raises(RL2Error):
        LatentStats(4, **{"replicates": 20, "seed": 0, **kw})


# -- the reference file --------------------------------------------------------------------------


def test_save_load_round_trip_gives_identical_scores(tmp_path):
    fitted, _ = fitted_reference()
    path = fitted.save(tmp_path / "again.rl2")
    loaded = Reference.load(path)
    assert loaded.identity == fitted.identity and loaded.flow_config == fitted.flow_config
    assert np.array_equal(loaded.moments.mean, fitted.moments.mean) and loaded.moments.n == fitted.moments.n
    assert np.array_equal(loaded.latents, fitted.latents)
    for k, v in fitted.flow.state_dict().items():
        assert torch.equal(loaded.flow.state_dict()[k], v), k
    paths = heldout(6)
    a = score(fitted, paths, bootstrap=50, progress=False, backbone=default_backbone())
    b = score(loaded, paths, bootstrap=50, progress=False, backbone=default_backbone())
    assert a.to_dict() == b.to_dict()


def test_load_never_unpickles(monkeypatch, ref_path):
    def forbidden(*a, **k):
        raise AssertionError("unpickling while loading a reference")

    class NoUnpickler:
        def __init__(self, *a, **k):
            forbidden()

    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr(torch.serialization, "load", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(pickle, "Unpickler", NoUnpickler)
    with pytest.raises(AssertionError):  # the trap is armed
        pickle.loads(pickle.dumps(1))
    ref = Reference.load(ref_path)
    z, nll = ref.latents_of(torch.from_numpy(ref.features[:3]))
    assert z.shape == (3, ref.dims) and torch.isfinite(nll).all()


# -- streaming statistics ------------------------------------------------------------------------


def test_latent_stats_any_batch_split_matches_numpy():
    rng = np.random.default_rng(1)
    z = rng.normal(3.0, 2.0, size=(57, 6))
    for split_seed in range(4):
        cuts = np.sort(np.random.default_rng(split_seed).choice(np.arange(1, 57), size=split_seed * 3, replace=False))
        stats = LatentStats(6, replicates=0)
        for part, idx in zip(np.split(z, cuts), np.split(np.arange(57), cuts)):
            stats.update(part, idx)
        assert stats.n == 57
        np.testing.assert_allclose(stats.mean, z.mean(0), rtol=1e-12)
        np.testing.assert_allclose(stats.var, z.var(0, ddof=1), rtol=1e-10)


def test_bootstrap_sums_independent_of_split_and_order():
    rng = np.random.default_rng(2)
    z = rng.normal(size=(30, 4))
    whole = LatentStats(4, replicates=25, seed=7)
    whole.update(z, range(30))
    pieces = LatentStats(4, replicates=25, seed=7)
    for idx in ([20, 21, 22, 23, 24, 25, 26, 27, 28, 29], [5], list(range(6, 20)), [0, 1, 2, 3, 4]):
        pieces.update(z[idx], idx)  # batches out of order, odd sizes
    np.testing.assert_array_equal(pieces.boot_n, whole.boot_n)
    np.testing.assert_allclose(pieces.boot_sum, whole.boot_sum, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(pieces.boot_sumsq, whole.boot_sumsq, rtol=1e-12, atol=1e-12)
    other_seed = LatentStats(4, replicates=25, seed=8)
    other_seed.update(z, range(30))
    assert not np.array_equal(other_seed.boot_n, whole.boot_n)


def test_poisson_weights_depend_only_on_seed_and_index():
    all_w = poisson_weights(3, range(40), 50)
    assert all_w.shape == (40, 50)
    np.testing.assert_array_equal(poisson_weights(3, [17, 5, 39], 50), all_w[[17, 5, 39]])
    np.testing.assert_array_equal(poisson_weights(3, np.array([17]), 50), all_w[[17]])
    assert not np.array_equal(poisson_weights(4, range(40), 50), all_w)
    assert abs(all_w.mean() - 1.0) < 0.05  # Poisson(1)


# -- bias correction -----------------------------------------------------------------------------


def test_unbiased_distance_is_unbiased_plain_is_not():
    d, n_ref, n_set, draws = 8, 20, 5, 4000
    rng = np.random.default_rng(0)
    mu_ref = np.zeros(d)
    mu_set = np.full(d, 0.25)  # true squared distance 8 * 0.0625 = 0.5
    sd_ref, sd_set = 1.0, 1.5
    true_d2 = float((mu_ref - mu_set) @ (mu_ref - mu_set))
    plain, unbiased = [], []
    for _ in range(draws):
        a = rng.normal(mu_ref, sd_ref, size=(n_ref, d))
        b = rng.normal(mu_set, sd_set, size=(n_set, d))
        out = distance(a.mean(0), a.var(0, ddof=1), n_ref, b.mean(0), b.var(0, ddof=1), n_set)
        plain.append(out["l2"] ** 2)
        unbiased.append(out["d2_unbiased"])
        assert math.isclose(out["rl2"], math.sqrt(out["l2"] ** 2 / d))
        assert math.isclose(out["rl2_unbiased"], math.copysign(math.sqrt(abs(out["d2_unbiased"]) / d), out["d2_unbiased"]))
    unbiased, plain = np.array(unbiased), np.array(plain)
    se = unbiased.std() / math.sqrt(draws)
    assert abs(unbiased.mean() - true_d2) < 4 * se, (unbiased.mean(), true_d2, se)
    expected_plain = true_d2 + d * sd_ref**2 / n_ref + d * sd_set**2 / n_set  # 0.5 + 0.4 + 3.6
    assert abs(plain.mean() - expected_plain) < 4 * plain.std() / math.sqrt(draws)
    assert plain.mean() - true_d2 > 20 * se  # biased up, by far


def test_bootstrap_interval_covers_true_rl2_roughly():
    """score_sets' ci95 (of the true RL2) covers the truth in most of a few synthetic draws."""
    d, rng = 4, np.random.default_rng(5)
    ref_z = rng.normal(size=(200, d))
    ref = RefMoments(ref_z.mean(0), ref_z.var(0, ddof=1), 200)
    true_rl2 = 0.5
    hits = 0
    for k in range(20):
        z = rng.normal(true_rl2, 1.0, size=(60, d))
        stats = LatentStats(d, replicates=200, seed=k)
        stats.update(z, range(60))
        lo, hi = score_sets(ref, ref_z, stats, seed=k)["ci95"]
        hits += lo <= true_rl2 <= hi
    assert hits >= 16


# -- RL2Metric against score() ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def images_224(tmp_path_factory):
    """Held-out patches upsampled once to 224 px and saved as PNG, so score() does not resize them."""
    d = tmp_path_factory.mktemp("px224")
    arrays = []
    for i, p in enumerate(heldout(4)):
        img = Image.open(p).convert("RGB").resize((224, 224), Image.BICUBIC)
        img.save(d / f"{i:02d}.png")
        arrays.append(np.asarray(img))
    return d, np.stack(arrays)


def test_metric_matches_score_uint8_and_float(images_224):
    d, arrays = images_224
    ref = load_reference()
    want = score(ref, d, bootstrap=100, seed=3, progress=False)
    x = torch.from_numpy(arrays).permute(0, 3, 1, 2).contiguous()
    for images in (x, x.float() / 255.0):
        m = RL2Metric(load_reference(), device="cpu", backbone=default_backbone(), bootstrap=100, seed=3)
        m.update(images[:3])
        m.update(images[3:])
        got = m.compute()
        assert got["n_images"] == 4
        for key in ("rl2", "l2", "rl2_unbiased", "ci95"):
            assert close(got[key], getattr(want, key), rel=1e-3), (key, got[key], getattr(want, key))
    m.reset()
    with pytest.raises(ValueError):
        m.compute()


def test_metric_rejects_bad_tensors():
    m = RL2Metric(load_reference(), device="cpu", backbone=default_backbone())
    with pytest.raises(ValueError, match="N x 3 x H x W"):
        m.update(torch.zeros(2, 224, 224, 3, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        m.update(torch.full((1, 3, 224, 224), 255.0))


# -- the CLI -------------------------------------------------------------------------------------


from rl2.cli import cli as _cli  # noqa: E402


def test_core_commands_registered():
    assert {"fit", "score", "info", "degrade", "demo"} <= set(_cli.commands)


@pytest.mark.parametrize("cmd", [[]] + [[c] for c in sorted(_cli.commands)])
def test_help_exits_0(capsys, cmd):
    code, out, err = run_cli(capsys, *cmd, "--help")
    assert code == 0, err
    assert "Usage:" in out and err == ""


def test_cli_score_json(capsys, ref_path):
    code, out, err = run_cli(capsys, "score", ref_path, *heldout(3), "--json", "-q", "--workers", "0")
    assert code == 0, err
    assert err == ""
    res = json.loads(out)  # exactly one JSON object on stdout
    assert isinstance(res, dict)
    for key in ("rl2", "l2", "rl2_unbiased", "ci95", "n_images", "n_skipped", "reference"):
        assert key in res, key
    assert res["n_images"] == 3 and res["n_skipped"] == 0
    assert isinstance(res["rl2"], float) and isinstance(res["rl2_unbiased"], float)
    assert isinstance(res["ci95"], list) and len(res["ci95"]) == 2 and all(isinstance(v, float) for v in res["ci95"])
    assert res["reference"]["backbone"] == "efficientnet-lite0"
    assert res["reference"]["weights_sha256"] == default_backbone().identity.weights_sha256
    assert len(res["reference"]["weights_sha256"]) == 64
    api = score(load_reference(), heldout(3), progress=False)
    assert close(res["rl2"], api.rl2) and close(res["ci95"], api.ci95)


def test_cli_score_json_one_image_has_null_interval(capsys, ref_path):
    code, out, err = run_cli(capsys, "score", ref_path, heldout(1)[0], "--json", "-q")
    assert code == 0, err
    res = json.loads(out)
    assert res["ci95"] is None and res["rl2_unbiased"] is None and res["n_images"] == 1


def test_cli_per_image_csv_one_row_per_input(capsys, ref_path, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    inputs = [*heldout(3), bad, heldout(4)[3]]
    out_csv = tmp_path / "sub" / "per_image.csv"
    code, out, err = run_cli(capsys, "score", ref_path, *inputs, "--per-image", out_csv, "-q",
                             "--bootstrap", "0", "--batch-size", "2")
    assert code == 1  # finished, one input failed
    assert f"rl2: skipped {bad}: " in err
    with open(out_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["index"]) for r in rows] == list(range(len(inputs)))
    assert [r["path"] for r in rows] == [str(p) for p in inputs]
    assert [r["status"] for r in rows] == ["ok", "ok", "ok", rows[3]["status"], "ok"]
    assert rows[3]["status"].startswith("skipped: ") and str(bad) not in rows[3]["status"] and rows[3]["score"] == ""
    assert all(float(r["score"]) > 0 and r["nll_per_dim"] for r in rows if r["status"] == "ok")
    mode = stat.S_IMODE(out_csv.stat().st_mode)
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask, oct(mode)  # not mkstemp's 0600
    assert not [p for p in out_csv.parent.iterdir() if p.name != out_csv.name]  # no temporary left


def test_cli_per_image_csv_is_atomic(capsys, ref_path, tmp_path, monkeypatch):
    """A run that fails half-way leaves an existing CSV untouched and no temporary file behind."""
    out_csv = tmp_path / "per_image.csv"
    out_csv.write_text("previous results\n")
    calls = {"n": 0}
    real = Reference.latents_of

    def fail_on_second_batch(self, feats):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(self, feats)

    monkeypatch.setattr(Reference, "latents_of", fail_on_second_batch)
    code, out, err = run_cli(capsys, "score", ref_path, *heldout(4), "--per-image", out_csv, "-q", "--force",
                             "--batch-size", "2", "--workers", "0")
    assert code == 130 and err.strip() == "rl2: interrupted"
    assert calls["n"] == 2
    assert out_csv.read_text() == "previous results\n"
    assert [p.name for p in tmp_path.iterdir()] == ["per_image.csv"]


def test_cli_per_image_csv_untouched_when_strict_run_fails(capsys, ref_path, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    out_csv = tmp_path / "per_image.csv"
    out_csv.write_text("previous results\n")
    code, out, err = run_cli(capsys, "score", ref_path, *heldout(2), bad, "--per-image", out_csv, "-q",
                             "--strict", "--force", "--batch-size", "2", "--workers", "0")
    assert code == 2 and out == ""
    assert err.strip().splitlines() == [f"rl2: {bad}: cannot read image (not an image file, or an unsupported format)"]
    assert out_csv.read_text() == "previous results\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.png", "per_image.csv"]


def test_cli_per_image_never_overwrites_without_force_nor_inputs(capsys, ref_path, tmp_path):
    out_csv = tmp_path / "per_image.csv"
    out_csv.write_text("previous results\n")
    code, _, err = run_cli(capsys, "score", ref_path, *heldout(2), "--per-image", out_csv, "-q")
    assert code == 2 and "already exists; pass --force" in err and out_csv.read_text() == "previous results\n"
    image = tmp_path / "input.png"
    image.write_bytes(heldout(1)[0].read_bytes())
    before_ref, before_img = Path(ref_path).read_bytes(), image.read_bytes()
    for target in (ref_path, image):
        code, _, err = run_cli(capsys, "score", ref_path, image, "--per-image", target, "--force", "-q")
        assert code == 2 and "would overwrite the input" in err and str(target) in err, err
    assert Path(ref_path).read_bytes() == before_ref and image.read_bytes() == before_img


def test_cli_fit_refuses_to_overwrite_an_input_image(capsys, tmp_path):
    image = tmp_path / "real" / "a.png"
    image.parent.mkdir()
    image.write_bytes(heldout(1)[0].read_bytes())
    code, _, err = run_cli(capsys, "fit", image.parent, "-o", image, "--force", "-q")
    assert code == 2 and "would overwrite the input" in err
    assert image.read_bytes() == heldout(1)[0].read_bytes()


def test_fingerprint_exists_before_saving_and_survives_it():
    fitted, path = fitted_reference()
    assert len(FINGERPRINT_AT_FIT[0]) == 16
    assert FINGERPRINT_AT_FIT[0] == fitted.fingerprint == Reference.load(path).fingerprint


def test_score_result_reference_summary(ref_path):
    r = score(load_reference(), heldout(2), bootstrap=0, progress=False)
    s = r.reference
    assert s["backbone"] == "efficientnet-lite0" and s["readout"] == "gap"
    assert s["latent_dims"] == load_reference().dims and s["fingerprint"] == load_reference().fingerprint
    assert r.ci95 is None  # bootstrap=0: no interval


def test_cli_info(capsys, ref_path):
    code, out, err = run_cli(capsys, "info", ref_path, "--json")
    assert code == 0, err
    info = json.loads(out)
    assert info["summary"]["backbone"] == "efficientnet-lite0"
    assert info["meta"]["format"] == "rl2-reference"
