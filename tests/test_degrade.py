import numpy as np
import pytest
from PIL import Image

from rl2 import degrade
from rl2.degrade import FAMILIES, apply
from rl2.errors import RL2Error

DETERMINISTIC = {"blur", "jpeg"}


def synthetic(h=64, w=64, dtype=np.float32):
    """A smooth colour gradient plus stripes and mild seeded texture, for blur to soften."""
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    stripes = 0.15 * np.sin(2 * np.pi * (xx * 6 + yy * 3))
    base = np.stack([0.3 + 0.4 * xx, 0.2 + 0.5 * yy, 0.6 - 0.3 * xx * yy], axis=-1)
    texture = np.random.default_rng(123).normal(0, 0.05, (h, w, 3))
    img = np.clip(base + stripes[..., None] + texture, 0, 1)
    if dtype == np.uint8:
        return np.rint(img * 255).astype(np.uint8)
    return img.astype(dtype)


def change(a, b):
    scale = 255.0 if a.dtype == np.uint8 else 1.0
    return float(np.mean(np.abs(a.astype(np.float64) - b.astype(np.float64)))) / scale


def top(family):
    return family.default_levels[-1]


@pytest.fixture(params=sorted(FAMILIES), ids=sorted(FAMILIES))
def family(request):
    return FAMILIES[request.param]


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_identity_at_level_zero(family, dtype):
    img = synthetic(dtype=dtype)
    out = apply(img, family.name, 0, seed=3)
    assert out.dtype == img.dtype
    assert np.array_equal(out, img)
    assert out is not img and not np.shares_memory(out, img)


def test_deterministic_for_seed(family):
    img = synthetic(dtype=np.uint8)
    level = family.default_levels[3]
    a = apply(img, family.name, level, seed=7)
    assert np.array_equal(a, apply(img, family.name, level, seed=7))
    assert not np.array_equal(a, img)
    other = apply(img, family.name, level, seed=8)
    if family.name in DETERMINISTIC:
        assert np.array_equal(a, other)
    else:
        assert not np.array_equal(a, other)


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_change_strictly_increases(family, dtype):
    img = synthetic(dtype=dtype)
    levels = family.default_levels
    assert len(levels) >= 7 and levels[0] == 0
    assert list(levels) == sorted(set(levels))
    changes = [change(img, apply(img, family.name, lv, seed=1)) for lv in levels]
    assert changes[0] == 0
    assert all(b > a for a, b in zip(changes, changes[1:])), changes


@pytest.mark.parametrize("dtype", [np.uint8, np.float32, np.float64])
def test_dtype_range_and_shape_kept(family, dtype):
    img = synthetic(48, 64, dtype=dtype)
    for level in family.default_levels[1:]:
        out = apply(img, family.name, level, seed=2)
        assert out.dtype == img.dtype and out.shape == img.shape
        if dtype != np.uint8:
            assert np.all(np.isfinite(out)) and out.min() >= 0 and out.max() <= 1


def test_input_not_modified(family):
    img = synthetic(dtype=np.uint8)
    before = img.copy()
    apply(img, family.name, top(family), seed=0)
    assert np.array_equal(img, before)


def test_negative_level_rejected(family):
    with pytest.raises(RL2Error):
        apply(synthetic(), family.name, -1)


@pytest.mark.parametrize(
    "kind, level",
    [("noise_blend", 1.5), ("salt_pepper", 1.01), ("occlusion", 2), ("diffusion", 1001),
     ("diffusion", 2.5), ("jpeg", 100), ("jpeg", 10.5), ("blur", float("nan"))],
)
def test_out_of_range_level_rejected(kind, level):
    with pytest.raises(RL2Error, match=kind):
        apply(synthetic(), kind, level)


def test_unknown_kind():
    with pytest.raises(RL2Error) as info:
        apply(synthetic(), "sharpen", 1)
    message = str(info.value)
    assert "sharpen" in message and "\n" not in message
    assert all(name in message for name in FAMILIES)


def test_bad_image_rejected():
    with pytest.raises(RL2Error):
        apply(np.zeros((8, 8), np.uint8), "blur", 1)
    with pytest.raises(RL2Error):
        apply(np.zeros((8, 8, 3), np.int32), "blur", 1)


def test_family_metadata():
    for name, fam in FAMILIES.items():
        assert fam.name == name and fam.unit and fam.description and "\n" not in fam.description


def test_salt_and_pepper_exact_fraction_half_each():
    img = np.full((40, 50, 3), 128, np.uint8)
    out = degrade.salt_and_pepper(img, 0.2, seed=0)
    black = np.all(out == 0, axis=-1).sum()
    white = np.all(out == 255, axis=-1).sum()
    assert black + white == 400 and abs(black - white) <= 1
    assert np.all((out == 128).all(-1) | (out == 0).all(-1) | (out == 255).all(-1))


@pytest.mark.parametrize("n_rects", [1, 3])
def test_occlusion_area_grows_and_fill(n_rects):
    img = np.full((64, 64, 3), 0.5, np.float32)
    fill = (255, 0, 51)
    covered = []
    prev = np.zeros((64, 64), bool)
    for area in FAMILIES["occlusion"].default_levels[1:]:
        out = degrade.occlusion(img, area, seed=4, n_rects=n_rects, fill=fill)
        mask = np.any(out != 0.5, axis=-1)
        assert np.allclose(out[mask], np.array(fill) / 255.0)
        assert np.all(mask[prev])  # a higher level covers what a lower one did
        prev = mask
        covered.append(mask.mean())
        assert mask.mean() <= area + 0.02
    assert all(b > a for a, b in zip(covered, covered[1:]))
    if n_rects == 1:
        assert covered[-1] == pytest.approx(0.5, abs=0.02)


def test_occlusion_default_fill_is_the_image_mean_colour():
    for img in (synthetic(), (synthetic() * 255).round().astype(np.uint8)):
        out = degrade.occlusion(img, 0.3, seed=2)
        mask = np.any(out != img, axis=-1)
        assert 0.25 < mask.mean() <= 0.32
        want = img.reshape(-1, 3).astype(np.float64).mean(0)
        want = want.round() if img.dtype == np.uint8 else want
        assert np.allclose(out[mask], want.astype(img.dtype))


def test_occlusion_bad_options():
    with pytest.raises(RL2Error):
        degrade.occlusion(synthetic(), 0.1, n_rects=0)
    with pytest.raises(RL2Error):
        degrade.occlusion(synthetic(), 0.1, fill=(0, 0, 300))
    with pytest.raises(RL2Error):
        degrade.occlusion(synthetic(), 0.1, fill="black")


def test_diffusion_schedule():
    assert degrade._ALPHABAR[0] == 1.0
    assert degrade._ALPHABAR[1] == pytest.approx(1 - 1e-4)
    assert degrade._ALPHABAR[1000] < 1e-4
    # Near t=T the image is almost pure noise: it barely correlates with the input.
    img = synthetic(dtype=np.float64)
    out = degrade.diffusion_forward(img, 1000, seed=0)
    assert abs(np.corrcoef(img.ravel(), out.ravel())[0, 1]) < 0.05


def test_jpeg_quality_argument():
    img = synthetic(dtype=np.uint8)
    assert np.array_equal(degrade.jpeg(img, quality=30), degrade.jpeg(img, 70))
    assert np.array_equal(degrade.jpeg(img, quality=100), img)
    with pytest.raises(RL2Error):
        degrade.jpeg(img, 10, quality=90)
    with pytest.raises(RL2Error):
        degrade.jpeg(img, quality=0)


def test_degrade_pil():
    arr = synthetic(dtype=np.uint8)
    out = degrade.degrade_pil(Image.fromarray(arr).convert("RGBA"), "noise", 0.1, seed=5)
    assert isinstance(out, Image.Image) and out.mode == "RGB" and out.size == (64, 64)
    assert np.array_equal(np.asarray(out), apply(arr, "noise", 0.1, seed=5))
