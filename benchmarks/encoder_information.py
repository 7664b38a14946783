"""How much of a face's 3D shape can a decoder read from each encoder's features?

Stage 1 of training, done once and reused: a bank of synthetic faces rendered exactly as
stage 1 renders them (``TrainConfig`` defaults: poses, lights, backgrounds, sparse
expressions), each encoder cropping the same face with its own framing, stored as features
+ true coefficients. Decoders (the shipped architecture: one hidden layer, stage 1's
parameter loss with the model's default weights) are then fitted to the features of dlib,
FaceNet, or both concatenated, and scored with ``facefit eval synthetic``'s own geometry
(detected landmarks, each encoder's crop of the detected face, 95 mm crop, ICP + scale,
point-to-plane mm) on the eval's face sets, next to the shipped regressor and the mean face.

    python benchmarks/encoder_information.py --bank runs/bank --batches 700 \\
        [--sizes 5600,11200,22400] [--save-checkpoints runs/s1] [--out FILE.json]

The bank is resumable (one file per batch of 32 faces; 700 batches took 27 min on the
2-core machine). ``--save-checkpoints DIR`` writes each fitted dlib decoder as a regressor
checkpoint, usable with ``facefit eval identity --checkpoint`` and
:func:`facefit.regressor.blend_decoders`. Results: ``benchmarks/results/encoder_information.json``.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from facefit.evaluation import neutral_vertices, nose_tip_index  # noqa: E402
from facefit.evaluation.geometry import evaluate_geometry  # noqa: E402
from facefit.evaluation.synthetic import SyntheticEvalConfig, _fallback_face, make_synthetic_faces  # noqa: E402
from facefit.faces.alignment import crop_for_net  # noqa: E402
from facefit.faces.detection import detect_faces  # noqa: E402
from facefit.losses import default_param_weights, param_loss  # noqa: E402
from facefit.model_io import resolve_model  # noqa: E402
from facefit.recognition import get_net  # noqa: E402
from facefit.regressor import Decoder, decoder_from_checkpoint, load_checkpoint, make_checkpoint, save_checkpoint  # noqa: E402
from facefit.synthetic import synthetic_batch  # noqa: E402
from facefit.training import TrainConfig, synthetic_settings  # noqa: E402

NETS = ("dlib", "facenet")
BATCH = 32
ROOT = Path(__file__).resolve().parents[1]


def build_bank(model, folder: Path, batches: int, seed: int = 1) -> dict[str, torch.Tensor]:
    """Features of ``batches * 32`` synthetic faces (resumable, one file per batch)."""
    folder.mkdir(parents=True, exist_ok=True)
    nets = {n: get_net(n) for n in NETS}
    cfg = TrainConfig()
    sets = {n: synthetic_settings(cfg, net) for n, net in nets.items()}
    t0 = time.time()
    for i in range(batches):
        f = folder / f"b{seed:03d}_{i:05d}.pt"
        if f.exists():
            continue
        g = torch.Generator().manual_seed(seed * 1000003 + i)
        state = g.get_state()
        rec = {}
        with torch.no_grad():
            for n, net in nets.items():
                g.set_state(state)  # the same faces, poses and lights for every encoder
                b = synthetic_batch(model, BATCH, g, sets[n])
                rec[n] = net.features(b["crops"]).half()
        rec["shape_coeffs"], rec["color_coeffs"] = b["shape_coeffs"], b["color_coeffs"]
        tmp = f.with_suffix(".tmp")
        torch.save(rec, tmp)
        tmp.replace(f)
        if i % 50 == 0:
            print(f"bank {i}/{batches} {time.time() - t0:.0f} s", file=sys.stderr, flush=True)
    recs = [torch.load(folder / f"b{seed:03d}_{i:05d}.pt", weights_only=True) for i in range(batches)]
    return {k: torch.cat([r[k] for r in recs]).float() for k in recs[0]}


def eval_set(model, n: int, seed: int, appearance: str) -> dict:
    """The eval's faces, detected as the eval detects them, with every encoder's features."""
    cfg = SyntheticEvalConfig(n=n, seed=seed, appearance=appearance, fit_steps=0)
    faces = make_synthetic_faces(model, cfg)
    found = []
    for i in range(len(faces.images)):
        f = detect_faces(faces.images[i], backend=cfg.detector)
        found.append(f[0] if f else _fallback_face(faces.landmarks[i]))
    feats = {}
    for name in NETS:
        net = get_net(name)
        crops = np.stack([crop_for_net(faces.images[i], found[i], net.crop, net.input_size) for i in range(len(found))])
        with torch.no_grad():
            feats[name] = net.features(torch.from_numpy(crops).permute(0, 3, 1, 2).float() / 255.0)
    return {"shape": faces.shape_coeffs, "feats": feats, "fallbacks": sum(f.backend == "ground-truth landmarks" for f in found)}


def features(source: dict, name: str) -> torch.Tensor:
    return torch.cat([source["dlib"], source["facenet"]], 1) if name == "both" else source[name]


def geometry_mm(model, truth: np.ndarray, pred: np.ndarray) -> float:
    nose, tris = nose_tip_index(model), np.asarray(model.triangles)
    gt, pv = neutral_vertices(model, truth), neutral_vertices(model, pred)
    return float(np.mean([evaluate_geometry(p, tris, p[nose], g, tris, g[nose]).error_mm for p, g in zip(pv, gt)]))


def fit_decoder(feats, S, C, w_s, w_c, hidden=512, epochs=30, lr=1e-3, batch=256, seed=0) -> Decoder:
    """Stage 1's parameter loss on fixed features (Adam, cosine decay to 0.05 x lr)."""
    torch.manual_seed(seed)
    d = Decoder(feats.shape[1], S.shape[1], C.shape[1], hidden=[hidden])
    d.set_input_stats(feats[:4096])
    opt = torch.optim.Adam(d.parameters(), lr=lr)
    n = len(feats)
    per = max(1, n // batch)
    total, k = epochs * per, 0
    for _ in range(epochs):
        perm = torch.randperm(n)
        for i in range(per):
            idx = perm[i * batch:(i + 1) * batch]
            for grp in opt.param_groups:
                grp["lr"] = lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * k / total)))
            s, c = d(feats[idx])
            loss = param_loss(s, S[idx], c, C[idx], w_s, w_c)
            opt.zero_grad()
            loss.backward()
            opt.step()
            k += 1
    return d.eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bank", type=Path, default=Path("runs/bank"))
    ap.add_argument("--batches", type=int, default=700)
    ap.add_argument("--sizes", default="", help="training-set sizes (default: a quarter, a half and all of the bank)")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--checkpoint", default=str(ROOT / "models" / "facefit-ict-dlib.pt"))
    ap.add_argument("--save-checkpoints", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "encoder_information.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = resolve_model(None)
    w_s, w_c = default_param_weights(model)
    bank = build_bank(model, args.bank, args.batches)
    N = len(bank["shape_coeffs"])
    sizes = [int(x) for x in args.sizes.split(",")] if args.sizes else [N // 4, N // 2, N]
    sets = {f"{app} (n {n}, seed {seed})": eval_set(model, n, seed, app)
            for n, seed, app in [(40, 0, "model"), (40, 0, "unseen"), (200, 1, "model")]}
    rows = [{"decoder": "mean face", **{k: geometry_mm(model, D["shape"], np.zeros_like(D["shape"])) for k, D in sets.items()}}]
    ship = decoder_from_checkpoint(load_checkpoint(args.checkpoint, model=model)).eval()
    with torch.no_grad():
        rows.append({"decoder": f"shipped ({Path(args.checkpoint).name})",
                     **{k: geometry_mm(model, D["shape"], ship(D["feats"]["dlib"])[0].numpy()) for k, D in sets.items()}})
    print(json.dumps(rows[-1]), flush=True)
    for name in ("dlib", "facenet", "both"):
        F = features(bank, name)
        for n in sizes:
            t0 = time.time()
            d = fit_decoder(F[:n], bank["shape_coeffs"][:n], bank["color_coeffs"][:n], w_s, w_c, epochs=args.epochs)
            with torch.no_grad():
                row = {"decoder": f"stage 1 on {name} features", "encoder": name, "faces": n,
                       **{k: geometry_mm(model, D["shape"], d(features(D["feats"], name))[0].numpy()) for k, D in sets.items()}}
            row["fit_s"] = round(time.time() - t0, 1)
            rows.append(row)
            print(json.dumps(row), flush=True)
            if args.save_checkpoints and name != "both":
                args.save_checkpoints.mkdir(parents=True, exist_ok=True)
                save_checkpoint(make_checkpoint(d, name, model.content_hash, model.name),
                                args.save_checkpoints / f"stage1-{name}-{n}.pt")
    out = {"benchmark": "encoder_information", "bank_faces": N, "epochs": args.epochs,
           "fallbacks": {k: D["fallbacks"] for k, D in sets.items()}, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(args.out)


if __name__ == "__main__":
    main()
