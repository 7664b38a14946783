"""Distributed data-parallel training: two CPU processes (gloo) under torch.distributed.run."""
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
FACES_DEV = REPO.parent / "shared" / "data" / "faces-dev"

WORKER = textwrap.dedent(
    """
    import json, os, sys
    import torch
    from facefit.training import Trainer, load_config

    cfg = load_config(None, json.loads(sys.argv[1]))
    tr = Trainer(cfg, progress=False)
    try:
        tr.setup()
        summary = tr.run()
        rank = tr.dist.rank
        torch.save({k: v.detach().clone() for k, v in tr.decoder.state_dict().items()},
                   os.path.join(sys.argv[2], f"rank{rank}.pt"))
        if rank == 0:
            print("SUMMARY " + json.dumps(summary))
    finally:
        tr.close()
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_processes_on_cpu(tmp_path):
    from facefit.photo_cache import build_photo_cache

    assert FACES_DEV.is_dir(), f"faces-dev not in ../shared ({FACES_DEV})"  # missing data fails, no skip

    data = tmp_path / "data"
    for person in ("Barack_Obama", "Bill_Gates"):
        (data / person).mkdir(parents=True)
        for f in sorted((FACES_DEV / person).iterdir())[:3]:
            (data / person / f.name).symlink_to(f)
    cache = tmp_path / "cache"
    build_photo_cache(data, cache_dir=cache, workers=1, progress=False)  # rank 0 would build it otherwise

    out = tmp_path / "run"
    cfg = {
        "out": str(out), "stage": "both", "stage1_steps": 1, "stage2_steps": 2, "batch_stage1": 2,
        "batch_synthetic": 1, "batch_real": 2, "views": 1, "render_size": 64, "hidden": [16],
        "checkpoint_every": 0, "sample_every": 0, "n_samples": 1, "device": "cpu", "data": str(data),
        "cache_dir": str(cache), "cache_workers": 1, "seed": 1,
    }
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
        "--master_addr=127.0.0.1", f"--master_port={_free_port()}",
        str(script), json.dumps(cfg), str(tmp_path),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    line = next(l for l in proc.stdout.splitlines() if l.startswith("SUMMARY "))
    summary = json.loads(line[len("SUMMARY "):])
    assert summary["world_size"] == 2 and summary["step"] == 3 and summary["finished"]

    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    for k in r0:
        assert torch.equal(r0[k], r1[k]), k
    ck = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ck["step"] == 3
    for k in r0:
        assert torch.equal(ck["decoder"][k], r0[k]), k
    assert (out / "regressor.pt").is_file() and (out / "log.jsonl").is_file()
    assert len((out / "log.jsonl").read_text().splitlines()) == 3  # rank 0 alone writes the log
