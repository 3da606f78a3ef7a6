"""x2dfd's one-line notices on stderr (the "x2dfd" logger): shown by default, silenced by ``--quiet``.

    from x2dfd.log import get_logger
    get_logger("mllm").warning("x2dfd: CPU run of ...")     # one line on stderr, the message as written

The handler looks up ``sys.stderr`` when it writes (so redirections, pytest's capture and notebooks see
the line) and does not propagate to the root logger (an application's own logging setup neither
duplicates nor swallows it). ``with quieted(True):`` raises the level to ERROR for one run.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator


class _CurrentStderr(logging.StreamHandler):
    """A StreamHandler that always writes to the current ``sys.stderr``."""

    def __init__(self):
        super().__init__()

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value):  # StreamHandler.__init__ assigns it; the current stderr is used instead
        pass


ROOT = logging.getLogger("x2dfd")
if not any(isinstance(h, _CurrentStderr) for h in ROOT.handlers):
    _handler = _CurrentStderr()
    _handler.setFormatter(logging.Formatter("%(message)s"))
    ROOT.addHandler(_handler)
    ROOT.setLevel(logging.WARNING)
    ROOT.propagate = False


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(f"x2dfd.{name}")


@contextlib.contextmanager
def quieted(enabled: bool = True) -> Iterator[None]:
    """``--quiet`` for one run: only errors inside the block (the last line with the failure count is printed
    directly), the previous level afterwards."""
    before = ROOT.level
    if enabled:
        ROOT.setLevel(logging.ERROR)
    try:
        yield
    finally:
        ROOT.setLevel(before)
