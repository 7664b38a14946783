"""dlib's ResNet and FaceNet as one encoder: ``"dlib+facenet"``.

The two networks see different things: a stage-1 decoder on both networks' features
together reads the shape of synthetic faces clearly better than on either alone (ratio to
the mean face 0.59 against 0.63 / 0.65, ``docs/training.md``). This module makes the pair
one :class:`~facefit.recognition.RecognitionNet`, so that everything that takes an encoder
(reconstruction, the torch-free engine, ``--refine``, training, the evaluations) takes it
unchanged.

One crop serves both: ``"dlib_wide"`` (:mod:`facefit.faces.alignment`), dlib's chip with
padding 0.75 at 250 px. Its centre 150 x 150 pixels are dlib's own 150 px chip (same pixel
scale; dlib's chip) and FaceNet's crop is a fixed box of it (:data:`FACENET_BOX_IN_WIDE`),
resampled to 160 x 160: the median of the ``facenet_160`` box (:func:`~facefit.faces.
alignment.facenet_crop_box`) in the dlib chip's frame over 40 faces-dev photos. FaceNet
therefore sees its box with dlib's roll and scale normalisation rather than the box of the
face's own points; both are fixed functions of the crop, and the decoder learns from the
same ones.

* :meth:`features`: dlib's 256 features followed by FaceNet's 512 (768 in all).
* :meth:`embed`: the two unit embeddings side by side, each scaled by ``1/sqrt(2)``, so the
  cosine of two embeddings is the mean of the two networks' cosines.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from .base import RecognitionNet

#: Side of the ``dlib_wide`` crop and the offset of dlib's 150 px chip inside it.
WIDE_SIZE = 250
DLIB_OFFSET = 50
DLIB_SIZE = 150

#: FaceNet's box ``x0, y0, x1, y1`` in ``dlib_wide`` pixels (continuous coordinates):
#: median ``facenet_crop_box`` in the 150 px chip's frame, (-12.5, -40.4, 159.0, 168.8),
#: shifted by :data:`DLIB_OFFSET`.
FACENET_BOX_IN_WIDE = (37.5, 9.6, 209.0, 218.8)
FACENET_SIZE = 160


def facenet_crop_of_wide(wide: torch.Tensor, size: int = FACENET_SIZE) -> torch.Tensor:
    """FaceNet's crop of ``dlib_wide`` crops (differentiable, bilinear).

    Args:
        wide: (B, 3, 250, 250) float ``dlib_wide`` crops.
        size: output side.
    Returns:
        (B, 3, size, size): the box :data:`FACENET_BOX_IN_WIDE` resized (anisotropically,
        as FaceNet's MTCNN crops are).
    """
    from ..faces.alignment import facenet_transform, warp_tensor

    box = torch.tensor(FACENET_BOX_IN_WIDE, dtype=torch.float64)
    M = facenet_transform(box, size=size)
    return warp_tensor(wide, M.to(wide.dtype), size)


def dlib_chip_of_wide(wide: torch.Tensor) -> torch.Tensor:
    """dlib's 150 px chip: the centre of (B, 3, 250, 250) ``dlib_wide`` crops -> (B, 3, 150, 150)."""
    o = DLIB_OFFSET
    return wide[:, :, o:o + DLIB_SIZE, o:o + DLIB_SIZE]


class DlibFaceNet(RecognitionNet):
    """dlib's ResNet + FaceNet on one ``dlib_wide`` crop (see the module docstring).

    Args:
        dlib, facenet: the two networks (default: new :class:`DlibResNet` and
            :class:`FaceNet` instances with their default weights; not the registry's, so
            that moving this module to a device moves no one else's network).
    """

    name = "dlib+facenet"
    input_size = WIDE_SIZE
    crop = "dlib_wide"
    differentiable = True

    def __init__(self, dlib: RecognitionNet | None = None, facenet: RecognitionNet | None = None) -> None:
        super().__init__()
        if dlib is None:
            from .dlib_resnet import DlibResNet

            dlib = DlibResNet()
        if facenet is None:
            from .facenet import FaceNet

            facenet = FaceNet()
        self.dlib, self.facenet = dlib, facenet
        self.feature_dim = int(self.dlib.feature_dim) + int(self.facenet.feature_dim)
        self.embedding_dim = int(self.dlib.embedding_dim) + int(self.facenet.embedding_dim)
        self.freeze()

    def split(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, 250, 250) ``dlib_wide`` crops -> (dlib chips (B, 3, 150, 150), FaceNet crops (B, 3, 160, 160))."""
        images = self.prepare_images(images, "DlibFaceNet")
        return dlib_chip_of_wide(images), facenet_crop_of_wide(images, int(self.facenet.input_size))

    def refine_network(self) -> tuple[RecognitionNet, Callable]:
        """dlib's ResNet, on the centre chip of the ``dlib_wide`` crop. Refining against both
        networks (FaceNet backward through 267 px renders) made ``facefit eval synthetic
        --n 10 --refine 40`` take 629 s instead of 222 s and moved the geometry more
        (0.776 -> 0.798 mm, +2.8 %, against +1.3 % with dlib alone)."""
        return self.dlib, dlib_chip_of_wide

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, 250, 250) RGB [0, 1] -> (B, 768): dlib's features, then FaceNet's."""
        d, f = self.split(images)
        return torch.cat([self.dlib.features(d), self.facenet.features(f).to(d.dtype)], 1)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, 250, 250) RGB [0, 1] -> (B, 640) unit vectors (both embeddings / sqrt 2)."""
        d, f = self.split(images)
        e = torch.cat([self.dlib.embed(d), self.facenet.embed(f).to(d.dtype)], 1)
        return e / math.sqrt(2.0)
