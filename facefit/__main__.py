"""``python -m facefit`` runs the command line."""
from facefit.cli import entry

entry()
