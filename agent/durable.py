"""Files written whole or not at all, durably: what the agent keeps outside its databases.

Keys, certificates, the pinned trust anchors and the drop folder's answers must never be seen
half-written after a crash or power cut: write a temporary file in the same directory, fsync it,
rename it over the target, fsync the directory. The temporary name starts with a dot, so a HIS
listing ``results/*.json`` never sees it.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

__all__ = ["fsync_dir", "write_atomic"]


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write ``path`` so a reader sees nothing or all of it, durably (file and directory fsynced)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)
