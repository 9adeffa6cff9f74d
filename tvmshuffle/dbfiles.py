"""A tuning database's files on disk, safe with several processes and after a crash.

Every read-modify-append of a database's files happens under an OS lock on the database
folder (``fcntl.flock`` on LOCK_NAME: exclusive for writers, shared for readers), so two
``tune`` processes never interleave their appends and a reader never sees half a line. Each
append is whole lines in one write, flushed and synced before the lock is released.

A writer killed in the middle of an append (kill -9, power loss) can still leave a last line
without its newline. Under the exclusive lock that is no append in progress but a torn one:
``repair_torn_tail`` copies it to ``<file>.torn-<UTC time>``, truncates it away and says so
in one line, and the command goes on. A reader (``compile``) skips such a line with a warning
and leaves the file as it is. Damage anywhere else is no crash's doing and is reported with
its file and line by the parser (``records``).
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import logging
import os
from pathlib import Path
from typing import Iterator

from . import interrupts
from .errors import DatabaseError

log = logging.getLogger(__name__)

LOCK_NAME = ".tvmshuffle.lock"


@contextlib.contextmanager
def locked(db_dir: Path, exclusive: bool) -> Iterator[bool]:
    """Hold the database folder's lock (exclusive for writers, shared for readers) for the
    block; yields whether a lock is held. A reader of a folder with no lock file (no tune has
    written it since locks came, or a read-only shipped database) reads without one."""
    path = db_dir / LOCK_NAME
    try:
        # a reader creates nothing (compile leaves a shipped folder as it was): with no lock
        # file no writer has come yet, and a line one starts meanwhile reads as a torn tail,
        # which readers skip
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644) if exclusive else os.open(
            path, os.O_RDONLY)
    except OSError as err:
        if exclusive:
            raise DatabaseError(f"cannot write to the tuning database {db_dir}: "
                                f"{err.strerror or err}") from err
        yield False
        return
    try:
        # a writer's region is one the command line lets finish on Ctrl-C (``interrupts``)
        with interrupts.shielded() if exclusive else contextlib.nullcontext():
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield True
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def torn_tail(path: Path) -> tuple[int, bytes] | None:
    """(offset, bytes) of ``path``'s last line when it has no newline and is not JSON, else
    None (a last line that parses only lacks its newline)."""
    if not path.exists():
        return None
    size = path.stat().st_size
    if size == 0:
        return None
    with open(path, "rb") as f:
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return None
        # the last newline: read back in blocks until found
        block, end = 1 << 16, size
        start = 0
        while end > 0:
            begin = max(0, end - block)
            f.seek(begin)
            chunk = f.read(end - begin)
            newline = chunk.rfind(b"\n")
            if newline >= 0:
                start = begin + newline + 1
                break
            end = begin
        f.seek(start)
        tail = f.read()
    try:
        json.loads(tail)
    except ValueError:
        return start, tail
    return None


def repair_torn_tail(path: Path) -> Path | None:
    """Under the exclusive lock: set a torn last line of ``path`` aside (copied to
    ``<file>.torn-<UTC time>``, truncated away) or end a whole last line that lacks its
    newline; the copy's path when a line was set aside."""
    if not path.exists() or path.stat().st_size == 0:
        return None
    torn = torn_tail(path)
    if torn is None:
        with open(path, "rb+") as f:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                f.write(b"\n")
                f.flush()
                os.fsync(f.fileno())
        return None
    offset, tail = torn
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    aside = path.with_name(f"{path.name}.torn-{stamp}")
    aside.write_bytes(tail)
    with open(path, "rb+") as f:
        f.truncate(offset)
        f.flush()
        os.fsync(f.fileno())
    log.warning("%s: its last line was cut short by a write that never finished (%d bytes); "
                "set aside in %s, the other lines are intact", path, len(tail), aside.name)
    return aside


def append(path: Path, data: bytes) -> int:
    """Append whole lines to ``path`` in one write, flushed and synced (under the exclusive
    lock); the file's size after."""
    with open(path, "ab") as out:
        if data:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        return out.tell()
