"""Images in, aligned face crops out.

* :mod:`facefit.faces.images`: robust photo loading (:func:`load_image`).
* :mod:`facefit.faces.detection`: face detectors + landmarks (:func:`detect_faces`).
* :mod:`facefit.faces.alignment`: similarity alignment to recognition-network crops, for
  photos (numpy) and differentiably for rendered tensors (:func:`align_rendered`).
"""
from facefit.faces.images import DEFAULT_MAX_PIXELS, as_rgb_uint8, downscale_for_detection, load_image
from facefit.faces.detection import (
    BACKENDS,
    DEFAULT_BACKEND,
    Face,
    detect_faces,
    detect_main_face,
    landmarks5_from_68,
)
from facefit.faces.alignment import (
    ARCFACE_TEMPLATE_112,
    CROPS,
    align_rendered,
    arcface_transform,
    crop_for_net,
    crop_transform_from_landmarks68,
    dlib5_from_landmarks68,
    dlib_chip_transform,
    dlib_face_chip,
    facenet_box_from_landmarks,
    facenet_crop_box,
    facenet_transform,
    invert_affine,
    similarity_transform,
    similarity_transform_torch,
    warp_image,
    warp_tensor,
)

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "load_image",
    "as_rgb_uint8",
    "downscale_for_detection",
    "BACKENDS",
    "DEFAULT_BACKEND",
    "Face",
    "detect_faces",
    "detect_main_face",
    "landmarks5_from_68",
    "ARCFACE_TEMPLATE_112",
    "CROPS",
    "align_rendered",
    "arcface_transform",
    "crop_for_net",
    "crop_transform_from_landmarks68",
    "dlib5_from_landmarks68",
    "dlib_chip_transform",
    "dlib_face_chip",
    "facenet_box_from_landmarks",
    "facenet_crop_box",
    "facenet_transform",
    "invert_affine",
    "similarity_transform",
    "similarity_transform_torch",
    "warp_image",
    "warp_tensor",
]
