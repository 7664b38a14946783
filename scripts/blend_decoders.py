"""Blend two regressor checkpoints: shape = ALPHA x SHAPE_FROM + (1 - ALPHA) x REST_FROM, colour = REST_FROM.

    python scripts/blend_decoders.py SHAPE_FROM.pt REST_FROM.pt --alpha 0.25 -o OUT.pt
    python scripts/blend_decoders.py SHAPE_FROM.pt REST_FROM.pt --alpha 0.5 --component-alpha 0=0 -o OUT.pt

``--component-alpha K=A`` (or ``K1-K2=A``, inclusive, repeatable) gives shape coefficient K
its own weight A instead of ``--alpha``.

Both checkpoints must use the same morphable model and one hidden layer each
(:func:`facefit.regressor.blend_decoders`), and the same encoder, or REST_FROM the first
network of SHAPE_FROM's combined one (``dlib`` with ``dlib+facenet``: it reads the dlib
features; OUT then uses the combined encoder). OUT keeps REST_FROM's training configuration
(with OUT's encoder) and records both sources and ALPHA in ``meta["blend"]``. How the shipped regressor was made
this way: ``models/README.md``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from facefit.cache import file_sha256  # noqa: E402
from facefit.errors import FacefitError  # noqa: E402
from facefit.regressor import (  # noqa: E402
    blend_decoders, decoder_from_checkpoint, load_checkpoint, make_checkpoint, save_checkpoint,
)


def _component_alpha(text: str) -> tuple[int, int, float]:
    """``"K=A"`` or ``"K1-K2=A"`` -> (K1, K2, A); FacefitError for anything else."""
    try:
        where, value = text.split("=")
        lo, _, hi = where.partition("-")
        lo, hi, value = int(lo), int(hi or lo), float(value)
    except ValueError:
        raise FacefitError(f"--component-alpha wants K=A or K1-K2=A, got {text!r}") from None
    if not (0 <= lo <= hi and 0.0 <= value <= 1.0):
        raise FacefitError(f"--component-alpha {text!r}: need 0 <= K1 <= K2 and A in [0, 1]")
    return lo, hi, value


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("shape_from", type=Path)
    ap.add_argument("rest_from", type=Path)
    ap.add_argument("--alpha", type=float, required=True)
    ap.add_argument("--component-alpha", action="append", default=[], metavar="K=A",
                    help="weight A for shape coefficient K (or a range K1-K2), instead of --alpha")
    ap.add_argument("-o", "--out", type=Path, required=True)
    a = ap.parse_args()
    try:
        if not 0.0 <= a.alpha <= 1.0:
            raise FacefitError(f"--alpha must be in [0, 1], got {a.alpha}")
        overrides = [_component_alpha(text) for text in a.component_alpha]
        rest = load_checkpoint(a.rest_from)
        shape = load_checkpoint(a.shape_from)
        encoder = str(shape["encoder"])
        if encoder.split("+")[0] != str(rest["encoder"]) and encoder != rest["encoder"] \
                or shape["model_hash"] != rest["model_hash"]:
            raise FacefitError("the two checkpoints use different encoders or morphable models")
        try:
            A, B = decoder_from_checkpoint(shape, a.shape_from), decoder_from_checkpoint(rest, a.rest_from)
            alpha = [a.alpha] * A.n_shape
            for lo, hi, value in overrides:
                if hi >= A.n_shape:
                    raise FacefitError(f"--component-alpha: coefficient {hi} does not exist (the model has {A.n_shape})")
                alpha[lo:hi + 1] = [value] * (hi + 1 - lo)
            dec = blend_decoders(A, B, alpha)
        except ValueError as exc:
            raise FacefitError(str(exc)) from exc
        extra = {}
        if "config" in rest:
            extra["config"] = dict(rest["config"])
            if encoder != rest["encoder"]:
                extra["config"]["encoder"] = encoder
        ck = make_checkpoint(dec, encoder, rest["model_hash"], rest.get("model_name", ""), **extra)
        ck["meta"]["blend"] = {"alpha": a.alpha, **({"component_alpha": a.component_alpha} if overrides else {}),
                               "shape_from": a.shape_from.name, "shape_from_sha256": file_sha256(a.shape_from),
                               "rest_from": a.rest_from.name, "rest_from_sha256": file_sha256(a.rest_from)}
        save_checkpoint(ck, a.out)
    except FacefitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
