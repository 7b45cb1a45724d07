"""Degradation sweep, stability and report (rl2.sweep, rl2.report, `rl2 sweep`)."""

import csv
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from click.testing import CliRunner

from rl2 import fit_reference, score
from rl2.cli import cli
from rl2.demo import sample_dir
from rl2.errors import RL2Error
from rl2.latents import FlowConfig
from rl2.statistics import frechet_distance
from rl2.sweep import (
    METRICS,
    frechet_distance_lowrank,
    parse_levels,
    resolve_levels,
    smallest_stable_n,
    trend,
)

torch.set_num_threads(2)


# -- helpers on constructed examples ------------------------------------------------------------------


def test_trend_perfect_rise():
    t = trend([0, 1, 2, 4], [0.1, 0.2, 0.5, 0.9])
    assert t["rho"] == 1.0
    assert t["monotonic"] and t["non_monotonic_steps"] == []


def test_trend_flags_drops_and_ties():
    t = trend([0, 1, 2, 3, 4], [1.0, 2.0, 2.0, 5.0, 4.0])
    assert t["rho"] == pytest.approx(0.8720816, abs=1e-6)  # scipy.stats.spearmanr with the tie averaged
    assert not t["monotonic"]
    assert [(s["from"], s["to"]) for s in t["non_monotonic_steps"]] == [(1, 2), (3, 4)]
    assert trend([0, 1, 2], [3.0, 2.0, 1.0])["rho"] == -1.0


def test_trend_constant_and_missing_values():
    t = trend([0, 1, 2], [1.0, 1.0, 1.0])
    assert t["rho"] is None and len(t["non_monotonic_steps"]) == 2
    t = trend([0, 1, 2], [0.0, None, 1.0])
    assert t["rho"] == 1.0 and t["monotonic"]


def test_smallest_stable_n_needs_every_larger_n():
    sizes = [10, 25, 50, 100]
    assert smallest_stable_n(sizes, [0.04, 0.20, 0.03, 0.01], 0.05) == 50  # 10 is within, but 25 is not
    assert smallest_stable_n(sizes, [0.09, 0.08, 0.06, 0.00], 0.05) == 100
    assert smallest_stable_n(sizes, [0.09, 0.08, 0.06, 0.00], 0.10) == 10
    assert smallest_stable_n(sizes, [0.01, 0.01, 0.01, 0.2], 0.05) is None
    assert smallest_stable_n([100, 10, 50], [0.0, 0.2, 0.04], 0.05) == 50  # order of the input does not matter


@pytest.mark.parametrize("n", [12, 300])
def test_lowrank_frechet_matches_statistics(n):
    rng = np.random.default_rng(n)
    x = rng.normal(size=(n, 40)) @ rng.normal(size=(40, 40))
    y = rng.normal(0.3, 1.2, size=(90, 40))
    assert frechet_distance_lowrank(x, y) == pytest.approx(frechet_distance(x, y), rel=1e-6)


def test_levels_parsing_and_defaults():
    assert parse_levels("blur=0,1,2; noise=0.1") == {"blur": [0, 1, 2], "noise": [0.1]}
    plan = resolve_levels(["noise", "blur"], {"noise": [0.2, 0.1]})
    assert plan["noise"] == [0.0, 0.1, 0.2]  # 0 added, sorted
    assert plan["blur"][0] == 0 and len(plan["blur"]) >= 7
    assert len(resolve_levels()) == 7 and all(len(v) >= 7 for v in resolve_levels().values())
    with pytest.raises(RL2Error, match="unknown degradation"):
        resolve_levels(["sharpen"])
    with pytest.raises(RL2Error, match="out of range"):
        resolve_levels(["noise_blend"], {"noise_blend": [2]})
    with pytest.raises(RL2Error):
        parse_levels("blur")
    with pytest.raises(RL2Error, match="not among the families"):
        resolve_levels(["blur"], {"noise": [0.1]})


# -- end to end on the bundled sample -----------------------------------------------------------------

LEVELS = "blur=0,1,3;noise=0,0.2"


@pytest.fixture(scope="module")
def ref_file(tmp_path_factory):
    cfg = FlowConfig(pca_dims=16, transforms=2, hidden=32, max_epochs=15, patience=5)
    real = sorted((sample_dir() / "real").glob("*.png"))[::2]  # 60 images: enough for a small test reference
    ref, _ = fit_reference(real, config=cfg, workers=1, progress=False)
    path = tmp_path_factory.mktemp("ref") / "sample.rl2"
    ref.save(path)
    return path


@pytest.fixture(scope="module")
def swept(ref_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep") / "report"
    args = ["sweep", str(ref_file), str(sample_dir() / "heldout" / "1_*.png"), "-o", str(out), "--families",
            "blur,noise", "--levels", LEVELS, "--sizes", "5,10,100", "--repeats", "4", "--bootstrap", "20", "--workers", "1", "-q"]
    res = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return out, res.output


def test_sweep_writes_every_output(swept):
    out, printed = swept
    for name in ("results.json", "sweep.csv", "trends.csv", "stability.csv", "stability_smallest_n.csv",
                 "sweep_rl2.png", "sweep_fd.png", "sweep_kid.png", "stability_clean.png", "stability_blur_1.png",
                 "report.html"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert (out / "sweep_rl2.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "report.html" in printed and "blur" in printed
    assert not list(out.glob(".*.tmp"))  # atomic writes left nothing behind


def test_results_json_content(swept):
    r = json.loads((swept[0] / "results.json").read_text())
    sw = r["sweep"]
    assert sw["n_images"] == 20 and set(sw["families"]) == {"blur", "noise"}
    assert sw["families"]["blur"]["levels"] == [0, 1, 3]
    row = sw["families"]["blur"]["rows"][0]
    assert {"level", "rl2", "rl2_unbiased", "ci95", "fd", "kid", "kid_std"} <= set(row)
    assert len(row["ci95"]) == 2
    # Level 0 is shared: the same numbers in every family.
    assert sw["families"]["noise"]["rows"][0] == row
    for fam in sw["families"].values():
        assert set(fam["trend"]) == set(METRICS)
        assert {"rho", "p", "monotonic", "non_monotonic_steps"} <= set(fam["trend"]["rl2"])
    # Heavy blur and noise are far from real tissue: RL2 must rise.
    assert sw["families"]["blur"]["trend"]["rl2"]["rho"] == 1.0
    assert sw["families"]["noise"]["rows"][1]["rl2"] > row["rl2"]
    assert "not inception" in sw["baselines"]["feature_source"].lower()

    st = r["stability"]
    assert st["headline"] == "blur 1" and set(st["conditions"]) == {"clean", "blur 1"}
    cond = st["conditions"]["blur 1"]
    assert cond["sizes"] == [5, 10, 20]  # 100 > 20 images is dropped; all images is added
    assert set(cond["smallest_n"]) == set(METRICS) and set(cond["smallest_n"]["rl2"]) == {"5%", "10%"}
    full = [x for x in cond["rows"] if x["n"] == 20]
    assert all(x["rel_dev_max"] == 0 and x["draws"] == 1 for x in full)
    # The stability set at all images is the sweep's blur-1 level.
    blur1 = sw["families"]["blur"]["rows"][1]
    assert cond["value_all"]["rl2"] == pytest.approx(blur1["rl2"])
    assert cond["value_all"]["fd"] == pytest.approx(blur1["fd"])


def test_csv_tables(swept):
    rows = list(csv.DictReader((swept[0] / "sweep.csv").open()))
    assert len(rows) == 5 and rows[0]["family"] == "blur"
    trends = list(csv.DictReader((swept[0] / "trends.csv").open()))
    assert len(trends) == 2 * len(METRICS) and "spearman_rho" in trends[0]
    small = list(csv.DictReader((swept[0] / "stability_smallest_n.csv").open()))
    assert {s["metric"] for s in small} == set(METRICS)


def test_report_html_is_self_contained(swept):
    text = (swept[0] / "report.html").read_text()
    assert not re.search(r"(https?|file)://", text)
    srcs = re.findall(r"""src=['"]([^'"]*)['"]""", text)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert not re.search(r"<(link|script)\b", text)
    # Thumbnail strip: one image per level of each family, plus 3 sweep plots and 2 stability plots.
    assert len(srcs) == 5 + 3 + 2
    assert "not Inception" in text


@pytest.mark.skipif(not shutil.which("chromium"), reason="needs Debian's chromium (apt-get install chromium)")
def test_report_renders_in_headless_chromium(swept, tmp_path):
    png = tmp_path / "report.png"
    script = Path(__file__).resolve().parents[1] / "scripts" / "screenshot_report.sh"
    subprocess.run(["bash", str(script), str(swept[0] / "report.html"), str(png), "1200x2400"], check=True, timeout=120)
    shot = np.asarray(Image.open(png).convert("RGB"))
    assert shot.shape[:2] == (2400, 1200)
    # A rendered page, not a blank one: plots and thumbnails put many colours on it.
    assert len(np.unique(shot.reshape(-1, 3)[::7], axis=0)) > 200


def test_sweep_level0_matches_score(swept, ref_file):
    """The sweep's RL2 at level 0 is what `score` reports for the same images (same seed and bootstrap)."""
    from rl2 import Reference

    row = json.loads((swept[0] / "results.json").read_text())["sweep"]["families"]["blur"]["rows"][0]
    s = score(Reference.load(ref_file), str(sample_dir() / "heldout" / "1_*.png"), bootstrap=20, workers=0,
              progress=False)
    assert row["rl2"] == pytest.approx(s.rl2, rel=1e-4)
    assert row["rl2_unbiased"] == pytest.approx(s.rl2_unbiased, rel=1e-3)
    assert row["ci95"] == pytest.approx(s.ci95, rel=1e-3)


def test_sweep_degrades_like_rl2_degrade(swept, ref_file, tmp_path):
    """A sweep level equals `rl2 degrade` (image i: seed + i) followed by `rl2 score`."""
    from rl2 import Reference
    from rl2.degrade import degrade_folder

    row = json.loads((swept[0] / "results.json").read_text())["sweep"]["families"]["blur"]["rows"][1]
    assert row["level"] == 1
    degrade_folder(str(sample_dir() / "heldout" / "1_*.png"), tmp_path, "blur", 1, seed=0)
    s = score(Reference.load(ref_file), tmp_path, bootstrap=20, workers=0, progress=False)
    assert row["rl2"] == pytest.approx(s.rl2, rel=1e-4)
    assert row["ci95"] == pytest.approx(s.ci95, rel=1e-3)


def test_existing_report_needs_force(swept, ref_file):
    args = ["sweep", str(ref_file), str(sample_dir() / "heldout"), "-o", str(swept[0]), "--families", "blur", "-q"]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code != 0 and "--force" in str(res.exception)


def test_bad_levels_fail_before_work(ref_file, tmp_path):
    res = CliRunner().invoke(cli, ["sweep", str(ref_file), str(sample_dir() / "heldout"), "-o", str(tmp_path / "o"),
                                   "--levels", "blur=0,-1"])
    assert res.exit_code != 0 and "out of range" in str(res.exception)
    assert not (tmp_path / "o").exists()
