"""The common interface of face-recognition networks, plus small shared helpers.

Every network takes aligned face crops as a float tensor ``(B, 3, S, S)``, RGB, values in
``[0, 1]`` (``S`` = the net's ``input_size``) and converts them to its own input
normalisation internally. The kind of alignment a network expects is named by its
``crop`` attribute (one of :data:`CROPS`); producing that crop is the job of
:mod:`facefit.faces`, not of the networks.

Any floating dtype is accepted (float16, float32, float64, bfloat16): images are cast to
the network's own dtype (:attr:`RecognitionNet.dtype`, float32 unless the net was
converted, e.g. with ``.double()``) before the first layer, and the outputs come in that
dtype. The cast is differentiable, so gradients reach float64 inputs too.
"""

from __future__ import annotations

import abc
import itertools
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

#: Names of the face alignments ("crops") that networks can ask for.
#:
#: - ``"dlib_chip"``: dlib ``get_face_chip`` from the 5-point landmarks, size 150,
#:   padding 0.25.
#: - ``"facenet_160"``: MTCNN-style crop of the detection box with a margin, resized to
#:   160x160.
#: - ``"dlib_wide"``: the same dlib chip with padding 0.75, size 250 (its centre 150 px
#:   are the ``dlib_chip``; the combined dlib + FaceNet encoder cuts both crops from it).
#: - ``"arcface_112"``: 5-point similarity alignment to the standard ArcFace/SFace
#:   112x112 template.
CROPS = ("dlib_chip", "facenet_160", "arcface_112", "dlib_wide")


from facefit.cache import atomic_write_bytes, cache_dir, file_sha256  # noqa: E402,F401  (re-exported: parsed/repaired weights live there)


def check_images(images: torch.Tensor, size: int, who: str) -> None:
    """Raise ``ValueError`` unless ``images`` is a float tensor of shape (B, 3, size, size)."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"{who}: expected a torch.Tensor, got {type(images).__name__}")
    if images.ndim != 4 or images.shape[1] != 3 or images.shape[2] != size or images.shape[3] != size:
        raise ValueError(
            f"{who}: expected images of shape (B, 3, {size}, {size}), got {tuple(images.shape)}"
        )
    if not images.is_floating_point():
        raise TypeError(f"{who}: expected float images in [0, 1], got dtype {images.dtype}")


class RecognitionNet(nn.Module, abc.ABC):
    """A frozen face-recognition network behind one interface.

    Attributes:
        name: registry name, e.g. ``"dlib"``.
        input_size: side S of the square crop the net takes.
        crop: the alignment the net expects (one of :data:`CROPS`).
        feature_dim: D, size of :meth:`features`.
        embedding_dim: E, size of :meth:`embed`.
        differentiable: whether gradients flow from the outputs to the input images.

    Networks are frozen: parameters do not require gradients and the module always stays
    in inference mode (``train()`` is ignored), so batch-norm uses its running statistics
    and dropout is off. Gradients still flow to the input images when ``differentiable``.
    """

    name: str = ""
    input_size: int = 0
    crop: str = ""
    feature_dim: int = 0
    embedding_dim: int = 0
    differentiable: bool = True

    @property
    def dtype(self) -> torch.dtype:
        """Floating dtype of the net's weights (float32 unless converted); inputs are cast
        to it. Nets without floating tensors (e.g. :class:`~facefit.recognition.SFace`,
        which runs in onnxruntime) report float32."""
        for t in itertools.chain(self.parameters(), self.buffers()):
            if t.is_floating_point():
                return t.dtype
        return torch.float32

    def prepare_images(self, images: torch.Tensor, who: str | None = None) -> torch.Tensor:
        """Check ``images`` (see :func:`check_images`) and cast them to :attr:`dtype`.

        Args:
            images: (B, 3, S, S) float RGB in [0, 1], any floating dtype.
            who: name used in error messages (default: the class name).
        Returns:
            (B, 3, S, S) in :attr:`dtype` (the input itself when it already is).
        """
        check_images(images, self.input_size, who or type(self).__name__)
        dt = self.dtype
        return images if images.dtype == dt else images.to(dt)

    def freeze(self) -> "RecognitionNet":
        """Stop parameter gradients and switch to inference mode; returns self."""
        for p in self.parameters():
            p.requires_grad_(False)
        super().train(False)
        return self

    def train(self, mode: bool = True) -> "RecognitionNet":  # noqa: D401 - nn.Module API
        """Ignored: recognition networks always run in inference mode."""
        return super().train(False)

    @abc.abstractmethod
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Penultimate features.

        Args:
            images: (B, 3, S, S) float RGB in [0, 1] (any floating dtype; cast to
                :attr:`dtype`), aligned with ``self.crop``.
        Returns:
            (B, D) features in :attr:`dtype`, D = ``self.feature_dim``.
        """

    @abc.abstractmethod
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Identity embedding of unit length.

        Args:
            images: (B, 3, S, S) float RGB in [0, 1] (any floating dtype; cast to
                :attr:`dtype`), aligned with ``self.crop``.
        Returns:
            (B, E) unit vectors in :attr:`dtype`, E = ``self.embedding_dim``.
        """

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Same as :meth:`embed`: (B, 3, S, S) -> (B, E) unit vectors."""
        return self.embed(images)

    def refine_network(self) -> tuple["RecognitionNet", Optional[Callable]]:
        """The network ``--refine`` optimises against and how to cut its crop from this
        network's crop (None: the crop as it is). A plain network refines against itself;
        a combined one names one of its parts (:class:`facefit.recognition.DlibFaceNet`)."""
        return self, None

    @staticmethod
    def normalize(x: torch.Tensor) -> torch.Tensor:
        """L2-normalise rows: (B, E) -> (B, E) unit vectors (eps-safe)."""
        return F.normalize(x, p=2, dim=1, eps=1e-12)

    def extra_repr(self) -> str:
        return (
            f"name={self.name!r}, input_size={self.input_size}, crop={self.crop!r}, "
            f"feature_dim={self.feature_dim}, embedding_dim={self.embedding_dim}, "
            f"differentiable={self.differentiable}"
        )
