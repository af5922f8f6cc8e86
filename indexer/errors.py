"""Errors raised while reading and indexing a checkpoint."""

from schema.errors import LensdbError


class CheckpointError(LensdbError):
    """The checkpoint folder cannot be read: missing, incomplete, truncated, inconsistent."""


class UnsupportedArchitecture(LensdbError):
    """No adapter knows this ``model_type``."""
