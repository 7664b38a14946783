"""Avatars: the full ICT-FaceKit head and animatable glTF files (issue 13).

Modules (one concept each):

* :mod:`facefit.avatar.gltf` — GLB writer with morph targets and animation
  (:func:`~facefit.avatar.gltf.save_glb_avatar`, :class:`~facefit.avatar.gltf.AvatarAnimation`).
* :mod:`facefit.avatar.naming` — ARKit's 52 blend-shape names and the ICT-FaceKit mapping.
* :mod:`facefit.avatar.rig` — a model's expression basis as named morph targets.
* :mod:`facefit.avatar.head` — the complete head (face, scalp, ears, neck, eyes, teeth,
  gums) with colour everywhere, from the face-area reconstruction.

Nothing heavy is imported here.
"""
