"""Both recognition networks separate real people on faces-dev (issue: proof on real faces)."""
import numpy as np
import pytest
import torch

from facefit.devset import detect_labelled, list_labelled, shared_dir
from facefit.faces.alignment import crop_for_net
from facefit.metrics import pair_similarities, roc_auc
from facefit.recognition.registry import get_net

DEV = (shared_dir() or __import__("pathlib").Path("../shared")) / "data" / "faces-dev"


@pytest.fixture(scope="module")
def photos():
    rows = list_labelled(DEV, per_person=3, people=24)
    got = detect_labelled(rows)
    assert sum(p.face is not None for p in got) / len(got) > 0.97  # detection rate
    return [p for p in got if p.face is not None]


@pytest.mark.parametrize("name", ["dlib", "sface", "facenet"])
def test_verification_auc(photos, name):
    net = get_net(name)
    crops = np.stack([crop_for_net(p.image, p.face, net.crop, net.input_size) for p in photos])
    x = torch.from_numpy(crops).permute(0, 3, 1, 2).float() / 255.0
    with torch.no_grad():
        emb = net.embed(x).numpy()
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-4)
    same, diff = pair_similarities(emb, [p.identity for p in photos])
    assert len(same) > 30 and len(diff) > 1000
    assert same.mean() > diff.mean()
    assert roc_auc(same, diff) > 0.99


def test_metrics_on_hand_made_cases():
    assert roc_auc([0.9, 0.8], [0.1, 0.2]) == 1.0
    assert roc_auc([0.1], [0.9]) == 0.0
    assert roc_auc([0.5], [0.5]) == 0.5
    emb = np.array([[1, 0], [1, 0.1], [0, 1], [0.1, 1]], float)
    same, diff = pair_similarities(emb, ["a", "a", "b", "b"])
    assert len(same) == 2 and len(diff) == 4 and same.min() > diff.max()
