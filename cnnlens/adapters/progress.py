"""A tqdm progress bar for long methods, shown only when the stream is a terminal."""

from __future__ import annotations

import contextlib
import sys
from typing import IO, Iterator, Optional

from ..core.progress import Advance, Reporter


def terminal_bars(stream: Optional[IO[str]] = None) -> Optional[Reporter]:
    """A reporter drawing tqdm bars on ``stream`` (stderr), or None when it is not a terminal."""
    stream = stream or sys.stderr
    if not getattr(stream, "isatty", lambda: False)():
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None

    @contextlib.contextmanager
    def bar(name: str, total: int, unit: str = "pass") -> Iterator[Advance]:
        with tqdm(total=total, desc=name, unit=unit, leave=False, file=stream, dynamic_ncols=True) as t:
            yield t.update

    return bar
