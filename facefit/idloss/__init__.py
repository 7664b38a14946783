"""Identity loss from several recognition networks at once, on one common scale.

Genova et al. train with one network (FaceNet). A decoder can learn to please one network
without looking like the person (the paper's "fooling" problem); fooling two unrelated
networks at once is much harder. facefit therefore trains with any set of differentiable
recognition networks (``identity_nets = ["facenet", "dlib"]``; SFace stays the held-out
judge and is refused).

Networks spread their cosine similarities very differently (dlib: same person ~0.95,
different people ~0.83; FaceNet: ~0.7 vs ~0.1), so each network's cosine ``c`` is put on a
common scale by its own mean same-person (``s``) and different-people (``d``) photo-pair
cosines, measured once (:data:`COSINE_SCALES`, with the command that measured them):

``n = (c - d) / (s - d)``  (0 = a stranger's photo, 1 = another photo of the same person)

and the identity loss is the mean over networks (and views) of ``1 - n``, so one ``w_id``
fits every network and every combination (:func:`facefit.losses.normalised_identity_loss`).

Modules: :mod:`.scales` (the constants, their measurement), :mod:`.nets` (parsing and
checking the network list, the per-network render -> crop -> embed -> score term).
"""
from .nets import IdentityNets, check_identity_net_names, parse_identity_nets
from .scales import COSINE_SCALES, CosineScale, cosine_scale, measure_cosine_scale

__all__ = [
    "COSINE_SCALES",
    "CosineScale",
    "IdentityNets",
    "check_identity_net_names",
    "cosine_scale",
    "measure_cosine_scale",
    "parse_identity_nets",
]
