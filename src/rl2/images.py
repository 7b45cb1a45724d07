"""Images in: find files, decode them to RGB, resize them for a backbone, and batch them.

Colour policy (documented in the README):
- EXIF orientation is applied first.
- Alpha (RGBA, LA, palette with transparency) is composited on white, the colour of empty glass.
- 16-bit images keep their high byte (``v >> 8``, so 65535 maps to 255): Pillow reads 16-bit RGB that
  way, and 16-bit grayscale (``I;16*``, ``I``) is reduced the same way so that every 16-bit file is treated alike.
  Float images (``F``) are taken as 0..1.
- Palette, CMYK, YCbCr, LAB, HSV, grayscale and 1-bit images go through Pillow's own conversion to RGB.

Resize policy: the largest centred square is cropped (non-square images lose their margins, and the
count of such images is reported), then resized to the backbone's input size with Pillow's bicubic
filter, which is antialiased when shrinking.
"""

from __future__ import annotations

import glob
import os
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
from PIL import Image, ImageOps

from .errors import ImageError, NoImagesError, RL2Error

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")
LIST_EXTENSIONS = (".txt", ".lst", ".list")
MIN_SIDE = 16  # smaller images carry no tissue texture at any magnification


@dataclass
class ImageSet:
    """Resolved image paths, plus what was left out while resolving them."""

    paths: list[Path]
    ignored: list[Path] = field(default_factory=list)  # files in folders that are not images

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def n_duplicates(self) -> int:
        """Paths given more than once (each is read every time it is given)."""
        return len(self.paths) - len({os.path.realpath(p) for p in self.paths})


def _from_list_file(path: Path) -> list[Path]:
    out = []
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: a BOM (as Notepad writes) is not part of a path
    except UnicodeDecodeError:
        raise NoImagesError(f"{path}: list file is not UTF-8 text (one path a line)") from None
    except OSError as e:
        raise NoImagesError(f"{path}: cannot read list file ({e.strerror or type(e).__name__})") from None
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            p = Path(line).expanduser()
            out.append(p if p.is_absolute() else path.parent / p)
    return out


def _from_folder(p: Path, ignored: list[Path], suffixes=IMAGE_EXTENSIONS) -> list[Path]:
    """Files with ``suffixes`` under ``p``, following linked folders (each real folder once, so loops end).

    Broken links with such names are kept, so that reading them reports each one as a skip.
    """
    files, seen = [], set()
    for root, dirs, names in os.walk(p, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        files += [Path(root, n) for n in names]
    files.sort()
    ignored += [f for f in files if f.suffix.lower() not in suffixes]
    return [f for f in files if f.suffix.lower() in suffixes]


def collect_images(inputs: Sequence[str | os.PathLike] | str | os.PathLike, suffixes=IMAGE_EXTENSIONS,
                   what: str = "images") -> ImageSet:
    """Resolve folders (recursive), glob patterns, list files (.txt, one path a line) and image files.

    Order is sorted within each input and inputs keep their order, so results are reproducible.
    A missing path, an empty folder or a pattern that matches nothing is an error, not a silent skip.
    ``suffixes`` and ``what`` let `rl2 qc` find slides the same way.
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    paths: list[Path] = []
    ignored: list[Path] = []
    for item in inputs:
        p = Path(item).expanduser()
        if p.is_dir():
            found = _from_folder(p, ignored, suffixes)
            if not found:
                raise NoImagesError(f"{p}: folder holds no {what} ({', '.join(suffixes)})")
            paths += found
        elif p.is_file() and p.suffix.lower() in LIST_EXTENSIONS:
            listed = _from_list_file(p)
            if not listed:
                raise NoImagesError(f"{p}: list file names no {what}")
            # Listed folders are searched like folders. Listed entries that are missing, broken or
            # folders without images are kept, so that reading them reports each one as a skip.
            for q in listed:
                paths += (_from_folder(q, ignored, suffixes) if q.is_dir() else []) or [q]
        elif p.is_file():
            paths.append(p)
        elif glob.has_magic(str(item)):
            matched = sorted(Path(m) for m in glob.glob(str(p), recursive=True))
            found = []
            for m in matched:
                if m.is_dir():  # searched like a folder given by name
                    found += _from_folder(m, ignored, suffixes)
                elif m.suffix.lower() in suffixes:
                    found.append(m)
                else:
                    ignored.append(m)
            if not found:
                raise NoImagesError(f"{item}: pattern matches no {what}")
            paths += found
        else:
            raise NoImagesError(f"{p}: no such file or folder")
    if not paths:
        raise NoImagesError(f"no input {what} given")
    return ImageSet(paths, ignored)


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB by the policy in the module docstring."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        a = np.asarray(img)
        if a.max(initial=0) > 65535 or a.min(initial=0) < 0:
            raise ValueError(f"32-bit integer values outside 0..65535 (mode {img.mode})")
        return Image.fromarray((a.astype(np.int64) >> 8).astype(np.uint8)).convert("RGB")
    if img.mode == "F":
        a = np.clip(np.asarray(img, dtype=np.float64), 0.0, 1.0)
        return Image.fromarray(np.round(a * 255.0).astype(np.uint8)).convert("RGB")
    if img.mode == "P":
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        img = img.convert("RGBA")
        white = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, img).convert("RGB")
    return img.convert("RGB")


_OPEN_LOCK = threading.Lock()


def load_rgb(path: str | os.PathLike) -> Image.Image:
    """Decode one image file to RGB. Raises ImageError naming the file on any failure."""
    path = Path(path)
    if path.exists() and not path.is_file() and not path.is_dir():
        raise ImageError(f"{path}: not a regular file (a pipe, socket or device)")
    try:
        if path.is_file() and path.stat().st_size == 0:
            raise ValueError("empty file, 0 bytes")
        # Pillow only warns between MAX_IMAGE_PIXELS and twice that; treat both as bombs. The lock is there
        # because catch_warnings swaps process-wide state and decoding runs in threads; opening only
        # reads the header, so holding it costs little.
        with _OPEN_LOCK, warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(path)
        with im:
            # Pillow's own bomb limit (about 89 Mpx; settable as PIL.Image.MAX_IMAGE_PIXELS).
            limit = Image.MAX_IMAGE_PIXELS
            if limit and im.width * im.height > limit:
                raise Image.DecompressionBombError(f"{im.width}x{im.height} px exceeds the {limit:,} px limit")
            im.load()
            im = ImageOps.exif_transpose(im)
            rgb = to_rgb(im)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(f"{path}: refused as a decompression bomb ({e})") from None
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except PermissionError:
        raise ImageError(f"{path}: permission denied") from None
    except IsADirectoryError:
        raise ImageError(f"{path}: is a folder, not an image") from None
    except Exception as e:  # Pillow raises many types for corrupt data
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        if reason.startswith("cannot identify image file"):  # Pillow's words, with the path again
            reason = "not an image file, or an unsupported format"
        raise ImageError(f"{path}: cannot read image ({reason})") from None
    if min(rgb.size) < MIN_SIDE:
        raise ImageError(f"{path}: image is {rgb.width}x{rgb.height} px; at least {MIN_SIDE} px a side is needed")
    return rgb


def center_square(img: Image.Image) -> Image.Image:
    """Crop the largest centred square."""
    w, h = img.size
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    return img.crop((left, top, left + s, top + s))


def prepare(img: Image.Image, size: int) -> np.ndarray:
    """RGB PIL image -> HxWx3 uint8 array at the backbone's input size (the documented resize policy)."""
    img = center_square(img)
    if img.size != (size, size):
        img = img.resize((size, size), Image.BICUBIC)
    return np.asarray(img, dtype=np.uint8)


@dataclass
class Batch:
    """A batch of decoded images with their positions in the input list."""

    indices: list[int]
    pixels: np.ndarray  # B x H x W x 3, uint8
    non_square: int = 0


@dataclass
class Skipped:
    index: int
    path: Path
    reason: str


def _load_one(path: Path, size: int):
    try:
        img = load_rgb(path)
        return prepare(img, size), img.width != img.height, None
    except ImageError as e:
        return None, False, str(e)


def iter_batches(
    paths: Sequence[Path],
    size: int,
    batch_size: int = 64,
    workers: int = 2,
    skipped: list[Skipped] | None = None,
    strict: bool = False,
) -> Iterator[Batch]:
    """Decode images in worker threads (Pillow releases the GIL) and yield them in input order.

    Unreadable images are appended to ``skipped``; with ``strict`` or no ``skipped`` list they raise
    ImageError. They are never dropped silently. The next batch is decoded while the caller runs the network on this one.
    """
    if not (isinstance(batch_size, int) and batch_size >= 1) or not (isinstance(workers, int) and workers >= 0):
        raise RL2Error(f"batch_size must be an integer of at least 1 and workers at least 0, got {batch_size!r} and {workers!r}")
    chunks = [list(range(i, min(i + batch_size, len(paths)))) for i in range(0, len(paths), batch_size)]
    pool = ThreadPoolExecutor(workers) if workers > 0 else None

    def submit(chunk):
        if pool is None:
            return [_load_one(paths[i], size) for i in chunk]
        return [pool.submit(_load_one, paths[i], size) for i in chunk]

    def gather(pending):
        return pending if pool is None else [f.result() for f in pending]

    done = False
    try:
        pending = submit(chunks[0]) if chunks else None
        for k, chunk in enumerate(chunks):
            results = gather(pending)
            pending = submit(chunks[k + 1]) if k + 1 < len(chunks) else None
            idx, arrays, non_square = [], [], 0
            for i, (arr, ns, err) in zip(chunk, results):
                if err is not None:
                    if strict or skipped is None:
                        raise ImageError(err)
                    skipped.append(Skipped(i, paths[i], err))
                    continue
                idx.append(i)
                arrays.append(arr)
                non_square += ns
            if idx:
                yield Batch(idx, np.stack(arrays), non_square)
        done = True
    finally:
        if pool is not None:  # after an error or Ctrl-C, do not wait for a thread stuck reading a file
            pool.shutdown(wait=done, cancel_futures=True)
