"""Old vs new renderer and training step, interleaved in one process (CPU seconds).

Exports ``--old-ref`` (a git commit) into a temporary folder as the package ``facefit_old``
(its absolute imports rewritten), then alternates old and new runs so that both see the
same machine load:

* renderer: forward and forward + backward of a batch of 8 ICT-FaceKit heads at 224 px
  (as ``bench_renderer.py``), plus the largest differences of images, alpha and gradients;
* training (``--training``): two ``Trainer`` objects (same configuration, photos and decoder
  weights) alternating stage-1 and stage-2 steps; the logged terms and decoder gradients of
  their first step of each stage are compared.

    python benchmarks/compare_renderer_training.py --old-ref 00105d8 [--threads 1]
        [--repeats 7] [--training] [--steps 4]

Prints one JSON object. Judge by the ratios (and CPU seconds) on a busy machine.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def export_old(ref: str, dest: Path) -> None:
    """``git archive REF facefit models`` into ``dest`` as package ``facefit_old``."""
    tar_path = dest / "old.tar"
    with open(tar_path, "wb") as fh:
        subprocess.run(["git", "-C", str(ROOT), "archive", ref, "facefit", "models"], stdout=fh, check=True)
    with tarfile.open(tar_path) as tf:
        tf.extractall(dest / "tree", filter="data")
    (dest / "tree" / "facefit").rename(dest / "tree" / "facefit_old")
    pat = re.compile(r"\b(from|import) facefit(\.|\b)")
    for p in (dest / "tree" / "facefit_old").rglob("*.py"):
        text = p.read_text()
        new = pat.sub(r"\1 facefit_old\2", text).replace('"facefit.', '"facefit_old.')
        if new != text:
            p.write_text(new)
    shared = ROOT.parent / "shared"
    if shared.exists() and not (dest / "shared").exists():
        os.symlink(shared, dest / "shared")
    sys.path.insert(0, str(dest / "tree"))


def cpu_median(fn, repeats: int) -> float:
    ts = []
    for _ in range(repeats):
        c0 = time.process_time()
        fn()
        ts.append(time.process_time() - c0)
    return statistics.median(ts)


def compare_renderer(old_render, new_render, repeats: int) -> dict:
    import bench_renderer as br

    ict, why = br.load_ict()
    if ict is None:
        return {"skipped": why}
    v, faces, mask = ict
    g = torch.Generator().manual_seed(0)
    B, size = 8, 224
    verts = v.unsqueeze(0).repeat(B, 1, 1) + 0.5 * torch.randn(B, v.shape[0], 3, generator=g)
    colors = 0.3 + 0.5 * torch.rand(B, v.shape[0], 3, generator=g)
    params = new_render.random_render_params(B, g)
    R = params.R
    camera, t = new_render.frame_face(verts, mask, image_size=size, fov_deg=15.0, fill=0.8, R=R)
    params = new_render.random_render_params(B, g, light_target=t)
    bg = torch.rand(B, 3, size, size, generator=g)
    w_img, w_a = torch.rand(B, 3, size, size, generator=g), torch.rand(B, 1, size, size, generator=g)

    def run(mod, grad):
        vv, cc = verts.clone().requires_grad_(grad), colors.clone().requires_grad_(grad)
        with torch.set_grad_enabled(grad):
            out = mod.render(vv, faces, cc, camera, R=R, t=t, lights=params.lights, light_color=params.light_color,
                             shininess=params.shininess, specular=params.specular, background=bg, backend="torch")
        if grad:
            ((out.images * w_img).sum() + (out.alpha * w_a).sum()).backward()
        return out, vv.grad, cc.grad

    (o1, gv1, gc1), (o2, gv2, gc2) = run(old_render, True), run(new_render, True)
    res = {
        "face_ids_identical": bool(torch.equal(o1.fragments.face_ids, o2.fragments.face_ids)),
        "max_abs_diff_images": float((o1.images - o2.images).detach().abs().max()),
        "max_abs_diff_alpha": float((o1.alpha - o2.alpha).detach().abs().max()),
        "max_diff_grad_verts_rel": float((gv1 - gv2).abs().max() / gv1.abs().max()),
        "max_diff_grad_colors_rel": float((gc1 - gc2).abs().max() / gc1.abs().max()),
    }
    for name, grad in (("forward", False), ("forward_backward", True)):
        ts = {"old": [], "new": []}
        for mod in (old_render, new_render):
            run(mod, grad)  # warm-up
        for _ in range(repeats):
            for key, mod in (("old", old_render), ("new", new_render)):
                ts[key].append(cpu_median(lambda: run(mod, grad), 1))
        o, n = statistics.median(ts["old"]), statistics.median(ts["new"])
        res[f"{name}_cpu_s_old"], res[f"{name}_cpu_s_new"] = round(o, 4), round(n, 4)
        res[f"{name}_ratio"] = round(o / n, 3)
    return res


def compare_training(steps: int, threads: int) -> dict:
    import facefit.training as NT
    import facefit_old.training as OT

    tmp = tempfile.mkdtemp()

    def make(T, tag):
        cfg = T.load_config(None, {
            "stage": "both", "stage1_steps": 1_000_000, "stage2_steps": 1_000_000, "batch_stage1": 16,
            "batch_synthetic": 8, "batch_real": 8, "views": 3, "render_size": 160,
            "data": str(ROOT.parent / "shared" / "data" / "faces-dev"), "max_photos": 24,
            "cache_dir": os.path.join(tmp, "cache"), "cache_workers": 1, "threads": threads,
            "out": os.path.join(tmp, tag), "device": "cpu"})
        tr = T.Trainer(cfg, progress=False)
        tr.setup()
        return tr, cfg

    told, cfg = make(OT, "old")
    tnew, _ = make(NT, "new")
    res = {}
    for stage, first in (("stage1", 0), ("stage2", cfg.stage1_total)):
        # same decoder weights for the comparison (the timed steps below let them drift)
        tnew.decoder.load_state_dict(told.decoder.state_dict())
        grads, terms = {}, {}
        for key, tr in (("old", told), ("new", tnew)):
            tr.decoder.zero_grad(set_to_none=True)
            loss, terms[key] = tr.compute_losses(first)
            loss.backward()
            grads[key] = torch.cat([p.grad.reshape(-1) for p in tr.decoder.parameters()])
        res[f"{stage}_terms_old_new"] = {k: [terms["old"][k], terms["new"][k]] for k in terms["old"]}
        res[f"{stage}_decoder_grad_max_diff_rel"] = float(
            (grads["old"] - grads["new"]).abs().max() / grads["old"].abs().max())
        ts = {"old": [], "new": []}
        for i in range(steps + 1):
            for key, tr in (("old", told), ("new", tnew)):
                c0 = time.process_time()
                tr.train_step(first + 1 + i)
                if i:
                    ts[key].append(time.process_time() - c0)
        o, n = statistics.median(ts["old"]), statistics.median(ts["new"])
        res[f"{stage}_cpu_s_old"], res[f"{stage}_cpu_s_new"], res[f"{stage}_ratio"] = round(o, 3), round(n, 3), round(o / n, 3)
    told.close()
    tnew.close()
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old-ref", required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--training", action="store_true")
    ap.add_argument("--steps", type=int, default=4)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as d:
        export_old(args.old_ref, Path(d))
        import facefit.render as new_render
        import facefit_old.render as old_render

        report = {"old_ref": args.old_ref, "threads": args.threads, "load_avg_1min_at_start": os.getloadavg()[0],
                  "renderer_ict_head_b8_224": compare_renderer(old_render, new_render, args.repeats)}
        if args.training:
            report["training"] = compare_training(args.steps, args.threads)
        report["load_avg_1min_at_end"] = os.getloadavg()[0]
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
