"""Stage 1 on a feature bank for one encoder: render synthetic faces once, keep the encoder's
features, fit a stage-1 decoder (stage 1's parameter loss) to them.

    python scripts/stage1_bank.py --encoder dlib+facenet --bank runs/wide-bank --batches 700 \
        --render-size 256 -o runs/stage1-dlib-facenet.pt

How the shipped ``models/facefit-ict-dlib-facenet.pt`` was made (``models/README.md``):
700 batches of 32 faces (seed 1; resumable, one file per batch, 26 min on the 2-core
machine for ``dlib+facenet``), then the fit (30 epochs, hidden 512, ~2 min), then
``scripts/blend_decoders.py`` with the identity decoder. The faces are stage 1's (same
poses, lights, backgrounds, sparse expressions, ``TrainConfig``'s ranges), framed for the
encoder's crop; the fit is ``benchmarks/encoder_information.py``'s.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import torch  # noqa: E402

from encoder_information import fit_decoder  # noqa: E402
from facefit.losses import default_param_weights  # noqa: E402
from facefit.model_io import resolve_model  # noqa: E402
from facefit.recognition import get_net  # noqa: E402
from facefit.regressor import make_checkpoint, save_checkpoint  # noqa: E402
from facefit.synthetic import synthetic_batch  # noqa: E402
from facefit.training import TrainConfig, synthetic_settings  # noqa: E402

BATCH = 32


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--encoder", default="dlib+facenet")
    ap.add_argument("--bank", type=Path, required=True)
    ap.add_argument("--batches", type=int, default=700)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--render-size", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("-o", "--out", type=Path, required=True)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    cfg, model, net = TrainConfig(), resolve_model(None), get_net(a.encoder)
    # training's settings, at the render size asked for (not scaled for the crop)
    st = dataclasses.replace(synthetic_settings(cfg, net), render_size=a.render_size)
    a.bank.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    files = []
    for i in range(a.batches):
        f = a.bank / f"b{a.seed:03d}_{i:05d}.pt"
        files.append(f)
        if f.exists():
            continue
        g = torch.Generator().manual_seed(a.seed * 1000003 + i)
        with torch.no_grad():
            b = synthetic_batch(model, BATCH, g, st)
            rec = {a.encoder: net.features(b["crops"]).half()}
        rec["shape_coeffs"], rec["color_coeffs"] = b["shape_coeffs"], b["color_coeffs"]
        tmp = f.with_name(f.name + ".tmp")
        torch.save(rec, tmp)
        tmp.rename(f)
        if i % 20 == 0:
            print(f"bank {i}/{a.batches} {time.time() - t0:.0f} s", flush=True)
    recs = [torch.load(f, weights_only=True) for f in files]
    feats = torch.cat([r[a.encoder] for r in recs]).float()
    S = torch.cat([r["shape_coeffs"] for r in recs]).float()
    C = torch.cat([r["color_coeffs"] for r in recs]).float()
    w_s, w_c = default_param_weights(model)
    dec = fit_decoder(feats, S, C, w_s, w_c)
    save_checkpoint(make_checkpoint(dec, a.encoder, model.content_hash, model.name), a.out)
    print(a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
