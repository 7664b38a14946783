"""What a detection worker process does: load, detect and crop one input (no torch), and
for the torch-free engine (:mod:`facefit.batch.lite`) encode its crops.

Runs the same functions as :meth:`facefit.reconstruction.Reconstructor.faces_of`
(:func:`facefit.faces.images.load_image`, :func:`facefit.faces.detection.detect_faces`
and the encoder's crop), so its results are the same numbers. dlib's chip comes from
:mod:`facefit.faces.chips` (numpy only), so a worker never imports torch for the default
dlib encoder; other crops use :func:`facefit.faces.alignment.crop_for_net`.
"""
from __future__ import annotations

import os
import pickle
import signal
import sys
import time

from facefit.errors import FacefitError, NoFaceError


def _die_with(parent_pid: int) -> None:
    """End this worker when the main process ends, however it ends (a killed main process
    would otherwise leave idle workers holding its stdout/stderr open): Linux's
    ``PR_SET_PDEATHSIG``, and an exit now if the parent is already gone."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
        except Exception:  # noqa: BLE001 - best effort
            pass
    if parent_pid and os.getppid() != parent_pid:
        os._exit(0)


def init_worker(detector: str, parent_pid: int = 0) -> None:
    """Worker start: die with the main process, ignore Ctrl-C (the main process stops the
    pool), and load the detector's models now (while the main process loads torch).

    Thread-pool settings are left alone: ``cv2.setNumThreads`` in a child forked from a
    process whose OpenCV thread pool has run hangs for good (measured), and the default
    crop path does not use torch."""
    _die_with(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if detector == "dlib":
        from facefit.faces.detection import _dlib_models

        try:
            _dlib_models()
        except Exception:  # noqa: BLE001 - reported with the first photo, as in one process
            pass


def _sendable(e: Exception) -> Exception:
    """``e`` if it survives pickling, else a :class:`~facefit.errors.FacefitError` with the
    text the batch job would have shown for it."""
    try:
        pickle.loads(pickle.dumps(e))
    except Exception:  # noqa: BLE001
        e = FacefitError(str(e) if isinstance(e, FacefitError) else f"{type(e).__name__}: {e}")
    return e


def ready() -> bool:
    """A no-op task: submitting one per worker starts the workers right away."""
    return True


def crop(image, face, net_crop: str, size: int):
    """The encoder crop of ``face`` (what ``Reconstructor.crop`` returns)."""
    if net_crop in ("dlib_chip", "dlib_wide"):
        from facefit.faces.chips import DLIB_WIDE_PADDING, dlib_chip_of_face

        return dlib_chip_of_face(image, face, size, 0.25 if net_crop == "dlib_chip" else DLIB_WIDE_PADDING)
    from facefit.faces.alignment import crop_for_net

    return crop_for_net(image, face, net_crop, size)


def faces_of(path, label: str, image, detector: str, all_faces: bool, net_crop: str, size: int,
             keep_image: bool, features_onnx=None):
    """Load + detect + crop one input (an :class:`~facefit.reconstruction.InputItem`'s
    ``path``, ``label`` and ``image``: the item itself is not sent, as unpickling it would
    import :mod:`facefit.reconstruction` and torch).

    With ``features_onnx`` (the torch-free engine's encoder, :mod:`facefit.batch.lite`) each
    crop is also encoded here: the list holds ``(face, crop, features)``.

    Returns:
        ``("ok", (image or None, [(face, crop)], timing))`` (the image only with
        ``keep_image``), or ``("error", exception)``; an exception that cannot be pickled
        comes back as a :class:`~facefit.errors.FacefitError` with the text the batch job
        would have shown for it.
    """
    from facefit.faces.detection import detect_faces
    from facefit.faces.images import load_image

    try:
        t0 = time.perf_counter()
        image = image if image is not None else load_image(path)
        t1 = time.perf_counter()
        faces = detect_faces(image, backend=detector, all_faces=all_faces)
        t2 = time.perf_counter()
        if not faces:
            raise NoFaceError(f"no face found in {label}")
        crops = [(f, crop(image, f, net_crop, size)) for f in faces]
        t3 = time.perf_counter()
        if features_onnx is not None:
            from facefit.batch.lite import encode_chip

            crops = [(f, c, encode_chip(features_onnx, c)) for f, c in crops]
        t4 = time.perf_counter()
    except Exception as e:  # noqa: BLE001 - handed to the main process, which reports it
        return "error", _sendable(e)
    timing = {"load": t1 - t0, "detect": t2 - t1, "align": t3 - t2}
    if features_onnx is not None:
        timing["encode"] = (t4 - t3) / len(crops)
    return "ok", (image if keep_image else None, crops, timing)


def write_item(entries, render_size: int, units):
    """Write one input's faces here (:func:`facefit.batch.job.write_item`: atomic
    files, all or nothing), so that the main process need not.

    Returns:
        ``("ok", (files written, seconds per face))`` or ``("error", exception)``.
    """
    from facefit.batch.job import write_item as write

    try:
        return "ok", write(entries, render_size, None, units)
    except Exception as e:  # noqa: BLE001 - handed to the main process, which reports it
        return "error", _sendable(e)
