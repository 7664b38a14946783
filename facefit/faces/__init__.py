"""Images in, aligned face crops out.

* :mod:`facefit.faces.images`: robust photo loading (:func:`load_image`).
* :mod:`facefit.faces.detection`: face detectors + landmarks (:func:`detect_faces`).
* :mod:`facefit.faces.alignment`: similarity alignment to recognition-network crops, for
  photos (numpy) and differentiably for rendered tensors (:func:`align_rendered`).
"""
import importlib

# Imported on first use (PEP 562), so that ``facefit.faces.detection`` and
# ``facefit.faces.chips`` load without torch (the alignment module needs it).
_WHERE = {
    **dict.fromkeys(("DEFAULT_MAX_PIXELS", "as_rgb_uint8", "downscale_for_detection", "load_image"), "images"),
    **dict.fromkeys(("BACKENDS", "DEFAULT_BACKEND", "Face", "detect_faces", "detect_main_face",
                     "landmarks5_from_68"), "detection"),
    **dict.fromkeys(("ARCFACE_TEMPLATE_112", "CROPS", "align_rendered", "arcface_transform", "crop_for_net",
                     "crop_transform_from_landmarks68", "dlib5_from_landmarks68", "dlib_chip_transform",
                     "dlib_face_chip", "facenet_box_from_landmarks", "facenet_crop_box", "facenet_transform", "invert_affine",
                     "similarity_transform", "similarity_transform_torch", "warp_image", "warp_tensor"),
                    "alignment"),
}


def __getattr__(name):
    if name in _WHERE:
        value = getattr(importlib.import_module(f"facefit.faces.{_WHERE[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'facefit.faces' has no attribute {name!r}")


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
