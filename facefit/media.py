"""Writers for rendered images and turntable animations (PNG, GIF, MP4, contact sheets).

Images follow docs/conventions.md: numpy (H, W, 3) uint8 RGB. For convenience every
writer also accepts float images in [0, 1] and channel-first (3, H, W) arrays / torch
tensors (see :func:`to_uint8_image`). Every file is written atomically through
:mod:`facefit.atomic`: on failure nothing (and no temporary file) is left behind.

Turntables: :func:`turntable_angles` gives the yaw of each frame (a seamless
back-and-forth sweep); render one frame per yaw and pass the frames to
:func:`write_gif` / :func:`write_mp4`. :data:`CONTACT_SHEET_YAWS` are the views of the
standard contact sheet (:func:`write_contact_sheet`, labels from :func:`yaw_label`).
"""
from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from facefit.atomic import atomic_output_path, atomic_write
from facefit.errors import FacefitError

__all__ = [
    "CONTACT_SHEET_YAWS",
    "turntable_angles",
    "yaw_label",
    "to_uint8_image",
    "image_grid",
    "contact_sheet",
    "write_png",
    "write_gif",
    "write_mp4",
    "write_contact_sheet",
]

#: Yaw angles (degrees) of the views in a standard contact sheet, left to right.
CONTACT_SHEET_YAWS = (-90, -45, 0, 45, 90)


def turntable_angles(n_frames: int, max_yaw: float = 90.0) -> np.ndarray:
    """Yaw angles (degrees) for a looping back-and-forth turntable.

    ``yaw[k] = -max_yaw * cos(2 * pi * k / n_frames)``: the head starts at ``-max_yaw``,
    turns smoothly to ``+max_yaw`` at ``k = n_frames / 2`` and back. The motion eases in
    and out at the extremes (no jerk when it reverses) and the sequence loops
    seamlessly: the frame after the last would be frame 0 again, so no pose is
    duplicated at the loop point. ``n_frames == 1`` gives a single frontal view.

    Args:
        n_frames: number of frames, >= 1.
        max_yaw: largest |yaw| in degrees (>= 0).
    Returns:
        (n_frames,) float64 yaw angles in degrees.
    """
    n = int(n_frames)
    if n < 1:
        raise ValueError(f"n_frames must be >= 1, got {n_frames}")
    if max_yaw < 0:
        raise ValueError(f"max_yaw must be >= 0, got {max_yaw}")
    if n == 1:
        return np.zeros(1)
    yaw = -float(max_yaw) * np.cos(2.0 * np.pi * np.arange(n) / n)
    return np.round(yaw, 9) + 0.0  # exact 0 / ±max instead of 1e-15 noise, no -0.0


def yaw_label(yaw: float) -> str:
    """Contact-sheet label for a yaw angle, e.g. ``-90°``, ``0°``, ``+45°``."""
    value = float(yaw)
    text = f"{value:.0f}" if abs(value - round(value)) < 1e-6 else f"{value:.1f}"
    if text in ("-0", "-0.0"):
        text = text[1:]
    return f"+{text}°" if value > 0 and not text.startswith("+") else f"{text}°"


def to_uint8_image(image: Any) -> np.ndarray:
    """Convert one image to (H, W, 3) uint8 RGB.

    Args:
        image: (H, W, 3) or (3, H, W) array or tensor; uint8, or float in [0, 1]
            (clipped, rounded). (H, W) grey and (H, W, 4) RGBA are also accepted
            (grey is replicated, alpha dropped).
    Returns:
        (H, W, 3) uint8, C-contiguous.
    """
    if hasattr(image, "detach") and hasattr(image, "cpu"):
        image = image.detach().cpu().numpy()
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[0] in (3, 4) and arr.shape[-1] not in (3, 4):
        arr = np.moveaxis(arr, 0, -1)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise ValueError(f"expected an (H, W, 3) image, got shape {arr.shape}")
    arr = arr[:, :, :3]
    if arr.dtype != np.uint8:
        if arr.dtype.kind == "f":
            arr = np.rint(np.clip(np.nan_to_num(arr), 0.0, 1.0) * 255.0)
        elif arr.dtype.kind == "b":
            arr = arr * 255
        else:
            arr = np.clip(arr, 0, 255)
        arr = arr.astype(np.uint8)
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"empty image of shape {arr.shape}")
    return np.ascontiguousarray(arr)


def _frames(frames: Any) -> list[np.ndarray]:
    """Sequence of images / (N, H, W, 3) array -> list of same-size (H, W, 3) uint8."""
    if hasattr(frames, "detach") and hasattr(frames, "cpu"):
        frames = frames.detach().cpu().numpy()
    out = [to_uint8_image(f) for f in frames]
    if not out:
        raise ValueError("no frames to write")
    shape = out[0].shape
    for i, f in enumerate(out):
        if f.shape != shape:
            raise ValueError(f"frame {i} has shape {f.shape}, frame 0 has {shape}")
    return out


def image_grid(
    images: Sequence[Any], ncols: int | None = None, pad: int = 0, background: int = 255
) -> np.ndarray:
    """Tile images into a grid, row-major.

    Args:
        images: N images (see :func:`to_uint8_image`); sizes may differ, each is
            centred in a cell of the largest height and width.
        ncols: columns (default: all in one row).
        pad: pixels of background between cells and around the grid.
        background: grey level 0..255 of empty space.
    Returns:
        (rows * Hc + (rows + 1) * pad, ncols * Wc + (ncols + 1) * pad, 3) uint8, with
        rows = ceil(N / ncols) and (Hc, Wc) the largest image size.
    """
    imgs = [to_uint8_image(im) for im in images]
    if not imgs:
        raise ValueError("no images for the grid")
    ncols = len(imgs) if ncols is None else int(ncols)
    if ncols < 1:
        raise ValueError(f"ncols must be >= 1, got {ncols}")
    ncols = min(ncols, len(imgs))
    nrows = math.ceil(len(imgs) / ncols)
    ch = max(im.shape[0] for im in imgs)
    cw = max(im.shape[1] for im in imgs)
    grid = np.full(
        (nrows * ch + (nrows + 1) * pad, ncols * cw + (ncols + 1) * pad, 3),
        background,
        dtype=np.uint8,
    )
    for k, im in enumerate(imgs):
        r, c = divmod(k, ncols)
        y = pad + r * (ch + pad) + (ch - im.shape[0]) // 2
        x = pad + c * (cw + pad) + (cw - im.shape[1]) // 2
        grid[y : y + im.shape[0], x : x + im.shape[1]] = im
    return grid


def _font(size: int):
    """Pillow's default font at ``size`` px (bitmap fallback without FreeType)."""
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # old Pillow / no FreeType
        return ImageFont.load_default()


def contact_sheet(
    images: Sequence[Any],
    labels: Sequence[str] | None = None,
    ncols: int | None = None,
    font_size: int | None = None,
    pad: int = 4,
) -> np.ndarray:
    """A grid of images, each with a small centred text label underneath.

    Args:
        images: N images (see :func:`to_uint8_image`).
        labels: N strings (e.g. ``[yaw_label(y) for y in CONTACT_SHEET_YAWS]``) or None.
        ncols: columns (default: all in one row).
        font_size: label height in px (default: about 1/12 of the image height,
            between 10 and 32).
        pad: white border between and around cells.
    Returns:
        (H_sheet, W_sheet, 3) uint8: the :func:`image_grid` of the images, each cell
        extended below by a label strip of ``font_size + 6`` px when labels are given.
    """
    from PIL import Image, ImageDraw

    imgs = [to_uint8_image(im) for im in images]
    if labels is not None and len(labels) != len(imgs):
        raise ValueError(f"{len(imgs)} images but {len(labels)} labels")
    if labels is None:
        return image_grid(imgs, ncols, pad=pad)
    ch = max(im.shape[0] for im in imgs)
    cw = max(im.shape[1] for im in imgs)
    size = font_size or int(np.clip(round(ch / 12), 10, 32))
    font = _font(size)
    strip = size + 6
    cells = []
    for im, label in zip(imgs, labels):
        cell = np.full((ch + strip, cw, 3), 255, np.uint8)
        y, x = (ch - im.shape[0]) // 2, (cw - im.shape[1]) // 2
        cell[y : y + im.shape[0], x : x + im.shape[1]] = im
        pil = Image.fromarray(cell)
        draw = ImageDraw.Draw(pil)
        text = str(label)
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        tx = (cw - (right - left)) / 2 - left
        ty = ch + (strip - (bottom - top)) / 2 - top
        draw.text((tx, ty), text, fill=(20, 20, 20), font=font)
        cells.append(np.asarray(pil))
    return image_grid(cells, ncols, pad=pad)


def write_png(image: Any, path: str | os.PathLike) -> Path:
    """Write one image as PNG, atomically.

    Args:
        image: (H, W, 3) uint8 RGB (see :func:`to_uint8_image` for other inputs).
        path: target file.
    Returns:
        ``Path(path)``.
    """
    from PIL import Image

    arr = to_uint8_image(image)
    path = Path(path)
    with atomic_write(path, "wb") as f:
        Image.fromarray(arr, "RGB").save(f, format="PNG")
    return path


def write_contact_sheet(
    images: Sequence[Any],
    labels: Sequence[str] | None,
    path: str | os.PathLike,
    ncols: int | None = None,
    **kwargs: Any,
) -> np.ndarray:
    """Write :func:`contact_sheet` ``(images, labels, ncols, **kwargs)`` as a PNG.

    Returns:
        The sheet, (H_sheet, W_sheet, 3) uint8.
    """
    sheet = contact_sheet(images, labels, ncols, **kwargs)
    write_png(sheet, path)
    return sheet


def _check_fps(fps: float) -> float:
    fps = float(fps)
    if not math.isfinite(fps) or fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    return fps


def write_gif(frames: Any, path: str | os.PathLike, fps: float = 15.0) -> Path:
    """Write an animated GIF that loops forever, atomically (Pillow).

    All frames share one adaptive 256-colour palette computed (median cut) from a
    sample of all frames, without dithering, so colours do not flicker between frames.
    GIF stores delays in 1/100 s and browsers slow down delays under 20 ms, so the
    delay is ``round(100 / fps)`` centiseconds, at least 2 (fps above 50 plays at 50).
    Note that Pillow merges *consecutive identical* frames into one longer frame.

    Args:
        frames: N images (H, W, 3) uint8 RGB, or an (N, H, W, 3) array.
        path: target ``.gif``.
        fps: frames per second.
    Returns:
        ``Path(path)``.
    """
    from PIL import Image

    fps = _check_fps(fps)
    arrays = _frames(frames)
    path = Path(path)
    # palette from up to 16 evenly spaced frames, spatially subsampled to <= ~256k px
    picks = arrays[:: max(1, len(arrays) // 16)][:16]
    h, w = picks[0].shape[:2]
    step = max(1, int(math.sqrt(h * w * len(picks) / 262144)))
    sample = np.concatenate([p[::step, ::step] for p in picks], axis=0)
    palette = Image.fromarray(sample).quantize(256, method=Image.Quantize.MEDIANCUT)
    images = [
        Image.fromarray(a).quantize(palette=palette, dither=Image.Dither.NONE) for a in arrays
    ]
    duration = max(2, round(100.0 / fps)) * 10  # ms, multiple of 10
    with atomic_write(path, "wb") as f:
        images[0].save(
            f,
            format="GIF",
            save_all=True,
            append_images=images[1:],
            duration=duration,
            loop=0,
            optimize=False,
            disposal=1,
        )
    return path


def _even(frame: np.ndarray) -> np.ndarray:
    """Pad an odd height/width by one replicated row/column (video codecs need even)."""
    h, w = frame.shape[:2]
    if h % 2 == 0 and w % 2 == 0:
        return frame
    return np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")


#: OpenCV codecs tried in order: VP9 (plays in web browsers; in the opencv-python wheels'
#: FFmpeg), then MPEG-4 part 2 (always there, but most browsers will not play it).
MP4_CODECS = ("vp09", "mp4v")


def _mp4_opencv(arrays: list[np.ndarray], tmp: Path, fps: float) -> bool:
    """Encode with OpenCV, trying :data:`MP4_CODECS` in order; True once a readable file resulted."""
    return any(_mp4_opencv_codec(arrays, tmp, fps, codec) for codec in MP4_CODECS)


def _mp4_opencv_codec(arrays: list[np.ndarray], tmp: Path, fps: float, codec: str) -> bool:
    try:
        import cv2
    except ImportError:
        return False
    h, w = arrays[0].shape[:2]
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*codec), fps, (w, h))
    try:
        if not writer.isOpened():
            return False
        for a in arrays:
            writer.write(np.ascontiguousarray(a[:, :, ::-1]))  # RGB -> BGR
    finally:
        writer.release()
    cap = cv2.VideoCapture(str(tmp))
    try:
        ok, frame = cap.read()
        return bool(ok) and frame is not None and frame.shape[:2] == (h, w)
    finally:
        cap.release()


def _mp4_imageio(arrays: list[np.ndarray], tmp: Path, fps: float) -> bool:
    """Encode with imageio's ffmpeg plugin (needs imageio-ffmpeg); True on success."""
    try:
        import imageio.v2 as iio

        with iio.get_writer(str(tmp), format="FFMPEG", fps=fps, macro_block_size=1) as writer:
            for a in arrays:
                writer.append_data(a)
    except Exception:  # plugin/backend missing or failing: report "no encoder"
        return False
    return tmp.stat().st_size > 0


def write_mp4(frames: Any, path: str | os.PathLike, fps: float = 30.0) -> Path:
    """Write an MP4 video, atomically.

    Encoded with OpenCV's ``cv2.VideoWriter``, VP9 first (browsers play it) and the 'mp4v'
    codec (MPEG-4 part 2, always available in opencv-python wheels) if VP9 is missing,
    each checked by reading the first frame back; if both fail, imageio's ffmpeg plugin
    is tried. Odd frame sizes are padded
    by one replicated row/column to even sizes (required by most codecs/players).

    Args:
        frames: N images (H, W, 3) uint8 RGB, or an (N, H, W, 3) array.
        path: target ``.mp4``.
        fps: frames per second.
    Returns:
        ``Path(path)``.
    Raises:
        FacefitError: no working MP4 encoder, or output location problems.
    """
    fps = _check_fps(fps)
    arrays = [_even(a) for a in _frames(frames)]
    path = Path(path)
    with atomic_output_path(path) as tmp:
        if not (_mp4_opencv(arrays, tmp, fps) or _mp4_imageio(arrays, tmp, fps)):
            raise FacefitError(
                f"cannot write {path}: no working MP4 encoder (OpenCV's VP9 and 'mp4v' failed and "
                "imageio-ffmpeg is not available); write a GIF instead or install imageio-ffmpeg"
            )
    return path


def turntable_paths(out: str | os.PathLike) -> tuple[Path, Path, Path]:
    """The GIF, MP4 and contact sheet a turntable written to ``out`` (a prefix, or a
    .gif/.mp4/.png path) consists of."""
    out = Path(out)
    if out.suffix.lower() in (".gif", ".mp4", ".png"):
        stem = out.with_suffix("")
    else:
        stem = out
    return (stem.parent / (stem.name + ".gif"), stem.parent / (stem.name + ".mp4"),
            stem.parent / (stem.name + "_views.png"))
