"""``facefit eval identity``: metrics on hand-made cases and a small run on faces-dev."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from typer.testing import CliRunner

from facefit.errors import FacefitError
from facefit.evaluation.identity import recall_metrics, similarity_metrics

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
DEV = SHARED / "data" / "faces-dev"


def make_checkpoint(path, seed=0, scale=0.05, encoder="dlib"):
    """A randomly initialised regressor checkpoint (dlib encoder) for the default model."""
    from facefit.model_io import resolve_model
    from facefit.regressor import Decoder, make_checkpoint as mk, save_checkpoint

    model = resolve_model()
    torch.manual_seed(seed)
    dec = Decoder(256, model.n_shape, model.n_color, hidden=[32], init_scale=scale)
    return save_checkpoint(mk(dec, encoder, model.content_hash, model.name, meta={"note": "test"}), path)


def cli():
    from facefit.cli_eval import eval_app

    root = typer.Typer()
    root.add_typer(eval_app, name="eval")

    @root.callback()
    def _():  # a group, so that "eval" is a sub-command
        pass

    return root


# ------------------------------------------------------------------ hand-made metric cases


def test_emd_of_identical_distributions_is_zero():
    x = np.array([0.1, 0.5, 0.7, 0.9])
    m = similarity_metrics(x, x.copy(), x + 0.25)
    assert m["emd_to_same"] == 0.0
    assert m["emd_to_diff"] == pytest.approx(0.25)
    assert m["mean_own"] == pytest.approx(x.mean())


def test_recall_on_hand_made_ranking():
    labels = np.array(["a", "a", "b", "b", "c"])
    # rows: renders 0..4 (made from photos 0..4); columns: photos
    sim = np.array([
        [0.9, 0.1, 0.5, 0.2, 0.0],  # a: own photo first -> top-1 hit; without it: b(0.5) first, a(0.1) 3rd
        [0.1, 0.2, 0.8, 0.7, 0.6],  # a: own photo 4th -> top-1 miss; without own: a(0.1) last of 4
        [0.2, 0.1, 0.3, 0.9, 0.0],  # b: other b photo first -> hit either way
        [0.9, 0.8, 0.1, 0.2, 0.3],  # b: own 4th, other b last
        [0.0, 0.1, 0.2, 0.3, 0.4],  # c: own photo first
    ])
    r = recall_metrics(sim, labels, ks=(1, 2))
    assert r["top1"] == pytest.approx(3 / 5)  # renders 0, 2, 4
    assert r["top2"] == pytest.approx(3 / 5)  # render 1: a at rank 4; render 3: b at ranks 4, 5
    # without the own photo only people with >= 2 photos are queries (a, a, b, b)
    assert r["n_queries_excl_self"] == 4
    assert r["top1_excl_self"] == pytest.approx(1 / 4)  # render 2 only
    assert r["top2_excl_self"] == pytest.approx(1 / 4)
    # chance: P(a right photo among k random of the gallery)
    assert r["chance_top1"] == pytest.approx((2 / 5 * 4 + 1 / 5) / 5)
    assert r["chance_top1_excl_self"] == pytest.approx(1 / 4)  # 1 good of 4 for every query


# ------------------------------------------------------------------ checkpoints on the command line


def test_parse_checkpoints(tmp_path):
    from facefit.cli_eval import parse_checkpoints

    a = make_checkpoint(tmp_path / "full.pt")
    b = make_checkpoint(tmp_path / "nobatch.pt", seed=1)
    assert parse_checkpoints([str(a)], False) == {"full": str(a)}
    assert list(parse_checkpoints([f"x={a}", f"y={b}"], True)) == ["x", "y"]
    assert set(parse_checkpoints([str(tmp_path)], True)) == {"full", "nobatch"}
    with pytest.raises(FacefitError, match="--ablation"):
        parse_checkpoints([str(a), str(b)], False)
    with pytest.raises(FacefitError, match="--ablation"):
        parse_checkpoints([str(tmp_path)], False)
    with pytest.raises(FacefitError, match="two or more"):
        parse_checkpoints([str(a)], True)
    with pytest.raises(FacefitError, match="named 'x'"):
        parse_checkpoints([f"x={a}", f"x={b}"], True)
    with pytest.raises(FacefitError, match="not found"):
        parse_checkpoints([str(tmp_path / "missing.pt")], False)


def test_refuses_the_training_network_as_evaluation_network(tmp_path):
    pytest.importorskip("dlib")
    ck = make_checkpoint(tmp_path / "c.pt")
    res = CliRunner().invoke(cli(), ["eval", "identity", str(DEV if DEV.is_dir() else tmp_path), "--checkpoint", str(ck),
                                     "--eval-net", "dlib", "-o", str(tmp_path / "out")])
    assert isinstance(res.exception, FacefitError)
    assert "trained with the 'dlib' network" in str(res.exception)
    assert not (tmp_path / "out" / "report.md").exists()


def test_refusal_suggests_a_network_other_than_the_training_one(tmp_path):
    from facefit.evaluation.identity import IdentityEvalConfig, evaluate_identity

    for person in ("a", "b"):
        (tmp_path / "photos" / person).mkdir(parents=True)
        (tmp_path / "photos" / person / "1.jpg").write_bytes(b"never read")
    for trained, others in (("sface", ["dlib", "facenet"]), ("dlib", ["sface"])):
        ck = make_checkpoint(tmp_path / f"{trained}.pt", encoder=trained)
        with pytest.raises(FacefitError) as ei:
            evaluate_identity(tmp_path / "photos", {trained: str(ck)}, IdentityEvalConfig(eval_net=trained))
        msg = str(ei.value)
        assert f"trained with the '{trained}' network" in msg and f"(e.g. {trained})" not in msg, msg
        assert any(f"(e.g. {o})" in msg for o in others), msg
    # in an ablation the hint avoids every checkpoint's training network
    a = make_checkpoint(tmp_path / "a.pt", encoder="sface")
    b = make_checkpoint(tmp_path / "b.pt", encoder="facenet")
    with pytest.raises(FacefitError, match=r"\(e\.g\. dlib\)"):
        evaluate_identity(tmp_path / "photos", {"a": str(a), "b": str(b)}, IdentityEvalConfig(eval_net="sface"))


# ------------------------------------------------------------------ labels.csv


def _photo_folder(tmp_path, labels: bytes, photos=("a/1.jpg", "b/1.jpg")):
    root = tmp_path / "photos"
    root.mkdir()
    for rel in photos:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"not decoded here")
    (root / "labels.csv").write_bytes(labels)
    return root


@pytest.mark.parametrize("labels,photos,expect", [
    (b"file,person\na/1.jpg,a\nb/1.jpg,b\n", ("a/1.jpg", "b/1.jpg"),
     "the header must name the columns 'path' and 'identity' (found 'file', 'person')"),
    (b"", (), "the header must name the columns 'path' and 'identity' (found none)"),
    (bytes(range(128, 256)) * 4, (), "not a text CSV file (it is not UTF-8)"),
    (b"path,identity\nmissing/1.jpg,a\nmissing/2.jpg,b\n", (),
     "none of the 2 listed photos exists (e.g. 'missing/1.jpg'"),
    (b"path,identity\na/1.jpg,a\nb/2.jpg,b\n", ("a/1.jpg",), "1 of the 2 listed photos does not exist (e.g. 'b/2.jpg'"),
    (b"path,identity\na/1.jpg,\n", ("a/1.jpg",), "line 2: empty path or identity"),
])
def test_bad_labels_csv_is_one_clear_line(tmp_path, capsys, labels, photos, expect):
    from facefit.cli import main

    root = _photo_folder(tmp_path, labels, photos)
    rc = main(["eval", "identity", str(root), "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert rc != 0 and err.startswith("error:") and len(err.splitlines()) == 1, err
    assert expect in err and str(root / "labels.csv") in err, err
    assert "KeyError" not in err and "UnicodeDecodeError" not in err and "no face found" not in err
    assert not (tmp_path / "out").exists()


def test_labels_csv_with_bom_crlf_spaces_and_blank_lines(tmp_path):
    from facefit.devset import list_labelled

    root = _photo_folder(tmp_path, b"\xef\xbb\xbfpath , identity\r\na/1.jpg, a\r\n\r\nb/1.jpg,b\r\n")
    assert list_labelled(root) == [(root / "a/1.jpg", "a"), (root / "b/1.jpg", "b")]


def test_unreadable_photos_are_not_reported_as_faceless(tmp_path):
    from facefit.evaluation.identity import IdentityEvalConfig, load_photos
    from facefit.recognition import get_net

    root = _photo_folder(tmp_path, b"path,identity\na/1.jpg,a\nb/1.jpg,b\n")  # the "photos" are not images
    with pytest.raises(FacefitError) as ei:
        load_photos(root, get_net("sface"), [], IdentityEvalConfig())
    msg = str(ei.value)
    assert "none of the 2 photos is usable (2 unreadable" in msg and "no face" not in msg, msg


# ------------------------------------------------------------------ a real run


@pytest.mark.skipif(not DEV.is_dir(), reason="needs ../shared/data/faces-dev")
def test_identity_ablation_run_on_faces_dev(tmp_path):
    a = make_checkpoint(tmp_path / "a.pt", seed=0)
    b = make_checkpoint(tmp_path / "b.pt", seed=1, scale=0.3)
    out = tmp_path / "report"
    res = CliRunner().invoke(cli(), ["eval", "identity", str(DEV), "--people", "3", "--per-person", "2",
                                     "--ablation", "--checkpoint", f"small={a}", "--checkpoint", f"large={b}",
                                     "--render-size", "160", "-o", str(out)])
    assert res.exit_code == 0, res.output + repr(res.exception)
    for name in ("report.md", "results.json", "recall.png", "examples.png", "similarity_small.png",
                 "similarity_large.png", "similarity_ablation.png"):
        assert (out / name).is_file(), name
        assert name in res.output
    r = json.loads((out / "results.json").read_text())
    assert r["photos"]["n"] == 6 and r["photos"]["people"] == 3
    assert r["reference"]["n_same_pairs"] == 3 and r["reference"]["n_diff_pairs"] == 12
    assert r["reference"]["mean_same"] > r["reference"]["mean_diff"]  # SFace tells people apart
    assert list(r["checkpoints"]) == ["small", "large"]
    for m in list(r["checkpoints"].values()) + [r["mean_face"]]:
        assert 0.0 <= m["top1"] <= m["top5"] <= 1.0
        assert m["emd_to_same"] >= 0 and m["emd_to_diff"] >= 0
        assert -1.0 <= m["mean_own"] <= 1.0
    assert r["mean_face"]["chance_top1"] == pytest.approx(2 / 6)
    assert r["mean_face"]["chance_top5"] == pytest.approx(1.0)
    assert len(r["per_photo"]) == 6 and "small" in r["per_photo"][0]
    md = (out / "report.md").read_text()
    assert "Table 2" in md and "Table 3" in md and "mean face (reference)" in md
    from PIL import Image

    assert Image.open(out / "similarity_small.png").size[0] > 300


def test_identity_refine_rows(tmp_path):
    a = make_checkpoint(tmp_path / "a.pt", seed=0)
    out = tmp_path / "report"
    res = CliRunner().invoke(cli(), ["eval", "identity", str(DEV), "--people", "2", "--per-person", "2",
                                     "--checkpoint", str(a), "--refine", "2", "--render-size", "128", "-o", str(out)])
    assert res.exit_code == 0, res.output + repr(res.exception)
    r = json.loads((out / "results.json").read_text())
    names = list(r["checkpoints"])
    assert len(names) == 2 and names[1] == f"{names[0]} +refine 2"
    plain, refined = (r["checkpoints"][n] for n in names)
    assert refined["checkpoint"]["refine_steps"] == 2 and "refine_steps" not in plain["checkpoint"]
    assert refined["checkpoint"]["refine_shape"] is False
    ck = refined["checkpoint"]
    assert -1.0 <= ck["train_net_identity_before"] <= 1.0 and -1.0 <= ck["train_net_identity_after"] <= 1.0
    for m in (plain, refined):
        assert 0.0 <= m["top1"] <= m["top5"] <= 1.0 and -1.0 <= m["mean_own"] <= 1.0
    assert f"{names[0]} +refine 2" in (out / "report.md").read_text()
