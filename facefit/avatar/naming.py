"""Blend-shape names: Apple ARKit's 52 face blend shapes and ICT-FaceKit's 53.

ICT-FaceKit names its expression shapes like ARKit's with ``_L``/``_R`` suffixes
(``eyeBlink_L`` = ARKit ``eyeBlinkLeft``). ``_L`` is the face's own left (+x in facefit's
model space, the viewer's right), as ARKit's ``Left`` is (Apple: blend-shape locations
are of the face, not of the mirrored camera image); checked on the shapes: ``eyeBlink_L``
moves vertices at x = +32 mm.

The two sets do not map one to one (docs/conventions.md has the table):

* 49 ICT shapes are exactly ARKit shapes under another spelling;
* ARKit's ``browInnerUp`` and ``cheekPuff`` are single, symmetric shapes; ICT splits each
  into ``_L`` and ``_R`` halves. The ARKit target is the sum of the two halves, and the
  four halves are kept as extra targets under their ICT names (so a fitted asymmetric
  expression stays exact);
* ARKit's ``tongueOut`` has no ICT shape (ICT's tongue does not move) and is left out.

So an ICT avatar carries 55 targets: 51 ARKit names + 4 ICT halves. Models with a PCA
expression basis (BFM, FLAME) get ``expression_000``, ``expression_001``, ...
"""
from __future__ import annotations

import re

__all__ = ["ARKIT_NAMES", "ICT_TO_ARKIT", "ARKIT_FROM_ICT_HALVES", "arkit_name", "pca_name"]

#: Apple ARKit's 52 blend shapes (ARFaceAnchor.BlendShapeLocation), in Apple's order.
ARKIT_NAMES = (
    "eyeBlinkLeft", "eyeLookDownLeft", "eyeLookInLeft", "eyeLookOutLeft", "eyeLookUpLeft", "eyeSquintLeft",
    "eyeWideLeft", "eyeBlinkRight", "eyeLookDownRight", "eyeLookInRight", "eyeLookOutRight", "eyeLookUpRight",
    "eyeSquintRight", "eyeWideRight", "jawForward", "jawLeft", "jawRight", "jawOpen", "mouthClose",
    "mouthFunnel", "mouthPucker", "mouthLeft", "mouthRight", "mouthSmileLeft", "mouthSmileRight",
    "mouthFrownLeft", "mouthFrownRight", "mouthDimpleLeft", "mouthDimpleRight", "mouthStretchLeft",
    "mouthStretchRight", "mouthRollLower", "mouthRollUpper", "mouthShrugLower", "mouthShrugUpper",
    "mouthPressLeft", "mouthPressRight", "mouthLowerDownLeft", "mouthLowerDownRight", "mouthUpperUpLeft",
    "mouthUpperUpRight", "browDownLeft", "browDownRight", "browInnerUp", "browOuterUpLeft", "browOuterUpRight",
    "cheekPuff", "cheekSquintLeft", "cheekSquintRight", "noseSneerLeft", "noseSneerRight", "tongueOut",
)

#: ARKit shapes that ICT-FaceKit splits into two halves: ARKit name -> (ICT left, ICT right).
ARKIT_FROM_ICT_HALVES = {
    "browInnerUp": ("browInnerUp_L", "browInnerUp_R"),
    "cheekPuff": ("cheekPuff_L", "cheekPuff_R"),
}

_SIDE = re.compile(r"^(.*)_([LR])$")


def arkit_name(ict_name: str) -> str | None:
    """ARKit name of one ICT-FaceKit shape (``eyeBlink_L`` -> ``eyeBlinkLeft``), or None
    when ICT's shape is not an ARKit shape by itself (the halves of browInnerUp/cheekPuff)."""
    m = _SIDE.match(ict_name)
    name = f"{m.group(1)}{'Left' if m.group(2) == 'L' else 'Right'}" if m else ict_name
    return name if name in ARKIT_NAMES else None


#: ICT-FaceKit name -> ARKit name for the 49 shapes that are ARKit shapes by themselves.
ICT_TO_ARKIT = {
    ict: arkit_name(ict)
    for ict in (
        "browDown_L", "browDown_R", "browInnerUp_L", "browInnerUp_R", "browOuterUp_L", "browOuterUp_R",
        "cheekPuff_L", "cheekPuff_R", "cheekSquint_L", "cheekSquint_R", "eyeBlink_L", "eyeBlink_R",
        "eyeLookDown_L", "eyeLookDown_R", "eyeLookIn_L", "eyeLookIn_R", "eyeLookOut_L", "eyeLookOut_R",
        "eyeLookUp_L", "eyeLookUp_R", "eyeSquint_L", "eyeSquint_R", "eyeWide_L", "eyeWide_R", "jawForward",
        "jawLeft", "jawOpen", "jawRight", "mouthClose", "mouthDimple_L", "mouthDimple_R", "mouthFrown_L",
        "mouthFrown_R", "mouthFunnel", "mouthLeft", "mouthLowerDown_L", "mouthLowerDown_R", "mouthPress_L",
        "mouthPress_R", "mouthPucker", "mouthRight", "mouthRollLower", "mouthRollUpper", "mouthShrugLower",
        "mouthShrugUpper", "mouthSmile_L", "mouthSmile_R", "mouthStretch_L", "mouthStretch_R",
        "mouthUpperUp_L", "mouthUpperUp_R", "noseSneer_L", "noseSneer_R",
    )
    if arkit_name(ict) is not None
}


def pca_name(k: int) -> str:
    """Target name of PCA expression component ``k``: ``expression_000``, ..."""
    return f"expression_{k:03d}"
