"""Tests for facefit.media: turntable angles, PNG/GIF/MP4 writers, contact sheets."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
from PIL import Image, ImageSequence

import facefit.media as media
from facefit.errors import FacefitError
from facefit.media import (
    CONTACT_SHEET_YAWS,
    contact_sheet,
    image_grid,
    to_uint8_image,
    turntable_angles,
    write_contact_sheet,
    write_gif,
    write_mp4,
    write_png,
    yaw_label,
)

# distinct, well separated flat colours: easy to check after lossy encoding
COLOURS = [(230, 30, 30), (30, 200, 40), (40, 60, 220), (240, 220, 40), (200, 40, 200),
           (40, 210, 210), (250, 250, 250), (10, 10, 10), (128, 128, 128), (250, 140, 0)]


def _frames(h=36, w=48, n=10):
    frames = np.zeros((n, h, w, 3), np.uint8)
    for i in range(n):
        frames[i] = COLOURS[i % len(COLOURS)]
        frames[i, 4:10, 4 + i : 10 + i] = 255 - frames[i, 0, 0]  # a moving square
    return frames


def _files(directory):
    return sorted(p.name for p in directory.iterdir())


# ----------------------------------------------------------------------- angles


def test_turntable_angles_sweep_and_loop():
    yaw = turntable_angles(24, max_yaw=90)
    assert yaw.shape == (24,)
    assert yaw[0] == pytest.approx(-90) and yaw[12] == pytest.approx(90)
    assert np.all(np.abs(yaw) <= 90 + 1e-9)
    assert yaw[6] == 0.0 and yaw[18] == 0.0
    # first half increases, second half decreases (back and forth)
    assert np.all(np.diff(yaw[:13]) > 0) and np.all(np.diff(yaw[12:]) < 0)
    # seamless loop: the step from the last frame back to the first is a normal step
    steps = np.abs(np.diff(np.concatenate([yaw, yaw[:1]])))
    assert steps[-1] == pytest.approx(steps[0])
    # eases in/out at the extremes (smaller steps there than in the middle)
    assert steps[0] < steps[5]
    assert np.array_equal(turntable_angles(1), [0.0])
    assert turntable_angles(4, max_yaw=30).tolist() == [-30.0, 0.0, 30.0, 0.0]
    with pytest.raises(ValueError):
        turntable_angles(0)


def test_yaw_labels():
    assert [yaw_label(y) for y in CONTACT_SHEET_YAWS] == ["-90°", "-45°", "0°", "+45°", "+90°"]
    assert yaw_label(-0.0) == "0°" and yaw_label(22.5) == "+22.5°"


# ----------------------------------------------------------------------- images


def test_to_uint8_image_conversions():
    chw = np.zeros((3, 4, 5), np.float32)
    chw[0] = 1.0
    out = to_uint8_image(chw)
    assert out.shape == (4, 5, 3) and out.dtype == np.uint8
    assert out[0, 0].tolist() == [255, 0, 0]
    assert to_uint8_image(np.full((2, 2, 3), 0.5)).max() == 128
    with pytest.raises(ValueError):
        to_uint8_image(np.zeros((4, 5)).reshape(2, 2, 5))


def test_image_grid_layout():
    a = np.full((10, 20, 3), 1, np.uint8)
    b = np.full((6, 20, 3), 2, np.uint8)
    grid = image_grid([a, b, a], ncols=2, pad=2, background=255)
    assert grid.shape == (2 * 10 + 3 * 2, 2 * 20 + 3 * 2, 3)
    assert (grid[2:12, 2:22] == 1).all()
    assert (grid[4:10, 24:44] == 2).all() and (grid[2:4, 24:44] == 255).all()  # centred
    assert (grid[14:24, 2:22] == 1).all() and (grid[14:24, 24:44] == 255).all()


def test_write_png(tmp_path):
    img = _frames(n=1)[0]
    write_png(img, tmp_path / "a.png")
    back = np.asarray(Image.open(tmp_path / "a.png").convert("RGB"))
    np.testing.assert_array_equal(back, img)
    assert _files(tmp_path) == ["a.png"]


def test_contact_sheet_size_and_labels(tmp_path):
    views = [np.full((30, 40, 3), c, np.uint8) for c in COLOURS[:5]]
    labels = [yaw_label(y) for y in CONTACT_SHEET_YAWS]
    path = tmp_path / "sheet.png"
    sheet = write_contact_sheet(views, labels, path, ncols=3, font_size=10, pad=4)
    strip = 10 + 6
    expected = (2 * (30 + strip) + 3 * 4, 3 * 40 + 4 * 4)
    assert sheet.shape == (*expected, 3)
    with Image.open(path) as im:
        assert im.size == (expected[1], expected[0]) and im.format == "PNG"
    # each label strip (white) contains dark text pixels; the unused 6th cell does not
    for k in range(6):
        r, c = divmod(k, 3)
        y0 = 4 + r * (30 + strip + 4) + 30
        x0 = 4 + c * (40 + 4)
        has_text = (sheet[y0 : y0 + strip, x0 : x0 + 40] < 100).any()
        assert has_text == (k < 5)
    # the images themselves are in place
    assert (sheet[4:34, 4:44] == COLOURS[0]).all()
    # without labels it is a plain grid
    assert contact_sheet(views, None, ncols=5, pad=0).shape == (30, 200, 3)
    with pytest.raises(ValueError):
        contact_sheet(views, labels[:2])


# ----------------------------------------------------------------------- GIF


def test_gif_frames_loop_and_colours(tmp_path):
    frames = _frames()
    path = tmp_path / "turn.gif"
    write_gif(frames, path, fps=10)
    with Image.open(path) as im:
        assert im.n_frames == len(frames)
        assert im.info.get("loop") == 0  # loop forever
        assert im.size == (48, 36)
        decoded = [np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(im)]
        assert im.info.get("duration") == 100
    for got, want in zip(decoded, frames):
        assert np.abs(got.astype(int) - want.astype(int)).max() <= 24
    assert _files(tmp_path) == ["turn.gif"]


def test_gif_accepts_list_of_float_frames(tmp_path):
    frames = [f.astype(np.float32) / 255.0 for f in _frames(n=3)]
    write_gif(frames, tmp_path / "a.gif", fps=25)
    with Image.open(tmp_path / "a.gif") as im:
        assert im.n_frames == 3 and im.info.get("duration") == 40


def test_gif_rejects_mismatched_frames(tmp_path):
    with pytest.raises(ValueError, match="frame 1"):
        write_gif([np.zeros((4, 4, 3), np.uint8), np.zeros((5, 4, 3), np.uint8)],
                  tmp_path / "a.gif", fps=10)
    with pytest.raises(ValueError):
        write_gif([], tmp_path / "a.gif", fps=10)
    assert _files(tmp_path) == []


# ----------------------------------------------------------------------- MP4


def _read_video(path):
    cap = cv2.VideoCapture(str(path))
    assert cap.isOpened()
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame[:, :, ::-1])
    cap.release()
    return frames


def test_mp4_frame_count_and_size(tmp_path):
    frames = _frames(n=12)
    path = tmp_path / "turn.mp4"
    write_mp4(frames, path, fps=24)
    decoded = _read_video(path)
    assert len(decoded) == 12
    assert decoded[0].shape == (36, 48, 3)
    cap = cv2.VideoCapture(str(path))
    assert cap.get(cv2.CAP_PROP_FPS) == pytest.approx(24)
    cap.release()
    # lossy, but the flat colours must survive roughly
    centre = decoded[3][20:30, 20:40].reshape(-1, 3).mean(axis=0)
    np.testing.assert_allclose(centre, COLOURS[3], atol=20)
    assert _files(tmp_path) == ["turn.mp4"]


def test_mp4_is_vp9_when_opencv_has_it_else_mp4v(tmp_path, monkeypatch):
    """Browsers play VP9 in MP4, not MPEG-4 part 2: VP9 first, mp4v as the fallback."""
    write_mp4(_frames(n=4), tmp_path / "a.mp4", fps=10)
    cap = cv2.VideoCapture(str(tmp_path / "a.mp4"))
    fourcc = int(cap.get(cv2.CAP_PROP_FOURCC)).to_bytes(4, "little").decode("ascii", "replace")
    cap.release()
    assert fourcc.lower() in ("vp09", "vp90"), fourcc  # the opencv-python wheels have VP9
    real = media._mp4_opencv_codec
    monkeypatch.setattr(media, "_mp4_opencv_codec", lambda a, t, f, c: c != "vp09" and real(a, t, f, c))
    write_mp4(_frames(n=4), tmp_path / "b.mp4", fps=10)
    assert len(_read_video(tmp_path / "b.mp4")) == 4


def test_mp4_odd_size_is_padded_to_even(tmp_path):
    write_mp4(_frames(h=35, w=47, n=3), tmp_path / "odd.mp4", fps=10)
    decoded = _read_video(tmp_path / "odd.mp4")
    assert len(decoded) == 3 and decoded[0].shape == (36, 48, 3)


def test_mp4_without_encoder_is_an_error_and_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(media, "_mp4_opencv", lambda *a: False)
    monkeypatch.setattr(media, "_mp4_imageio", lambda *a: False)
    (tmp_path / "old.mp4").write_bytes(b"old")
    with pytest.raises(FacefitError, match="no working MP4 encoder") as exc_info:
        write_mp4(_frames(n=2), tmp_path / "old.mp4", fps=10)
    assert "\n" not in str(exc_info.value)
    assert _files(tmp_path) == ["old.mp4"]
    assert (tmp_path / "old.mp4").read_bytes() == b"old"


# ----------------------------------------------------------------------- failures


def test_failures_leave_no_file(tmp_path, monkeypatch):
    frames = _frames(n=3)
    missing = tmp_path / "missing-dir"
    for writer, name in ((write_gif, "a.gif"), (write_mp4, "a.mp4")):
        with pytest.raises(FacefitError, match="does not exist"):
            writer(frames, missing / name, fps=10)
    with pytest.raises(FacefitError, match="does not exist"):
        write_png(frames[0], missing / "a.png")
    with pytest.raises(FacefitError, match="does not exist"):
        write_contact_sheet(frames, ["a", "b", "c"], missing / "s.png")
    assert not missing.exists()

    # a crash inside the encoder mid-write leaves neither the target nor a temp file
    def broken_save(self, fp, *args, **kwargs):
        fp.write(b"GIF89a partial")
        raise RuntimeError("encoder crashed")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(RuntimeError, match="encoder crashed"):
        write_gif(frames, tmp_path / "a.gif", fps=10)
    with pytest.raises(RuntimeError, match="encoder crashed"):
        write_png(frames[0], tmp_path / "a.png")
    assert _files(tmp_path) == []
