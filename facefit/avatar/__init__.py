"""From a neutral reconstruction to an animatable head.

* :mod:`facefit.avatar.pose`: head pose, camera and expression weights of a photo
  (``facefit reconstruct --pose``), the posed mesh in the photo's camera.
* :mod:`facefit.avatar.overlay`: the four-panel overlay sheet (paper Figure 18).
* :mod:`facefit.avatar.track`: per-frame pose and expression track of a video, CSV and
  animated GLB (``--fuse --pose`` on a video).
"""
