"""The complete ICT-FaceKit head for a face-area reconstruction: no holes, colour everywhere.

facefit's regressor works on ICT-FaceKit's face area (vertices 0..9408). ICT's 100 identity
modes cover the whole head, and the head's first 9,409 vertices *are* the face area
(identical mean and identity modes), so the same identity coefficients decode the full
head. :func:`head_model_for` gives that head model, :func:`head_mesh` the person's head.

Parts kept (ICT-FaceKit vertex ranges, checked against the ``usemtl`` groups and connected
components of ``generic_neutral_mesh.obj``): face area, head and neck (scalp, ears, neck),
mouth socket, eye sockets, gums and tongue, teeth, sclera and iris of both eyes:
vertices 0..24590. Left out: ICT's see-through overlay shells (lacrimal fluid, eye blend,
eye occlusion, eyelash cards; vertices 24591..26718), which need transparency to look
right. The kept mesh's open boundaries are exactly ICT's own ones for these parts (the
neck's lower edge, the sockets' and eyeballs' inner rims); the face area's eye and
mouth holes are closed by the lids, sockets, eyeballs and teeth.

Colour (:func:`head_colors`):

* face area: the predicted albedo (the statistical colour model), blended over the outer
  ``band`` mm of the face area (measured along the surface from the head/neck part) into
* the person's skin tone (median albedo of clear skin: the face area away from its border,
  eyes, brows, nostrils and lips), which covers scalp, ears and neck;
* mouth and eye sockets: a dark red shading with depth; gums and tongue pink; teeth
  off-white; sclera white; iris brown with a black pupil and a darker limbal ring.

UVs: ICT lays its parts out as UDIM tiles (face u in [0, 1], head/neck [1, 2], gums
[2, 3], teeth [3, 4], every eyeball again on [0, 1]). :func:`atlas_uv` packs them into one
[0, 1]² texture without overlaps (``ATLAS``), so a baked or photo texture covers every
part.
"""
from __future__ import annotations

import threading

import numpy as np

from facefit.errors import FacefitError, ModelNotFoundError

__all__ = ["PARTS", "KEPT_VERTICES", "ATLAS", "head_model_for", "atlas_uv", "skin_tone", "head_colors", "skin_trust",
           "head_texture_from_photo", "border_distance",
           "head_mesh", "part_of_vertices", "SKIN_PARTS"]

#: ICT-FaceKit parts kept in the head: name -> [start, stop) vertex range.
PARTS = {
    "face": (0, 9409),
    "head_neck": (9409, 11248),
    "mouth_socket": (11248, 13294),
    "eye_socket_left": (13294, 13678),
    "eye_socket_right": (13678, 14062),
    "gums_tongue": (14062, 17039),
    "teeth": (17039, 21451),
    "sclera_left": (21451, 22221),
    "iris_left": (22221, 23021),
    "sclera_right": (23021, 23791),
    "iris_right": (23791, 24591),
}
#: vertices of the head mesh (ICT's 0..24590)
KEPT_VERTICES = 24591
#: parts a viewer sees as skin
SKIN_PARTS = ("face", "head_neck")

#: Texture atlas cell of each UV group: (u0, v0, size) in the [0, 1]² texture (OBJ
#: convention, v up). ICT's tile k of the face/head is u in [k, k+1].
ATLAS = {
    "tile0": (0.0, 0.375, 0.625),       # face area (ICT tile 0)
    "tile1": (0.625, 0.625, 0.375),     # scalp, ears, neck, sockets (tile 1)
    "gums_tongue": (0.625, 0.4375, 0.1875),
    "teeth": (0.8125, 0.4375, 0.1875),
    "sclera_left": (0.625, 0.25, 0.1875),
    "iris_left": (0.8125, 0.25, 0.1875),
    "sclera_right": (0.625, 0.0625, 0.1875),
    "iris_right": (0.8125, 0.0625, 0.1875),
}

# colours (sRGB in [0, 1], like the albedo model's)
SCLERA = np.array([0.90, 0.88, 0.85], np.float32)
IRIS = np.array([0.36, 0.23, 0.13], np.float32)
LIMBUS = np.array([0.16, 0.11, 0.08], np.float32)
PUPIL = np.array([0.03, 0.03, 0.03], np.float32)
TEETH = np.array([0.90, 0.87, 0.78], np.float32)
GUMS = np.array([0.78, 0.42, 0.43], np.float32)
SOCKET_FRONT = np.array([0.55, 0.27, 0.27], np.float32)
SOCKET_DEEP = np.array([0.12, 0.04, 0.04], np.float32)

_IRIS_RADIUS_MM = 6.0
_PUPIL_RADIUS_MM = 2.0
_LIMBUS_MM = 0.8


def part_of_vertices(n: int = KEPT_VERTICES) -> np.ndarray:
    """(n,) int64 index into ``list(PARTS)`` of each head vertex."""
    out = np.empty(n, np.int64)
    for k, (a, b) in enumerate(PARTS.values()):
        out[a:min(b, n)] = k
    return out


def _is_ict(model) -> bool:
    return model.meta.get("source") == "ICT-FaceKit"


_LOCK = threading.Lock()
_HEADS: dict = {}


def head_model_for(face_model, source=None):
    """The ICT-FaceKit head (vertices 0..24590, atlas UVs) matching a face-area model.

    Args:
        face_model: the :class:`~facefit.morphable.MorphableModel` of the reconstruction
            (ICT-FaceKit face area, or an ICT-FaceKit head).
        source: ICT-FaceKit ZIP/folder; default: the face model's own head if it is one,
            else ``../shared/models/ICT-FaceKit``, else the ZIP ``facefit model fetch ict``
            downloaded.
    Returns:
        MorphableModel ``ict-head-avatar`` whose first 9,409 vertices, identity modes and
        expressions are the face area's.
    Raises:
        FacefitError: the model is not ICT-FaceKit (other models have no head here).
        ModelNotFoundError: no ICT-FaceKit source found.
    """
    if not _is_ict(face_model):
        raise FacefitError(f"--head needs the ICT-FaceKit model; model '{face_model.name}' has no full head here")
    if face_model.n_vertices >= KEPT_VERTICES and source is None:
        full = face_model
    else:
        from facefit.model_io import convert_model, default_model_dir, find_shared_ict

        src = source or find_shared_ict()
        if src is None:
            zips = sorted((default_model_dir() / "sources").glob("ICT-FaceKit*.zip"))
            src = zips[-1] if zips else None
        if src is None:
            raise ModelNotFoundError("--head needs the ICT-FaceKit files: run 'facefit model fetch ict' once")
        key = str(src)
        with _LOCK:
            full = _HEADS.get(("full", key))
        if full is None:
            full = convert_model("ict", src, "head")
            with _LOCK:
                _HEADS[("full", key)] = full
    key = ("kept", full.content_hash)
    with _LOCK:
        if key in _HEADS:
            return _HEADS[key]
    n = face_model.n_vertices if face_model.n_vertices < KEPT_VERTICES else PARTS["face"][1]
    if (np.abs(full.mean_shape[:n] - face_model.mean_shape[:n]).max() > 1e-3
            or full.n_shape != face_model.n_shape):
        raise FacefitError(f"model '{face_model.name}' does not match the ICT-FaceKit head (different mean or modes)")
    kept = full.subset(np.arange(KEPT_VERTICES))
    uv, ut = atlas_uv(kept.uv, kept.uv_triangles, kept.triangles)
    meta = dict(kept.meta)
    meta.update(region="head-avatar", parts=list(PARTS), atlas={k: list(v) for k, v in ATLAS.items()})
    head = kept.replace(name="ict-head-avatar", uv=uv, uv_triangles=ut, meta=meta)
    with _LOCK:
        _HEADS[key] = head
    return head


def atlas_uv(uv: np.ndarray, uv_triangles: np.ndarray, triangles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ICT's UDIM tiles and eyeball charts packed into one [0, 1]² layout (``ATLAS``).

    Args:
        uv: (T, 2) ICT texture coordinates; uv_triangles, triangles: (F, 3) int64.
    Returns:
        ``(uv (T', 2) float32, uv_triangles (F, 3) int64)``; one new UV per (old UV, cell)
        pair, so a UV that two cells share is split.
    """
    uv = np.asarray(uv, np.float64)
    part = part_of_vertices(int(triangles.max()) + 1)[triangles[:, 0]]
    names = list(PARTS)
    tile = np.floor(uv[uv_triangles].mean(1)[:, 0]).astype(np.int64)
    cell = np.empty(len(triangles), object)
    for f_part in np.unique(part):
        sel = part == f_part
        name = names[f_part]
        if name in ATLAS:
            cell[sel] = name
        else:  # face, head/neck, sockets, gums, teeth: by UDIM tile
            t = tile[sel]
            cell[sel] = np.where(t == 0, "tile0", np.where(t == 1, "tile1", np.where(t == 2, "gums_tongue", "teeth")))
    cells = list(ATLAS)
    cell_id = np.array([cells.index(c) for c in cell], np.int64)
    pairs = np.stack([uv_triangles.reshape(-1), np.repeat(cell_id, 3)], 1)
    unique, inverse = np.unique(pairs, axis=0, return_inverse=True)
    u0 = np.array([ATLAS[c][0] for c in cells])[unique[:, 1]]
    v0 = np.array([ATLAS[c][1] for c in cells])[unique[:, 1]]
    s = np.array([ATLAS[c][2] for c in cells])[unique[:, 1]]
    src = uv[unique[:, 0]]
    local = np.stack([src[:, 0] - np.floor(src[:, 0]), src[:, 1]], 1)
    # the few UVs exactly on a tile's right edge (u = k + 1) stay in their own tile
    on_edge = (src[:, 0] == np.floor(src[:, 0])) & (src[:, 0] > 0)
    local[on_edge, 0] = 1.0
    new = np.stack([u0 + np.clip(local[:, 0], 0, 1) * s, v0 + np.clip(local[:, 1], 0, 1) * s], 1)
    return new.astype(np.float32), inverse.reshape(-1, 3).astype(np.int64)


_DISTANCES: dict = {}


def _surface_distance(tri: np.ndarray, v: np.ndarray) -> np.ndarray:
    """(V,) mm along the skin surface (face + head/neck) from the head/neck part."""
    import scipy.sparse as sp
    from scipy.sparse.csgraph import dijkstra

    stop = PARTS["head_neck"][1]
    skin_tri = tri[(tri < stop).all(1)]
    e = np.concatenate([skin_tri[:, [0, 1]], skin_tri[:, [1, 2]], skin_tri[:, [2, 0]]])
    w = np.linalg.norm(v[e[:, 0]] - v[e[:, 1]], axis=1) + 1e-6
    g = sp.coo_matrix((w, (e[:, 0], e[:, 1])), shape=(stop, stop)).tocsr()
    d = dijkstra(g, directed=False, indices=np.arange(*PARTS["head_neck"]), min_only=True)
    out = np.full(len(v), np.inf)
    out[:stop] = d
    out.flags.writeable = False
    return out


def border_distance(head) -> np.ndarray:
    """(V,) mm along the skin surface of the mean head from the head/neck part (0 there,
    inf off the skin); computed once per head model (read-only)."""
    key = head.content_hash
    with _LOCK:
        hit = _DISTANCES.get(key)
    if hit is None:
        hit = _surface_distance(np.asarray(head.triangles, np.int64), np.asarray(head.mean_shape, np.float64))
        with _LOCK:
            _DISTANCES[key] = hit
    return hit


def _feature_distance(points: np.ndarray, landmark_points: np.ndarray) -> np.ndarray:
    from scipy.spatial import cKDTree

    return cKDTree(landmark_points).query(points)[0]


def skin_tone(face_colors: np.ndarray, points: np.ndarray, landmarks: np.ndarray, border: np.ndarray) -> np.ndarray:
    """The person's skin tone: median colour of clear facial skin.

    Args:
        face_colors: (Vf, 3) colours of the face-area vertices.
        points: (Vf, 3) their positions (mm); landmarks: (68,) face-area vertex indices.
        border: (Vf,) mm from the face area's outer border (:func:`border_distance`).
    Returns:
        (3,) float32 RGB.
    """
    lm = points[np.asarray(landmarks)]
    features = lm[np.r_[17:27, 31:36, 36:48, 48:68]]
    clear = (border >= 25.0) & (_feature_distance(points, features) >= 10.0)
    if clear.sum() < 50:
        clear = np.isfinite(border)
    return np.median(face_colors[clear], axis=0).astype(np.float32)


def head_colors(head, verts: np.ndarray, face_colors: np.ndarray, band: float = 20.0,
                iris=IRIS) -> tuple[np.ndarray, np.ndarray]:
    """Per-vertex colours of the whole head.

    Args:
        head: the head model (:func:`head_model_for`).
        verts: (V, 3) the person's head vertices (mm).
        face_colors: (9409, 3) predicted colours of the face area.
        band: width (mm, along the surface) over which the face's albedo blends into the
            skin tone at the face area's border.
        iris: (3,) iris colour.
    Returns:
        ``(colors (V, 3) float32 in [0, 1], skin (3,))``.
    """
    n_face = PARTS["face"][1]
    face_colors = np.clip(np.asarray(face_colors, np.float32), 0, 1)
    if face_colors.shape != (n_face, 3):
        raise FacefitError(f"face colours must be ({n_face}, 3), got {face_colors.shape}")
    V = head.n_vertices
    dist = border_distance(head)
    skin = skin_tone(face_colors, verts[:n_face], head.landmarks, dist[:n_face])
    out = np.empty((V, 3), np.float32)
    # skin: albedo inside, skin tone over the outer band of the face area and beyond
    t = np.clip(dist[:n_face] / band, 0, 1)
    t = t * t * (3 - 2 * t)
    keep = np.minimum(t, 1.0 - _hair_weight(head, verts[:n_face], face_colors, skin))
    out[:n_face] = keep[:, None] * face_colors + (1 - keep[:, None]) * skin
    a, b = PARTS["head_neck"]
    out[a:b] = skin
    # sockets: from a dark lip/eyelid red at the opening to near black inside
    for name, depth_mm in (("mouth_socket", 18.0), ("eye_socket_left", 8.0), ("eye_socket_right", 8.0)):
        a, b = PARTS[name]
        z = verts[a:b, 2]
        d = np.clip((z.max() - z) / depth_mm, 0, 1)[:, None]
        front = SOCKET_FRONT if name == "mouth_socket" else 0.6 * skin + 0.4 * SOCKET_FRONT
        out[a:b] = (1 - d) * front + d * SOCKET_DEEP
    for name, colour in (("gums_tongue", GUMS), ("teeth", TEETH)):
        a, b = PARTS[name]
        z = verts[a:b, 2]
        shade = 1.0 - 0.35 * np.clip((z.max() - z) / 40.0, 0, 1)[:, None]  # back teeth, tongue root darker
        out[a:b] = colour * shade
    for side in ("left", "right"):
        # ICT's sclera is a closed ball around the iris shell (its front is see-through in
        # ICT's own shaders): paint the iris and pupil onto both, by distance from the axis
        sa, sb = PARTS[f"sclera_{side}"]
        ia, ib = PARTS[f"iris_{side}"]
        centre = _sphere_centre(verts[sa:sb])
        axis = verts[ia:ib].mean(0) - centre
        axis /= np.linalg.norm(axis) + 1e-12
        rel = verts[sa:ib] - centre
        front = rel @ axis
        r = np.linalg.norm(rel - front[:, None] * axis, axis=1)
        r = np.where(front > 0, r, np.inf)
        out[sa:ib] = np.where((r < _PUPIL_RADIUS_MM)[:, None], PUPIL,
                              np.where((r < _IRIS_RADIUS_MM - _LIMBUS_MM)[:, None], np.asarray(iris, np.float32),
                                       np.where((r < _IRIS_RADIUS_MM)[:, None], LIMBUS, SCLERA)))
    return np.clip(out, 0, 1), skin


def _smoothstep(x):
    x = np.clip(x, 0, 1)
    return x * x * (3 - 2 * x)


def _hair_weight(head, points: np.ndarray, colors: np.ndarray, skin: np.ndarray, iters: int = 6) -> np.ndarray:
    """(Vf,) in [0, 1]: how much a face-area vertex looks like hair rather than skin.

    Darker than the skin tone (luminance deficit over 35 % of the skin's = 1) or greyer
    (its red - blue warmth under half the skin's = 1) AND on the
    forehead above the brows or on the temples/sideburns (outside the outer eye corners,
    above the mouth) or under the jaw line (photos shade it); smoothed over the surface. Dark brows, beards and lips are not
    touched. This removes the dark hairline band that the albedo model learned from photos
    with hair over the forehead edge.
    """
    lum = np.array([0.299, 0.587, 0.114], np.float32)
    L, Ls = colors @ lum, float(skin @ lum)
    deficit = np.clip((Ls - L) / (0.35 * max(Ls, 1e-3)), 0, 1)
    # greyish (less warm than the skin: red - blue) counts too: grey or blond hair, shadows
    warmth, skin_warmth = colors[:, 0] - colors[:, 2], float(skin[0] - skin[2])
    if skin_warmth > 0.02:
        deficit = np.maximum(deficit, np.clip((skin_warmth - warmth) / (0.5 * skin_warmth), 0, 1))
    lm = points[np.asarray(head.landmarks)]
    brow_top = lm[17:27, 1].max()
    eye_x = np.abs(lm[[36, 45], 0]).max()
    mouth_y = lm[48:68, 1].mean()
    forehead = _smoothstep((points[:, 1] - brow_top - 6.0) / 10.0)
    temple = _smoothstep((np.abs(points[:, 0]) - eye_x - 8.0) / 10.0) * _smoothstep((points[:, 1] - mouth_y) / 15.0)
    jaw = lm[0:17]
    order = np.argsort(jaw[:, 0])
    below = np.interp(points[:, 0], jaw[order, 0], jaw[order, 1]) - points[:, 1]
    under_jaw = _smoothstep((below - 3.0) / 8.0)
    w = deficit * np.maximum(np.maximum(forehead, temple), under_jaw)
    n = len(points)
    tri = np.asarray(head.triangles)
    tri = tri[(tri < n).all(1)]
    import scipy.sparse as sp

    e = np.concatenate([tri[:, [0, 1]], tri[:, [1, 2]], tri[:, [2, 0]]])
    A = sp.coo_matrix((np.ones(len(e)), (e[:, 0], e[:, 1])), shape=(n, n)).tocsr()
    A = ((A + A.T) > 0).astype(np.float32)
    deg = np.asarray(A.sum(1)).ravel() + 1.0
    for _ in range(iters):  # a little spread so that the blend has no speckles
        w = np.maximum(w, (A @ w + w) / deg)
    return np.clip(w, 0, 1)


def _sphere_centre(points: np.ndarray) -> np.ndarray:
    """Least-squares sphere centre of (N, 3) points."""
    p = np.asarray(points, np.float64)
    A = np.concatenate([2 * p, np.ones((len(p), 1))], 1)
    y = (p ** 2).sum(1)
    sol = np.linalg.lstsq(A, y, rcond=None)[0]
    return sol[:3]


def head_mesh(face_model, shape_coeffs, face_colors, meta: dict | None = None, expr_coeffs=None, head=None):
    """The person's complete head as a :class:`~facefit.mesh_io.FaceMesh`.

    Args:
        face_model: the reconstruction's (ICT-FaceKit face-area) model.
        shape_coeffs: (Ks,) identity coefficients (the same for face and head).
        face_colors: (9409, 3) the face area's predicted colours.
        meta: provenance to keep (e.g. the face mesh's meta).
        expr_coeffs: (Ke,) optional expression (default neutral).
        head: the head model (default :func:`head_model_for` ``(face_model)``).
    Returns:
        FaceMesh with 24,591 vertices, colours, atlas UVs; ``meta["head"]`` describes it.
    """
    import torch

    from facefit.mesh_io import FaceMesh

    head = head if head is not None else head_model_for(face_model)
    s = torch.as_tensor(np.asarray(shape_coeffs, np.float32)).view(1, -1)
    e = None if expr_coeffs is None else torch.as_tensor(np.asarray(expr_coeffs, np.float32)).view(1, -1)
    with torch.no_grad():
        verts = head.decode(s, None, e)[0][0].numpy()
    colors, skin = head_colors(head, verts, np.asarray(face_colors)[:PARTS["face"][1]])
    info = dict(meta or {})
    info["head"] = {"model": head.name, "vertices": head.n_vertices, "parts": list(PARTS),
                    "skin_tone": [round(float(x), 4) for x in skin]}
    return FaceMesh(verts, np.asarray(head.triangles), colors=colors, uv=np.asarray(head.uv),
                    uv_triangles=np.asarray(head.uv_triangles), meta=info)


#: mm from the face area's outer border inside which the photo needs skin colour
PHOTO_TRUST_MM = 15.0


def skin_trust(head) -> np.ndarray:
    """(V,) photo trust per head vertex for :func:`facefit.avatar.photo.restrict_to_skin`.

    1 on the inner face (face area, above the jaw line, below the brows' top, not on the
    temples (beyond the outer eye corners, above the mouth), more than
    ``PHOTO_TRUST_MM`` along the surface from the face area's outer border), fading to 0
    over ``PHOTO_TRUST_MM`` outside it (forehead, temples, under the jaw, and all of scalp,
    ears and neck: photo only where it shows skin); -1 on eyes, teeth, gums and sockets
    (never the photo).
    """
    dist = border_distance(head)
    trust = np.full(head.n_vertices, -1.0, np.float32)
    a, b = PARTS["face"][0], PARTS["head_neck"][1]
    p = np.asarray(head.mean_shape[a:b], np.float64)
    lm = p[np.asarray(head.landmarks)]
    jaw = lm[0:17]
    order = np.argsort(jaw[:, 0])
    below_jaw = np.interp(p[:, 0], jaw[order, 0], jaw[order, 1]) - p[:, 1]
    above_brows = p[:, 1] - lm[17:27, 1].max()
    # temples / sideburns: outside the outer eye corners, above the mouth
    temple = np.where(p[:, 1] > lm[48:68, 1].mean(), np.abs(p[:, 0]) - np.abs(lm[[36, 45], 0]).max() - 5.0, -np.inf)
    outside = np.maximum.reduce([below_jaw, above_brows, temple, PHOTO_TRUST_MM - dist[a:b]])
    trust[a:b] = np.clip(1.0 - outside / PHOTO_TRUST_MM, 0, 1)
    return trust


def head_texture_from_photo(head, recon, image: np.ndarray):
    """``recon.mesh`` (a :func:`head_mesh`) with a UV texture from the photo, where it shows skin.

    The landmark fit and visibility are those of ``--texture photo``
    (:func:`facefit.texturing.texture_from_photo`) on the head model; photo texels off the
    inner face are kept only where they look like this person's skin.
    """
    from facefit.texturing import texture_from_photo

    return texture_from_photo(head, recon, image, skin_trust=skin_trust(head))
