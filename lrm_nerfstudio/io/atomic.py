"""Atomic file writes with the permissions an ordinary `open()` would give.

A half-written file never takes the place of a good one: the data goes to a temporary file in the same folder,
which is flushed to disk and renamed over the target (`os.replace` is atomic on one file system). `tempfile`
creates its files with mode 0600, so the temporary file is given the mode `open(path, "w")` would have given: 0666
less the user's umask (0644 under the usual umask 022). Otherwise every weights file, mesh or image written this
way would be readable by its owner only.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


def current_umask() -> int:
    """The process's umask (read by setting it and setting it back: POSIX has no getter)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: Path | str, suffix: str = ".tmp") -> Iterator[Path]:
    """A temporary path beside `path` to write to; on a clean exit it replaces `path`, on an error it is removed.

    `suffix` ends the temporary name, for writers that choose the format by the extension (ffmpeg).

    Example:
        with atomic_path(out / "mesh.glb") as tmp:
            mesh.export(tmp, file_type="glb")
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~current_umask())
        with open(tmp, "rb+") as fh:  # the data reaches the disk before the rename makes it the file
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write(path: Path | str, write: Callable[[Path], object]) -> Path:
    """`write(tmp)` into a temporary file that then atomically becomes `path`; returns `path`."""
    with atomic_path(path) as tmp:
        write(tmp)
    return Path(path)


def atomic_write_bytes(path: Path | str, data: bytes) -> Path:
    """Write `data` to `path` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: Path | str, text: str) -> Path:
    """Write `text` (UTF-8) to `path` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf8"))
