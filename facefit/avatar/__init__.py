"""Avatars: from a neutral reconstruction to an animatable head (issue 13).

Modules (one concept each):

* :mod:`facefit.avatar.gltf` — GLB writer with morph targets and animation
  (:func:`~facefit.avatar.gltf.save_glb_avatar`, :class:`~facefit.avatar.gltf.AvatarAnimation`).
* :mod:`facefit.avatar.naming` — ARKit's 52 blend-shape names and the ICT-FaceKit mapping.
* :mod:`facefit.avatar.rig` — a model's expression basis as named morph targets.
* :mod:`facefit.avatar.head` — the complete head (face, scalp, ears, neck, eyes, teeth,
  gums) with colour everywhere, from the face-area reconstruction.
* :mod:`facefit.avatar.pose` — head pose, camera and expression weights of a photo
  (``facefit reconstruct --pose``), the posed mesh in the photo's camera;
  :mod:`facefit.avatar.solver` its Gauss-Newton refinement; :mod:`facefit.avatar.overlay`
  the four-panel overlay sheet (paper Figure 18); :mod:`facefit.avatar.files` the outputs.
* :mod:`facefit.avatar.track` — per-frame pose and expression track of a video, CSV and
  animated GLB (``--fuse --pose`` on a video).

Nothing heavy is imported here.
"""
