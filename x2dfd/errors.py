"""The package's one error family, and the exit statuses of every command.

Every user-facing mistake (a model that cannot be found, a bad flag, an unreadable file) raises
a subclass of :class:`X2DFDError` whose message is ONE line saying what, where and the fix. The CLI
prints that line and exits with the class's ``exit_code`` (2 unless said otherwise); per-item errors
inside a batch are caught at the item loop and stored in the item's record instead.

Exit statuses (the same for ``explain``, ``expert score``, ``evaluate`` and ``report``):

====  =====================================================================================
0     every input got a verdict
1     an unexpected internal error (a bug: please report the traceback)
2     usage error: a bad flag or input, a model that cannot be found, an ``--out`` that is not
      x2dfd's or belongs to a run with other settings
3     the command ran, but some or all inputs got no verdict (``label: undetermined``, see
      each record's ``error``); the last line on stderr says how many
4     the output could not be written (disk full, read-only, permission denied, a directory
      given as ``--out``); the file keeps every record completed before the failure
5     ``--out`` is in use by another x2dfd run (it holds the file's lock); retry when it ends
130   interrupted (Ctrl-C); records written so far are kept
====  =====================================================================================
"""

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_INPUTS_FAILED = 3
EXIT_OUTPUT = 4
EXIT_BUSY = 5
EXIT_INTERRUPTED = 130


class X2DFDError(Exception):
    """Base class: ``str(err)`` is a complete one-line message for the user."""

    exit_code = EXIT_USAGE


class UsageError(X2DFDError):
    """A flag or argument the user gave is invalid (exit status 2)."""


class ModelNotFoundError(X2DFDError):
    """A checkpoint is neither a local directory nor reachable on the hub."""


class MediaError(X2DFDError):
    """A file could not be decoded (corrupt, truncated, empty, too large, not an image/video)."""


class NoFaceError(X2DFDError):
    """No face was found where one was required; recorded as ``undetermined``, never raised out of a batch."""


class OutputError(X2DFDError):
    """An output file or folder could not be written (an OS-level failure: ENOSPC, EACCES, EROFS, EISDIR ...)."""

    exit_code = EXIT_OUTPUT


class OutputBusyError(X2DFDError):
    """Another x2dfd run holds the lock of this ``--out`` (exit status 5)."""

    exit_code = EXIT_BUSY


EXIT_STATUS_HELP = ("exit status: 0 every input got a verdict; 3 some or all inputs got none (their records say "
                    "why; the last stderr line counts them); 2 usage error; 4 the output could not be written; "
                    "5 --out is being written by another run; 130 interrupted.")
