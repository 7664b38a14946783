"""Loading photos robustly as (H, W, 3) uint8 RGB arrays.

Everything a user may hand us with an image suffix goes through :func:`load_image`:

* EXIF orientation is applied (the array is what a photo viewer shows).
* Greyscale, bilevel and palette images are expanded to RGB.
* Images with transparency (RGBA, LA, PA, palette with a transparent colour) are
  **composited over white** (``background``); the alpha channel is then dropped.
* CMYK (e.g. print JPEGs) and other colour spaces (YCbCr, LAB, HSV) are converted by Pillow.
* 16-bit greyscale (PNG/TIFF ``I;16``) is scaled to 8 bit with ``round(v / 257)``, so 65535
  maps to 255 and the full range is kept (not truncated); 16-bit RGB is reduced to 8 bit by
  Pillow's decoder (most significant byte). 32-bit integer images are treated as 16-bit when
  their maximum exceeds 255; float images as [0, 1] unless their maximum exceeds
  :data:`FLOAT_0_255_ABOVE` (1.5), then as 0-255 (the rule of :func:`as_rgb_uint8`).
* Animated images (GIF, APNG, WebP): the first frame.
* Decompression bombs are refused from the header alone, before any pixel is decoded:
  more than ``max_pixels`` pixels (default :data:`DEFAULT_MAX_PIXELS` = 100 megapixels,
  overridable per call) raises :class:`~facefit.errors.InvalidFileError`.
* Missing, empty, truncated or corrupt files and non-images raise
  :class:`~facefit.errors.InvalidFileError` with a one-line message naming the file.

File handles are always closed, also on errors.
"""
from __future__ import annotations

import os
import threading
import warnings
from pathlib import Path
from typing import Union

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from facefit.errors import InvalidFileError

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "FLOAT_0_255_ABOVE",
    "load_image",
    "as_rgb_uint8",
    "downscale_for_detection",
]

PathLike = Union[str, "os.PathLike[str]"]

#: Default refusal limit for :func:`load_image`, in pixels (width * height).
DEFAULT_MAX_PIXELS = 100_000_000

# Pillow's own bomb guard is a process-wide setting; we only raise it (temporarily, under
# this lock) when a caller explicitly allows more pixels than Pillow does by default.
_PIL_LIMIT_LOCK = threading.Lock()


def _name(path: PathLike) -> str:
    return os.fspath(path)


#: Float images whose largest finite value exceeds this are taken as 0-255, not [0, 1]: a
#: [0, 1] image a little out of range (sharpening, colour correction) stays [0, 1], while a
#: 0-255 image (``uint8_image.astype(float)``) with a maximum this low would be black anyway.
FLOAT_0_255_ABOVE = 1.5


def _float_to_uint8(a: np.ndarray) -> np.ndarray:
    """Float pixels -> uint8: [0, 1] scaled by 255, or 0-255 (max > :data:`FLOAT_0_255_ABOVE`)
    as is; rounded and clipped; NaN -> 0, +-inf clipped."""
    a = np.asarray(a, dtype=np.float64)
    finite = a[np.isfinite(a)]
    if not (finite.size and finite.max() > FLOAT_0_255_ABOVE):
        a = a * 255.0
    return np.clip(np.rint(np.nan_to_num(a, nan=0.0, posinf=255.0, neginf=0.0)), 0, 255).astype(np.uint8)


def _int_to_uint8(a: np.ndarray) -> np.ndarray:
    """Integer (or bool) pixels -> uint8, scaled by what the values mean:

    * bool: False -> 0, True -> 255;
    * uint8: as is; int8: clipped to 0-127 (negative values -> 0);
    * uint16: 16-bit levels, ``round(v / 257)`` (65535 -> 255), like 16-bit files;
    * wider or signed types (int16, int32, int64, uint32, uint64), which carry no bit depth
      of their own: a maximum <= 255 means 8-bit levels (as is), <= 65535 means 16-bit
      levels (``round(v / 257)``), larger values are scaled by the type's maximum
      (``v * 255 / iinfo.max``); negative values -> 0.
    """
    if a.dtype == np.bool_:
        return a.astype(np.uint8) * np.uint8(255)
    if a.dtype == np.uint8:
        return a
    if a.dtype.itemsize == 1:  # int8
        return np.clip(a, 0, 255).astype(np.uint8)
    if a.dtype == np.uint16:
        div = 257.0
    else:
        top = int(a.max()) if a.size else 0
        div = 1.0 if top <= 255 else 257.0 if top <= 65535 else np.iinfo(a.dtype).max / 255.0
    if div == 1.0:
        return np.clip(a, 0, 255).astype(np.uint8)
    return np.clip(np.rint(np.clip(a, 0, None).astype(np.float64) / div), 0, 255).astype(np.uint8)


def _pil_to_rgb_array(im: Image.Image, background: tuple[int, int, int]) -> np.ndarray:
    """Convert a loaded Pillow image of any mode to a (H, W, 3) uint8 RGB array."""
    mode = im.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        arr = np.asarray(im).astype(np.float64)
        grey = np.clip(np.rint(arr / 257.0), 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode == "I":
        arr = np.asarray(im).astype(np.float64)
        if arr.size and arr.max() > 255:
            arr = arr / 257.0
        grey = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode == "F":
        grey = _float_to_uint8(np.asarray(im))
        return np.repeat(grey[:, :, None], 3, axis=2)

    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        mode == "P" and "transparency" in im.info
    )
    if has_alpha:
        rgba = im.convert("RGBA")
        base = Image.new("RGBA", rgba.size, tuple(background) + (255,))
        base.alpha_composite(rgba)
        out = base.convert("RGB")
    elif mode == "RGB":
        out = im
    else:  # 1, L, P, CMYK, YCbCr, LAB, HSV, ...
        out = im.convert("RGB")
    return np.array(out, dtype=np.uint8, copy=True)


def load_image(
    path: PathLike,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    background: tuple[int, int, int] = (255, 255, 255),
) -> np.ndarray:
    """Load an image file as RGB.

    Args:
        path: file path (str or ``os.PathLike``).
        max_pixels: refuse images with more than this many pixels (width * height), checked
            on the header before decoding. ``None`` disables the limit (not recommended for
            untrusted input).
        background: RGB colour that transparent images are composited over.

    Returns:
        (H, W, 3) uint8 RGB array, EXIF orientation applied.

    Raises:
        InvalidFileError: missing, unreadable, empty, truncated, corrupt, not an image, or
            larger than ``max_pixels``.
    """
    name = _name(path)
    p = Path(name)
    if not p.exists():
        raise InvalidFileError(f"{name}: no such file")
    if not p.is_file():
        raise InvalidFileError(f"{name}: not a file")
    try:
        if p.stat().st_size == 0:
            raise InvalidFileError(f"{name}: empty file")
    except OSError as e:
        raise InvalidFileError(f"{name}: cannot read ({e.strerror or e})") from None

    # Pillow raises DecompressionBombError above 2 * Image.MAX_IMAGE_PIXELS; only when the
    # caller allows more than that is Pillow's guard switched off (ours stays in force).
    pil_limit = Image.MAX_IMAGE_PIXELS
    if pil_limit is None or (max_pixels is not None and max_pixels <= 2 * pil_limit):
        return _load(name, max_pixels, background)
    with _PIL_LIMIT_LOCK:
        old_limit = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            return _load(name, max_pixels, background)
        finally:
            Image.MAX_IMAGE_PIXELS = old_limit


def _load(name: str, max_pixels: int | None, background: tuple[int, int, int]) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            # Our own limit below replaces Pillow's warning.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(name) as im:
                w, h = im.size
                if max_pixels is not None and w * h > max_pixels:
                    raise InvalidFileError(
                        f"{name}: image too large ({w}x{h} = {w * h / 1e6:.0f} megapixels, "
                        f"limit {max_pixels / 1e6:g}); refusing to decode"
                    )
                if w <= 0 or h <= 0:
                    raise InvalidFileError(f"{name}: image has no pixels")
                im.load()  # the first frame of animated files
                try:  # (exif_transpose copies the pixels also when there is nothing to turn)
                    turn = im.getexif().get(0x0112, 1) in range(2, 9)  # EXIF Orientation
                except Exception:  # broken EXIF block: keep the pixels as stored
                    turn = False
                im2 = im
                if turn:
                    try:
                        im2 = ImageOps.exif_transpose(im)
                    except Exception:  # broken EXIF block: keep the pixels as stored
                        im2 = im
                return _pil_to_rgb_array(im2, background)
    except InvalidFileError:
        raise
    except Image.DecompressionBombError:
        raise InvalidFileError(
            f"{name}: image too large (decompression bomb guard); refusing to decode"
        ) from None
    except UnidentifiedImageError:
        raise InvalidFileError(f"{name}: not a recognised image file") from None
    except FileNotFoundError:
        raise InvalidFileError(f"{name}: no such file") from None
    except PermissionError:
        raise InvalidFileError(f"{name}: permission denied") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, MemoryError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InvalidFileError(f"{name}: corrupt or truncated image ({msg})") from None


def as_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """Coerce an in-memory image array to a C-contiguous (H, W, 3) uint8 RGB array.

    Accepts (H, W) greyscale, (H, W, 1), (H, W, 3) RGB or (H, W, 4) RGBA (alpha dropped).
    Pixel values are scaled by what the dtype means (never just clipped, which would
    saturate a 16-bit image):

    * uint8 as is; bool: True -> 255;
    * uint16: 16-bit levels, ``round(v / 257)`` (65535 -> 255), as :func:`load_image` reads
      16-bit files;
    * int16, int32, int64, uint32, uint64: maximum <= 255: 8-bit levels (e.g.
      ``uint8_image.astype(int)``); <= 65535: 16-bit levels; larger: scaled by the type's
      maximum; negative values -> 0;
    * floats: [0, 1] (scaled by 255, values outside clipped, NaN -> 0); an array whose
      largest finite value exceeds :data:`FLOAT_0_255_ABOVE` (1.5) is taken as 0-255 (e.g.
      ``uint8_image.astype(np.float32)``).

    Raises:
        InvalidFileError: the array does not have an image shape, or a dtype that is not a
            number (complex, object, strings).
    """
    a = np.asarray(image)
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[2] not in (1, 3, 4) or a.shape[0] == 0 or a.shape[1] == 0:
        raise InvalidFileError(f"expected an (H, W, 3) image array, got shape {a.shape}")
    if a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    elif a.shape[2] == 4:
        a = a[:, :, :3]
    if a.dtype != np.uint8:
        if np.issubdtype(a.dtype, np.floating):
            a = _float_to_uint8(a)
        elif np.issubdtype(a.dtype, np.integer) or a.dtype == np.bool_:
            a = _int_to_uint8(a)
        else:
            raise InvalidFileError(f"expected an image array of numbers, got dtype {a.dtype}")
    return np.ascontiguousarray(a)


def downscale_for_detection(image: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    """Shrink an image so that its longer side is at most ``max_side`` pixels.

    Uses area averaging (``cv2.INTER_AREA``). With the pixel-centre convention of
    docs/conventions.md, continuous coordinates scale exactly: a point (u, v) in the
    original is at (u * scale, v * scale) in the result, so detections map back with
    ``/ scale``.

    Args:
        image: (H, W, C) array.
        max_side: largest allowed side in pixels (> 0).

    Returns:
        (small, scale): the (h, w, C) image (the input itself when already small enough) and
        ``scale = w / W`` (<= 1).
    """
    if max_side <= 0:
        raise ValueError("max_side must be positive")
    h, w = image.shape[:2]
    longest = max(h, w)
    if longest <= max_side:
        return image, 1.0
    scale = max_side / float(longest)
    nw = max(1, int(round(w * scale)))
    nh = max(1, int(round(h * scale)))
    small = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA)
    # Use the exact ratio actually applied along x (the y ratio differs by < 1 px / side).
    return small, nw / float(w)
