"""load_image / downscale_for_detection on awkward files built in tmp_path."""
from __future__ import annotations

import os
import struct
import time
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image

from facefit.errors import InvalidFileError
from facefit.faces.images import as_rgb_uint8, downscale_for_detection, load_image


def _assert_one_line_naming(err: pytest.ExceptionInfo, path) -> None:
    msg = str(err.value)
    assert "\n" not in msg
    assert os.fspath(path) in msg


def test_plain_rgb_png_roundtrip(tmp_path):
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (17, 23, 3), dtype=np.uint8)
    p = tmp_path / "a.png"
    Image.fromarray(a).save(p)
    out = load_image(p)
    assert out.dtype == np.uint8 and out.shape == (17, 23, 3)
    np.testing.assert_array_equal(out, a)


def test_exif_orientation_applied(tmp_path):
    # stored 40 wide x 20 high: left half red, right half blue
    a = np.zeros((20, 40, 3), np.uint8)
    a[:, :20] = (255, 0, 0)
    a[:, 20:] = (0, 0, 255)
    im = Image.fromarray(a)
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    p = tmp_path / "rot.jpg"
    im.save(p, quality=95, exif=exif)
    out = load_image(p)
    assert out.shape == (40, 20, 3)  # portrait after applying the orientation
    top, bottom = out[:15].reshape(-1, 3).mean(0), out[25:].reshape(-1, 3).mean(0)
    assert top[0] > 200 and top[2] < 60  # stored left (red) is displayed on top
    assert bottom[2] > 200 and bottom[0] < 60


def test_greyscale(tmp_path):
    g = np.tile(np.arange(0, 250, 10, dtype=np.uint8), (5, 1))
    p = tmp_path / "g.png"
    Image.fromarray(g, mode="L").save(p)
    out = load_image(p)
    assert out.shape == (5, 25, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[:, :, c], g)


def test_rgba_composited_on_white(tmp_path):
    a = np.zeros((4, 3, 4), np.uint8)
    a[0] = (0, 0, 0, 0)  # fully transparent -> white
    a[1] = (10, 20, 30, 255)  # opaque -> unchanged
    a[2] = (0, 0, 0, 128)  # half black over white -> ~127
    a[3] = (255, 0, 0, 255)
    p = tmp_path / "rgba.png"
    Image.fromarray(a, mode="RGBA").save(p)
    out = load_image(p).astype(int)
    assert out.shape == (4, 3, 3)
    assert (out[0] == 255).all()
    assert (out[1] == (10, 20, 30)).all()
    assert (np.abs(out[2] - 127) <= 1).all()
    assert (out[3] == (255, 0, 0)).all()


def test_la_greyscale_alpha(tmp_path):
    la = np.zeros((2, 2, 2), np.uint8)
    la[0] = (50, 255)
    la[1] = (50, 0)
    p = tmp_path / "la.png"
    Image.fromarray(la, mode="LA").save(p)
    out = load_image(p)
    assert (out[0] == 50).all() and (out[1] == 255).all()


def test_16bit_grey_png_and_tiff_scaled(tmp_path):
    g = np.array([[0, 257 * 100, 65535, 32896]], dtype=np.uint16)
    for name in ("g16.png", "g16.tif"):
        p = tmp_path / name
        assert cv2.imwrite(str(p), g)
        out = load_image(p)
        assert out.shape == (1, 4, 3)
        np.testing.assert_array_equal(out[0, :, 0], [0, 100, 255, 128])


def test_16bit_rgb_png_scaled(tmp_path):
    rng = np.random.default_rng(1)
    rgb16 = rng.integers(0, 65536, (6, 7, 3), dtype=np.uint16)
    p = tmp_path / "rgb16.png"
    assert cv2.imwrite(str(p), rgb16[:, :, ::-1])  # cv2 writes BGR
    out = load_image(p).astype(int)
    expected = rgb16.astype(np.float64) / 257.0
    assert np.abs(out - expected).max() <= 1.0  # full range kept (not clipped to 255)


def test_palette(tmp_path):
    im = Image.new("P", (5, 4))
    im.putpalette([0, 0, 0, 200, 10, 30] + [0] * (256 * 3 - 6))
    im.putpixel((2, 1), 1)
    p = tmp_path / "pal.png"
    im.save(p)
    out = load_image(p)
    assert tuple(out[1, 2]) == (200, 10, 30)
    assert tuple(out[0, 0]) == (0, 0, 0)


def test_palette_with_transparency(tmp_path):
    im = Image.new("P", (3, 1))
    im.putpalette([0, 0, 0, 10, 200, 10] + [0] * (256 * 3 - 6))
    im.putpixel((1, 0), 1)
    p = tmp_path / "palt.png"
    im.save(p, transparency=0)
    out = load_image(p)
    assert tuple(out[0, 0]) == (255, 255, 255)
    assert tuple(out[0, 1]) == (10, 200, 10)


def test_cmyk_jpeg(tmp_path):
    im = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # no cyan, full magenta+yellow: red
    p = tmp_path / "cmyk.jpg"
    im.save(p, quality=95)
    assert Image.open(p).mode == "CMYK"
    out = load_image(p).reshape(-1, 3).mean(0)
    assert out[0] > 200 and out[1] < 60 and out[2] < 60


def test_animated_gif_first_frame(tmp_path):
    red = Image.new("RGB", (8, 8), (255, 0, 0))
    blue = Image.new("RGB", (8, 8), (0, 0, 255))
    p = tmp_path / "anim.gif"
    red.save(p, save_all=True, append_images=[blue], duration=100, loop=0)
    assert Image.open(p).n_frames == 2
    out = load_image(p)
    assert out.shape == (8, 8, 3)
    assert (out[..., 0] > 200).all() and (out[..., 2] < 50).all()


def test_empty_file(tmp_path):
    p = tmp_path / "empty.jpg"
    p.write_bytes(b"")
    with pytest.raises(InvalidFileError) as e:
        load_image(p)
    _assert_one_line_naming(e, p)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(InvalidFileError) as e:
        load_image(tmp_path / "nope.png")
    _assert_one_line_naming(e, tmp_path / "nope.png")
    with pytest.raises(InvalidFileError):
        load_image(tmp_path)


def test_truncated_jpeg(tmp_path):
    rng = np.random.default_rng(2)
    a = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    full = tmp_path / "full.jpg"
    Image.fromarray(a).save(full, quality=95)
    data = full.read_bytes()
    p = tmp_path / "trunc.jpg"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(InvalidFileError) as e:
        load_image(p)
    _assert_one_line_naming(e, p)


def test_text_file_with_image_suffix(tmp_path):
    p = tmp_path / "notes.jpg"
    p.write_text("this is not an image\n" * 10)
    with pytest.raises(InvalidFileError) as e:
        load_image(p)
    _assert_one_line_naming(e, p)


def _png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (
            struct.pack(">I", len(payload))
            + kind
            + payload
            + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_decompression_bomb_refused_quickly(tmp_path):
    p = tmp_path / "bomb.png"
    p.write_bytes(_png_header_only(30000, 30000))
    t0 = time.perf_counter()
    with pytest.raises(InvalidFileError) as e:
        load_image(p)
    assert time.perf_counter() - t0 < 1.0
    _assert_one_line_naming(e, p)
    assert "too large" in str(e.value)


def test_pixel_limit_overridable(tmp_path):
    p = tmp_path / "small.png"
    Image.new("RGB", (100, 100), (1, 2, 3)).save(p)
    with pytest.raises(InvalidFileError):
        load_image(p, max_pixels=5000)
    assert load_image(p, max_pixels=10_000).shape == (100, 100, 3)
    assert load_image(p, max_pixels=None).shape == (100, 100, 3)


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
def test_no_file_handle_leak(tmp_path):
    good = tmp_path / "ok.png"
    Image.new("RGB", (10, 10)).save(good)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_header_only(30000, 30000))
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(30):
        load_image(good)
        for p in (bad, bomb):
            with pytest.raises(InvalidFileError):
                load_image(p)
    assert len(os.listdir("/proc/self/fd")) <= before


def test_as_rgb_uint8():
    g = np.full((3, 4), 0.5, np.float32)
    out = as_rgb_uint8(g)
    assert out.shape == (3, 4, 3) and out.dtype == np.uint8 and (out == 128).all()
    rgba = np.zeros((2, 2, 4), np.uint8)
    assert as_rgb_uint8(rgba).shape == (2, 2, 3)
    with pytest.raises(InvalidFileError):
        as_rgb_uint8(np.zeros((2, 2, 5)))


def test_as_rgb_uint8_scales_wide_integer_types(tmp_path):
    # uint16 arrays are 16-bit levels, as 16-bit files are (they used to be clipped to 255)
    g16 = np.array([[0, 257 * 100, 65535, 32896, 200]], dtype=np.uint16)
    out = as_rgb_uint8(g16)
    assert out.shape == (1, 5, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[0, :, 0], [0, 100, 255, 128, 1])
    rng = np.random.default_rng(2)
    rgb16 = rng.integers(0, 65536, (6, 7, 3), dtype=np.uint16)
    np.testing.assert_array_equal(as_rgb_uint8(rgb16), np.rint(rgb16 / 257.0).astype(np.uint8))
    # a uint16 array and the 16-bit PNG of the same pixels give the same image
    assert cv2.imwrite(str(tmp_path / "x.png"), rgb16[:, :, ::-1])  # cv2 writes BGR
    assert np.abs(load_image(tmp_path / "x.png").astype(int) - as_rgb_uint8(rgb16).astype(int)).max() <= 1
    # a 16-bit photo is not saturated: its mean brightness survives
    photo16 = (rng.random((20, 30, 3)) * 40000).astype(np.uint16)
    assert abs(as_rgb_uint8(photo16).mean() - photo16.mean() / 257.0) < 0.5
    # types without a bit depth of their own: by their range
    img8 = rng.integers(0, 256, (4, 5, 3)).astype(np.uint8)
    for dt in (np.int16, np.int32, np.int64, np.uint32, np.uint64):
        np.testing.assert_array_equal(as_rgb_uint8(img8.astype(dt)), img8)  # 0-255 values as is
    np.testing.assert_array_equal(as_rgb_uint8(g16.astype(np.int32)), out)  # 16-bit levels
    big = np.array([[0, 2**31 - 1, 2**30]], dtype=np.int32)
    np.testing.assert_array_equal(as_rgb_uint8(big)[0, :, 0], [0, 255, 128])
    np.testing.assert_array_equal(as_rgb_uint8(np.array([[-5, 300]], np.int32))[0, :, 0], [0, 1])
    # bool masks: True is white
    np.testing.assert_array_equal(as_rgb_uint8(np.array([[True, False]]))[0, :, 0], [255, 0])
    with pytest.raises(InvalidFileError, match="dtype complex"):
        as_rgb_uint8(np.zeros((2, 2, 3), np.complex64))


def test_as_rgb_uint8_floats():
    # [0, 1] floats (documented), including a little overshoot; NaN -> 0
    f = np.array([[0.0, 0.5, 1.0, 1.2, -0.1, np.nan, np.inf]], np.float64)
    np.testing.assert_array_equal(as_rgb_uint8(f)[0, :, 0], [0, 128, 255, 255, 0, 0, 255])
    np.testing.assert_array_equal(as_rgb_uint8(f.astype(np.float16))[0, :3, 0], [0, 128, 255])
    # a 0-255 float image (uint8_image.astype(float32)) is not saturated
    rng = np.random.default_rng(3)
    img8 = rng.integers(0, 256, (4, 5, 3)).astype(np.uint8)
    np.testing.assert_array_equal(as_rgb_uint8(img8.astype(np.float32)), img8)
    np.testing.assert_array_equal(as_rgb_uint8(img8.astype(np.float32) / 255.0), img8)


def test_downscale_for_detection():
    img = np.zeros((200, 400, 3), np.uint8)
    img[100:150, 200:300] = 255
    small, s = downscale_for_detection(img, 100)
    assert small.shape == (50, 100, 3)
    assert s == pytest.approx(0.25)
    # the bright block's continuous extent scales exactly
    assert small[25:37, 50:75].min() == 255 and small[:25].max() == 0
    same, s1 = downscale_for_detection(img, 400)
    assert same is img and s1 == 1.0
    with pytest.raises(ValueError):
        downscale_for_detection(img, 0)
