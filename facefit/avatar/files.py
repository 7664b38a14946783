"""Output files of ``--pose``: names, the all-or-nothing file lists, the writers.

Per face (``--pose``, photos and sampled video frames): ``<name>_posed.<fmt>`` (the identity
with the photo's expression in the photo's camera, :func:`facefit.avatar.pose.posed_mesh`)
and ``<name>_overlay.png`` (:mod:`facefit.avatar.overlay`). With ``--fuse --pose`` on a
video: ``<name>_track.csv`` and ``<name>_track.glb`` (:mod:`facefit.avatar.track`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

__all__ = ["AVATAR_KEYS", "avatar_paths", "avatar_files", "write_avatar_outputs"]

#: keys of these outputs in :func:`facefit.batch.job.output_paths`
AVATAR_KEYS = ("posed", "overlay", "track_csv", "track_glb")


def avatar_paths(base: Path, fmt: str, pose: bool = False, track: bool = False) -> dict:
    """Paths of the pose outputs (``pose``) or of the track outputs (``track``) of ``base``."""
    out = {}
    if pose:
        out["posed"] = base.with_name(base.name + "_posed." + fmt)
        out["overlay"] = base.with_name(base.name + "_overlay.png")
    if track:
        out["track_csv"] = base.with_name(base.name + "_track.csv")
        out["track_glb"] = base.with_name(base.name + "_track.glb")
    return out


def avatar_files(paths: dict, companions: bool = False) -> list[Path]:
    """The files these outputs make (with ``companions``: the posed OBJ's .mtl and texture)."""
    files = []
    for k in AVATAR_KEYS:
        if k in paths:
            files.append(paths[k])
            if companions and k == "posed" and paths[k].suffix.lower() == ".obj":
                from facefit.mesh_io import obj_companions

                files += list(obj_companions(paths[k]))
    return files


def write_avatar_outputs(r, paths: dict, model, units: Optional[str] = None) -> list[Path]:
    """Write the pose / track outputs of reconstruction ``r`` that ``paths`` names.

    Nothing is written for a face whose pose fit failed (``r.pose`` None); the caller
    (:func:`facefit.batch.job.write_outputs`) removes what was written if a later file fails.
    """
    from facefit.mesh_io import save_mesh

    written: list[Path] = []
    if "posed" in paths and r.pose is not None:
        from .overlay import write_overlay
        from .pose import posed_mesh

        if r.pose.photo is None:
            raise ValueError("the pose fit holds no photo for the overlay sheet")
        mm = mesh_model(model, r.mesh)
        written.append(write_overlay(mm, r.mesh, r.shape_coeffs, r.pose, r.pose.photo, paths["overlay"]))
        written.extend(save_mesh(posed_mesh(mm, r.mesh, r.shape_coeffs, r.pose), paths["posed"], units=units))
    if "track_csv" in paths and r.track is not None:
        from .track import write_track_csv, write_track_glb

        written.append(write_track_csv(r.track, paths["track_csv"]))
        written.extend(write_track_glb(r.track, r.mesh, model, paths["track_glb"], shape_coeffs=r.shape_coeffs,
                                       units=units))
    return written


def mesh_model(model, mesh):
    """The model whose vertices ``mesh`` has: ``model`` itself, or its ICT-FaceKit head (``--head``).

    Raises:
        FacefitError: neither fits the mesh.
    """
    from facefit.errors import FacefitError

    if mesh.num_vertices == model.n_vertices:
        return model
    from .head import head_model_for

    head = head_model_for(model)
    if mesh.num_vertices != head.n_vertices:
        raise FacefitError(f"the mesh ({mesh.num_vertices} vertices) is not one of model '{model.name}'")
    return head
