"""The package's one error family.

Every user-facing mistake (a model that cannot be found, a bad flag, an unreadable file) raises
a subclass of :class:`X2DFDError` whose message is ONE line saying what, where and the fix. The CLI
prints that line and exits 2; per-item errors inside a batch are caught at the item loop and stored
in the item's record instead.
"""


class X2DFDError(Exception):
    """Base class: ``str(err)`` is a complete one-line message for the user."""


class UsageError(X2DFDError):
    """A flag or argument the user gave is invalid (exit status 2)."""


class ModelNotFoundError(X2DFDError):
    """A checkpoint is neither a local directory nor reachable on the hub."""


class MediaError(X2DFDError):
    """A file could not be decoded (corrupt, truncated, empty, too large, not an image/video)."""


class NoFaceError(X2DFDError):
    """No face was found where one was required; recorded as ``undetermined``, never raised out of a batch."""
