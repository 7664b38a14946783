"""Folder jobs on all cores: photos are loaded, searched and cropped in worker processes
while the main process encodes, decodes and writes.

* :mod:`facefit.batch.workers`: what a worker does (load, detect, crop; for the torch-free
  engine of plain jobs, :mod:`facefit.batch.lite`, also encode), without torch.
* :mod:`facefit.batch.ahead`: :class:`DetectAhead`, the look-ahead that
  :func:`facefit.reconstruction.run_batch` asks for each input's faces, and
  :func:`prestart`, which the command line calls before it imports torch so that the
  workers load dlib's models while the main process loads the regressor.

The outputs do not depend on it: a worker runs the same functions as
:meth:`facefit.reconstruction.Reconstructor.faces_of` on the same inputs, the main process
encodes the same batches in the same order, and manifest lines, atomic writes,
``skip_existing`` and the all-or-nothing rule per input stay in the main process as before.
``FACEFIT_WORKERS=0`` turns the workers off (everything in one process, as before).
"""
from facefit.batch.ahead import DetectAhead, prestart, worker_count

__all__ = ["DetectAhead", "prestart", "worker_count"]
