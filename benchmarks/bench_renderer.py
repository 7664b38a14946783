"""Benchmark the pure-PyTorch renderer: batch 8, 224x224, ~50k and ~80k triangles.

Prints one JSON object with median forward and forward+backward times (seconds) of a full
render (pose, projection, rasterisation, normals, interpolation, Phong shading, compositing).

    python benchmarks/bench_renderer.py [--threads 2] [--repeats 7] [--profile]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from facefit.render import frame_face, random_render_params, render  # noqa: E402


def icosphere(subdiv: int, radius: float = 90.0):
    """Icosphere mesh (outward counter-clockwise faces): (V, 3) float32, (F, 3) int64."""
    import trimesh

    m = trimesh.creation.icosphere(subdivisions=subdiv, radius=radius)
    return torch.tensor(m.vertices, dtype=torch.float32), torch.tensor(m.faces, dtype=torch.int64)


def face_grid(n: int = 160, width: float = 160.0):
    """A face-like height field: n x n grid over an ellipse-ish region with a nose bump.

    Returns (V, 3) float32, (F, 3) int64 with 2 (n-1)^2 counter-clockwise (seen from +z) faces.
    """
    xs = torch.linspace(-width / 2, width / 2, n)
    ys = torch.linspace(-width * 0.6, width * 0.6, n)
    y, x = torch.meshgrid(ys, xs, indexing="ij")
    r2 = (x / (width / 2)) ** 2 + (y / (width * 0.6)) ** 2
    z = 60.0 * torch.sqrt((1.0 - 0.8 * r2).clamp_min(0.0))
    z = z + 25.0 * torch.exp(-((x / 12.0) ** 2 + ((y + 5.0) / 25.0) ** 2))  # nose
    verts = torch.stack([x, y, z], -1).reshape(-1, 3)
    i = torch.arange(n - 1)
    jj, ii = torch.meshgrid(i, i, indexing="ij")
    v00 = (jj * n + ii).reshape(-1)
    v01, v10, v11 = v00 + 1, v00 + n, v00 + n + 1
    faces = torch.cat([torch.stack([v00, v01, v11], -1), torch.stack([v00, v11, v10], -1)])
    return verts, faces


ICT_ZIP = Path(__file__).resolve().parents[1].parent / "shared" / "models" / "ICT-FaceKit" / "ICT-FaceKit-da5f95a.zip"


def load_ict():
    """ICT-FaceKit neutral head (mm) via facefit's loaders: ((V, 3), (F, 3), face_mask) or
    (None, reason). Only the neutral OBJ is parsed (cheap)."""
    try:
        import numpy as np

        from facefit.loaders.ict import FACE_AREA_VERTICES, IctSource
        from facefit.loaders.obj import parse_obj_mesh
    except Exception as exc:  # the morphable-model package may not exist yet
        return None, f"facefit ICT loader not available ({type(exc).__name__}: {exc})"
    if not ICT_ZIP.exists():
        return None, f"{ICT_ZIP} not found"
    try:
        with IctSource(ICT_ZIP) as src:
            mesh = parse_obj_mesh(src.read("generic_neutral_mesh.obj"), "generic_neutral_mesh.obj")
    except Exception as exc:
        return None, f"could not read ICT-FaceKit ({type(exc).__name__}: {exc})"
    verts = torch.tensor(np.asarray(mesh["vertices"]) * 10.0, dtype=torch.float32)  # cm -> mm
    faces = torch.tensor(np.asarray(mesh["triangles"]), dtype=torch.int64)
    mask = torch.zeros(verts.shape[0], dtype=torch.bool)
    mask[:FACE_AREA_VERTICES] = True
    return (verts, faces, mask), ""


def bench_mesh(verts, faces, batch=8, size=224, repeats=7, warmup=2, seed=0, profile=False, face_mask=None,
               save_image=None):
    g = torch.Generator().manual_seed(seed)
    B = batch
    verts = verts.unsqueeze(0).repeat(B, 1, 1)
    colors = 0.3 + 0.5 * torch.rand(B, verts.shape[1], 3, generator=g)
    params = random_render_params(B, g)
    R = params.R
    camera, t = frame_face(verts, face_mask, image_size=size, fov_deg=15.0, fill=0.8, R=R)
    params = random_render_params(B, g, light_target=t)

    def fwd(requires_grad):
        v = verts.clone().requires_grad_(requires_grad)
        c = colors.clone().requires_grad_(requires_grad)
        out = render(v, faces, c, camera, R=R, t=t, lights=params.lights,
                     light_color=params.light_color, shininess=params.shininess,
                     specular=params.specular, background=torch.full((B, 3), 0.5), backend="torch")
        return out, v, c

    def run_fwd():
        with torch.no_grad():
            fwd(False)

    def run_fwdbwd():
        out, v, c = fwd(True)
        (out.images.square().mean() + out.alpha.mean()).backward()
        assert v.grad is not None and torch.isfinite(v.grad).all()

    res = {}
    for name, fn in (("forward_s", run_fwd), ("forward_backward_s", run_fwdbwd)):
        for _ in range(warmup):
            fn()
        ts, cpu = [], []
        for _ in range(repeats):
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            ts.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        res[name] = round(statistics.median(ts), 4)
        res[name.replace("_s", "_min_s")] = round(min(ts), 4)
        # CPU seconds of all threads: insensitive to other processes competing for the cores
        res[name.replace("_s", "_cpu_s")] = round(statistics.median(cpu), 4)
    out, _, _ = fwd(False)
    res["triangles"] = int(faces.shape[0])
    res["vertices"] = int(verts.shape[1])
    res["covered_pixels_per_image"] = float(out.fragments.mask.float().sum((1, 2)).mean())
    if save_image:
        from torchvision.utils import save_image as _save

        _save(out.images, save_image, nrow=4)
    if profile:
        from torch.profiler import ProfilerActivity, profile as tprof

        with tprof(activities=[ProfilerActivity.CPU]) as prof:
            run_fwdbwd()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25), file=sys.stderr)
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--only", default=None, help="run only this mesh (grid50k, sphere80k, ict)")
    ap.add_argument("--save-image", default=None, help="PREFIX: write each mesh's batch to PREFIX_<mesh>.png")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    meshes = {
        "grid50k": face_grid(160),
        "sphere80k": icosphere(6),
    }
    with open("/proc/loadavg") as fh:
        load = fh.read().split()[0]
    report = {"threads": args.threads, "load_avg_1min_at_start": float(load), "batch": args.batch, "image_size": args.size,
              "torch": torch.__version__, "results": {}}
    for name, (v, f) in meshes.items():
        if args.only and args.only != name:
            continue
        report["results"][name] = bench_mesh(v, f, args.batch, args.size, args.repeats, profile=args.profile,
                                             save_image=args.save_image and f"{args.save_image}_{name}.png")
    if not args.only or args.only == "ict":
        ict, why = load_ict()
        if ict is None:
            report["results"]["ict_head"] = {"skipped": why}
        else:
            v, f, mask = ict
            report["results"]["ict_head"] = bench_mesh(v, f, args.batch, args.size, args.repeats,
                                                       profile=args.profile, face_mask=mask,
                                                       save_image=args.save_image and f"{args.save_image}_ict.png")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
