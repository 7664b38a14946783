"""Shared fixtures: paths to ../shared data, a small untrained regressor checkpoint."""
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
DEV = SHARED / "data" / "faces-dev"
EXAMPLE = REPO / "examples" / "astronaut.png"


@pytest.fixture(scope="session")
def default_model():
    from facefit.model_io import resolve_model

    return resolve_model(None)


@pytest.fixture(scope="session")
def untrained_checkpoint(tmp_path_factory, default_model):
    """A regressor checkpoint for the default model with a random (untrained) decoder whose
    predictions vary from face to face (so tests can tell faces apart)."""
    import torch

    from facefit.regressor import Decoder, make_checkpoint, save_checkpoint

    torch.manual_seed(0)
    dec = Decoder(256, default_model.n_shape, default_model.n_color, hidden=(64,), init_scale=0.05)
    path = tmp_path_factory.mktemp("ckpt") / "untrained.pt"
    save_checkpoint(make_checkpoint(dec, "dlib", default_model.content_hash, default_model.name), path)
    return path


def chmod_is_effective(directory) -> bool:
    """False when running as root (chmod does not stop root from writing)."""
    probe = Path(directory) / "probe"
    probe.mkdir()
    probe.chmod(0o500)
    try:
        (probe / "x").write_text("x")
    except PermissionError:
        return True
    finally:
        probe.chmod(0o700)
        for p in probe.iterdir():
            p.unlink()
        probe.rmdir()
    return False
