"""Detection ahead of the encoder: a pool of worker processes that load, detect and crop
the next inputs while the main process encodes and writes the current ones.

:func:`facefit.batch.job.run_batch` asks :meth:`DetectAhead.faces_of` for each
input's faces, in input order. The pool keeps up to ``window`` inputs in flight beyond the
one asked for, skipping inputs ``wanted`` says no to (``skip_existing``). A result comes
back exactly as :meth:`~facefit.reconstruction.Reconstructor.faces_of` would give it (its
error included); if the pool breaks (a worker killed), the input and all later ones are
done in the main process.

Workers are forked processes (dlib's detector holds the GIL, so threads would not run in
parallel). The command line starts them with :func:`prestart` before it imports torch,
so on a cold start the workers load dlib's models (and find the first face) while the main
process imports torch and loads the regressor.
"""
from __future__ import annotations

import multiprocessing
import os
import sys
from concurrent.futures import CancelledError, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Callable, Optional, Sequence

from facefit.batch import workers

#: environment variable: number of worker processes (0: none, everything in one process)
ENV_WORKERS = "FACEFIT_WORKERS"

_PRESTARTED: dict = {}


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def worker_count(n_inputs: int) -> int:
    """Detection workers for ``n_inputs`` inputs: ``$FACEFIT_WORKERS`` if set, else one per
    CPU core (they share the cores with the main process's encoding and writing: on 250 px
    photos one worker keeps up with the main process, on large photos detection costs more
    than encoding + writing and the second one is needed), never more than there are
    inputs; 0 on a single core."""
    env = os.environ.get(ENV_WORKERS, "").strip()
    if env:
        try:
            n = max(0, int(env))
        except ValueError:
            n = 0
    else:
        n = _cpus() if _cpus() > 1 else 0
    return min(n, max(int(n_inputs), 0))


def _context():
    # fork: workers start in milliseconds and share the parent's loaded modules. Their code
    # path (dlib, OpenCV, numpy) does not touch torch, so a parent that uses torch is fine.
    method = "fork" if sys.platform.startswith("linux") else "spawn"
    return multiprocessing.get_context(method)


def _new_pool(detector: str, n: int) -> ProcessPoolExecutor:
    pool = ProcessPoolExecutor(max_workers=n, mp_context=_context(), initializer=workers.init_worker,
                               initargs=(detector, os.getpid()))
    for _ in range(n):  # start them all now (before any other thread exists in this process)
        pool.submit(workers.ready)
    return pool


def prestart(inputs: Sequence, detector: str = "dlib", preload: bool = False) -> None:
    """Start detection workers for a coming :func:`~facefit.batch.job.run_batch` of
    ``inputs``, before torch is imported (the command line calls this first thing).

    One worker for a single photo, :func:`worker_count` for more or for a folder. The next
    :class:`DetectAhead` with the same detector takes the pool; without one it stays idle
    until the process ends.

    Args:
        preload: for several inputs and the dlib detector, load dlib's models in this
            process first and fork the workers after, so that they share one copy (each
            worker loading its own costs about 1.5 s of CPU and 100 MB more). Worth it when
            this process has nothing else to do meanwhile (the torch-free engine); a torch
            job imports torch while the workers load dlib instead.
    """
    many = len(inputs) > 1 or any(os.path.isdir(p) for p in inputs)
    n = worker_count(_cpus() if many else 1)
    if n == 0 or _PRESTARTED:
        return
    if preload and many and n > 1 and detector == "dlib":
        from facefit.faces.detection import _dlib_models

        try:
            _dlib_models()
        except Exception:  # noqa: BLE001 - reported with the first photo, as without preloading
            pass
    try:
        _PRESTARTED.update(pool=_new_pool(detector, n), detector=detector, n=n)
    except (OSError, ValueError):  # cannot fork here: run without workers
        _PRESTARTED.clear()


def _take_prestarted(detector: str) -> Optional[tuple[ProcessPoolExecutor, int]]:
    if _PRESTARTED and _PRESTARTED["detector"] == detector:
        pool, n = _PRESTARTED["pool"], _PRESTARTED["n"]
        _PRESTARTED.clear()
        return pool, n
    return None


class DetectAhead:
    """Per-input faces for a batch job, found ahead by worker processes.

    Args:
        rec: the :class:`~facefit.reconstruction.Reconstructor` (detector, ``all_faces``,
            encoder crop; and the fallback :meth:`faces_of` when there are no workers).
        items: the job's inputs in order (:class:`~facefit.reconstruction.InputItem`, or
            the ``(path, rel, error)`` tuples of unreadable videos, which are passed over).
        wanted: which items will be asked for (False: skipped as done).
        keep_image: return the full image too (``--texture photo`` needs it); else the
            image in the result is None.
        workers: worker processes (default :func:`worker_count`); 0 = none.
        window: inputs in flight beyond the one asked for (default 4 per worker).

    Use as a context manager (or call :meth:`close`): the pool is shut down on exit.
    """

    def __init__(self, rec, items: Sequence, wanted: Callable[[object], bool] = lambda it: True,
                 keep_image: bool = False, workers: Optional[int] = None, window: Optional[int] = None):
        self.rec = rec
        self.items = list(items)
        self.wanted = wanted
        self.keep_image = keep_image
        self.pool: Optional[ProcessPoolExecutor] = None
        self.workers = 0
        self._futures: dict = {}
        self._next = 0
        # the torch-free engine's encoder (facefit.batch.lite) runs in the workers too
        self.features_onnx = getattr(rec, "features_onnx", None)
        from facefit.batch.lite import LiteReconstructor
        from facefit.reconstruction import Reconstructor

        if type(rec).faces_of not in (Reconstructor.faces_of, LiteReconstructor.faces_of):
            return  # a customised Reconstructor: its own faces_of, in this process
        taken = _take_prestarted(rec.detector)
        if taken is not None:
            self.pool, n = taken
        else:
            n = worker_count(sum(1 for it in self.items if not isinstance(it, tuple)) - 1) if workers is None \
                else max(0, int(workers))
            if n > 0:
                try:
                    self.pool = _new_pool(rec.detector, n)
                except (OSError, ValueError):
                    self.pool = None
        self.workers = n if self.pool is not None else 0
        self.window = int(window) if window is not None else 4 * max(n, 1)
        self._index = {id(it): k for k, it in enumerate(self.items)}

    # -- context
    def __enter__(self) -> "DetectAhead":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Stop the workers (pending look-ahead work is cancelled)."""
        pool, self.pool = self.pool, None
        self._futures.clear()
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)

    # -- work
    def _submit_until(self, k: int) -> None:
        while self.pool is not None and self._next < len(self.items) and self._next <= k:
            it = self.items[self._next]
            self._next += 1
            if isinstance(it, tuple) or not self.wanted(it):
                continue
            enc = self.rec.encoder
            try:
                self._futures[id(it)] = self.pool.submit(
                    workers.faces_of, it.path, it.label, it.image, self.rec.detector, self.rec.all_faces,
                    enc.crop, enc.input_size, self.keep_image, self.features_onnx)
            except (BrokenProcessPool, RuntimeError):
                self._broken()

    def _broken(self) -> None:
        pool, self.pool = self.pool, None
        self._futures.clear()
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    def submit_write(self, entries, render_size: int, units):
        """Hand one input's files (``[(reconstruction, output paths)]``, see
        :func:`facefit.batch.job.write_item`) to a worker, where there are two or more
        (with one, this process would idle while that worker does everything).

        Returns:
            a future for :meth:`write_result`, or None: write them in this process.
        """
        if self.pool is None or self.workers < 2:
            return None
        try:
            return self.pool.submit(workers.write_item, entries, render_size, units)
        except (BrokenProcessPool, RuntimeError):
            self._broken()
            return None

    def write_result(self, job):
        """``(files written, seconds per face)`` of a :meth:`submit_write` job, or None if
        the worker died (then write them in this process); raises the write's error."""
        try:
            status, payload = job.result()
        except (BrokenProcessPool, CancelledError):  # cancelled: an earlier job found the pool broken
            self._broken()
            return None
        if status == "error":
            raise payload
        return payload

    def faces_of(self, item):
        """``(image, [(face, crop)], timing)`` of one input, as
        :meth:`~facefit.reconstruction.Reconstructor.faces_of` gives them (``image`` is None
        unless ``keep_image``; with the torch-free engine's encoder in the workers the list
        holds ``(face, crop, features)``); raises what that would raise."""
        if self.pool is None:
            return self.rec.faces_of(item)
        k = self._index.get(id(item))
        if k is None:
            return self.rec.faces_of(item)
        self._submit_until(k + self.window)
        fut = self._futures.pop(id(item), None)
        if fut is None:
            return self.rec.faces_of(item)
        try:
            status, payload = fut.result()
        except BrokenProcessPool:
            self._broken()
            return self.rec.faces_of(item)
        if status == "error":
            raise payload
        return payload
