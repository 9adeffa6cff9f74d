"""A tuning database as one ``tune`` sees it: the workloads, the records of the kernels it
tunes, and what it records appended to the database's own files under the folder's lock."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import threading
from pathlib import Path

import tvm

from . import dbfiles
from .records import (RECORD_FILE, TRIALS_FILE, WORKLOAD_FILE, _hash_of, _json_lines,
                      _make_dir, _record_index, kernel_hashes, read_dropped)


class TaskDatabase:
    """``db_dir``'s database as a tune of some kernels sees it: every workload, and only the
    records of those kernels (parsing all 15,554 records of the shipped database took 45 s a
    tune; the search, the budgets and re-timing look only at the tuned kernels' records).

    MetaSchedule reads and writes scratch copies: the workload file whole (so indices agree
    at the start), and the kernels' records. ``sync``, which the tuning loop calls after each
    batch and on the way out (Ctrl-C and SIGTERM included), appends what was committed since to
    ``db_dir``'s own files under the folder's exclusive lock (``dbfiles``): each record under
    the index its workload has in the file as it is then (read under the lock, never from this
    process's memory: another tune may have appended workloads meanwhile), a workload new to
    the file appended first. A workload found twice in the file (written by two unlocked tunes
    of an older version) is read as one, the first.

    Of the kernels ``db_dir`` holds no workload of, the records in the first of ``seeds``
    (read-only databases: the shipped one) that has them are copied into ``db_dir`` at the
    start, as if measured by this tune: the tune goes on from them."""

    def __init__(self, db_dir: Path, mods: list[tvm.IRModule], seeds: tuple[Path, ...] = ()):
        from tvm.s_tir import meta_schedule as ms

        _make_dir(db_dir)
        self._dir = db_dir
        remove_stale_scratch()
        self._scratch = tempfile.TemporaryDirectory(prefix=f"{SCRATCH_PREFIX}{os.getpid()}-")
        scratch = Path(self._scratch.name)
        self._scratch_workloads = scratch / WORKLOAD_FILE
        self._scratch_records = scratch / RECORD_FILE
        workload_file, record_file = db_dir / WORKLOAD_FILE, db_dir / RECORD_FILE
        self._mods = list(mods)
        self._kernel_hashes = kernel_hashes(mods)  # as MetaSchedule keys their workloads
        with dbfiles.locked(db_dir, exclusive=True):
            for path in (workload_file, record_file):
                dbfiles.repair_torn_tail(path)
            lines = list(_json_lines(workload_file)) if workload_file.exists() else []
            self._scratch_workloads.write_bytes(b"".join(line for line, _ in lines))
            self._hashes = [_hash_of(fields) for _, fields in lines]  # scratch index -> hash
            first: dict[str, int] = {}
            canonical = [first.setdefault(h, i) for i, h in enumerate(self._hashes)]
            self._known = first  # hash -> index in db_dir's file
            self._order = list(self._hashes)  # db_dir's file's hashes, line by line
            self._file_size = workload_file.stat().st_size if workload_file.exists() else 0
            # the kernels that are in the file already
            wanted = set(self._kernel_hashes)
            indices = {i for i, h in enumerate(self._hashes) if h in wanted}
            with open(self._scratch_records, "wb") as out:
                if record_file.exists():
                    for line, fields in _json_lines(record_file):
                        if _record_index(fields) in indices:
                            out.write(_reindexed(line, canonical[fields[0]]))
        self._offset = self._scratch_records.stat().st_size  # what db_dir's file has
        self._workload_offset = self._scratch_workloads.stat().st_size
        self._lock = threading.Lock()
        self._dropped = read_dropped(db_dir)  # a compacted database's spent trials
        # kernels db_dir knows nothing of: no workload, no trials spent
        unknown = set(self._kernel_hashes) - set(self._hashes) - {h for h, _ in self._dropped}
        self.seeded = self._seed(seeds, unknown if seeds else set())
        self.database = ms.database.JSONDatabase(
            path_workload=str(self._scratch_workloads),
            path_tuning_record=str(self._scratch_records))
        self.sync()  # the seeds reach db_dir now, not only with this tune's first batch

    def _seed(self, seeds: tuple[Path, ...], missing: set[str]) -> int:
        """Append to the scratch files, past what ``db_dir`` holds, the workloads of
        ``missing`` (hashes) and their records from the first seed database holding each; the
        count of records."""
        count, index = 0, len(self._hashes)
        for seed in seeds:
            if not missing or not (seed / RECORD_FILE).exists() \
                    or not (seed / WORKLOAD_FILE).exists():
                continue
            with dbfiles.locked(seed, exclusive=False):
                # a kernel's spent trials come with it, even when none of its records did
                spent = {key: n for key, n in read_dropped(seed).items() if key[0] in missing}
                lines = list(_json_lines(seed / WORKLOAD_FILE))
                taken = {}  # seed's index -> scratch index
                with open(self._scratch_workloads, "ab") as out:
                    for i, (line, fields) in enumerate(lines):
                        shash = _hash_of(fields)
                        if shash in missing:
                            missing.discard(shash)
                            taken[i] = index + len(taken)
                            out.write(line)
                index += len(taken)
                with open(self._scratch_records, "ab") as out:
                    for line, fields in _json_lines(seed / RECORD_FILE):
                        if _record_index(fields) in taken:
                            out.write(_reindexed(line, taken[_record_index(fields)]))
                            count += 1
            if spent:  # the trials the seed's compaction dropped are spent here too
                with dbfiles.locked(self._dir, exclusive=True):
                    dbfiles.repair_torn_tail(self._dir / TRIALS_FILE)
                    dbfiles.append(self._dir / TRIALS_FILE, b"".join(
                        json.dumps({"workload": w, "target": t, "dropped": n},
                                   sort_keys=True).encode() + b"\n"
                        for (w, t), n in sorted(spent.items())))
                for key, n in spent.items():
                    self._dropped[key] = self._dropped.get(key, 0) + n
        return count

    def spent(self, mod: tvm.IRModule, target: tvm.target.Target) -> int:
        """Trials spent on kernel ``mod`` with ``target`` that no record shows (a compacted
        database's, ``compact``); ``mod`` one of those this view was made for."""
        shash = self._kernel_hashes[self._mods.index(mod)] if mod in self._mods else None
        return self._dropped.get((shash, str(target)), 0)

    def _new_workloads(self) -> dict[int, bytes]:
        """Workload lines MetaSchedule appended to the scratch file since the last call, by
        scratch index (their hashes are noted)."""
        found = {}
        with open(self._scratch_workloads, "rb") as f:
            f.seek(self._workload_offset)
            data = f.read()
        data = data[:data.rfind(b"\n") + 1]
        for line in data.splitlines(keepends=True):
            if line.strip():
                found[len(self._hashes)] = line
                self._hashes.append(_hash_of(json.loads(line)))
        self._workload_offset += len(data)
        return found

    def sync(self) -> None:
        """Append to ``db_dir``'s files the whole record lines committed since the last call,
        with the workloads they need."""
        with self._lock:
            with open(self._scratch_records, "rb") as f:
                f.seek(self._offset)
                new = f.read()
            new = new[:new.rfind(b"\n") + 1]  # a line being written waits for the next call
            if not new:
                return
            lines = self._new_workloads()
            workload_file, record_file = self._dir / WORKLOAD_FILE, self._dir / RECORD_FILE
            with dbfiles.locked(self._dir, exclusive=True):
                for path in (workload_file, record_file):
                    dbfiles.repair_torn_tail(path)
                self._read_appended_workloads(workload_file)
                workloads, out = [], []
                for line in new.splitlines():
                    index = json.loads(line)[0]
                    shash = self._hashes[index]
                    if shash not in self._known:
                        self._known[shash] = len(self._order)
                        self._order.append(shash)
                        workloads.append(lines[index])
                    out.append(_reindexed(line + b"\n", self._known[shash]))
                self._file_size = dbfiles.append(workload_file, b"".join(workloads))
                dbfiles.append(record_file, b"".join(out))
            self._offset += len(new)

    def _read_appended_workloads(self, workload_file: Path) -> None:
        """Note the workloads other processes appended to ``db_dir``'s file since it was last
        read (under the lock)."""
        order = self._order
        if not workload_file.exists():
            return
        with open(workload_file, "rb") as f:
            f.seek(self._file_size)
            data = f.read()
        for line in data.splitlines():
            if line.strip():
                shash = _hash_of(json.loads(line))
                self._known.setdefault(shash, len(order))
                order.append(shash)
        self._file_size += len(data)

    def close(self) -> None:
        self.sync()
        self._scratch.cleanup()


SCRATCH_PREFIX = "tvmshuffle-records-"


def remove_stale_scratch() -> list[Path]:
    """Remove the scratch folders of tunes whose process is gone (killed before it could
    clean up: ``kill -9``); the folders removed."""
    import psutil

    removed = []
    pattern = re.compile(re.escape(SCRATCH_PREFIX) + r"(\d+)-")
    for path in Path(tempfile.gettempdir()).glob(f"{SCRATCH_PREFIX}*"):
        match = pattern.match(path.name)
        if match and path.is_dir() and not psutil.pid_exists(int(match[1])):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _reindexed(line: bytes, index: int) -> bytes:
    """A record line ``[i, record]`` under workload ``index``, the record's bytes as
    MetaSchedule wrote them."""
    return b"[" + str(index).encode() + line[line.index(b","):].rstrip(b"\n") + b"\n"
