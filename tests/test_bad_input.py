"""Bad input: every case ends in a one-line message naming the file, the right exit code, and nothing lost.

Skipped images are counted (n_skipped), listed (``skipped``, and one stderr line each), and the readable
ones are still scored: n_images + n_skipped == number of inputs. A run that skipped images exits 1
(finished, but some inputs failed); bad input that stops the run exits 2.

Unreadable files: tests run as root in CI, where ``chmod 000`` is still readable, so permission
errors are simulated by patching ``Image.open``; a folder named ``x.png`` in a list file is the
real-filesystem "cannot open this as a file" case.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from _rl2_core_helpers import (
    assert_one_line_error,
    default_backbone,
    fitted_reference,
    heldout,
    load_reference,
    run_cli,
)
from rl2 import RL2Metric
from rl2 import images as images_mod
from rl2.backbones import load_backbone
from rl2.errors import ImageError, NoImagesError, ReferenceFileError, WeightsError
from rl2.images import collect_images, iter_batches, load_rgb
from rl2.reference import Reference
from rl2.scores import score

SRC = Path(__file__).resolve().parents[1] / "src"


# -- files ---------------------------------------------------------------------------------------


def texture(h=64, w=64, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def ref_path():
    return fitted_reference()[1]


@pytest.fixture(scope="module")
def bad(tmp_path_factory):
    """One file per bad case, plus two good images."""
    d = tmp_path_factory.mktemp("bad")
    Image.fromarray(texture(seed=1)).save(d / "good1.png")
    Image.fromarray(texture(seed=2)).save(d / "good2.png")
    files = {
        "zero": d / "zero.png",
        "truncated": d / "truncated.png",
        "text": d / "text.png",
        "bomb": d / "bomb.png",
        "tiny": d / "tiny.png",
    }
    files["zero"].write_bytes(b"")
    data = (d / "good1.png").read_bytes()
    files["truncated"].write_bytes(data[: len(data) // 2])
    files["text"].write_text("this is not an image\n")
    Image.new("1", (20000, 20000)).save(files["bomb"])  # 400 Mpx claimed, ~50 KB on disk
    Image.new("RGB", (1, 1), (10, 20, 30)).save(files["tiny"])
    return d, files


# -- decoding: one clear error per bad file --------------------------------------------------------


@pytest.mark.parametrize(
    "case, reason",
    [
        ("zero", "empty file"),
        ("truncated", "truncated"),
        ("text", "cannot read image"),
        ("bomb", "decompression bomb"),
        ("tiny", "1x1 px"),
    ],
)
def test_load_rgb_bad_file_one_line_naming_it(bad, case, reason):
    path = bad[1][case]
    with pytest.raises(ImageError) as e:
        load_rgb(path)
    msg = str(e.value)
    assert msg.startswith(str(path)), msg
    assert reason in msg and "\n" not in msg


def test_bomb_refused_from_header_alone(bad):
    assert bad[1]["bomb"].stat().st_size < 200_000  # the 20000x20000 claim costs nothing on disk
    with pytest.raises(ImageError, match="decompression bomb"):
        load_rgb(bad[1]["bomb"])


def test_bomb_in_pillows_warning_zone_refused_in_worker_threads(tmp_path):
    """100 Mpx: Pillow only *warns* (89-179 Mpx). It must still be refused, in decoding threads, silently."""
    p = tmp_path / "warnzone.png"
    Image.new("1", (10000, 10000)).save(p)
    good = tmp_path / "good.png"
    Image.fromarray(texture()).save(good)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        skipped = []
        batches = list(iter_batches([good, p, good, p], 32, batch_size=2, workers=2, skipped=skipped))
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]
    assert [b.indices for b in batches] == [[0], [2]]
    assert [s.index for s in skipped] == [1, 3]
    assert all("decompression bomb" in s.reason and str(p) in s.reason for s in skipped)


def test_bomb_refused_even_if_warning_filter_is_lost(tmp_path, monkeypatch):
    """catch_warnings is process-global, so another decoding thread can drop the 'error' filter mid-load.

    Simulated by making load_rgb's simplefilter a no-op: the explicit size check must still refuse.
    """
    monkeypatch.setattr(images_mod.Image, "MAX_IMAGE_PIXELS", 1_000_000)
    monkeypatch.setattr(images_mod.warnings, "simplefilter", lambda *a, **k: None)
    p = tmp_path / "warn.png"
    Image.new("1", (1200, 1200)).save(p)  # 1.44 Mpx: between the limit and twice it, where Pillow only warns
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore")  # (simplefilter is patched)
        with pytest.raises(ImageError, match="decompression bomb"):
            load_rgb(p)


def test_16bit_tiff_keeps_the_high_byte(tmp_path):
    a = np.zeros((32, 32), np.uint16)
    a[0, 0] = 65535  # -> 255
    a[1, 2] = 257 * 100  # -> 100
    a[3, 4] = 255  # -> 0
    a[5, 6] = 256  # -> 1
    a[7, 8] = 257 * 200 + 100  # 51500 -> 201
    p = tmp_path / "g16.tif"
    Image.fromarray(a).save(p)
    with Image.open(p) as im:
        assert im.mode.startswith("I;16")  # really a 16-bit file
    rgb = np.asarray(load_rgb(p))
    assert rgb.dtype == np.uint8 and rgb.shape == (32, 32, 3)
    for (y, x), v in {(0, 0): 255, (1, 2): 100, (3, 4): 0, (5, 6): 1, (7, 8): 201, (9, 9): 0}.items():
        assert list(rgb[y, x]) == [v, v, v], ((y, x), rgb[y, x])


def _png16_rgb(path, a):
    """A 16-bit RGB PNG, written by hand: Pillow cannot save one."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    h, w, _ = a.shape
    raw = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in a)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def test_16bit_rgb_png_keeps_the_high_byte_like_grey(tmp_path):
    a = np.random.default_rng(0).integers(0, 65536, (20, 24, 3)).astype(np.uint16)
    p = tmp_path / "rgb16.png"
    _png16_rgb(p, a)
    grey = tmp_path / "g16.png"
    Image.fromarray(a[..., 0]).save(grey)
    assert np.array_equal(np.asarray(load_rgb(p)), (a >> 8).astype(np.uint8))
    assert np.array_equal(np.asarray(load_rgb(grey))[..., 0], (a[..., 0] >> 8).astype(np.uint8))


def test_16bit_big_endian_tiff(tmp_path):
    a = np.full((20, 20), 257 * 77, dtype=">u2")
    p = tmp_path / "g16b.tif"
    Image.frombytes("I;16B", (20, 20), a.tobytes()).save(p)
    assert np.all(np.asarray(load_rgb(p)) == 77)


def test_cmyk_jpeg_is_converted_to_rgb(tmp_path):
    colour = (200, 100, 50)
    p = tmp_path / "cmyk.jpg"
    Image.new("RGB", (32, 32), colour).convert("CMYK").save(p, quality=100)
    with Image.open(p) as im:
        assert im.mode == "CMYK"
    img = load_rgb(p)
    assert img.mode == "RGB"
    assert np.abs(np.asarray(img, np.int16) - np.array(colour)).max() <= 3


def test_rgba_composited_on_white(tmp_path):
    a = np.zeros((32, 32, 4), np.uint8)
    a[..., :3] = (200, 40, 10)
    a[:16, :, 3] = 255  # top half opaque
    a[16:, :16, 3] = 0  # bottom-left fully transparent (colour must not leak through)
    a[16:, 16:, 3] = 128  # bottom-right half transparent
    p = tmp_path / "rgba.png"
    Image.fromarray(a, "RGBA").save(p)
    rgb = np.asarray(load_rgb(p), np.int16)
    assert list(rgb[0, 0]) == [200, 40, 10]
    assert list(rgb[20, 4]) == [255, 255, 255]
    expected = np.round(np.array([200, 40, 10]) * 128 / 255 + 255 * 127 / 255)
    assert np.abs(rgb[20, 20] - expected).max() <= 1


def _palette_image(transparent_index=None):
    idx = np.zeros((32, 32), np.uint8)
    idx[:, 16:] = 1
    im = Image.fromarray(idx, "P")
    im.putpalette([10, 200, 30, 150, 60, 90] + [0] * (256 * 3 - 6))
    if transparent_index is not None:
        im.info["transparency"] = transparent_index
    return im


def test_palette_without_transparency(tmp_path):
    p = tmp_path / "pal.png"
    _palette_image().save(p)
    rgb = np.asarray(load_rgb(p))
    assert list(rgb[0, 0]) == [10, 200, 30] and list(rgb[0, 31]) == [150, 60, 90]


def test_palette_with_transparency_is_white_where_transparent(tmp_path):
    p = tmp_path / "palt.png"
    _palette_image(1).save(p, transparency=1)
    with Image.open(p) as im:
        assert im.mode == "P" and "transparency" in im.info
    rgb = np.asarray(load_rgb(p))
    assert list(rgb[0, 0]) == [10, 200, 30]
    assert list(rgb[0, 31]) == [255, 255, 255]


def test_permission_denied_simulated(tmp_path, monkeypatch):
    p = tmp_path / "locked.png"
    Image.fromarray(texture()).save(p)

    def denied(fp, *a, **k):
        raise PermissionError(13, "Permission denied", str(fp))

    monkeypatch.setattr(images_mod.Image, "open", denied)
    with pytest.raises(ImageError) as e:
        load_rgb(p)
    assert str(e.value) == f"{p}: permission denied"


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads chmod 000 files")
def test_permission_denied_real(tmp_path):
    p = tmp_path / "locked.png"
    Image.fromarray(texture()).save(p)
    p.chmod(0)
    try:
        with pytest.raises(ImageError, match="permission denied"):
            load_rgb(p)
    finally:
        p.chmod(0o644)


# -- scoring: nothing lost, one line per skip, exit 1 ------------------------------------------------


def test_score_api_mixed_good_and_bad(bad):
    d, files = bad
    inputs = [d / "good1.png", *files.values(), d / "good2.png"]
    res = score(load_reference(), inputs, bootstrap=0, workers=2, batch_size=3, progress=False)
    assert res.n_images == 2
    assert res.n_skipped == len(files)
    assert res.n_images + res.n_skipped == len(inputs)
    assert sorted(s["path"] for s in res.skipped) == sorted(str(f) for f in files.values())
    for s in res.skipped:
        assert s["reason"].startswith(s["path"]) and "\n" not in s["reason"]


def test_score_strict_stops_at_first_bad_file(bad):
    d, files = bad
    with pytest.raises(ImageError, match="truncated.png"):
        score(load_reference(), [d / "good1.png", files["truncated"]], strict=True, progress=False)


def test_cli_mixed_folder_lists_each_skip_and_exits_1(bad, ref_path, capsys, tmp_path):
    d, files = bad
    csv_path = tmp_path / "per_image.csv"
    code, out, err = run_cli(capsys, "score", ref_path, d, "--json", "-q", "--bootstrap", "0",
                             "--per-image", csv_path)
    assert code == 1, err
    res = json.loads(out)
    n_inputs = len(list(d.iterdir()))
    assert res["n_images"] == 2 and res["n_skipped"] == len(files)
    assert res["n_images"] + res["n_skipped"] == n_inputs
    lines = err.strip().splitlines()
    assert len(lines) == len(files) and "Traceback" not in err
    for f in files.values():
        assert sum(line.startswith(f"rl2: skipped {f}: ") for line in lines) == 1, (f, err)
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == n_inputs
    assert [int(r["index"]) for r in rows] == list(range(n_inputs))
    status = {Path(r["path"]).name: r["status"] for r in rows}
    for f in files.values():
        assert status[f.name].startswith("skipped: ") and str(f) not in status[f.name]
    assert status["good1.png"] == status["good2.png"] == "ok"


def test_cli_all_unreadable_exits_2(bad, ref_path, capsys):
    _, files = bad
    code, out, err = run_cli(capsys, "score", ref_path, files["zero"], files["text"], "-q")
    assert code == 2 and out == ""
    assert_one_line_error(err, "none of the 2 images could be read", files["zero"])


def test_tiny_image_skipped_with_clear_message(bad, ref_path, capsys):
    d, files = bad
    code, out, err = run_cli(capsys, "score", ref_path, d / "good1.png", files["tiny"], "--json", "-q")
    assert code == 1
    assert json.loads(out)["n_skipped"] == 1
    assert_one_line_error(err, files["tiny"], "1x1 px", "at least 16 px")


def test_mixed_sizes_all_scored_non_square_counted(tmp_path):
    for name, (h, w) in {"a": (64, 64), "b": (40, 80), "c": (300, 200), "d": (224, 224), "e": (17, 500)}.items():
        Image.fromarray(texture(h, w, seed=h + w)).save(tmp_path / f"{name}.png")
    res = score(load_reference(), tmp_path, bootstrap=0, progress=False)
    assert res.n_images == 5 and res.n_skipped == 0
    assert res.non_square == 3


# -- paths that resolve to nothing: exit 2, naming the path ------------------------------------------


def test_empty_folder(tmp_path, ref_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.md").write_text("no images here")
    code, out, err = run_cli(capsys, "score", ref_path, empty, "-q")
    assert code == 2 and out == ""
    assert_one_line_error(err, empty, "no images")


def test_missing_path(tmp_path, ref_path, capsys):
    missing = tmp_path / "nope"
    code, out, err = run_cli(capsys, "score", ref_path, missing, "-q")
    assert code == 2 and out == ""
    assert_one_line_error(err, missing, "no such file")


def test_glob_matching_nothing(tmp_path, ref_path, capsys):
    Image.fromarray(texture()).save(tmp_path / "x.png")
    pattern = str(tmp_path / "*.jpg")
    code, out, err = run_cli(capsys, "score", ref_path, pattern, "-q")
    assert code == 2
    assert_one_line_error(err, pattern, "matches no images")


def test_glob_matching_images(tmp_path):
    for i in range(3):
        Image.fromarray(texture(seed=i)).save(tmp_path / f"img_{i}.png")
    (tmp_path / "img_x.txt").write_text("not an image")
    assert len(collect_images(str(tmp_path / "img_*"))) == 3


def test_list_file_with_missing_entry_is_skipped_and_counted(tmp_path, ref_path, capsys):
    """A listed file that does not exist is handled like an unreadable one: skipped, listed, exit 1.

    (A missing path on the command line is exit 2: that is a typo in the command, not in the data.)
    """
    Image.fromarray(texture()).save(tmp_path / "a.png")
    Image.fromarray(texture(seed=3)).save(tmp_path / "b.png")
    (tmp_path / "dir.png").mkdir()  # a folder without images where a file should be: a skip
    (tmp_path / "sub").mkdir()  # a listed folder with an image: searched like a folder
    Image.fromarray(texture(seed=4)).save(tmp_path / "sub" / "c.png")
    lst = tmp_path / "list.txt"
    lst.write_text("# comment\na.png\nmissing.png\n\ndir.png\nb.png\nsub\n")
    code, out, err = run_cli(capsys, "score", ref_path, lst, "--json", "-q", "--bootstrap", "0")
    assert code == 1
    res = json.loads(out)
    assert res["n_images"] == 3 and res["n_skipped"] == 2
    reasons = {Path(s["path"]).name: s["reason"] for s in res["skipped"]}
    assert reasons["missing.png"] == f"{tmp_path / 'missing.png'}: no such file"
    assert reasons["dir.png"] == f"{tmp_path / 'dir.png'}: is a folder, not an image"
    assert len(err.strip().splitlines()) == 2


def test_list_file_not_text(tmp_path, ref_path, capsys):
    lst = tmp_path / "list.txt"
    lst.write_bytes(b"\xff\xfe\x00\x89PNG garbage")
    code, out, err = run_cli(capsys, "score", ref_path, lst, "-q")
    assert code == 2
    assert_one_line_error(err, lst, "not UTF-8")


def test_per_image_csv_unwritable_is_one_line(bad, ref_path, capsys):
    d, _ = bad
    target = d / "good1.png" / "scores.csv"  # parent is a file
    code, out, err = run_cli(capsys, "score", ref_path, d / "good1.png", "--per-image", target, "-q")
    assert code == 2
    assert_one_line_error(err, d / "good1.png")


# -- bad reference files ---------------------------------------------------------------------------


def test_truncated_reference(tmp_path, ref_path, bad, capsys):
    data = ref_path.read_bytes()
    cut = tmp_path / "cut.rl2"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ReferenceFileError, match="truncated or corrupt"):
        Reference.load(cut)
    code, out, err = run_cli(capsys, "score", cut, bad[0] / "good1.png", "-q")
    assert code == 2 and out == ""
    assert_one_line_error(err, cut, "not a readable RL2 reference")


def test_tampered_reference_fails_checksum(tmp_path, ref_path, bad, capsys):
    data = bytearray(ref_path.read_bytes())
    header_len = int.from_bytes(data[:8], "little")
    payload_start = 8 + header_len
    pos = payload_start + (len(data) - payload_start) // 2
    data[pos] ^= 0x01
    bad_ref = tmp_path / "tampered.rl2"
    bad_ref.write_bytes(bytes(data))
    with pytest.raises(ReferenceFileError, match="checksum mismatch"):
        Reference.load(bad_ref)
    code, out, err = run_cli(capsys, "score", bad_ref, bad[0] / "good1.png", "-q")
    assert code == 2
    assert_one_line_error(err, bad_ref, "checksum mismatch")
    code, out, err = run_cli(capsys, "info", bad_ref)
    assert code == 2
    assert_one_line_error(err, bad_ref, "checksum mismatch")


@pytest.mark.parametrize("kind", ["png", "safetensors", "folder", "empty", "json_list"])
def test_non_reference_passed_as_ref(tmp_path, bad, capsys, kind):
    from safetensors.torch import save_file

    p = tmp_path / f"not_a_ref_{kind}"
    if kind == "png":
        p.write_bytes((bad[0] / "good1.png").read_bytes())
        expect = "not a readable RL2 reference"
    elif kind == "safetensors":
        save_file({"w": torch.zeros(3)}, str(p), metadata={"format": "pt"})
        expect = "not an RL2 reference"
    elif kind == "folder":
        p.mkdir()
        expect = "is a folder"
    elif kind == "empty":
        p.write_bytes(b"")
        expect = "not a readable RL2 reference"
    else:
        save_file({"w": torch.zeros(3)}, str(p), metadata={"rl2": "[1, 2]"})
        expect = "not an RL2 reference"
    with pytest.raises(ReferenceFileError, match=expect):
        Reference.load(p)
    code, out, err = run_cli(capsys, "score", p, bad[0] / "good1.png", "-q")
    assert code == 2 and out == ""
    assert_one_line_error(err, p, expect)


# -- a reference used with another backbone: refuse, saying what differs ---------------------------


def test_score_refuses_other_backbone(bad):
    other = load_backbone("resnet18-random-TESTONLY")
    ref = Reference.load(fitted_reference()[1])
    with pytest.raises(WeightsError) as e:
        score(ref, bad[0] / "good1.png", backbone=other, progress=False)
    msg = str(e.value)
    assert "incompatible backbone" in msg and "name" in msg
    assert "efficientnet-lite0" in msg and "resnet18-random-TESTONLY" in msg


def test_metric_refuses_other_backbone():
    other = load_backbone("resnet18-random-TESTONLY")
    with pytest.raises(WeightsError, match="name efficientnet-lite0, but this run uses resnet18-random-TESTONLY"):
        RL2Metric(Reference.load(fitted_reference()[1]), backbone=other, device="cpu")


def test_metric_refuses_same_architecture_other_weights():
    """Same name, read-out and size; only the weights differ: still refused, naming weights_sha256."""
    from rl2.backbones import Backbone, Identity

    bb = default_backbone()

    ident = bb.identity
    changed = Identity(ident.name, ident.readout, "0" * 64, ident.feature_dim, ident.preprocessing)
    other = Backbone(bb.net, bb._features, changed, None)
    with pytest.raises(WeightsError, match="weights_sha256"):
        RL2Metric(Reference.load(fitted_reference()[1]), backbone=other, device="cpu")
    # Sanity: the matching backbone is accepted.
    RL2Metric(Reference.load(fitted_reference()[1]), backbone=default_backbone(), device="cpu")


def test_cli_weights_file_of_other_values(tmp_path, ref_path, bad, capsys):
    """--weights: a real EfficientNet-Lite0 state dict with one value changed -> sha256 differs -> refused."""
    from safetensors.torch import save_file

    sd = {k: v.clone().contiguous() for k, v in default_backbone().net.state_dict().items()}
    key = next(k for k, v in sd.items() if v.is_floating_point())
    sd[key][..., 0] += 0.5
    w = tmp_path / "other.safetensors"
    save_file(sd, str(w))
    code, out, err = run_cli(capsys, "score", ref_path, bad[0] / "good1.png", "--weights", w, "-q")
    assert code == 2 and out == ""
    assert_one_line_error(err, "incompatible backbone", "weights_sha256", "but this run uses")


def test_cli_weights_of_another_architecture(ref_path, bad, capsys):
    fixture = Path(__file__).parent / "fixtures" / "resnet18_tv_fixture.safetensors"
    code, out, err = run_cli(capsys, "score", ref_path, bad[0] / "good1.png", "--weights", fixture, "-q")
    assert code == 2
    assert_one_line_error(err, fixture, "not EfficientNet-Lite0 weights")


def test_cli_reference_of_random_backbone_with_weights(tmp_path, bad, capsys):
    """A reference made with resnet18-random-TESTONLY, scored with --weights: refused, one line."""
    import dataclasses

    ref = Reference.load(fitted_reference()[1])
    rnd = dataclasses.replace(ref, identity=load_backbone("resnet18-random-TESTONLY").identity)
    p = rnd.save(tmp_path / "random.rl2")
    assert Reference.load(p).identity.name == "resnet18-random-TESTONLY"
    code, out, err = run_cli(capsys, "score", p, bad[0] / "good1.png", "--weights",
                             fitted_reference()[1], "-q")
    assert code == 2
    assert_one_line_error(err, "resnet18-random-TESTONLY takes no --weights")


# -- the real process: exit codes and stderr as a user sees them --------------------------------------


def test_subprocess_exit_codes_and_clean_stderr(bad, ref_path, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("RL2_DEBUG", None)
    missing = tmp_path / "missing_folder"
    cmd = [sys.executable, "-c", "import sys; from rl2.cli import main; main(sys.argv[1:])",
           "score", str(ref_path), str(missing), "--json", "-q"]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 2
    assert p.stdout == ""
    assert p.stderr == f"rl2: {missing}: no such file or folder\n"
