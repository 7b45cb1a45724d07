"""Reading whole-slide images (through OpenSlide) and plain images (through PIL).

Every reader returns RGB: transparent pixels (outside the scanned area of a
slide, or alpha in a PNG) are composited on white, which is what blank glass
looks like.
"""

from __future__ import annotations

import math
from pathlib import Path

import openslide
from PIL import Image

from rl2.errors import SlideError

#: Suffixes read with PIL as one-level images when OpenSlide does not recognise the file.
PLAIN_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp"}

#: A resolution tag outside this range (µm/px) is not a microscope pixel size but a
#: software default (72 dpi = 353 µm/px, 300 dpi = 85 µm/px), so it is ignored.
PLAUSIBLE_MPP_RANGE = (0.05, 25.0)

#: Largest band (in pixels) that `Slide.thumbnail` reads at once from a level.
_THUMB_BAND_PIXELS = 16_000_000

_WHITE = (255, 255, 255)


def _on_white(img: Image.Image) -> Image.Image:
    """Return `img` as RGB, with any alpha composited on white."""
    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        out = Image.new("RGB", rgba.size, _WHITE)
        out.paste(rgba, mask=rgba.getchannel("A"))
        return out
    return img.convert("RGB")


def _um_per_px(dots: float, per_cm: bool) -> float | None:
    """Convert a resolution in dots per inch (or per cm) to µm/px, if plausible."""
    if not dots or dots <= 0:
        return None
    mpp = (1e4 if per_cm else 25_400.0) / float(dots)
    lo, hi = PLAUSIBLE_MPP_RANGE
    return mpp if lo <= mpp <= hi else None


def _plain_image_mpp(img: Image.Image) -> float | None:
    """Pixel size of a plain image, only when its file states it in inch or cm units."""
    fmt = img.format
    if fmt == "TIFF":
        tags = img.tag_v2
        unit = tags.get(296)  # ResolutionUnit: 2 = inch, 3 = cm; absent or 1 = no unit
        xres, yres = tags.get(282), tags.get(283)
        if unit not in (2, 3) or not xres:
            return None
        values = [_um_per_px(float(r), unit == 3) for r in (xres, yres or xres)]
    elif fmt == "PNG":
        # PIL sets "dpi" only for a pHYs chunk in metres; unit-less pHYs gives "aspect".
        dpi = img.info.get("dpi")
        if not dpi:
            return None
        values = [_um_per_px(d, False) for d in dpi]
    elif fmt == "JPEG":
        # Only the JFIF header with an explicit unit; PIL's EXIF fallback defaults to 72 dpi.
        unit, density = img.info.get("jfif_unit"), img.info.get("jfif_density")
        if unit not in (1, 2) or not density:
            return None
        values = [_um_per_px(d, unit == 2) for d in density]
    else:
        return None
    if any(v is None for v in values):
        return None
    return sum(values) / len(values)


class Slide:
    """A slide or image opened for reading; use `open_slide` to create one.

    Attributes: `path`, `format` (OpenSlide vendor such as "aperio", or the
    PIL format such as "PNG"), `dimensions` (level-0 width, height), `level_count`,
    `level_dimensions`, `level_downsamples`, `mpp` (µm/px or None) and
    `objective_power` (or None).
    """

    def __init__(self, path: Path, osr: openslide.OpenSlide | None = None,
                 image: Image.Image | None = None, mpp: float | None = None,
                 objective_power: float | None = None, format: str | None = None):
        self.path = path
        self.format = format
        self._osr = osr
        self._image = image
        self.mpp = mpp
        self.objective_power = objective_power
        if osr is not None:
            self.dimensions = tuple(osr.dimensions)
            self.level_count = osr.level_count
            self.level_dimensions = tuple(tuple(d) for d in osr.level_dimensions)
            self.level_downsamples = tuple(float(d) for d in osr.level_downsamples)
        else:
            self.dimensions = image.size
            self.level_count = 1
            self.level_dimensions = (image.size,)
            self.level_downsamples = (1.0,)

    def __repr__(self) -> str:
        return f"Slide({str(self.path)!r}, format={self.format!r}, dimensions={self.dimensions}, levels={self.level_count}, mpp={self.mpp})"

    def get_best_level_for_downsample(self, downsample: float) -> int:
        """The coarsest level whose downsample is at most `downsample` (0 if none is)."""
        best = 0
        for level, ds in enumerate(self.level_downsamples):
            # Tolerance: pyramid downsamples are often 4.0002 rather than 4.
            if ds <= downsample * (1 + 1e-3):
                best = level
        return best

    def read_region_rgb(self, x0: int, y0: int, level: int, w: int, h: int) -> Image.Image:
        """Read `w`x`h` pixels of `level`, with the top left at level-0 coords (x0, y0)."""
        if not 0 <= level < self.level_count:
            raise SlideError(f"{self.path}: no pyramid level {level} (the slide has {self.level_count})")
        if w <= 0 or h <= 0:
            raise SlideError(f"{self.path}: cannot read an empty region ({w}x{h})")
        if self._osr is not None:
            try:
                region = self._osr.read_region((int(x0), int(y0)), level, (int(w), int(h)))
            except openslide.OpenSlideError as exc:
                raise SlideError(f"{self.path}: cannot read region at ({x0}, {y0}): {exc}") from exc
            return _on_white(region)
        # Plain image: the part outside the image is white, like OpenSlide's transparent border.
        out = Image.new("RGB", (int(w), int(h)), _WHITE)
        iw, ih = self._image.size
        left, top = max(0, x0), max(0, y0)
        right, bottom = min(iw, x0 + w), min(ih, y0 + h)
        if right > left and bottom > top:
            out.paste(self._image.crop((left, top, right, bottom)), (left - x0, top - y0))
        return out

    def thumbnail(self, max_size: int) -> Image.Image:
        """An RGB image of the whole slide whose longer side is at most `max_size` pixels."""
        w0, h0 = self.dimensions
        scale = min(1.0, max_size / max(w0, h0))
        tw, th = max(1, round(w0 * scale)), max(1, round(h0 * scale))
        if self._osr is None:
            return self._image.resize((tw, th), Image.LANCZOS) if (tw, th) != (w0, h0) else self._image.copy()
        level = self.get_best_level_for_downsample(w0 / tw)
        lw, lh = self.level_dimensions[level]
        ds = self.level_downsamples[level]
        # Read the level in horizontal bands so that a single-level slide is never
        # held in memory at full resolution; each band maps to whole thumbnail rows.
        rows_per_band = max(1, int(_THUMB_BAND_PIXELS / lw * th / lh))
        thumb = Image.new("RGB", (tw, th), _WHITE)
        for r0 in range(0, th, rows_per_band):
            r1 = min(th, r0 + rows_per_band)
            y_lo, y_hi = round(r0 * lh / th), max(round(r0 * lh / th) + 1, round(r1 * lh / th))
            band = self.read_region_rgb(0, round(y_lo * ds), level, lw, y_hi - y_lo)
            thumb.paste(band.resize((tw, r1 - r0), Image.LANCZOS), (0, r0))
        return thumb

    def close(self) -> None:
        if self._osr is not None:
            self._osr.close()
        if self._image is not None:
            self._image.close()

    def __enter__(self) -> "Slide":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _float_property(props, key: str) -> float | None:
    try:
        value = float(props[key])
    except (KeyError, TypeError, ValueError):
        return None
    return value if value > 0 and math.isfinite(value) else None


def open_slide(path) -> Slide:
    """Open a whole-slide image with OpenSlide, or a plain image with PIL."""
    path = Path(path)
    fail = f"{path}: cannot open slide"
    if not path.is_file():
        raise SlideError(f"{fail}: file not found")
    try:
        fmt = openslide.OpenSlide.detect_format(str(path))
    except Exception as exc:  # detect_format itself can fail on unreadable files
        raise SlideError(f"{fail}: {exc}") from exc

    if fmt is not None:
        try:
            osr = openslide.OpenSlide(str(path))
        except Exception as exc:
            raise SlideError(f"{fail}: {exc}") from exc
        props = osr.properties
        mpps = [m for m in (_float_property(props, "openslide.mpp-x"),
                            _float_property(props, "openslide.mpp-y")) if m is not None]
        return Slide(path, osr=osr, format=fmt,
                     mpp=sum(mpps) / len(mpps) if mpps else None,
                     objective_power=_float_property(props, "openslide.objective-power"))

    if path.suffix.lower() not in PLAIN_IMAGE_SUFFIXES:
        raise SlideError(f"{fail}: OpenSlide does not recognise the format, "
                         f"and {path.suffix or 'a file without suffix'} is not a plain image type")
    try:
        with Image.open(path) as img:
            mpp = _plain_image_mpp(img)
            fmt = img.format
            rgb = _on_white(img)
            rgb.load()
    except Exception as exc:  # PIL raises many types for corrupt or oversized files
        raise SlideError(f"{fail}: {exc}") from exc
    return Slide(path, image=rgb, mpp=mpp, format=fmt)


def resolve_mpp(slide: Slide, mpp_override: float | None = None) -> tuple[float, str]:
    """Return (µm per level-0 pixel, where that value came from).

    Order: the override, then the slide's metadata, then an estimate from the
    objective power using the usual convention 10x ≈ 1.0 µm/px (20x ≈ 0.5,
    40x ≈ 0.25), i.e. mpp = 10 / power. Raises SlideError when none is known.
    """
    if mpp_override is not None:
        if not (mpp_override > 0 and math.isfinite(mpp_override)):
            raise SlideError(f"{slide.path}: --mpp must be a positive number, got {mpp_override}")
        return float(mpp_override), "--mpp override"
    if slide.mpp is not None:
        return slide.mpp, f"{slide.format or 'slide'} metadata"
    if slide.objective_power:
        return 10.0 / slide.objective_power, f"estimated from objective power {slide.objective_power:g}x"
    raise SlideError(f"{slide.path}: no pixel size (MPP) in the slide metadata; pass --mpp MICRONS_PER_PIXEL")


def read_tile(slide: Slide, x0: int, y0: int, size_l0: int, out_size: int) -> Image.Image:
    """Read the `size_l0`-pixel square at level-0 (x0, y0) as an `out_size`-pixel RGB square.

    Reads from the coarsest pyramid level that still has at least the needed
    resolution, then resizes with an antialiased LANCZOS filter.
    """
    level = slide.get_best_level_for_downsample(size_l0 / out_size)
    ds = slide.level_downsamples[level]
    side = max(1, math.ceil(size_l0 / ds))
    region = slide.read_region_rgb(x0, y0, level, side, side)
    if region.size != (out_size, out_size):
        region = region.resize((out_size, out_size), Image.LANCZOS)
    return region
