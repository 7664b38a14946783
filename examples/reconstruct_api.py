"""Reconstruct the example photo with the Python API and print what came out.

Run from the repository root:  .venv/bin/python examples/reconstruct_api.py
"""
from pathlib import Path

import facefit

here = Path(__file__).resolve().parent
faces = facefit.reconstruct(here / "astronaut.png")
face = faces[0]
print(f"{face.source}: {face.mesh.num_vertices} vertices, {face.mesh.num_triangles} triangles")
print("first shape coefficients:", face.shape_coeffs[:5].round(3))
print("detector box:", face.box.round(1), "timing (s):", {k: round(v, 3) for k, v in face.timing.items()})
