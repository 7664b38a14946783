"""Landmark fitting (facefit.fitting): pose / expression / shape recovery, robustness, API."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from facefit.errors import FacefitError
from facefit.fitting import (
    MIN_LANDMARK_SPREAD_PX,
    FitResult,
    contour_candidates,
    fit_landmarks,
    matrix_to_euler,
    project_fit,
    rotation_vector_to_matrix,
)
from facefit.render import euler_to_matrix, project, world_to_camera

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
ICT_DIR = SHARED / "models" / "ICT-FaceKit"
SIZE = 250
FOCAL = 0.5 * SIZE / math.tan(math.radians(7.5))


@pytest.fixture(scope="module")
def ict():
    assert ICT_DIR.is_dir(), "ICT-FaceKit not in ../shared"
    from facefit.model_io import convert_model, find_shared_ict

    return convert_model("ict", find_shared_ict(), "face")


def synth(model, B=4, seed=0, yaw_max=35.0):
    """Known faces, poses and their projected 68 landmark vertices."""
    g = torch.Generator().manual_seed(seed)
    shape = torch.zeros(B, model.n_shape)
    shape[:, :8] = torch.randn(B, 8, generator=g)
    expr = torch.zeros(B, model.n_expr)
    jaw = model.expr_names.index("jawOpen")
    smile = [model.expr_names.index("mouthSmile_L"), model.expr_names.index("mouthSmile_R")]
    expr[:, jaw] = 0.1 + 0.4 * torch.rand(B, generator=g)
    expr[:, smile[0]] = expr[:, smile[1]] = 0.5 * torch.rand(B, generator=g)
    yaw = (2 * torch.rand(B, generator=g) - 1) * yaw_max
    pitch = (2 * torch.rand(B, generator=g) - 1) * 12
    roll = (2 * torch.rand(B, generator=g) - 1) * 10
    verts, _ = model.decode(shape, expr_coeffs=expr)
    t = torch.stack([10 * torch.randn(B, generator=g), 10 * torch.randn(B, generator=g), 1400 + 50 * torch.randn(B, generator=g)], 1)
    screen = project(world_to_camera(verts, euler_to_matrix(yaw, pitch, roll), t), FOCAL, SIZE / 2, SIZE / 2)
    return dict(shape=shape, expr=expr, jaw=jaw, yaw=yaw, pitch=pitch, roll=roll, t=t, verts=verts, screen=screen)


def test_rotation_helpers_roundtrip():
    yaw = torch.tensor([0.0, 30.0, -70.0, 10.0])
    pitch = torch.tensor([0.0, -20.0, 15.0, 80.0])
    roll = torch.tensor([0.0, 5.0, -40.0, 100.0])
    y, p, r = matrix_to_euler(euler_to_matrix(yaw, pitch, roll))
    assert torch.allclose(y, yaw, atol=1e-3) and torch.allclose(p, pitch, atol=1e-3) and torch.allclose(r, roll, atol=1e-3)
    w = torch.tensor([[0.0, 0.0, 0.0], [0.3, -0.2, 0.1], [0.0, 0.0, math.pi / 2]])
    R = rotation_vector_to_matrix(w)
    assert torch.allclose(R @ R.transpose(1, 2), torch.eye(3).expand(3, 3, 3), atol=1e-6)
    assert torch.allclose(R[0], torch.eye(3))
    assert torch.allclose(R[2] @ torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0]), atol=1e-6)


def test_fit_recovers_pose_expression_shape_with_bad_landmarks(ict):
    s = synth(ict, B=4)
    lm = s["screen"][:, torch.tensor(ict.landmarks), :2].clone()
    bad = [2, 19, 33, 50]  # a jaw point, a brow, the nose and a mouth corner
    lm_bad = lm.clone()
    lm_bad[:, bad] += torch.tensor([22.0, -18.0])
    good = [i for i in range(68) if i not in bad]

    res = fit_landmarks(ict, lm_bad, (SIZE, SIZE), contour="fixed", steps=200, focal=FOCAL)
    assert isinstance(res, FitResult) and res.batch_size == 4
    assert res.verts.shape == (4, ict.n_vertices, 3)
    for k in ("yaw", "pitch", "roll"):
        err = (getattr(res, k) - s[k]).abs().max().item()
        assert err < 3.0, (k, err)
    # the corrupted points are ignored: the others are matched to well under a pixel
    assert res.landmark_residuals[:, good].mean().item() < 0.8
    assert res.landmark_residuals[:, bad].mean().item() > 15.0
    assert (res.expr_coeffs[:, s["jaw"]] - s["expr"][:, s["jaw"]]).abs().max().item() < 0.15
    # fitted geometry is closer to the truth than the mean face with the true expression
    face = torch.tensor(np.asarray(ict.face_mask))
    fit_err = (res.verts - s["verts"])[:, face].norm(dim=-1).mean().item()
    mean_verts, _ = ict.decode(None, expr_coeffs=s["expr"])
    base_err = (mean_verts - s["verts"])[:, face].norm(dim=-1).mean().item()
    assert fit_err < 0.85 * base_err, (fit_err, base_err)

    # plain least squares is dragged by the same four bad points
    ls = fit_landmarks(ict, lm_bad, (SIZE, SIZE), contour="fixed", steps=200, focal=FOCAL, robust_scale=100.0)
    assert ls.landmark_residuals[:, good].mean().item() > 2 * res.landmark_residuals[:, good].mean().item()


def test_project_fit_matches_residuals_and_fixed_shape(ict):
    s = synth(ict, B=2, seed=3)
    lm = s["screen"][:, torch.tensor(ict.landmarks), :2]
    init = s["shape"][:, :8]
    res = fit_landmarks(ict, lm, (SIZE, SIZE), fit_shape=False, init=init, steps=120, focal=FOCAL)
    assert torch.allclose(res.shape_coeffs[:, :8], init)  # kept, not fitted
    scr = project_fit(res)
    p = scr.gather(1, res.landmark_vertices.unsqueeze(-1).expand(2, 68, 3))[..., :2]
    assert torch.allclose((p - lm).norm(dim=-1), res.landmark_residuals, atol=1e-3)
    assert (scr[..., 2] > 0).all()
    assert res.landmark_error_px.max().item() < 1.5
    # the per-photo camera reproduces the same projection through the renderer's helpers
    cam = res.camera(1)
    scr2 = cam.project(world_to_camera(res.verts[1:2], res.R[1:2], res.t[1:2]))
    assert torch.allclose(scr2, scr[1:2], atol=1e-2)
    # warm start from a FitResult converges immediately to the same answer
    again = fit_landmarks(ict, lm, (SIZE, SIZE), fit_shape=False, init=res, steps=20, focal=FOCAL)
    assert (again.yaw - res.yaw).abs().max().item() < 0.5


def test_silhouette_contour_for_turned_faces(ict):
    """Jaw landmarks of a turned face lie on the far cheek's silhouette, not on fixed vertices."""
    s = synth(ict, B=3, seed=5, yaw_max=5.0)
    yaw = torch.tensor([45.0, -50.0, 40.0])
    verts = s["verts"]
    screen = project(world_to_camera(verts, euler_to_matrix(yaw, s["pitch"], s["roll"]), s["t"]), FOCAL, SIZE / 2, SIZE / 2)
    lm = screen[:, torch.tensor(ict.landmarks), :2].clone()
    # true outline: the candidate of each jaw line projecting furthest outwards
    cands = contour_candidates(ict)
    Rc = euler_to_matrix(yaw, s["pitch"], s["roll"]) * torch.tensor([1.0, -1.0, -1.0]).view(1, 3, 1)
    d = torch.nn.functional.normalize(Rc[:, :2, 0], dim=-1)
    for j in range(17):
        if j in (7, 8, 9):
            continue
        sgn = -1.0 if j < 8 else 1.0
        uv = screen[:, torch.as_tensor(cands[j]), :2]
        best = ((uv * d.unsqueeze(1)).sum(-1) * sgn).argmax(1)
        lm[:, j] = uv[torch.arange(3), best]
    fixed = fit_landmarks(ict, lm, (SIZE, SIZE), contour="fixed", steps=200, focal=FOCAL)
    sil = fit_landmarks(ict, lm, (SIZE, SIZE), contour="silhouette", steps=200, focal=FOCAL)
    assert (sil.yaw - yaw).abs().max().item() < 4.0
    assert sil.landmark_residuals[:, :17].mean() < 0.5 * fixed.landmark_residuals[:, :17].mean()
    # on the far side some jaw landmarks moved off their fixed vertex
    moved = sil.landmark_vertices[:, :17] != torch.tensor(ict.landmarks[:17])
    assert moved.any(1).all()


def test_single_photo_and_errors(ict):
    s = synth(ict, B=1, seed=7)
    lm = s["screen"][0, torch.tensor(ict.landmarks), :2].numpy()  # (68, 2) numpy
    res = fit_landmarks(ict, lm, (SIZE, SIZE), fit_shape=False, fit_expression=False, steps=60, focal=FOCAL)
    assert res.shape_coeffs.shape[0] == 1 and res.yaw.shape == (1,)
    assert res.landmark_error.item() < 0.2
    assert res[0].t.shape == (1, 3)
    with pytest.raises(FacefitError):
        fit_landmarks(ict, np.zeros((60, 2)), (SIZE, SIZE))
    with pytest.raises(FacefitError):
        fit_landmarks(ict, lm, (SIZE, SIZE), contour="nope")
    with pytest.raises(FacefitError):
        fit_landmarks(ict.replace(landmarks=None), lm, (SIZE, SIZE))
    bad = lm.copy()
    bad[0, 0] = np.nan
    with pytest.raises(FacefitError):
        fit_landmarks(ict, bad, (SIZE, SIZE))


def test_degenerate_landmarks_are_refused(ict):
    s = synth(ict, B=2, seed=3)
    good = s["screen"][:, torch.tensor(ict.landmarks), :2].clone()  # (2, 68, 2)
    same = np.full((68, 2), 120.0)  # 68 identical points
    with pytest.raises(FacefitError, match=r"degenerate: the 68 points lie within 0 px"):
        fit_landmarks(ict, same, (SIZE, SIZE), steps=5)
    jitter = same + 1e-3 * np.random.default_rng(0).standard_normal((68, 2))  # a speck, not a face
    with pytest.raises(FacefitError, match="degenerate"):
        fit_landmarks(ict, jitter, (SIZE, SIZE), steps=5)
    line = np.stack([np.linspace(60, 190, 68), np.linspace(80, 100, 68)], 1)  # collinear
    with pytest.raises(FacefitError, match="on one line"):
        fit_landmarks(ict, line, (SIZE, SIZE), steps=5)
    # in a batch, the message names the bad photo
    batch = good.clone()
    batch[1] = torch.as_tensor(same)
    with pytest.raises(FacefitError, match="landmarks of photo 1 are degenerate"):
        fit_landmarks(ict, batch, (SIZE, SIZE), steps=5)
    for bad_value in (np.nan, np.inf, -np.inf):
        bad = good.clone()
        bad[1, 30, 0] = bad_value
        with pytest.raises(FacefitError, match=r"non-finite values \(NaN or inf\) \(photo 1\)"):
            fit_landmarks(ict, bad, (SIZE, SIZE), steps=5)
    allnan = np.full((68, 2), np.nan)
    with pytest.raises(FacefitError, match="non-finite"):
        fit_landmarks(ict, allnan, (SIZE, SIZE), steps=5)
    # other inputs that would give NaN fits
    with pytest.raises(FacefitError, match="focal length"):
        fit_landmarks(ict, good, (SIZE, SIZE), steps=5, focal=float("nan"))
    w = np.ones(68)
    w[5] = np.nan
    with pytest.raises(FacefitError, match="landmark weights must be finite"):
        fit_landmarks(ict, good, (SIZE, SIZE), steps=5, landmark_weights=w)
    with pytest.raises(FacefitError, match="fewer than 6 landmarks"):
        fit_landmarks(ict, good, (SIZE, SIZE), steps=5, landmark_weights=np.zeros(68))
    # the messages are one line
    with pytest.raises(FacefitError) as info:
        fit_landmarks(ict, same, (SIZE, SIZE), steps=5)
    assert "\n" not in str(info.value)
    # real landmarks, small but plausible (a ~40 px face), still fit
    small = (good[0] - good[0].mean(0)) * 0.3 + SIZE / 2
    res = fit_landmarks(ict, small, (SIZE, SIZE), fit_shape=False, steps=20, focal=FOCAL)
    assert torch.isfinite(res.landmark_error_px).all() and res.face_scale_px.item() > MIN_LANDMARK_SPREAD_PX
