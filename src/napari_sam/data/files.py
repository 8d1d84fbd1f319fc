"""Writing files so that nothing is ever left half-written: a temporary file renamed into place.

Every output of the project (label images, checkpoints, training state, downloaded weights, the
command line's JSON results, CSV tables and logs) goes through :func:`atomic_path`: an
interrupted or failing write leaves the previous file, or none, never a truncated one, and the
new file gets the mode the umask gives (not ``mkstemp``'s 0600).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_path", "atomic_write_text", "default_file_mode"]


def default_file_mode() -> int:
    """The mode a new file gets from the process's umask (``0o666 & ~umask``)."""
    try:  # Linux: read the umask without changing it (os.umask is not thread-safe)
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


@contextmanager
def atomic_path(target: str | os.PathLike, suffix: str = ".part") -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it onto ``target`` when the block ends.

    Parameters
    ----------
    target : path
        The file to write. Its folder must exist.
    suffix : str
        The temporary file's suffix (writers that append an extension, like ``numpy.savez``,
        need it to end with that extension).

    The temporary file gets the mode the umask gives a new file (``mkstemp`` alone would make
    it 0600). If the block raises, the temporary file is removed and ``target`` is untouched.

    Examples
    --------
    >>> import numpy as np, tempfile
    >>> out = Path(tempfile.mkdtemp()) / "a.npy"
    >>> with atomic_path(out, suffix=".npy") as tmp:
    ...     np.save(tmp, np.arange(3))
    >>> np.load(out).tolist()
    [0, 1, 2]
    """
    target = Path(target)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix,
                               dir=target.parent if str(target.parent) else ".")
    os.close(fd)
    try:
        os.chmod(tmp, default_file_mode())
        yield Path(tmp)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(target: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``target`` through :func:`atomic_path` (whole or not at all, with the
    umask's file mode); returns ``target`` as a Path."""
    target = Path(target)
    with atomic_path(target, suffix=target.suffix or ".part") as tmp:
        tmp.write_text(text, encoding=encoding)
    return target
