"""Held-out check of the statistical albedo model on faces-dev (prints / writes JSON).

Usage:
    python benchmarks/bench_albedo.py [--data ../shared/data/faces-dev] [--model MODEL]
        [--albedo models/albedo/ict-face-albedo.npz] [--max-photos N] [--out result.json]

faces-dev was not used to build the model. For every photo: detect, fit (same settings as
the build), sample visible vertex colours, de-light them against the model exactly like the
build's last round (SH lighting alternated with the projection onto the first 10
components), then:

1. **Colour reconstruction** (sRGB units, RMS over the visible vertices' channels):
   * ``mean``: the model's mean albedo;
   * ``pca_fit``: least-squares projection onto the K components (coefficients fitted on the
     same vertices, an upper bound on what the subspace can do);
   * ``pca_heldout``: coefficients fitted on a random half of the visible vertices and the
     error measured on the other half (honest generalisation across the face);
   * the same three for facefit's hand-made heuristic colour model (6 components).
2. **Likeness with SFace** (not used anywhere in building): cosine between the photo's
   ArcFace-aligned crop and renders of the fitted shape + expression in the photo's fitted
   pose and camera (crop from the projected model landmarks, grey background), coloured
   with: the fitted albedo (model projection), the model's mean albedo, flat grey (shape
   only), the heuristic model's mean. Renders are shaded with each photo's fitted SH
   lighting ("photo light") and additionally with the renderer's studio lights.
   Reported: mean cosine to the same photo, to other photos of the same person, to photos
   of other people, and rank-1 identification (is the most similar *other* photo, among all
   photos except the render's own, one of the same person).
"""
from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np
import torch

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "faces-dev"


def load_labels(root: Path) -> dict[str, str]:
    labels = {}
    with open(root / "labels.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            labels[str((root / row["path"]).resolve())] = row["identity"]
    return labels


def delight_against(samples, model, n_est=10, inner=2):
    """De-light like the build's last round, without symmetric fill or occlusion weights.

    Returns (X (N,V,3) sRGB albedo, W (N,V), sh coeffs (N,9), rel residual (N,))."""
    from facefit.albedo_build import delight, project_to_pca
    from facefit.lighting import srgb_to_linear

    obs = torch.as_tensor(samples.obs.astype(np.float32))
    nrm = torch.as_tensor(samples.normals.astype(np.float32))
    w = torch.as_tensor(samples.weights.astype(np.float32)) / 255.0
    alb, w2, coeffs, rel = delight(obs, nrm, w, None)
    for _ in range(inner):
        _, rec = project_to_pca(alb, w2, model.mean_color, model.color_basis, model.color_std, n_components=n_est)
        alb, w2, coeffs, rel = delight(obs, nrm, w, srgb_to_linear(rec.clamp(0, 1)))
    return alb, w2, coeffs, rel


def rms(err, w):
    """Weighted RMS over vertices and channels: err (N,V,3), w (N,V) -> (N,)."""
    return ((w.unsqueeze(-1) * err**2).sum((1, 2)) / (3 * w.sum(1)).clamp_min(1e-9)).sqrt()


def recon_errors(X, W, mean, basis, std, seed=0):
    from facefit.albedo_build import project_to_pca

    mean_t = torch.as_tensor(np.asarray(mean))
    out = {"mean": rms(X - mean_t, W)}
    _, rec = project_to_pca(X, W, mean, basis, std, noise=0.01)
    out["pca_fit"] = rms(X - rec, W)
    g = torch.Generator().manual_seed(seed)
    half = (torch.rand(W.shape, generator=g) < 0.5).float()
    Wa, Wb = W * half, W * (1 - half)
    _, rec_a = project_to_pca(X, Wa, mean, basis, std, noise=0.01)
    out["pca_heldout"] = rms(X - rec_a, Wb)
    out["mean_heldout"] = rms(X - mean_t, Wb)
    return {k: v.numpy() for k, v in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--model", default=None, help="model name/path (default: resolve_model(None))")
    ap.add_argument("--albedo", type=Path, default=None, help="albedo .npz (default: the shipped one)")
    ap.add_argument("--max-photos", type=int, default=None)
    ap.add_argument("--render-size", type=int, default=192, help="side of the square face renders (at most)")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--examples", type=Path, default=None, help="PNG with photo / render crops of the first 8 photos")
    args = ap.parse_args()

    from facefit.albedo import heuristic_albedo
    from facefit.albedo_build import albedo_for, list_photos, project_to_pca, sample_photos
    from facefit.faces import align_rendered, crop_for_net, detect_main_face
    from facefit.faces.images import load_image
    from facefit.lighting import linear_to_srgb, sh_shading, srgb_to_linear
    from facefit.model_io import resolve_model
    from facefit.recognition import get_net
    from facefit.render import Camera, Lights, euler_to_matrix, project, render, world_to_camera

    t0 = time.time()
    model = resolve_model(args.model)
    base = model.with_color_model(model.mean_color, None, None, "none")
    if args.albedo is not None:
        model = albedo_for(base, args.albedo)
    if not str(model.meta.get("color_model", "")).startswith("statistical"):
        raise SystemExit(f"model has no statistical colour model: {model.meta.get('color_model')}")
    hm, hb, hs, _, _ = heuristic_albedo(base.mean_shape, base.landmarks, base.face_mask)

    labels = load_labels(args.data)
    paths = list_photos(args.data)[: args.max_photos]  # first N: keeps people's photos together
    samples = sample_photos(base, paths)
    ok = np.array([i["ok"] for i in samples.info])
    samples = samples.select(ok)
    paths = [Path(i["path"]) for i in samples.info]
    ids = [labels.get(str(p.resolve()), p.parent.name) for p in paths]
    t_sample = time.time()

    # ---------------------------------------------------------------- reconstruction
    X, W, coeffs, rel = delight_against(samples, model)
    learned = recon_errors(X, W, model.mean_color, model.color_basis, model.color_std)
    heur = recon_errors(X, W, hm, hb, hs)

    def summary(d):
        return {k: {"mean": round(float(v.mean()), 4), "median": round(float(np.median(v)), 4)} for k, v in d.items()}

    # ---------------------------------------------------------------- likeness
    net = get_net("sface")
    c_fit, _ = project_to_pca(X, W, model.mean_color, model.color_basis, model.color_std, noise=0.02)
    photo_crops, render_crops = [], {}
    variants = ["fitted_albedo", "mean_albedo", "grey", "heuristic_mean"]
    faces_t = model.torch_triangles()
    for i, p in enumerate(paths):
        img = load_image(p)
        face = detect_main_face(img)
        photo_crops.append(crop_for_net(img, face, "arcface_112"))
        f = samples.fits
        shape = torch.as_tensor(f["shape_coeffs"][i : i + 1])
        expr = torch.as_tensor(f["expr_coeffs"][i : i + 1])
        verts, col_fit = model.decode(shape, c_fit[i : i + 1], expr)
        cols = {
            "fitted_albedo": col_fit[0],
            "mean_albedo": torch.as_tensor(np.asarray(model.mean_color)),
            "grey": torch.full((model.n_vertices, 3), 0.6),
            "heuristic_mean": torch.as_tensor(np.clip(hm, 0, 1)),
        }
        R = euler_to_matrix(torch.tensor([float(f["yaw"][i])]), torch.tensor([float(f["pitch"][i])]), torch.tensor([float(f["roll"][i])]))
        t = torch.as_tensor(f["t"][i : i + 1])
        H, W_ = img.shape[:2]
        focal, cx, cy = float(f["focal"][i]), W_ / 2.0, H / 2.0
        # render only a square around the face (the recognition crop lies inside it), at
        # about the photo's own resolution but at most --render-size pixels
        lmv = world_to_camera(verts[:, model.landmarks], R, t)
        lm_img = project(lmv, focal, cx, cy)[0, :, :2]
        centre = (lm_img.amax(0) + lm_img.amin(0)) / 2
        side = 1.8 * float((lm_img.amax(0) - lm_img.amin(0)).max())
        size = int(min(args.render_size, max(64, round(side))))
        sc = size / side
        x0, y0 = float(centre[0]) - side / 2, float(centre[1]) - side / 2
        cam = Camera((size, size), focal * sc, (cx - x0) * sc, (cy - y0) * sc)
        nb = len(variants)
        # photo lighting: the fitted SH shading (normalised to mean 1 on the visible part)
        nrm = torch.as_tensor(samples.normals[i].astype(np.float32)).unsqueeze(0)
        sh = sh_shading(nrm, coeffs[i : i + 1])[0]  # (V, 1)
        wv = torch.as_tensor(samples.weights[i].astype(np.float32)) / 255.0
        sh = (sh / ((wv.unsqueeze(-1) * sh).sum() / wv.sum().clamp_min(1e-9))).clamp(0.0, 2.0)
        col_photo = torch.stack([linear_to_srgb(srgb_to_linear(cols[v]) * sh) for v in variants])
        col_plain = torch.stack([cols[v] for v in variants])
        vb = verts.expand(nb, -1, -1)
        Rb, tb = R.expand(nb, 3, 3), t.expand(nb, 3)
        flat_lights = Lights(torch.zeros(nb, 1, 3), torch.zeros(nb, 1), torch.ones(nb))
        out_photo = render(vb, faces_t, col_photo, cam, R=Rb, t=tb, lights=flat_lights, specular=0.0, background=(0.5, 0.5, 0.5))
        out_studio = render(vb, faces_t, col_plain, cam, R=Rb, t=tb, background=(0.5, 0.5, 0.5))
        lm2d = out_photo.screen_verts[:, model.landmarks, :2]
        for tag, outp in (("photo_light", out_photo), ("studio_light", out_studio)):
            crops = align_rendered(outp.images, lm2d, crop="arcface_112")
            for k, v in enumerate(variants):
                render_crops.setdefault(f"{v}/{tag}", []).append(crops[k])
    with torch.no_grad():
        pc = torch.as_tensor(np.stack(photo_crops)).permute(0, 3, 1, 2).float() / 255.0
        e_photo = net.embed(pc)
        ids_arr = np.array(ids)
        same_id = torch.as_tensor(ids_arr[:, None] == ids_arr[None, :])
        eye = torch.eye(len(ids), dtype=torch.bool)
        likeness = {}
        photo_photo = e_photo @ e_photo.t()
        likeness["photo_vs_photo"] = {
            "same_person_other_photo": round(float(photo_photo[same_id & ~eye].mean()), 4),
            "different_person": round(float(photo_photo[~same_id].mean()), 4),
        }
        for key, crops in render_crops.items():
            e_r = net.embed(torch.stack(crops))
            S = e_r @ e_photo.t()  # (render i, photo j)
            S_other = S.masked_fill(eye, -2.0)
            top = S_other.argmax(1)
            has_other = (same_id & ~eye).any(1)
            rank1 = (same_id[torch.arange(len(ids)), top] & has_other).float().sum() / has_other.float().sum()
            likeness[key] = {
                "same_photo": round(float(S.diagonal().mean()), 4),
                "same_person_other_photo": round(float(S[same_id & ~eye].mean()), 4),
                "different_person": round(float(S[~same_id].mean()), 4),
                "rank1_other_photo": round(float(rank1), 4),
            }
    if args.examples is not None:
        import imageio.v2 as imageio

        rows = []
        keys = ["fitted_albedo/photo_light", "mean_albedo/photo_light", "grey/photo_light", "fitted_albedo/studio_light"]
        for i in range(min(8, len(paths))):
            tiles = [photo_crops[i]] + [
                (render_crops[k][i].permute(1, 2, 0).clamp(0, 1).numpy() * 255).astype(np.uint8) for k in keys
            ]
            rows.append(np.concatenate(tiles, 1))
        imageio.imwrite(args.examples, np.concatenate(rows, 0))
    result = {
        "data": str(args.data),
        "model": model.name,
        "color_model": model.meta.get("color_model"),
        "albedo_provenance_used": model.meta.get("albedo", {}).get("used"),
        "components": model.n_color,
        "photos": len(ok),
        "photos_used": int(ok.sum()),
        "identities": len(set(ids)),
        "reconstruction_rms_srgb": {"learned": summary(learned), "heuristic": summary(heur)},
        "lighting_rel_residual_median": round(float(np.median(rel.numpy())), 4),
        "likeness_sface_cosine": likeness,
        "seconds": {"sampling": round(t_sample - t0, 1), "total": round(time.time() - t0, 1)},
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
