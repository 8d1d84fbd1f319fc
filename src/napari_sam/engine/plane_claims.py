"""Claims on the planes of an embedding store, so that writers sharing it compute no plane twice.

Before a writer (a thread, a process, a Dask worker) encodes a plane it creates the plane's claim
file with ``O_CREAT | O_EXCL``: exactly one writer succeeds, the others embed other planes and
come back to this one later (by then it is usually written). The file records who claimed it::

    {"pid": 1234, "host": "node7", "time": 1712345678.9, "token": "<32 hex digits>"}

and is removed once the plane is written. While it is held, a background thread touches the file
every ``HEARTBEAT_S`` seconds. A claim whose writer died is taken over: at once when the process
is on this host and gone, otherwise once the file has not been touched for ``stale_after``
seconds (default 2 minutes, four missed heartbeats). Taking over renames the stale file away
first, so that of several writers finding it stale only one wins.

The same files serve as the lock under which a store is created or recreated
(:func:`hold`), so that two processes opening a new store at once do not wipe each other's.

Claims only avoid duplicate work: every chunk write is atomic and a plane's embedding is the
same whoever computes it, so a plane computed twice after a rare race is harmless.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Self

__all__ = ["Claim", "PlaneClaims", "hold", "try_claim"]

logger = logging.getLogger(__name__)

#: Held claims are touched this often (seconds).
HEARTBEAT_S = 30.0
#: Claims not touched for this long (seconds) are taken over, whoever holds them.
STALE_AFTER_S = 120.0
#: An unreadable claim (being written, or torn) is respected for this long (seconds).
_UNREADABLE_GRACE_S = 5.0
_HOST = socket.gethostname()
_HELD: set[Path] = set()
_HELD_LOCK = threading.Lock()
_heartbeat: threading.Thread | None = None


class Claim:
    """A claim held on one file; :meth:`release` (or leaving the ``with`` block) removes it."""

    def __init__(self, path: Path, token: str) -> None:
        self.path = path
        self.token = token
        _beat(path, True)

    def release(self) -> None:
        """Remove the claim file if it is still this claim (it may have been taken over)."""
        _beat(self.path, False)
        record = _read(self.path)
        if record is not None and record.get("token") == self.token:
            try:
                self.path.unlink()
            except OSError:  # already gone, or a read-only store
                pass

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def try_claim(path: str | os.PathLike[str], stale_after: float = STALE_AFTER_S) -> Claim | None:
    """Claim the file ``path``: a :class:`Claim`, or ``None`` while a live writer holds it.

    Raises :class:`OSError` when the claim file cannot be created (a read-only folder).
    """
    path = Path(path)
    for _ in range(8):
        claim = _create(path)
        if claim is not None:
            return claim
        record = _read(path)
        if not _is_stale(path, record, stale_after):
            return None
        _take_over(path, record)
    return None  # pragma: no cover - eight writers racing for one stale claim


def holder(path: str | os.PathLike[str], stale_after: float = STALE_AFTER_S) -> dict | None:
    """The record of the live claim on ``path`` (``{}`` if unreadable), or ``None`` if free."""
    path = Path(path)
    record = _read(path)
    if not path.exists() or _is_stale(path, record, stale_after):
        return None
    return record or {}


@contextmanager
def hold(path: str | os.PathLike[str], stale_after: float = 60.0) -> Iterator[Claim]:
    """Wait for and hold the claim ``path`` for the ``with`` block (a lock between processes)."""
    poll = 0.02
    while (claim := try_claim(path, stale_after)) is None:
        time.sleep(poll)
        poll = min(poll * 1.5, 0.5)
    with claim:
        yield claim


class PlaneClaims:
    """The claim files of one store's planes, in ``folder`` (created when first needed).

    Parameters
    ----------
    folder : path
        Where the claim files go (``<store>/claims``).
    stale_after : float
        Seconds after which a claim is taken over whoever holds it.
    """

    def __init__(self, folder: str | os.PathLike[str], stale_after: float = STALE_AFTER_S) -> None:
        self.folder = Path(folder)
        self.stale_after = float(stale_after)

    def path(self, plane: int) -> Path:
        return self.folder / f"{int(plane)}.claim"

    def try_claim(self, plane: int) -> Claim | None:
        """Claim ``plane``: a :class:`Claim`, or ``None`` while another live writer holds it."""
        return try_claim(self.path(plane), self.stale_after)

    def holder(self, plane: int) -> dict | None:
        """The record of the live claim on ``plane``, or ``None`` if it is free or stale."""
        return holder(self.path(plane), self.stale_after)

    def wait(self, plane: int, timeout: float, poll: float = 0.05) -> None:
        """Sleep until ``plane`` is not claimed by a live writer, or for ``timeout`` seconds."""
        end = time.monotonic() + timeout
        while self.holder(plane) is not None and time.monotonic() < end:
            time.sleep(poll)
            poll = min(poll * 1.5, 0.5)


def _beat(path: Path, held: bool) -> None:
    """Add ``path`` to (or remove it from) the claims the heartbeat thread keeps fresh."""
    global _heartbeat
    with _HELD_LOCK:
        (_HELD.add if held else _HELD.discard)(path)
        if held and (_heartbeat is None or not _heartbeat.is_alive()):
            _heartbeat = threading.Thread(target=_keep_fresh, name="napari-sam-claims",
                                          daemon=True)
            _heartbeat.start()


def _keep_fresh() -> None:
    while True:
        time.sleep(HEARTBEAT_S)
        with _HELD_LOCK:
            held = list(_HELD)
        for path in held:
            try:
                os.utime(path)
            except OSError:  # released or taken over meanwhile
                pass


def _create(path: Path) -> Claim | None:
    token = uuid.uuid4().hex
    record = {"pid": os.getpid(), "host": _HOST, "time": time.time(), "token": token}
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return None
    try:
        os.write(fd, json.dumps(record).encode())
    finally:
        os.close(fd)
    return Claim(path, token)


def _is_stale(path: Path, record: dict | None, stale_after: float) -> bool:
    try:
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return True  # released meanwhile: free
    if record is None:
        return age > _UNREADABLE_GRACE_S
    if age > stale_after:
        return True
    return record.get("host") == _HOST and not _pid_alive(record.get("pid"))


def _take_over(path: Path, record: dict | None) -> None:
    """Remove the stale claim ``record`` at ``path``, unless it was replaced meanwhile."""
    aside = path.with_name(f"{path.name}.{uuid.uuid4().hex}.stale")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return  # someone else took it over (or it was released): try again
    moved = _read(aside)
    if (moved or {}).get("token") != (record or {}).get("token"):
        # It was replaced by a fresh claim between our look and the rename: put it back.
        try:
            os.link(aside, path)
        except OSError:  # a third writer claimed it meanwhile: theirs stands
            pass
    else:
        logger.info("%s: taking over the stale claim %s", path, record)
    aside.unlink(missing_ok=True)


def _read(path: Path) -> dict | None:
    try:
        record = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _pid_alive(pid) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    if pid == os.getpid():
        return True
    if os.name == "nt":  # os.kill(pid, 0) would send CTRL_C_EVENT there: go by age only
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True
