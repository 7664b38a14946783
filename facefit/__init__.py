"""facefit: neutral 3D faces (mesh + colour) from photos.

Unsupervised 3D morphable model regression after Genova et al., CVPR 2018.
"""
__version__ = "0.1.0"
