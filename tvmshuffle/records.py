"""A tuning database as tvmshuffle keeps it: MetaSchedule's JSON database, how its records were
made, and the records ``compile`` applies (where databases live: ``places``).

The database is MetaSchedule's JSON database: two files of one JSON record a line, appended to
as records arrive, never rewritten. A third file, METHOD_FILE, says how its records were made
(weights prepacked or not, caches flushed or warm while timing): records of different methods
do not compare, so a database holds one. Neither tune nor compile has TVM parse every record
(2.8 ms a record: 45 s for the shipped database): tune reads the records of the kernels it
tunes (taskdb.TaskDatabase), compile only the one it applies per kernel, picked from the JSON lines
(apply_database).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import tvm

from . import dbfiles
from .errors import DatabaseError, first_line

log = logging.getLogger(__name__)

WORKLOAD_FILE = "database_workload.json"
RECORD_FILE = "database_tuning_record.json"
METHOD_FILE = "tvmshuffle_method.json"
# kernels' schedules chosen by their time in the network (`tvmshuffle pick`), one a line
PICKS_FILE = "tvmshuffle_picks.json"
# records a compaction dropped, per kernel and target (``compact``): trials already spent
TRIALS_FILE = "tvmshuffle_trials.json"


@dataclass(frozen=True)
class Method:
    """How a database's records were made. Records compare only with records made the same
    way: a kernel timed with its weights flushed from the caches is slower than the same kernel
    timed warm, and prepacked kernels are other workloads. So a database holds one method,
    written to METHOD_FILE by its first tuning and checked by every later one; ``compile``
    reads it to know whether to repack the weights."""

    prepack: bool
    flush_caches: bool

    def as_json(self) -> dict:
        return {"prepack": self.prepack, "flush_caches": self.flush_caches}

    def describe(self) -> str:
        return (f"{'prepacked' if self.prepack else 'unpacked'} weights, "
                f"{'flushed' if self.flush_caches else 'warm'} caches")


# Weights prepacked in the layout each schedule reads them in (MetaSchedule's layout rewrite),
# timed warm. The default schedules with prepacked weights ran the five Table 8 models
# 1.15-1.74x faster than with the weights as imported (benchmarks/RESULTS.md, session 20):
# the FC layers and convolutions stream their weights instead of reading rows of a block down
# a stride. Flushed caches measured level per minute of tuning, no better: an option.
DEFAULT_METHOD = Method(prepack=True, flush_caches=False)
# records made before METHOD_FILE: the weights as imported
LEGACY_METHOD = Method(prepack=False, flush_caches=False)


def _json_lines(path: Path) -> Iterator[tuple[bytes, object]]:
    """(line, parsed) for each non-blank line of a database file, the line ending in a newline.
    A last line cut short by a write that never finished (no newline, not JSON) is skipped
    with a warning (the next tune sets it aside, ``dbfiles``); a corrupt line anywhere else is
    reported with its file and line number instead of being dropped with the rest."""
    torn = dbfiles.torn_tail(path)
    with open(path, "rb") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            if torn is not None and not line.endswith(b"\n"):
                log.warning("%s:%d: a last line cut short by a write that never finished is "
                            "ignored (the next tune sets it aside)", path, number)
                return
            try:
                yield line.rstrip(b"\n") + b"\n", json.loads(line)
            except ValueError as err:
                advice = ("delete that line, the other records are intact"
                          if path.name != WORKLOAD_FILE else
                          "records name workloads by line number, so do not delete it: restore "
                          "the file from a copy, or tune into another --db")
                raise DatabaseError(f"{path}:{number}: corrupt line "
                                    f"({err.__class__.__name__}); {advice}") from err


def check_database(db_dir: Path) -> None:
    """Every line of both database files must be a JSON record (DatabaseError naming the
    first that is not)."""
    with dbfiles.locked(db_dir, exclusive=False):
        for name in (WORKLOAD_FILE, RECORD_FILE):
            if (db_dir / name).exists():
                for _ in _json_lines(db_dir / name):
                    pass


def _make_dir(db_dir: Path) -> None:
    try:
        db_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DatabaseError(f"cannot create database directory {db_dir}: "
                            f"{err.strerror or err}") from err


def open_database(db_dir: Path):
    """The JSON database in ``db_dir`` (created if missing), after checking every line."""
    from tvm.s_tir import meta_schedule as ms

    _make_dir(db_dir)
    check_database(db_dir)
    return ms.database.JSONDatabase(path_workload=str(db_dir / WORKLOAD_FILE),
                                    path_tuning_record=str(db_dir / RECORD_FILE))


def workload_hashes(db_dir: Path, mods: list[tvm.IRModule]) -> list[str | None]:
    """The structural hash MetaSchedule gives each kernel (a task's module) in ``db_dir``'s
    workload file, None for one not in it; the file is read, not written."""
    from tvm.s_tir import meta_schedule as ms

    if not (db_dir / WORKLOAD_FILE).exists():
        return [None] * len(mods)
    with tempfile.TemporaryDirectory(prefix="tvmshuffle-probe-") as tmp:
        Path(tmp, RECORD_FILE).touch()
        probe = ms.database.JSONDatabase(path_workload=str(db_dir / WORKLOAD_FILE),
                                         path_tuning_record=str(Path(tmp, RECORD_FILE)))
        return [str(probe.commit_workload(mod).as_json()[0]) if probe.has_workload(mod)
                else None for mod in mods]


def kernel_hashes(mods: list[tvm.IRModule]) -> list[str]:
    """The structural hash MetaSchedule gives each kernel (a task's module) as a workload."""
    from tvm.s_tir import meta_schedule as ms

    with tempfile.TemporaryDirectory(prefix="tvmshuffle-probe-") as tmp:
        probe = ms.database.JSONDatabase(path_workload=str(Path(tmp, WORKLOAD_FILE)),
                                         path_tuning_record=str(Path(tmp, RECORD_FILE)))
        return [str(probe.commit_workload(mod).as_json()[0]) for mod in mods]


def read_dropped(db_dir: Path) -> dict[tuple[str, str], int]:
    """Records of ``db_dir`` that a compaction dropped (TRIALS_FILE), per (workload hash,
    target string): trials spent that the records no longer show."""
    path = db_dir / TRIALS_FILE
    found: dict[tuple[str, str], int] = {}
    if not path.exists():
        return found
    for number, (_, fields) in enumerate(_json_lines(path), 1):
        try:
            key = (str(fields["workload"]), str(fields["target"]))
            found[key] = found.get(key, 0) + int(fields["dropped"])
        except (TypeError, KeyError, ValueError) as err:
            raise DatabaseError(f"{path}: line {number} is not a trial count "
                                f"({err.__class__.__name__})") from err
    return found


def _hash_of(fields) -> str:
    """A workload line's structural hash (its first field)."""
    return str(fields[0]) if isinstance(fields, list) and fields else ""


def _record_index(fields) -> int | None:
    return fields[0] if isinstance(fields, list) and fields and isinstance(fields[0], int) \
        else None


def database_method(db_dir: Path) -> Method | None:
    """The method of the database in ``db_dir``; None for a new (empty) one."""
    path = db_dir / METHOD_FILE
    if path.exists():
        try:
            data = json.loads(path.read_text())
            return Method(bool(data["prepack"]), bool(data["flush_caches"]))
        except (ValueError, KeyError, TypeError) as err:
            raise DatabaseError(f"{path}: unreadable ({err.__class__.__name__}); it says how "
                                "the records were made: restore it") from err
    if (db_dir / RECORD_FILE).exists() and (db_dir / RECORD_FILE).stat().st_size > 0:
        return LEGACY_METHOD
    return None


def settle_method(db_dir: Path, prepack: bool | None = None,
                  flush_caches: bool | None = None, start_from: tuple[Path, ...] = ()) -> Method:
    """The method to tune ``db_dir`` with: the database's own; for a new one that of the first
    database it starts from (``start_from``: the shipped one, whose records then seed it), else
    DEFAULT_METHOD; with what the user asked (None: not asked). DatabaseError if that differs
    from the method of the records already there."""
    existing = database_method(db_dir)
    seeds = [method for method in map(database_method, start_from) if method is not None]
    base = existing or (seeds[0] if seeds else DEFAULT_METHOD)
    method = Method(base.prepack if prepack is None else prepack,
                    base.flush_caches if flush_caches is None else flush_caches)
    if existing is not None and method != existing:
        raise DatabaseError(f"{db_dir} holds records tuned with {existing.describe()}, not "
                            f"{method.describe()}: they do not compare; tune into another --db")
    return method


def write_method(db_dir: Path, method: Method) -> None:
    """Record ``method`` as the database's, unless it has one (never rewritten)."""
    path = db_dir / METHOD_FILE
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(method.as_json()) + "\n")
        os.replace(tmp, path)


def mean_ms(run_secs) -> float | None:
    """Mean of one measurement's run times, in ms; None for none or a failed run (MetaSchedule
    records a failure as 1e10 s)."""
    secs = [float(s) for s in (run_secs or [])]
    if not secs or any(s >= 1e9 for s in secs):
        return None
    return statistics.fmean(secs) * 1e3


def best_ms(records: list) -> float | None:
    times = [t for t in (mean_ms(r.run_secs) for r in records) if t is not None]
    return min(times) if times else None


@dataclass
class Ranked:
    """A database's records as ``compile`` weighs them, read from the JSON lines."""

    workloads: list[bytes]  # the workload file's lines
    hashes: list[str]  # of each: the structural hash MetaSchedule keys the workload by
    # per workload index, its timed records as JSON, own target first, then fastest:
    # ((measured with another target, mean ms), the record)
    records: dict[int, list[tuple[tuple[bool, float], list]]]


def read_ranked(db_dir: Path, target: tvm.target.Target) -> Ranked:
    """Every timed record of ``db_dir``, ranked for ``target``, after checking each line (under
    the folder's shared lock: no tune appends meanwhile). A workload the file holds twice is
    read as one, its first line."""
    if not (db_dir / RECORD_FILE).exists():
        raise DatabaseError(f"no tuning database in {db_dir} (expected {RECORD_FILE})")
    with dbfiles.locked(db_dir, exclusive=False):
        return _read_ranked(db_dir, target)


def _read_ranked(db_dir: Path, target: tvm.target.Target) -> Ranked:
    workloads, hashes = [], []
    if (db_dir / WORKLOAD_FILE).exists():
        for line, fields in _json_lines(db_dir / WORKLOAD_FILE):
            workloads.append(line)
            hashes.append(_hash_of(fields))
    first: dict[str, int] = {}
    canonical = [first.setdefault(h, i) for i, h in enumerate(hashes)]
    target_str = str(target)
    same_target: dict[str, bool] = {}  # a record's target, as JSON -> is it ``target``
    ranked: dict[int, list] = {}
    for number, (_, fields) in enumerate(_json_lines(db_dir / RECORD_FILE), 1):
        try:
            index, record = fields
            _, run_secs, record_target, _ = record
            time_ms = mean_ms(run_secs)
        except (TypeError, ValueError) as err:
            raise DatabaseError(f"{db_dir / RECORD_FILE}: record {number} is not a MetaSchedule "
                                f"tuning record ({err.__class__.__name__})") from err
        if time_ms is None:
            continue
        if not (isinstance(index, int) and 0 <= index < len(workloads)):
            raise DatabaseError(f"{db_dir / RECORD_FILE}: record {number} names workload "
                                f"{index}, but {WORKLOAD_FILE} has {len(workloads)}")
        key = json.dumps(record_target, sort_keys=True)
        if key not in same_target:
            try:
                same_target[key] = str(tvm.target.Target(record_target)) == target_str
            except Exception as err:  # TVM raises ValueError, TVMError...
                raise DatabaseError(f"{db_dir / RECORD_FILE}: record {number} has a target TVM "
                                    f"rejects: {first_line(err)}") from err
        ranked.setdefault(canonical[index], []).append(((not same_target[key], time_ms), record))
    for entries in ranked.values():
        entries.sort(key=lambda entry: entry[0])
    return Ranked(workloads, hashes, ranked)


def trace_key(trace) -> str:
    """A record's schedule (its trace as JSON: instructions and decisions) as a short key."""
    text = json.dumps(trace, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:20]


@dataclass(frozen=True)
class Pick:
    """A kernel's schedule chosen by its time in the network (``tvmshuffle pick``)."""

    trace: str  # trace_key of the chosen record
    fastest_ms: float  # the kernel's fastest record (with the target) when it was chosen


def read_picks(db_dir: Path, target: tvm.target.Target) -> dict[str, Pick]:
    """The picks for ``target`` in ``db_dir``'s PICKS_FILE, by workload hash; a later line for
    a kernel replaces an earlier one."""
    path = db_dir / PICKS_FILE
    picks: dict[str, Pick] = {}
    if not path.exists():
        return picks
    target_str = str(target)
    for number, (_, fields) in enumerate(_json_lines(path), 1):
        try:
            workload, pick_target = str(fields["workload"]), str(fields["target"])
            pick = Pick(str(fields["trace"]), float(fields["fastest_ms"]))
        except (TypeError, KeyError, ValueError) as err:
            raise DatabaseError(f"{path}: line {number} is not a pick "
                                f"({err.__class__.__name__}); fix or delete it") from err
        if pick_target == target_str:
            picks[workload] = pick
    return picks


def append_picks(db_dir: Path, lines: list[dict]) -> None:
    """Append pick lines (workload, trace, target, fastest_ms and what was measured) to
    ``db_dir``'s PICKS_FILE, under the folder's exclusive lock."""
    with dbfiles.locked(db_dir, exclusive=True):
        dbfiles.repair_torn_tail(db_dir / PICKS_FILE)
        dbfiles.append(db_dir / PICKS_FILE,
                       b"".join(json.dumps(line, sort_keys=True).encode() + b"\n"
                                for line in lines))


def choose(ranked: Ranked, picks: dict[str, Pick]) -> tuple[dict[int, list], set[int]]:
    """(per workload index the record to compile with, the indices where that is a pick): the
    kernel's pick when it has one and no record with the target has been faster than the
    fastest it was chosen against (a later tune found better: the pick is stale), else its
    fastest record measured with the target, else the fastest of all (measured on another CPU:
    those times do not compare with times measured here)."""
    chosen, picked = {}, set()
    for index, entries in ranked.records.items():
        (other_target, fastest_ms), record = entries[0]
        chosen[index] = record
        pick = picks.get(ranked.hashes[index]) if picks and not other_target else None
        if pick is None or fastest_ms < pick.fastest_ms * (1 - 1e-9):
            continue
        for (other, _), candidate in entries:
            if not other and trace_key(candidate[0]) == pick.trace:
                chosen[index] = candidate
                if candidate is not record:
                    picked.add(index)
                break
    return chosen, picked


def memory_database(ranked: Ranked, chosen: dict[int, list], into=None):
    """A MetaSchedule database holding the ``chosen`` records only: only they are parsed by
    TVM (parsing all of a shipped database's records took 45 s a compile). With ``into``, they
    are added to that database, for the kernels it has no record of yet (a fallback
    database: the user's records first, the shipped ones for the rest)."""
    from tvm.s_tir import meta_schedule as ms

    database = ms.database.MemoryDatabase() if into is None else into
    with tempfile.TemporaryDirectory(prefix="tvmshuffle-chosen-") as tmp:
        order = sorted(chosen)
        Path(tmp, WORKLOAD_FILE).write_bytes(b"".join(ranked.workloads[i] for i in order))
        with open(Path(tmp, RECORD_FILE), "w") as f:
            for new_index, old_index in enumerate(order):
                f.write(json.dumps([new_index, chosen[old_index]]) + "\n")
        parsed = ms.database.JSONDatabase(path_workload=str(Path(tmp, WORKLOAD_FILE)),
                                          path_tuning_record=str(Path(tmp, RECORD_FILE)))
        for record in parsed.get_all_tuning_records():
            if into is not None and database.has_workload(record.workload.mod):
                continue
            database.commit_tuning_record(ms.database.TuningRecord(
                record.trace, database.commit_workload(record.workload.mod), record.run_secs,
                record.target, record.args_info))
    return database


def empty_memory_database():
    """A MetaSchedule database with nothing in it, for schedules committed in memory."""
    from tvm.s_tir import meta_schedule as ms

    return ms.database.MemoryDatabase()


def apply_database(db_dir: Path, target: tvm.target.Target, with_picks: bool = True):
    """The database to compile for ``target`` with (``compile --db``), after checking it: per
    kernel, the record ``choose`` takes."""
    ranked = read_ranked(db_dir, target)
    chosen, _ = choose(ranked, read_picks(db_dir, target) if with_picks else {})
    return memory_database(ranked, chosen)
