"""Converters from public morphable-model formats to :class:`facefit.morphable.MorphableModel`.

See :mod:`facefit.model_io` for the user-facing entry points (``import_model``,
``load_model``, the model store).
"""
