"""A tuning database cut down to what serves a user: per kernel and measuring target, its
fastest few schedules, and how many trials were spent on it.

A database as tuning leaves it holds every candidate ever measured: 21,154 records (64 MB) in
the Zen 5 one, most of them never the fastest. ``compile`` applies one record per kernel, the
search seeds from the fastest, and ``tune`` counts a kernel's records against its budget. So a
compact copy keeps, per (workload, target), the ``keep`` fastest records that ran (distinct
schedules; a schedule picked in the network, ``tvmshuffle pick``, always), and writes how many
records it dropped to TRIALS_FILE: a tune counts those as trials already spent (``taskdb``), so
resuming a compacted database spends no more than resuming the full one. Workloads left with
no record are dropped; the method and picks files are copied.

    python -m tvmshuffle.compact SRC DST [--keep 4] [--compress]

``--compress`` then stores the workload and record files as ``.xz`` (how the shipped
databases are kept: ``places.unpacked`` decompresses them once into the cache folder).
"""

from __future__ import annotations

import argparse
import collections
import json
import lzma
import shutil
from dataclasses import dataclass
from pathlib import Path

import tvm

from . import dbfiles
from .records import (METHOD_FILE, PICKS_FILE, RECORD_FILE, TRIALS_FILE, WORKLOAD_FILE,
                      _hash_of, _json_lines, _record_index, read_dropped, trace_key)

KEEP = 4  # records kept per kernel and target: compile's choice and the search's seeds


@dataclass(frozen=True)
class Summary:
    workloads: tuple[int, int]  # before, after
    records: tuple[int, int]
    bytes: tuple[int, int]


def _ran(fields) -> float | None:
    """A record line's mean run time, None for a failed or untimed one."""
    secs = fields[1][1] if len(fields[1]) > 1 else None
    if not secs or max(secs) >= 1e9:
        return None
    return sum(secs) / len(secs)


def compact(src: Path, dst: Path, keep: int = KEEP) -> Summary:
    """Write the compact copy of ``src`` (compressed or not) to ``dst`` (a new or empty
    folder), uncompressed."""
    from .places import unpacked

    src = unpacked(src)
    if dst.exists() and any(dst.iterdir()):
        raise FileExistsError(f"{dst} is not empty")
    dst.mkdir(parents=True, exist_ok=True)
    with dbfiles.locked(src, exclusive=False):
        workloads = list(_json_lines(src / WORKLOAD_FILE))
        records = [fields for _, fields in _json_lines(src / RECORD_FILE)]
        spent_before = read_dropped(src)
        picked = set()
        if (src / PICKS_FILE).exists():
            picked = {(str(f["workload"]), str(f["trace"]))
                      for _, f in _json_lines(src / PICKS_FILE)}
    hashes = [_hash_of(fields) for _, fields in workloads]
    groups: dict[tuple[str, str], list] = collections.defaultdict(list)
    for fields in records:
        index = _record_index(fields)
        target = str(tvm.target.Target(fields[1][2]))
        groups[(hashes[index], target)].append(fields)
    kept: dict[str, list] = collections.defaultdict(list)  # hash -> record fields
    dropped: dict[tuple[str, str], int] = {}
    for (shash, target), group in groups.items():
        ranked = sorted((r for r in group if _ran(r) is not None), key=_ran)
        chosen, seen = [], set()
        for fields in ranked:
            key = trace_key(fields[1][0])
            if key in seen:
                continue
            if len(chosen) < keep or (shash, key) in picked:
                chosen.append(fields)
                seen.add(key)
        kept[shash].extend(chosen)
        dropped[(shash, target)] = (len(group) - len(chosen)
                                    + spent_before.get((shash, target), 0))
    for (shash, target), count in spent_before.items():  # kernels with nothing left here
        dropped.setdefault((shash, target), count)
    first = {}
    for i, shash in enumerate(hashes):
        first.setdefault(shash, i)
    order = [i for i, shash in enumerate(hashes) if first[shash] == i and kept.get(shash)]
    new_index = {hashes[i]: n for n, i in enumerate(order)}
    (dst / WORKLOAD_FILE).write_bytes(b"".join(workloads[i][0] for i in order))
    with open(dst / RECORD_FILE, "w") as out:
        for i in order:
            for fields in kept[hashes[i]]:
                out.write(json.dumps([new_index[hashes[i]], fields[1]]) + "\n")
    with open(dst / TRIALS_FILE, "w") as out:
        for (shash, target), count in sorted(dropped.items()):
            if count:
                out.write(json.dumps({"workload": shash, "target": target, "dropped": count},
                                     sort_keys=True) + "\n")
    for name in (METHOD_FILE, PICKS_FILE, "README.md"):
        if (src / name).exists():
            shutil.copyfile(src / name, dst / name)

    def size(folder: Path) -> int:
        return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())

    return Summary((len(workloads), len(order)),
                   (len(records), sum(len(v) for v in kept.values())), (size(src), size(dst)))


def compress(db_dir: Path) -> None:
    """Replace the workload and record files of ``db_dir`` by their ``.xz`` (deterministic:
    the same database gives the same bytes)."""
    from .places import PACKED

    for name in (WORKLOAD_FILE, RECORD_FILE):
        plain = db_dir / name
        if plain.is_file():
            (db_dir / (name + PACKED)).write_bytes(lzma.compress(plain.read_bytes(), preset=9))
            plain.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("src", type=Path)
    parser.add_argument("dst", type=Path)
    parser.add_argument("--keep", type=int, default=KEEP)
    parser.add_argument("--compress", action="store_true",
                        help="store the workload and record files as .xz (shipped databases)")
    args = parser.parse_args()
    summary = compact(args.src, args.dst, args.keep)
    if args.compress:
        compress(args.dst)
    print(f"workloads {summary.workloads[0]} -> {summary.workloads[1]}, records "
          f"{summary.records[0]} -> {summary.records[1]}, "
          f"{summary.bytes[0] / 1e6:.1f} -> {summary.bytes[1] / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
