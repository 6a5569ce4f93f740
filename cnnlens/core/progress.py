"""Progress of long methods (occlusion, SmoothGrad, Score-CAM), reported to whoever listens.

The core only announces work; a front end (the CLI's progress bar) installs a reporter for
the calling thread with :func:`reporting`. With none installed, reporting costs nothing.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Callable, ContextManager, Iterator, Optional

Advance = Callable[[int], None]
Reporter = Callable[[str, int, str], ContextManager[Advance]]  # (name, total, unit)

_local = threading.local()


def _ignore(steps: int = 1) -> None:
    return None


@contextlib.contextmanager
def task(name: str, total: int, unit: str = "pass") -> Iterator[Advance]:
    """Announce ``total`` steps (``unit``: "pass", "image") of work called ``name``; yields a
    function to call as steps finish."""
    reporter: Optional[Reporter] = getattr(_local, "reporter", None)
    if reporter is None:
        yield _ignore
        return
    with reporter(name, total, unit) as advance:
        yield advance


@contextlib.contextmanager
def reporting(reporter: Optional[Reporter]) -> Iterator[None]:
    """Within the block, this thread's tasks are reported to ``reporter``."""
    previous = getattr(_local, "reporter", None)
    _local.reporter = reporter
    try:
        yield
    finally:
        _local.reporter = previous
