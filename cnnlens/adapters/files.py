"""Files written all or nothing: every file cnnlens writes goes through :func:`atomic_path`, so a
failed or interrupted write never leaves a half-written output behind."""

from __future__ import annotations

import contextlib
import os
import secrets
from typing import Iterator


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """A temporary path beside ``path``, renamed onto it when the block succeeds, removed otherwise.

    The temporary file is created with mode 0666, so the kernel applies the process's umask
    exactly as for an ordinary new file (reading the umask would mean changing it for a moment,
    for every thread of the process)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    suffix = os.path.splitext(path)[1]
    for _ in range(100):
        temporary = os.path.join(folder, f".cnnlens-{secrets.token_hex(6)}{suffix}")
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            break
        except FileExistsError:
            continue
    else:  # pragma: no cover - 100 collisions of 48 random bits
        raise FileExistsError(f"cannot create a temporary file in {folder}")
    os.close(fd)
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
