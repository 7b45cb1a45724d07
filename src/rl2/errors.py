"""Errors that the CLI turns into a one-line message and a non-zero exit code.

Every message names the file or setting at fault, so a user can act on it
without a traceback.
"""


class RL2Error(Exception):
    """Base class for user-facing errors (exit code 2 unless a subclass says otherwise)."""

    exit_code = 2


class ImageError(RL2Error):
    """An image could not be read or converted."""


class NoImagesError(RL2Error):
    """An input resolved to no readable images."""


class ReferenceFileError(RL2Error):
    """A reference file is missing, truncated, tampered with or incompatible."""


class WeightsError(RL2Error):
    """Backbone weights are missing or do not match their checksum."""


class SlideError(RL2Error):
    """A slide could not be opened, or lacks the metadata needed to tile it."""
