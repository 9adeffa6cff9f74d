"""A grid over the register and cache tiles of a 1x1 group convolution's best schedule, ranked
with cold caches.

MetaSchedule's evolutionary search ranks candidates by their hot time, with the cost model
choosing which to measure. This takes a task's best record in the database (this target's) for
a kernel of ``passes/group_axis.py`` (loops n, h, w, g, o and the reduction k, tiled by
MetaSchedule's SSRSRS rule: four levels per spatial loop, two for k) and re-times its schedule
with the tile decisions of h, w, o and k replaced by every combination of: the two inner levels
of h and of w in {1, 2, 7, 14} (the rest of h at the second level, of w at the first), the two
inner levels of o from {1, 2, 5} x {4, 8, 10, 16, 20, 40} (the rest at the second level), the
inner level of k in {1, 4, 8}; kept when the output tile holds 4-28 16-lane vectors and at most
28 pixels. Each is timed hot and cold (``cold_cache.time_both``: weights, bias, residual and output
flushed from the caches before each call, as in the network). The cold-fastest and the starting
record are then timed again, alternately, ``--check`` times each; with ``--commit`` the pick is
appended to the database as a record of this target with its hot times (as tune's runner
measures; cold ones for a database tuned with ``--flush-caches``), only when it is faster both
hot and cold in those medians and, so timed, faster than the time stored with the starting
record (the time `compile` picks by).

(A coordinate descent over every split of one loop at a time, tried first, stopped in local
minima: the better tiles change h, o and k together.) The product's version of this is
``tvmshuffle tune --refine N`` (``tvmshuffle/tiles.py``): register blocks of any SSRSRS-tiled
kernel, timed by the tracker's runner; this script stays as the wider, in-process grid.

    python benchmarks/tile_grid.py TASK [TASK ...] [--model shufflenet_v1_g3_1.0x]
        [--db schedules/host-znver5] [--check 3] [--commit]
"""

from __future__ import annotations

import argparse
import itertools
import math
import statistics
import time
from pathlib import Path

from cold_cache import time_both
from rich.console import Console

from tvmshuffle import frontends, places, records, target, taskdb, tune


class _Traced:
    """What ``time_both`` needs of a record: a trace."""

    def __init__(self, trace):
        self.trace = trace


def with_decisions(trace, tiles, decisions):
    for inst, decision in zip(tiles, decisions):
        trace = trace.with_decision(inst, decision, remove_postproc=False)
    return trace


def grid(decisions: list[list[int]]) -> list[list[list[int]]]:
    """The tile decisions tried, from the starting record's (n, h, w, g, o, k)."""
    n, h, w, g, o, k = decisions
    hn, wn, on, kn = (math.prod(d) for d in (h, w, o, k))
    found = []
    pixel_tiles = (1, 2, 7, 14)
    for h3, h2, w3, w2, o3, o2, k1 in itertools.product(
            pixel_tiles, pixel_tiles, pixel_tiles, pixel_tiles, (4, 8, 10, 16, 20, 40),
            (1, 2, 5), (1, 4, 8)):
        if hn % (h3 * h2) or wn % (w3 * w2) or on % (o3 * o2) or kn % k1:
            continue
        pixels = h3 * h2 * w3 * w2
        if not 4 <= pixels * o3 * o2 / 16 <= 28 or pixels > 28:
            continue
        found.append([n, [1, hn // (h3 * h2), h2, h3], [wn // (w3 * w2), 1, w2, w3], g,
                      [1, on // (o3 * o2), o2, o3], [kn // k1, k1]])
    return found


def search(mod, best, tgt, console: Console):
    """(tile instructions, decisions) of the cold-fastest schedule of the grid."""
    tiles = [inst for inst in best.trace.insts if inst.kind.name == "SamplePerfectTile"]
    start = [[int(v) for v in best.trace.decisions[inst]] for inst in tiles]
    if len(start) != 6 or any(len(d) != n for d, n in zip(start, (4, 4, 4, 4, 4, 2))):
        raise SystemExit(f"not a 1x1 group convolution tiled SSRSRS: {start}")
    timed = []
    for decisions in grid(start):
        try:
            hot, cold = time_both(mod, _Traced(with_decisions(best.trace, tiles, decisions)),
                                  tgt)
        except Exception as err:  # a split the postprocessors reject
            console.print(f"  {decisions}: {str(err).splitlines()[0][:80]}")
            continue
        timed.append((cold, hot, decisions))
    if not timed:
        return tiles, None
    timed.sort()
    console.print(f"  {len(timed)} schedules timed; cold-fastest {timed[0][0]:.1f} us "
                  f"(hot {timed[0][1]:.1f})")
    return tiles, timed[0][2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tasks", nargs="+")
    parser.add_argument("--model", default="shufflenet_v1_g3_1.0x")
    parser.add_argument("--size", default="224x224")
    parser.add_argument("--db", type=Path, default=Path("schedules/host-znver5"))
    parser.add_argument("--check", type=int, default=3)
    parser.add_argument("--commit", action="store_true", help="append winning picks to --db")
    args = parser.parse_args()
    # a shipped database is compressed: read from its unpacked copy, never appended to
    args.db = places.writable(args.db) if args.commit else places.readable(args.db)
    from tvm.s_tir import meta_schedule as ms

    console = Console(width=160)
    tc = target.resolve("host", threads=1)
    tgt = tc.tvm_target
    imported = frontends.load(frontends.ModelSpec(args.model,
                                                  frontends.parse_input_size(args.size)))
    method = records.database_method(args.db) or records.LEGACY_METHOD
    tasks = [t for t in tune.extract_tasks(imported.mod, tune.TuneConfig(tc, args.db,
                                                                         method=method))
             if t.name in args.tasks]
    missing = set(args.tasks) - {t.name for t in tasks}
    if missing:
        parser.error(f"no task named {', '.join(sorted(missing))} in {args.model}")
    view = taskdb.TaskDatabase(args.db, [t.extracted.dispatched[0] for t in tasks])
    try:
        for task in tasks:
            mod = task.extracted.dispatched[0]
            stored_records = tune._records(view.database, task, tgt)
            if not stored_records:
                console.print(f"{task.name}: no record of this target, skipped")
                continue
            best = min(stored_records, key=lambda r: records.mean_ms(r.run_secs) or float("inf"))
            stored = records.mean_ms(best.run_secs)
            console.print(f"{task.name} ({task.weight} calls): stored best {stored * 1e3:.1f} us")
            started = time.monotonic()
            tiles, decisions = search(mod, best, tgt, console)
            if decisions is None:
                console.print("  no schedule of the grid built")
                continue
            pick = _Traced(with_decisions(best.trace, tiles, decisions))
            times = {"start": [], "pick": []}
            for _ in range(args.check):
                times["start"].append(time_both(mod, best, tgt))
                times["pick"].append(time_both(mod, pick, tgt))
            med = {name: (statistics.median(t[0] for t in v), statistics.median(t[1] for t in v))
                   for name, v in times.items()}
            console.print(f"  {time.monotonic() - started:.0f} s; hot/cold us, medians of "
                          f"{args.check}: start {med['start'][0]:.1f}/{med['start'][1]:.1f}, "
                          f"pick {med['pick'][0]:.1f}/{med['pick'][1]:.1f} {decisions}")
            # records of a --flush-caches database hold cold times, the others hot ones
            kept = 1 if method.flush_caches else 0
            wins = (med["pick"][0] < med["start"][0] and med["pick"][1] < med["start"][1]
                    and med["pick"][kept] * 1e-3 < stored)
            if args.commit and wins:
                view.database.commit_tuning_record(ms.database.TuningRecord(
                    pick.trace, view.database.commit_workload(mod),
                    [t[kept] * 1e-6 for t in times["pick"]], tgt, best.args_info))
                view.sync()
                console.print("  appended to the database")
            elif args.commit:
                console.print("  not appended: not faster both ways, or not under the stored "
                              "best")
    finally:
        view.close()


if __name__ == "__main__":
    main()
