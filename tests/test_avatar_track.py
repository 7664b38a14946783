"""--fuse --pose on a video: per-frame pose/expression track (facefit.avatar.track)."""
import csv

import cv2
import numpy as np
import pytest

from facefit.avatar.track import read_track_csv, smooth_track, track_video, write_track_csv
from facefit.cli import main

from conftest import EXAMPLE

N_FRAMES = 16
FPS = 10


def _angles():
    return [5.0 * np.sin(k / 3.0) for k in range(N_FRAMES)]


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """A tiny video: the astronaut's face turning in the image plane (roll) and shifting."""
    img = cv2.imread(str(EXAMPLE))[30:290, 120:380]  # 260 x 260 around the face
    H, W = img.shape[:2]
    path = tmp_path_factory.mktemp("clip") / "clip.mp4"
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), FPS, (W, H))
    for k, ang in enumerate(_angles()):
        M = cv2.getRotationMatrix2D((W / 2, H / 2), ang, 1.0)
        M[0, 2] += 4 * np.sin(k / 4.0)
        w.write(cv2.warpAffine(img, M, (W, H), borderMode=cv2.BORDER_REFLECT))
    w.release()
    return path


def test_track_follows_the_head(default_model, clip):
    tr = track_video(default_model, np.zeros(default_model.n_shape), clip, smooth=0)
    assert len(tr) == N_FRAMES and tr.lost == [] and tr.redetections <= 3
    assert np.allclose(tr.times, np.arange(N_FRAMES) / FPS)
    truth = np.array(_angles())
    # an image rotation by +a degrees (counter-clockwise on screen) is a roll of +a
    rel = tr.roll - tr.roll[0]
    assert np.abs(rel - (truth - truth[0])).max() < 2.0, rel
    assert np.abs(tr.yaw - tr.yaw[0]).max() < 4.0
    s = tr.summary()
    assert s["frames_tracked"] == N_FRAMES and s["ms_per_frame"] > 0 and s["ms_per_detection"] > 0
    # the smile is tracked in every frame
    sm = tr.expr[:, tr.names.index("mouthSmile_L")]
    assert (sm > 0.2).all()
    # smoothing: less frame-to-frame jitter, same overall motion
    sm_tr = smooth_track(tr, 0.1)
    jitter = lambda a: np.abs(np.diff(a, 2)).mean()  # noqa: E731
    assert jitter(sm_tr.roll) < jitter(tr.roll)
    assert jitter(sm_tr.expr[:, tr.names.index("jawOpen")]) <= jitter(tr.expr[:, tr.names.index("jawOpen")])
    assert np.abs(sm_tr.roll - tr.roll).mean() < 1.0
    assert sm_tr.expr.min() >= 0 and sm_tr.expr.max() <= 1
    # every other frame
    half = track_video(default_model, np.zeros(default_model.n_shape), clip, every=2, max_frames=4)
    assert list(half.frames) == [0, 2, 4, 6]


def test_track_csv(default_model, clip, tmp_path):
    tr = track_video(default_model, np.zeros(default_model.n_shape), clip, max_frames=5)
    p = write_track_csv(tr, tmp_path / "t.csv")
    with open(p, newline="") as f:
        head = next(csv.reader(f))
    assert head[:8] == ["frame", "time", "yaw", "pitch", "roll", "tx", "ty", "tz"]
    assert head[8:] == list(default_model.expr_names)
    cols = read_track_csv(p)
    assert len(cols["frame"]) == 5 and np.allclose(cols["roll"], tr.roll, atol=1e-3)
    assert np.allclose(cols["jawOpen"], tr.expr[:, tr.names.index("jawOpen")], atol=1e-4)


def test_fuse_pose_cli(untrained_checkpoint, clip, tmp_path, capsys):
    out = tmp_path / "me.glb"
    rc = main(["reconstruct", str(clip), "--fuse", "--pose", "-o", str(out), "--checkpoint", str(untrained_checkpoint),
               "--track-every", "2", "--save-coeffs", "json"])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert out.is_file() and (tmp_path / "me_track.csv").is_file()
    cols = read_track_csv(tmp_path / "me_track.csv")
    assert list(cols["frame"]) == list(range(0, N_FRAMES, 2))
    assert "tracked 8 of 8 frames" in err
    # the animated GLB: ARKit-named morph targets, weights and rotation sampled at the frames' times
    from facefit.avatar.gltf import accessor_array, read_glb

    tree, binary = read_glb(tmp_path / "me_track.glb")
    names = tree["meshes"][0]["extras"]["targetNames"]
    assert "jawOpen" in names and "mouthSmileLeft" in names
    anim = tree["animations"][0]
    paths = {c["target"]["path"]: c["sampler"] for c in anim["channels"]}
    assert set(paths) == {"weights", "rotation"}
    times = accessor_array(tree, binary, anim["samplers"][paths["weights"]]["input"])
    assert np.allclose(times.reshape(-1), np.arange(0, N_FRAMES, 2) / FPS, atol=1e-5)
    w = accessor_array(tree, binary, anim["samplers"][paths["weights"]]["output"]).reshape(len(times), len(names))
    assert np.allclose(w[:, names.index("jawOpen")], cols["jawOpen"], atol=1e-3)
    q = accessor_array(tree, binary, anim["samplers"][paths["rotation"]]["output"]).reshape(len(times), 4)
    assert np.allclose(np.linalg.norm(q, axis=1), 1, atol=1e-4)
    import json

    rec = json.loads((tmp_path / "me.json").read_text())
    assert rec["track"]["frames_tracked"] == 8 and rec["track"]["every"] == 2
    # no video among the inputs: a one-line error, nothing written
    rc = main(["reconstruct", str(EXAMPLE), str(EXAMPLE), "--fuse", "--pose", "-o", str(tmp_path / "x.glb"),
               "--checkpoint", str(untrained_checkpoint)])
    err = capsys.readouterr().err
    assert rc == 1 and "one video" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.glb").exists()
