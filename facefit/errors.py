"""Errors that facefit reports to users as one line (no traceback)."""


class FacefitError(Exception):
    """A problem the user can fix: bad input, missing model, wrong file.

    The CLI prints ``error: <message>`` and exits non-zero.
    """


class ModelNotFoundError(FacefitError):
    """No morphable model or checkpoint could be found."""


class NoFaceError(FacefitError):
    """No face was detected in an image."""


class InvalidFileError(FacefitError):
    """A file is unreadable, corrupt, of the wrong kind, or refused as unsafe."""
