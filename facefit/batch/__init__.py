"""Folder jobs on all cores: photos are loaded, searched and cropped in worker processes
while the main process encodes and decodes; with two or more workers the workers also
write each input's files (mesh, texture, coefficients), so the main process only decodes
and keeps the manifest.

* :mod:`facefit.batch.workers`: what a worker does (load, detect, crop; for the torch-free
  engine of plain jobs, :mod:`facefit.batch.lite`, also encode; write an input's files),
  without torch.
* :mod:`facefit.batch.ahead`: :class:`DetectAhead`, the look-ahead that
  :func:`facefit.batch.job.run_batch` asks for each input's faces, and
  :func:`prestart`, which the command line calls before it imports torch so that the
  workers load dlib's models while the main process loads the regressor.

The outputs do not depend on it: a worker runs the same functions as
:meth:`facefit.reconstruction.Reconstructor.faces_of` on the same inputs, the main process
encodes the same batches in the same order, a worker writes an input's files with the same
:func:`facefit.batch.job.write_item` (atomic files, all or nothing per input) as the
main process would, and the manifest stays in the main process, its lines in the same
order (a line waits until the input's files are written). ``skip_existing`` decides in the
main process as before.
``FACEFIT_WORKERS=0`` turns the workers off (everything in one process, as before).
"""
from facefit.batch.ahead import DetectAhead, prestart, worker_count

__all__ = ["DetectAhead", "prestart", "worker_count"]
