"""Second new-user break test: each case here once failed (traceback, lost file or silent drop)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from _rl2_core_helpers import assert_one_line_error, default_backbone, fitted_reference, heldout, load_reference, run_cli
from rl2 import RL2Metric, score
from rl2.degrade import apply
from rl2.errors import RL2Error, WeightsError
from rl2.images import collect_images
from rl2.qc import expand_slides
from rl2.sweep import parse_levels


def _copy(src, dst):
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(src.read_bytes())
    return dst


# -- inputs ----------------------------------------------------------------------------------------------


def test_linked_folders_are_searched_and_broken_links_reported(tmp_path):
    real = tmp_path / "elsewhere"
    for p in heldout(3):
        _copy(p, real / p.name)
    d = tmp_path / "in"
    _copy(heldout(1)[0], d / "sub" / "a.png")
    (d / "linked").symlink_to(real, target_is_directory=True)
    (d / "loop").symlink_to(d, target_is_directory=True)  # must not recurse forever
    (d / "broken.png").symlink_to(tmp_path / "gone.png")
    s = collect_images(d)
    names = sorted(p.name for p in s.paths)
    assert names == sorted(["a.png", "broken.png", *(p.name for p in heldout(3))])
    res = score(load_reference(), d, bootstrap=0, progress=False, workers=0)
    assert res.n_images == 4 and res.n_skipped == 1 and "broken.png" in res.skipped[0]["path"]


def test_list_file_with_a_byte_order_mark(tmp_path):
    img = _copy(heldout(1)[0], tmp_path / "a.png")
    lst = tmp_path / "list.txt"
    lst.write_bytes("\ufeffa.png\n".encode("utf-8"))
    assert collect_images(lst).paths == [img]


def test_glob_matching_folders_searches_them(tmp_path):
    _copy(heldout(1)[0], tmp_path / "x" / "a.png")
    assert [p.name for p in collect_images(str(tmp_path / "*")).paths] == ["a.png"]


def test_a_newline_in_a_file_name_keeps_the_message_on_one_line(tmp_path, capsys):
    bad = tmp_path / "evil\nrl2: fake line.png"
    bad.write_bytes(b"not an image")
    code, _, err = run_cli(capsys, "score", fitted_reference()[1], bad, "-q")
    assert code == 2
    assert_one_line_error(err, "evil\\nrl2: fake line.png")


def test_duplicate_inputs_are_scored_and_said(capsys):
    code, _, err = run_cli(capsys, "score", fitted_reference()[1], *heldout(2), *heldout(2), "-q", "--bootstrap", "0")
    assert code == 0 and "2 image paths were given more than once" in err


# -- options -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cmd", ["score", "fit", "sweep"])
@pytest.mark.parametrize("seed", ["-1", str(2**32), "99999999999999999999"])
def test_seeds_are_checked_before_any_work(cmd, seed, tmp_path, capsys):
    ref = fitted_reference()[1]
    args = {"score": ["score", ref, *heldout(2)],
            "fit": ["fit", *heldout(2), "-o", tmp_path / "r.rl2"],
            "sweep": ["sweep", ref, *heldout(2), "-o", tmp_path / "sw"]}[cmd]
    code, out, err = run_cli(capsys, *args, "--seed", seed, "-q")
    assert code == 2 and "--seed" in err and "internal error" not in err and "Traceback" not in err


@pytest.mark.parametrize("mpp", ["inf", "nan", "0"])
def test_fit_mpp_must_be_finite_and_positive(mpp, tmp_path, capsys):
    code, _, err = run_cli(capsys, "fit", *heldout(2), "-o", tmp_path / "r.rl2", "--mpp", mpp, "-q")
    assert code == 2 and "--mpp" in err


def test_info_json_is_strict_json(capsys):
    code, out, _ = run_cli(capsys, "info", fitted_reference()[1], "--json")
    assert code == 0
    json.loads(out, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))


@pytest.mark.parametrize("text", ["blur=1;blur=2", "blur=1,,2"])
def test_levels_given_twice_or_empty_are_refused(text):
    with pytest.raises(RL2Error, match="--levels"):
        parse_levels(text)


@pytest.mark.parametrize("kind, level", [("noise", float("inf")), ("blur", float("nan")), ("blur", 1e9)])
def test_degradation_levels_must_be_finite_and_sane(kind, level):
    with pytest.raises(RL2Error, match="out of range"):
        apply(np.zeros((16, 16, 3), np.uint8), kind, level)


@pytest.mark.parametrize("kw", [dict(bootstrap=-1), dict(bootstrap=5), dict(batch_size=0), dict(seed=-2)])
def test_score_api_checks_its_options(kw):
    with pytest.raises(RL2Error):
        score(load_reference(), heldout(2), progress=False, **kw)


def test_a_file_that_is_not_weights_gets_no_advice_to_unpickle(tmp_path):
    from rl2.backbones import load_state_dict_file

    f = tmp_path / "w.pth"
    f.write_bytes(heldout(1)[0].read_bytes())
    with pytest.raises(WeightsError) as e:
        load_state_dict_file(f)
    assert str(f) in str(e.value) and "weights_only" not in str(e.value)


# -- the Python API --------------------------------------------------------------------------------------


def test_reference_may_be_given_by_path():
    path = fitted_reference()[1]
    a = score(str(path), heldout(3), bootstrap=0, progress=False, backbone=default_backbone())
    m = RL2Metric(str(path), device="cpu", backbone=default_backbone())
    assert a.n_images == 3 and m.reference.fingerprint == a.reference["fingerprint"]


def test_metric_refuses_images_too_small_to_score():
    m = RL2Metric(load_reference(), device="cpu", backbone=default_backbone())
    with pytest.raises(ValueError, match="16 px"):
        m.update(torch.zeros(2, 3, 1, 1))


# -- outputs never land on inputs; reruns leave no stale files -------------------------------------


def test_sweep_output_may_not_be_inside_an_input_folder(tmp_path, capsys):
    d = tmp_path / "imgs"
    for p in heldout(3):
        _copy(p, d / p.name)
    for out in (d, d / "report"):
        code, _, err = run_cli(capsys, "sweep", fitted_reference()[1], d, "-o", out, "-q")
        assert code == 2 and "input folder" in err and sorted(os.listdir(d)) == sorted(p.name for p in heldout(3))


def test_sweep_force_without_stability_removes_the_old_stability_files(tmp_path, capsys):
    out = tmp_path / "sw"
    common = ["sweep", fitted_reference()[1], *heldout(6), "-o", out, "--families", "blur", "--levels", "blur=0,2",
              "--bootstrap", "0", "-q", "--workers", "0"]
    code, _, err = run_cli(capsys, *common, "--sizes", "3", "--repeats", "2")
    assert code == 0, err
    assert list(out.glob("stability*"))
    code, _, err = run_cli(capsys, *common, "--no-stability", "--force")
    assert code == 0, err
    assert not list(out.glob("stability*")) and json.loads((out / "results.json").read_text())["stability"] is None


def test_qc_finds_slides_like_images(tmp_path):
    a = _copy(heldout(1)[0], tmp_path / "slides" / "deep" / "a.png")
    (tmp_path / "slides" / "notes.md").write_text("not a slide")
    lst = tmp_path / "slides.txt"
    lst.write_text("slides/deep/a.png\n")
    assert expand_slides([tmp_path / "slides"]) == [a]
    assert expand_slides([str(tmp_path / "slides" / "*" / "*.png")]) == [a]
    assert expand_slides([lst]) == [a]


def test_qc_output_may_not_be_the_slide_folder(tmp_path, capsys):
    slides = tmp_path / "slides"
    _copy(heldout(1)[0], slides / "a.png")
    code, _, err = run_cli(capsys, "qc", slides, "--ref", fitted_reference()[1], "-o", slides, "--mpp", "1", "-q",
                           "--target-mpp", "1")
    assert code == 2 and "input" in err and os.listdir(slides) == ["a.png"]


def test_qc_index_keeps_slides_of_earlier_runs(tmp_path, capsys):
    canvas = np.full((192, 192, 3), 240, np.uint8)
    canvas[:96, :96] = np.asarray(Image.open(heldout(1)[0]).convert("RGB"))
    for name in ("first", "second"):
        Image.fromarray(canvas).save(tmp_path / f"{name}.png")
    ref = fitted_reference()[1]
    common = ["--ref", ref, "-o", tmp_path / "qc", "--mpp", "1", "--target-mpp", "1", "--tile-px", "96", "-q",
              "--workers", "0", "--save-tiles", "none"]
    assert run_cli(capsys, "qc", tmp_path / "first.png", *common)[0] == 0
    assert run_cli(capsys, "qc", tmp_path / "second.png", *common)[0] == 0
    index = (tmp_path / "qc" / "index.html").read_text()
    assert "second" in index and "first" in index and "earlier run" in index
    assert oct((tmp_path / "qc" / "first").stat().st_mode & 0o777) == oct(0o777 & ~_umask())


def _umask():
    from rl2.files import umask

    return umask()


@pytest.mark.parametrize("sig, code, workers", [(signal.SIGTERM, 143, 0), (signal.SIGHUP, 129, 2)])
def test_kill_and_hangup_clean_up_like_ctrl_c(sig, code, workers, tmp_path):
    """`kill` or a closed terminal during a qc run leaves no partial folder and says so in one line."""
    big = np.tile(np.asarray(Image.open(heldout(1)[0]).convert("RGB")), (12, 12, 1))
    Image.fromarray(big).save(tmp_path / "slide.png")
    cmd = [sys.executable, "-c", "from rl2._entry import main; main()", "qc", str(tmp_path / "slide.png"),
           "--ref", str(fitted_reference()[1]), "-o", str(tmp_path / "qc"), "--mpp", "1", "--target-mpp", "1",
           "--tile-px", "96", "--stride-px", "12", "--workers", str(workers), "--batch-size", "1", "-q"]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not list((tmp_path / "qc").glob(".slide.partial-*")):
        time.sleep(0.2)
    assert list((tmp_path / "qc").glob(".slide.partial-*")), "the run never started"
    p.send_signal(sig)
    _, err = p.communicate(timeout=60)
    assert p.returncode == code and err.strip().splitlines()[-1] == "rl2: terminated", err
    assert not list((tmp_path / "qc").glob(".*"))


# -- third round -------------------------------------------------------------------------------------------


def test_a_fifo_named_png_is_skipped_not_waited_on(tmp_path):
    d = tmp_path / "in"
    _copy(heldout(1)[0], d / "a.png")
    os.mkfifo(d / "pipe.png")
    res = score(load_reference(), d, bootstrap=0, progress=False, workers=2)
    assert res.n_images == 1 and res.n_skipped == 1 and "not a regular file" in res.skipped[0]["reason"]


def _rl2(*args):
    """Run the console script in a subprocess; (exit code, stdout bytes, stderr bytes)."""
    p = subprocess.run([sys.executable, "-c", "from rl2._entry import main; main()", *map(str, args)],
                       capture_output=True, timeout=300)
    return p.returncode, p.stdout, p.stderr


def test_file_names_that_are_not_utf8_survive_csv_and_html(tmp_path):
    d = tmp_path / "in"
    _copy(heldout(1)[0], d / "a.png")
    _copy(heldout(2)[1], d / os.fsdecode(b"caf\xe9.png"))
    csv_path = tmp_path / "s.csv"
    code, out, err = _rl2("score", fitted_reference()[1], d, "--per-image", csv_path, "-q", "--bootstrap", "0")
    assert code == 0, err
    assert b"caf\xe9.png" in csv_path.read_bytes()
    canvas = np.full((192, 192, 3), 240, np.uint8)
    canvas[:96, :96] = np.asarray(Image.open(heldout(1)[0]).convert("RGB"))
    slide = tmp_path / "slides" / os.fsdecode(b"sl\xe9.png")
    slide.parent.mkdir()
    Image.fromarray(canvas).save(slide)
    code, out, err = _rl2("qc", slide, "--ref", fitted_reference()[1], "-o", tmp_path / "qc", "--mpp", "1",
                          "--target-mpp", "1", "--tile-px", "96", "-q", "--workers", "0", "--save-tiles", "none")
    assert code == 0, err
    assert out.startswith(b"sl\xe9: ") and b"sl\xe9" in (tmp_path / "qc" / "index.html").read_bytes()


@pytest.mark.parametrize("tensor", [torch.zeros(2, 3, 32, 32, dtype=torch.int64), torch.zeros(2, 3, 32, 32, dtype=torch.bool)])
def test_metric_refuses_integer_tensors_other_than_uint8(tensor):
    m = RL2Metric(load_reference(), device="cpu", backbone=default_backbone())
    with pytest.raises(ValueError, match="uint8"):
        m.update(tensor)


def test_metric_refuses_numpy_arrays_clearly():
    m = RL2Metric(load_reference(), device="cpu", backbone=default_backbone())
    with pytest.raises(TypeError, match="torch.Tensor"):
        m.update(np.zeros((2, 3, 32, 32), np.uint8))


def test_per_image_may_not_overwrite_the_weights_or_a_list_file(tmp_path, capsys):
    img = _copy(heldout(1)[0], tmp_path / "a.png")
    lst = tmp_path / "list.txt"
    lst.write_text("a.png\n")
    before = lst.read_text()
    code, _, err = run_cli(capsys, "score", fitted_reference()[1], lst, "--per-image", lst, "--force", "-q")
    assert code == 2 and "would overwrite the input" in err and lst.read_text() == before
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"the user's weights")
    with pytest.raises(RL2Error, match="would overwrite"):
        score(load_reference(), img, per_image=weights, weights=str(weights), progress=False)
    assert weights.read_bytes() == b"the user's weights"


def test_a_slide_smaller_than_one_tile_fails_and_is_reported(tmp_path, capsys):
    small = tmp_path / "small.png"
    _copy(heldout(1)[0], small)
    code, _, err = run_cli(capsys, "qc", small, "--ref", fitted_reference()[1], "-o", tmp_path / "qc", "--mpp", "1",
                           "--target-mpp", "1", "--tile-px", "200", "-q", "--workers", "0")
    assert code == 2 and "smaller than one tile" in err


def test_duplicate_levels_are_refused():
    with pytest.raises(RL2Error, match="twice"):
        parse_levels("blur=0.5,0.5")


def test_sweep_force_keeps_files_the_user_put_there(tmp_path, capsys):
    out = tmp_path / "sw"
    out.mkdir()
    (out / "stability_mine.png").write_bytes(b"mine")
    common = ["sweep", fitted_reference()[1], *heldout(6), "-o", out, "--families", "blur", "--levels", "blur=0,2",
              "--bootstrap", "0", "-q", "--workers", "0", "--no-stability"]
    assert run_cli(capsys, *common)[0] == 0
    assert run_cli(capsys, *common, "--force")[0] == 0
    assert (out / "stability_mine.png").read_bytes() == b"mine"


def test_fit_api_checks_data_mpp():
    from rl2.reference import fit_reference

    with pytest.raises(RL2Error, match="data_mpp"):
        fit_reference(heldout(30), data_mpp=float("inf"), workers=0, progress=False)
