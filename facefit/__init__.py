"""facefit: neutral 3D faces (mesh + colour) from photos.

Unsupervised 3D morphable model regression after Genova et al., CVPR 2018.

The main entry points (imported lazily, so ``import facefit`` is cheap)::

    facefit.reconstruct(photo_or_folder)   -> list[Reconstruction]   (meshes + coefficients)
    facefit.load_model(name_or_path=None)  -> MorphableModel          (the default model if None)
    facefit.load_mesh(path) / facefit.save_mesh(mesh, path)
    facefit.get_net("dlib" | "facenet" | "sface")                      recognition networks
    facefit.detect_faces(image)                                        face detection
"""
__version__ = "0.1.0"

_LAZY = {
    "reconstruct": ("facefit.reconstruction", "reconstruct"),
    "Reconstructor": ("facefit.reconstruction", "Reconstructor"),
    "load_model": ("facefit.model_io", "resolve_model"),
    "MorphableModel": ("facefit.morphable", "MorphableModel"),
    "load_mesh": ("facefit.mesh_io", "load_mesh"),
    "save_mesh": ("facefit.mesh_io", "save_mesh"),
    "FaceMesh": ("facefit.mesh_io", "FaceMesh"),
    "get_net": ("facefit.recognition.registry", "get_net"),
    "detect_faces": ("facefit.faces.detection", "detect_faces"),
    "load_image": ("facefit.faces.images", "load_image"),
    "render": ("facefit.render", "render"),
    "FacefitError": ("facefit.errors", "FacefitError"),
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        mod, attr = _LAZY[name]
        value = getattr(importlib.import_module(mod), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'facefit' has no attribute {name!r}")
