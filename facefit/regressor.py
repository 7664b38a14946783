"""The regression network: frozen face-recognition encoder -> MLP decoder -> 3DMM coefficients.

Following Genova et al. (CVPR 2018), a photo's aligned face crop goes through a frozen
recognition network (:mod:`facefit.recognition`); its penultimate features feed a small
trainable MLP (:class:`Decoder`) that outputs the morphable model's shape and colour
coefficients in N(0, 1) units (see :mod:`facefit.morphable`).

Checkpoints
-----------
A checkpoint is a ``torch.save``-d dict of tensors and plain Python types only, so it
loads with ``torch.load(path, weights_only=True)`` (facefit never loads it any other way):

==================  ======================================================================
``kind``            ``"facefit-regressor"``
``format``          int, :data:`CHECKPOINT_FORMAT` (bumped on incompatible changes)
``decoder``         the decoder's ``state_dict`` (weights + input normalisation buffers)
``decoder_config``  dict: ``in_dim``, ``n_shape``, ``n_color``, ``hidden`` (list of ints)
``encoder``         recognition network name (e.g. ``"dlib"``; not saved: frozen, rebuilt)
``model_hash``      ``MorphableModel.content_hash`` of the model the decoder predicts for
``model_name``      that model's name
``n_shape``         number of shape coefficients predicted
``n_color``         number of colour coefficients predicted
``meta``            dict of plain values (what wrote it, when, ...)
==================  ======================================================================

Training checkpoints (:mod:`facefit.training`) add ``optimizer`` (state dict), ``step``,
``stage``, ``rng`` (random generator states) and ``config`` (the resolved training
configuration as a plain dict). Loading a checkpoint for a different morphable model (hash
mismatch) raises :class:`~facefit.errors.FacefitError` naming both models.
"""
from __future__ import annotations

import os
import time
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from facefit.errors import FacefitError, InvalidFileError, ModelNotFoundError

__all__ = [
    "CHECKPOINT_KIND",
    "CHECKPOINT_FORMAT",
    "Decoder",
    "Regressor",
    "encode",
    "blend_decoders",
    "save_checkpoint",
    "load_checkpoint",
    "check_model_match",
]

CHECKPOINT_KIND = "facefit-regressor"
CHECKPOINT_FORMAT = 1

_REQUIRED_KEYS = ("decoder", "decoder_config", "encoder", "model_hash", "n_shape", "n_color")


class Decoder(nn.Module):
    """MLP from encoder features to morphable-model coefficients.

    ``x -> (x - input_mean) / input_std -> [Linear -> ReLU] * len(hidden) -> Linear`` with
    ``n_shape + n_color`` outputs. The last layer starts with zero bias and tiny weights
    (std ``init_scale``), so an untrained decoder predicts (almost exactly) the mean face.

    The input normalisation (``input_mean``, ``input_std``, buffers saved in the state
    dict) is fixed, not trained: :meth:`set_input_stats` sets it from a sample of features
    before training (recognition features are all positive with a large common offset).

    Args:
        in_dim: encoder feature size D.
        n_shape: Ks; n_color: Kc (may be 0).
        hidden: hidden layer sizes (default one layer of 512).
        init_scale: std of the last layer's initial weights.
    """

    def __init__(
        self,
        in_dim: int,
        n_shape: int,
        n_color: int,
        hidden: Sequence[int] = (512,),
        init_scale: float = 1e-3,
    ) -> None:
        super().__init__()
        if in_dim <= 0 or n_shape < 0 or n_color < 0 or n_shape + n_color == 0:
            raise ValueError(f"invalid decoder sizes in_dim={in_dim}, n_shape={n_shape}, n_color={n_color}")
        self.in_dim, self.n_shape, self.n_color = int(in_dim), int(n_shape), int(n_color)
        self.hidden = [int(h) for h in hidden]
        layers: list[nn.Module] = []
        d = self.in_dim
        for h in self.hidden:
            layers += [nn.Linear(d, h), nn.ReLU(inplace=False)]
            d = h
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(d, self.n_shape + self.n_color)
        nn.init.normal_(self.head.weight, std=float(init_scale))
        nn.init.zeros_(self.head.bias)
        self.register_buffer("input_mean", torch.zeros(self.in_dim))
        self.register_buffer("input_std", torch.ones(self.in_dim))

    @property
    def config(self) -> dict[str, Any]:
        """Constructor arguments as plain values (``Decoder(**config)`` rebuilds it)."""
        return {"in_dim": self.in_dim, "n_shape": self.n_shape, "n_color": self.n_color, "hidden": list(self.hidden)}

    @torch.no_grad()
    def set_input_stats(self, features: torch.Tensor, min_std: float = 1e-3) -> None:
        """Set the fixed input normalisation from a sample of features.

        Args:
            features: (N, D) encoder features, N >= 2.
            min_std: floor of the per-dimension std.
        """
        if features.dim() != 2 or features.shape[1] != self.in_dim or features.shape[0] < 2:
            raise ValueError(f"features must be (N >= 2, {self.in_dim}), got {tuple(features.shape)}")
        f = features.detach().to(self.input_mean.device, torch.float64)
        self.input_mean.copy_(f.mean(0).to(self.input_mean.dtype))
        self.input_std.copy_(f.std(0).clamp_min(min_std).to(self.input_std.dtype))

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, D) features -> (shape_coeffs (B, Ks), color_coeffs (B, Kc))."""
        x = (features - self.input_mean) / self.input_std
        out = self.head(self.body(x))
        return out[:, : self.n_shape], out[:, self.n_shape :]


def encode(net: nn.Module, crops: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Features and unit embeddings of crops with one pass through the network.

    For dlib's ResNet the embedding is ``normalize(fc(features))`` and for FaceNet
    ``normalize(features)``, so one forward pass gives both; other networks are run twice.

    Args:
        net: a :class:`~facefit.recognition.RecognitionNet`.
        crops: (B, 3, S, S) aligned crops in [0, 1].
    Returns:
        ``(features (B, D), embeddings (B, E) unit length)``, differentiable w.r.t. ``crops``
        when the network is.
    """
    from facefit.recognition import DlibResNet, FaceNet

    feats = net.features(crops)
    if isinstance(net, DlibResNet):
        emb = net.normalize(net.fc(feats))
    elif isinstance(net, FaceNet):
        emb = net.normalize(feats)
    else:
        emb = net.embed(crops)
    return feats, emb


class Regressor(nn.Module):
    """Frozen recognition encoder + trainable :class:`Decoder`.

    Only the decoder is trainable and saved; the encoder is rebuilt from its registry name
    (:func:`facefit.recognition.get_net`).

    Args:
        encoder: a frozen :class:`~facefit.recognition.RecognitionNet`.
        decoder: a :class:`Decoder` whose ``in_dim`` equals ``encoder.feature_dim``.
        model_hash, model_name: identify the morphable model the coefficients belong to.
    """

    def __init__(self, encoder: nn.Module, decoder: Decoder, model_hash: str = "", model_name: str = "") -> None:
        super().__init__()
        if getattr(encoder, "feature_dim", decoder.in_dim) != decoder.in_dim:
            raise ValueError(f"encoder features ({encoder.feature_dim}) do not match the decoder input ({decoder.in_dim})")
        self.encoder = encoder
        self.decoder = decoder
        self.model_hash = str(model_hash)
        self.model_name = str(model_name)

    @property
    def encoder_name(self) -> str:
        return str(getattr(self.encoder, "name", ""))

    @property
    def input_size(self) -> int:
        """Side S of the crops :meth:`forward` takes."""
        return int(self.encoder.input_size)

    @property
    def crop(self) -> str:
        """The alignment the encoder expects (``"dlib_chip"``, ...)."""
        return str(self.encoder.crop)

    def train(self, mode: bool = True) -> "Regressor":
        """Switch the decoder's mode; the encoder always stays in inference mode."""
        self.training = mode
        self.decoder.train(mode)
        self.encoder.train(False)
        return self

    def decode_features(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, D) encoder features -> dict(shape_coeffs (B, Ks), color_coeffs (B, Kc))."""
        s, c = self.decoder(features)
        return {"shape_coeffs": s, "color_coeffs": c}

    def forward(self, crops: torch.Tensor) -> dict[str, torch.Tensor]:
        """Coefficients for aligned crops.

        Args:
            crops: (B, 3, S, S) RGB in [0, 1], aligned with the encoder's ``crop``.
        Returns:
            dict with ``shape_coeffs`` (B, Ks), ``color_coeffs`` (B, Kc) (N(0, 1) units)
            and ``features`` (B, D).
        """
        feats = self.encoder.features(crops)
        out = self.decode_features(feats)
        out["features"] = feats
        return out

    def checkpoint_dict(self, **extra: Any) -> dict[str, Any]:
        """The shipping checkpoint of this regressor (see the module docstring)."""
        return make_checkpoint(self.decoder, self.encoder_name, self.model_hash, self.model_name, **extra)

    def save_checkpoint(self, path: str | os.PathLike, **extra: Any) -> Path:
        """Write :meth:`checkpoint_dict` atomically to ``path``; returns the path."""
        return save_checkpoint(self.checkpoint_dict(**extra), path)

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike,
        model=None,
        device: str | torch.device | None = None,
        encoder_kwargs: Mapping[str, Any] | None = None,
    ) -> "Regressor":
        """Load a regressor (decoder from the file, encoder rebuilt by name).

        Args:
            path: checkpoint file (shipping or training checkpoint).
            model: the :class:`~facefit.morphable.MorphableModel` the predictions will be
                used with (default: :func:`facefit.model_io.resolve_model`); its content
                hash must match the checkpoint's.
            device: where to put the networks (default CPU).
            encoder_kwargs: passed to :func:`facefit.recognition.get_net` (e.g.
                ``weights=`` for FaceNet).
        Returns:
            Regressor in inference mode.
        Raises:
            ModelNotFoundError: missing file; InvalidFileError: not a facefit checkpoint;
            FacefitError: trained for another morphable model.
        """
        from facefit.recognition import get_net

        if model is None:
            from facefit.model_io import resolve_model

            model = resolve_model(None)
        ckpt = load_checkpoint(path, model=model)
        decoder = decoder_from_checkpoint(ckpt, path)
        encoder = get_net(ckpt["encoder"], device=device, **dict(encoder_kwargs or {}))
        reg = cls(encoder, decoder, ckpt["model_hash"], ckpt.get("model_name", ""))
        # provenance fields of the file (facefit.reconstruction.checkpoint_info), kept so it is read once
        reg.checkpoint_fields = {k: ckpt[k] for k in ("meta", "step", "format") if k in ckpt}
        if device is not None:
            reg.decoder.to(device)
        return reg.train(False)


# ---------------------------------------------------------------------------------------
# checkpoint helpers


def _plain_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """A state dict as a plain dict of detached CPU tensors."""
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def make_checkpoint(
    decoder: Decoder, encoder: str, model_hash: str, model_name: str = "", **extra: Any
) -> dict[str, Any]:
    """Build a checkpoint dict (module docstring) for ``decoder``; ``extra`` keys are added.

    Args:
        decoder: the decoder (a DDP wrapper's ``.module``, not the wrapper).
        encoder: recognition network name.
        model_hash, model_name: the morphable model's content hash and name.
    Returns:
        dict of tensors and plain Python values.
    """
    ck: dict[str, Any] = {
        "kind": CHECKPOINT_KIND,
        "format": CHECKPOINT_FORMAT,
        "decoder": _plain_state(decoder),
        "decoder_config": decoder.config,
        "encoder": str(encoder),
        "model_hash": str(model_hash),
        "model_name": str(model_name),
        "n_shape": decoder.n_shape,
        "n_color": decoder.n_color,
        "meta": {"written_by": "facefit", "time": time.strftime("%Y-%m-%dT%H:%M:%S")},
    }
    ck.update(extra)
    return ck


def save_checkpoint(ckpt: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Write a checkpoint dict atomically (``torch.save`` through :func:`facefit.atomic.atomic_write`).

    Args:
        ckpt: dict of tensors and plain Python types.
        path: target file (parent directories are created).
    Returns:
        The path written.
    Raises:
        FacefitError: the file cannot be written.
    """
    from facefit.atomic import atomic_write

    path = Path(path)
    with atomic_write(path, "wb", mkdir=True) as fh:
        torch.save(dict(ckpt), fh)
    return path


def check_model_match(ckpt: Mapping[str, Any], model, what: str = "checkpoint") -> None:
    """Raise unless ``ckpt`` was trained for ``model`` (same content hash and sizes).

    Raises:
        FacefitError: naming both models (name and hash).
    """
    h = str(ckpt.get("model_hash", ""))
    if h != model.content_hash:
        raise FacefitError(
            f"{what} was trained for morphable model '{ckpt.get('model_name', '?')}' (hash {h}), "
            f"but the model in use is '{model.name}' (hash {model.content_hash})"
        )
    if int(ckpt["n_shape"]) > model.n_shape or int(ckpt["n_color"]) > model.n_color:
        raise FacefitError(
            f"{what} predicts {ckpt['n_shape']} shape / {ckpt['n_color']} colour coefficients, "
            f"model '{model.name}' has {model.n_shape} / {model.n_color}"
        )


def _load_failure_reason(exc: BaseException) -> str:
    """Why ``torch.load(weights_only=True)`` failed, in a few words for a one-line error.

    torch's own messages span several lines and suggest re-running with
    ``weights_only=False`` (which would execute whatever the file contains); facefit never
    does that, so the message is replaced by a plain reason.
    """
    import pickle

    text = str(exc)
    if isinstance(exc, pickle.UnpicklingError) or "Weights only load failed" in text:
        if "Unsupported global" in text:
            return "it holds objects other than tensors and plain values; refusing to load it"
        return "not a PyTorch file of tensors and plain values; refusing to load it"
    if isinstance(exc, EOFError) or "failed finding central directory" in text or "end of file" in text.lower():
        return "the file is empty, truncated or damaged"
    first = text.strip().splitlines()[0].strip() if text.strip() else type(exc).__name__
    return first[:200]


def load_checkpoint(path: str | os.PathLike, model=None, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read and validate a checkpoint (always with ``torch.load(weights_only=True)``).

    Args:
        path: the file.
        model: optional :class:`~facefit.morphable.MorphableModel` to check against
            (:func:`check_model_match`).
        map_location: where tensors are loaded (default CPU).
    Returns:
        The checkpoint dict.
    Raises:
        ModelNotFoundError: no such file; InvalidFileError: unreadable, unsafe or not a
        facefit checkpoint, or a newer format; FacefitError: model mismatch.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelNotFoundError(f"checkpoint not found: {path}")
    try:
        with warnings.catch_warnings():
            # a raw pickle (not a torch.save zip) makes torch warn about its protocol first
            warnings.filterwarnings("ignore", message=r"Detected pickle protocol", category=UserWarning)
            ck = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # pickle.UnpicklingError, RuntimeError, EOFError, zipfile errors ...
        raise InvalidFileError(f"{path} is not a facefit checkpoint ({_load_failure_reason(exc)})") from exc
    if not isinstance(ck, dict) or ck.get("kind") != CHECKPOINT_KIND:
        raise InvalidFileError(f"{path}: not a facefit regressor checkpoint")
    fmt = ck.get("format")
    if not isinstance(fmt, int) or fmt > CHECKPOINT_FORMAT:
        raise InvalidFileError(
            f"{path}: checkpoint format {fmt!r} is newer than this facefit supports ({CHECKPOINT_FORMAT}); upgrade facefit"
        )
    missing = [k for k in _REQUIRED_KEYS if k not in ck]
    if missing:
        raise InvalidFileError(f"{path}: checkpoint lacks {', '.join(missing)}")
    if model is not None:
        check_model_match(ck, model, what=f"checkpoint {path.name}")
    return ck


def decoder_from_checkpoint(ckpt: Mapping[str, Any], path: str | os.PathLike = "checkpoint") -> Decoder:
    """Rebuild the :class:`Decoder` of a loaded checkpoint dict.

    Raises:
        InvalidFileError: the stored configuration or weights do not fit together.
    """
    cfg = ckpt["decoder_config"]
    try:
        dec = Decoder(int(cfg["in_dim"]), int(cfg["n_shape"]), int(cfg["n_color"]), hidden=list(cfg.get("hidden", [])))
        dec.load_state_dict(ckpt["decoder"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InvalidFileError(f"{path}: decoder weights do not match their configuration ({msg[:200]})") from exc
    return dec


@torch.no_grad()
def blend_decoders(shape_from: Decoder, rest_from: Decoder, alpha: "float | Sequence[float] | torch.Tensor" = 1.0) -> Decoder:
    """One :class:`Decoder` whose shape is a blend of two decoders' shapes.

    The result predicts ``shape = alpha * shape_from(x) + (1 - alpha) * rest_from(x)`` and
    ``color = rest_from(x)`` exactly (up to float rounding): its one hidden layer is the two
    decoders' hidden layers side by side (``rest_from``'s first layer re-expressed on
    ``shape_from``'s input normalisation) and its last layer is block-structured. It is an
    ordinary decoder, so it saves, loads and runs (also in the torch-free engine) like any
    other. Used to measure the trade-off between a geometry-trained decoder (stage 1: exact
    synthetic coefficients) and an identity-trained one (stage 2), see ``docs/training.md``.

    ``rest_from`` may read fewer features than ``shape_from``: it then reads the first
    ``rest_from.in_dim`` of them (exactly what it read alone when ``shape_from``'s encoder
    puts its encoder's features first, as ``"dlib+facenet"`` does with dlib's), so a
    decoder on a combined encoder can be blended with one on its first network.

    Args:
        shape_from, rest_from: decoders with one hidden layer each and the same numbers of
            shape and colour coefficients; ``rest_from.in_dim <= shape_from.in_dim``.
        alpha: weight of ``shape_from``'s shape (0: ``rest_from`` unchanged, 1: its shape
            replaced): one number, or one per shape coefficient (``(Ks,)``) to blend each
            component with its own weight.
    Returns:
        a new Decoder with hidden size ``h_shape_from + h_rest_from``.
    Raises:
        ValueError: the decoders do not fit together, or ``alpha`` has the wrong length or
            a value outside [0, 1].
    """
    A, B = shape_from, rest_from
    if len(A.hidden) != 1 or len(B.hidden) != 1:
        raise ValueError("blend_decoders needs decoders with exactly one hidden layer")
    if (A.n_shape, A.n_color) != (B.n_shape, B.n_color) or B.in_dim > A.in_dim:
        raise ValueError(
            f"decoders do not fit together: in/shape/colour sizes {(A.in_dim, A.n_shape, A.n_color)} "
            f"vs {(B.in_dim, B.n_shape, B.n_color)}"
        )
    k = B.in_dim  # rest_from reads A's first k features
    hA, hB, ks = A.hidden[0], B.hidden[0], A.n_shape
    a = torch.as_tensor(alpha, dtype=A.head.weight.dtype).detach().reshape(-1)
    if a.numel() not in (1, ks):
        raise ValueError(f"alpha needs one value or one per shape coefficient ({ks}), got {a.numel()}")
    if not bool(((a >= 0) & (a <= 1)).all()):
        raise ValueError("alpha must lie in [0, 1]")
    a = a.expand(ks)
    out = Decoder(A.in_dim, A.n_shape, A.n_color, hidden=[hA + hB])
    out.input_mean.copy_(A.input_mean)
    out.input_std.copy_(A.input_std)
    WA, bA = A.body[0].weight, A.body[0].bias
    WB, bB = B.body[0].weight, B.body[0].bias
    # W_b (x - m_b) / s_b = (W_b s_a / s_b) (x - m_a) / s_a + W_b (m_a - m_b) / s_b, on x[:k]
    WB2 = torch.zeros(hB, A.in_dim, dtype=WB.dtype, device=WB.device)
    WB2[:, :k] = WB * (A.input_std[:k] / B.input_std)[None, :]
    bB2 = bB + WB @ ((A.input_mean[:k] - B.input_mean) / B.input_std)
    out.body[0].weight.copy_(torch.cat([WA, WB2]))
    out.body[0].bias.copy_(torch.cat([bA, bB2]))
    H = torch.zeros_like(out.head.weight)
    bias = torch.zeros_like(out.head.bias)
    H[:ks, :hA] = a[:, None] * A.head.weight[:ks]
    H[:ks, hA:] = (1.0 - a)[:, None] * B.head.weight[:ks]
    bias[:ks] = a * A.head.bias[:ks] + (1.0 - a) * B.head.bias[:ks]
    H[ks:, hA:] = B.head.weight[ks:]
    bias[ks:] = B.head.bias[ks:]
    out.head.weight.copy_(H)
    out.head.bias.copy_(bias)
    return out
