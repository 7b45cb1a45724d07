"""Options and outputs that must fail early and clearly: found by trying to break the CLI as a new user."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from _rl2_core_helpers import assert_one_line_error, default_backbone, fitted_reference, heldout, load_reference, run_cli
from rl2 import RL2Metric
from rl2.degrade import degrade_folder
from rl2.errors import RL2Error
from rl2.images import collect_images


def _img(path, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(path)
    return path


# -- rl2 degrade never overwrites its inputs or its own outputs ---------------------------------------


def test_degrade_refuses_its_source_folder(tmp_path):
    src = tmp_path / "src"
    a = _img(src / "a.png")
    before = a.read_bytes()
    for dst in (src, src / "sub"):
        with pytest.raises(RL2Error, match="inside it"):
            degrade_folder(src, dst, "blur", 1)
    assert a.read_bytes() == before and not (src / "sub").exists()


def test_degrade_keeps_inputs_whose_png_names_clash(tmp_path):
    src = tmp_path / "src"
    _img(src / "x.png", 1)
    _img(src / "x.bmp", 2)
    _img(src / "y.tif", 3)
    n, skipped = degrade_folder(src, tmp_path / "out", "blur", 1)
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert n == 3 and not skipped and names == ["x.bmp.png", "x.png.png", "y.png"]


def test_degrade_needs_force_to_overwrite(tmp_path, capsys):
    src = tmp_path / "src"
    _img(src / "a.png")
    degrade_folder(src, tmp_path / "out", "blur", 1)
    code, _, err = run_cli(capsys, "degrade", src, tmp_path / "out", "--kind", "blur", "--level", "2", "-q")
    assert code == 2
    assert_one_line_error(err, "already exists", "--force")
    code, out, _ = run_cli(capsys, "degrade", src, tmp_path / "out", "--kind", "blur", "--level", "2", "-q", "--force")
    assert code == 0 and "wrote 1 images" in out


# -- option values are checked before any work ---------------------------------------------------------


@pytest.mark.parametrize("args, words", [
    (["--batch-size", "0"], ["--batch-size"]),
    (["--workers", "-1"], ["--workers"]),
    (["--bootstrap", "-3"], ["--bootstrap"]),
    (["--bootstrap", "1"], ["--bootstrap", "at least"]),
    (["--device", "banana"], ["banana"]),
    (["--device", "mps"], ["mps"]),
])
def test_score_rejects_bad_option_values(args, words, capsys):
    code, out, err = run_cli(capsys, "score", fitted_reference()[1], *heldout(2), "-q", *args)
    assert code == 2 and out == ""
    assert "Traceback" not in err and "internal error" not in err
    for w in words:
        assert w in err


@pytest.mark.parametrize("args", [["--dims", "0"], ["--holdout", "1"], ["--holdout", "0"], ["--mpp", "-1"]])
def test_fit_rejects_bad_option_values(args, tmp_path, capsys):
    code, out, err = run_cli(capsys, "fit", *heldout(2), "-o", tmp_path / "r.rl2", "-q", *args)
    assert code == 2 and not (tmp_path / "r.rl2").exists()
    assert "Traceback" not in err and "internal error" not in err and args[0] in err


def test_fit_checks_its_output_before_extracting_features(tmp_path, capsys, monkeypatch):
    import rl2.reference

    monkeypatch.setattr(rl2.reference, "fit_reference", lambda *a, **k: pytest.fail("fit ran before the check"))
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should be")
    code, _, err = run_cli(capsys, "fit", *heldout(2), "-o", blocker / "r.rl2", "-q")
    assert code == 2
    assert_one_line_error(err, str(blocker / "r.rl2"), "cannot write here")


def test_fit_records_the_latent_dimension_it_really_used(tmp_path):
    from rl2.latents import FlowConfig
    from rl2.reference import Reference, fit_reference

    ref, _ = fit_reference(heldout(30), config=FlowConfig(pca_dims=500, max_epochs=2), workers=0, progress=False)
    assert ref.dims == ref.flow_config.pca_dims < 500
    assert any("latent dimension lowered" in w for w in ref.meta["warnings"])
    assert any("training images" in w for w in ref.meta["warnings"])
    assert Reference.load(ref.save(tmp_path / "r.rl2")).flow_config.pca_dims == ref.dims


def test_fit_api_rejects_a_split_that_leaves_too_few_images():
    from rl2.reference import fit_reference

    with pytest.raises(RL2Error, match="at least"):
        fit_reference(heldout(30), holdout=0.9, workers=0, progress=False)


# -- inputs: nothing dropped without a word --------------------------------------------------------------


def test_glob_counts_non_image_matches_as_ignored(tmp_path):
    _img(tmp_path / "a.png")
    (tmp_path / "notes.md").write_text("not an image")
    s = collect_images(str(tmp_path / "*"))
    assert [p.name for p in s.paths] == ["a.png"] and [p.name for p in s.ignored] == ["notes.md"]


def test_metric_rejects_nan_images():
    m = RL2Metric(load_reference(), device="cpu", backbone=default_backbone())
    with pytest.raises(ValueError, match="finite"):
        m.update(torch.full((2, 3, 32, 32), float("nan")))
    assert m.n == 0


def test_sweep_exits_1_when_inputs_were_skipped(tmp_path, capsys):
    d = tmp_path / "imgs"
    for i, p in enumerate(heldout(4)):
        (d / p.name).parent.mkdir(parents=True, exist_ok=True)
        (d / p.name).write_bytes(p.read_bytes())
    (d / "broken.png").write_bytes(b"not a png")
    code, out, err = run_cli(capsys, "sweep", fitted_reference()[1], d, "-o", tmp_path / "sw", "--families", "blur",
                             "--levels", "blur=0,1", "--no-stability", "--bootstrap", "0", "-q", "--json")
    assert code == 1 and "broken.png" in err
    assert json.loads(out)["sweep"]["n_images"] == 4


def test_sweep_rejects_an_empty_family_list(tmp_path, capsys):
    code, _, err = run_cli(capsys, "sweep", fitted_reference()[1], *heldout(2), "-o", tmp_path / "sw", "--families", "")
    assert code == 2 and "--families" in err


def test_ctrl_c_during_start_up_is_one_line():
    """The console script catches KeyboardInterrupt raised while the CLI's heavy modules import."""
    code = ("import builtins, sys\n"
            "real = builtins.__import__\n"
            "def imp(name, *a, **k):\n"
            "    if name == 'click': raise KeyboardInterrupt\n"
            "    return real(name, *a, **k)\n"
            "builtins.__import__ = imp\n"
            "from rl2._entry import main\n"
            "main()\n")
    p = subprocess.run([sys.executable, "-c", code, "--help"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 130 and p.stderr.strip() == "rl2: interrupted", p.stderr
