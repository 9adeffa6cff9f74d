"""Default schedules remembered between runs, so that a compile derives each kernel's default
(``defaults``) once per machine instead of every time.

Deriving a default takes 0.1-0.5 s a kernel (MetaSchedule's design space, compute locations
probed), and the first one in a process about 4 s more (``import tvm.s_tir.tensor_intrin``,
which the design space needs): 4-9 s of a small model's 11 s compile. Replaying a remembered
trace takes about 10 ms a kernel and needs neither.

An entry is a file per kernel and target, named by the kernel's structural hash and the
target, holding the default's trace (with its postprocessing, as a tuning record holds one) and
register block, or that the kernel has none. Entries sit in a folder per version of the code
that derives them (a hash of ``defaults.py``, ``copies.py``, ``space.py``, ``tiles.py``,
``passes/shuffle_writes.py`` and TVM's version): a changed derivation never reads an old
entry. Written whole (a temporary file renamed), read or re-derived if unreadable; nothing
else is ever stored here, so deleting the folder is safe.

The folder is ``$TVMSHUFFLE_CACHE_DIR``, else the platform's user cache folder
(``platformdirs``: ``~/.cache/tvmshuffle`` on Linux), ``defaults/`` inside it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path

import tvm
import tvm_ffi

from . import copies, defaults, space, tiles
from .cachedir import CACHE_ENV, cache_root  # noqa: F401 - CACHE_ENV: conftest sets it
from .passes import shuffle_writes

log = logging.getLogger(__name__)

_FORMAT = 1
_memory: dict[str, defaults.Default | None] = {}


@functools.cache
def _code_version() -> str:
    digest = hashlib.sha256(f"{_FORMAT}|{tvm.__version__}".encode())
    for module in (copies, defaults, space, tiles, shuffle_writes):
        digest.update(Path(module.__file__).read_bytes())
    return digest.hexdigest()[:16]


def _key(mod: tvm.IRModule, target: tvm.target.Target) -> str:
    return hashlib.sha256(f"{tvm_ffi.structural_hash(mod)}|{target}".encode()).hexdigest()[:32]


def default_schedule(mod: tvm.IRModule, target: tvm.target.Target) -> defaults.Default | None:
    """``defaults.default_schedule(mod, target)``, from this process's memory or the cache
    folder when derived before."""
    key = _key(mod, target)
    if key in _memory:
        return _memory[key]
    path = cache_root() / "defaults" / _code_version() / f"{key}.json"
    found = _load(path, mod)
    if found is False:
        found = defaults.default_schedule(mod, target)
        _store(path, found)
    _memory[key] = found
    return found


def _load(path: Path, mod: tvm.IRModule) -> defaults.Default | None | bool:
    """The entry at ``path`` (a Default, or None for a kernel with none); False when there is
    none or it cannot be used."""
    from tvm import s_tir

    try:
        entry = json.loads(path.read_text())
        if entry.get("none"):
            return None
        sch = s_tir.Schedule(mod)
        s_tir.Trace.apply_json_to_schedule(tvm.ir.load_json(entry["trace"]), sch)
        return defaults.Default(sch, tuple(int(b) for b in entry["block"]))
    except FileNotFoundError:
        return False
    except Exception as err:  # noqa: BLE001 - a damaged or foreign entry: derive again
        log.debug("default schedule cache entry %s unusable: %s", path, err)
        return False


def _store(path: Path, found: defaults.Default | None) -> None:
    entry = {"none": True} if found is None else {
        "trace": tvm.ir.save_json(found.schedule.trace.as_json()), "block": list(found.block)}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp",
                                         delete=False) as tmp:
            json.dump(entry, tmp)
        os.replace(tmp.name, path)
    except OSError as err:  # a read-only home: derived every time, as before
        log.debug("default schedule not cached at %s: %s", path, err)


def commit(database, mod: tvm.IRModule, target: tvm.target.Target) -> defaults.Default | None:
    """Commit the default schedule of ``mod`` to ``database`` (compile's in-memory one) as an
    untimed record; the default, or None when the kernel has none."""
    from tvm.s_tir import meta_schedule as ms

    default = default_schedule(mod, target)
    if default is not None:
        database.commit_tuning_record(ms.database.TuningRecord(
            default.schedule.trace, database.commit_workload(mod), defaults.UNTIMED_SECS,
            target, ms.arg_info.ArgInfo.from_prim_func(mod["main"])))
    return default
