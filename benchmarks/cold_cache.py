"""Tuned kernels timed hot (as MetaSchedule ranks them) and with the CPU caches flushed.

MetaSchedule's runner times each candidate repeatedly on the same buffers, so everything it
touches sits in L1/L2; in the network a kernel's weights and the tensors it did not just
produce come from further away. For every convolution task of MODEL this takes the ``--top``
best records of the database, builds each and times it twice on this CPU: hot (10 calls a
repeat) and cold (TVM's ``cache_flush_cpu_non_first_arg``: every argument but the first,
i.e. weights, bias, residual and output, flushed before each call). Prints both per
candidate, the network-weighted sums for the hot-ranked best and the cold-ranked best, and
with ``--out-db`` writes a database holding, per task, the cold-ranked best (the hot best for
tasks that are not convolutions): compile with it (``host_vs_peers.py --db``) to see what
ranking by cold time buys the whole network.

    python benchmarks/cold_cache.py [--model shufflenet_v1_g3_1.0x] [--db schedules/host-znver5]
        [--top 6] [--out-db DIR]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import tvm
from rich.console import Console
from rich.table import Table

from tvmshuffle import frontends, places, records, target, tune

CONV_KINDS = ("conv", "grouped", "depthwise")


def time_both(mod: tvm.IRModule, record, tgt: tvm.target.Target) -> tuple[float, float]:
    """(hot, cold) mean microseconds of one call of ``record``'s schedule of ``mod``."""
    from tvm import s_tir
    from tvm.s_tir import meta_schedule as ms

    sch = s_tir.Schedule(mod)
    record.trace.apply_to_schedule(sch, remove_postproc=False)
    lib = tune.build_candidate(sch.mod, tgt, None)
    dev = tvm.cpu()
    rng = np.random.default_rng(0)
    # as the kernel is built: a prepacked schedule reads its weights in its own layout
    infos = ms.arg_info.ArgInfo.from_entry_func(sch.mod, remove_preproc=True)
    args = [tvm.runtime.tensor(rng.random([int(d) for d in a.shape]).astype(str(a.dtype)), dev)
            for a in infos]
    hot = lib.time_evaluator(lib.entry_name, dev, number=10, repeat=5)(*args).mean
    cold = lib.time_evaluator(lib.entry_name, dev, number=1, repeat=50,
                              f_preproc="cache_flush_cpu_non_first_arg")(*args).mean
    return hot * 1e6, cold * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="shufflenet_v1_g3_1.0x")
    parser.add_argument("--size", default="224x224")
    parser.add_argument("--db", type=Path, default=Path("schedules/host-znver5"))
    parser.add_argument("--top", type=int, default=6, help="candidates timed per task")
    parser.add_argument("--out-db", type=Path, help="write the cold-ranked picks here")
    args = parser.parse_args()
    args.db = places.readable(args.db)  # a shipped database is compressed
    from tvm.s_tir import meta_schedule as ms

    tc = target.resolve("host", threads=1)
    imported = frontends.load(frontends.ModelSpec(args.model,
                                                  frontends.parse_input_size(args.size)))
    method = records.database_method(args.db) or records.LEGACY_METHOD
    tasks = tune.extract_tasks(imported.mod, tune.TuneConfig(tc, args.db, method=method))
    database = records.open_database(args.db)
    picks = None
    if args.out_db:
        if args.out_db.exists() and any(args.out_db.iterdir()):
            parser.error(f"--out-db {args.out_db} is not empty: give a new directory")
        picks = records.open_database(args.out_db)
        records.write_method(args.out_db, method)  # compiled as the records were tuned

    table = Table(title=f"{args.model}: best {args.top} records per task, hot / cold us")
    table.add_column("kernel")
    table.add_column("calls", justify="right")
    table.add_column("candidates, database order: hot / cold")
    table.add_column("cold pick", justify="right")
    sums = {"hot best, hot": 0.0, "hot best, cold": 0.0, "cold best, cold": 0.0}
    for task in tasks:
        mod = task.extracted.dispatched[0]
        workload = database.commit_workload(mod)
        top = database.get_top_k(workload, 1 if task.kind not in CONV_KINDS else args.top)
        if not top:
            continue
        chosen = top[0]
        if task.kind in CONV_KINDS:
            times = [time_both(mod, r, tc.tvm_target) for r in top]
            pick = min(range(len(times)), key=lambda i: times[i][1])
            chosen = top[pick]
            sums["hot best, hot"] += times[0][0] * task.weight
            sums["hot best, cold"] += times[0][1] * task.weight
            sums["cold best, cold"] += times[pick][1] * task.weight
            table.add_row(task.name, str(task.weight),
                          "  ".join(f"{h:.1f}/{c:.1f}" for h, c in times), f"#{pick + 1}")
        if picks is not None:
            picks.commit_tuning_record(ms.database.TuningRecord(
                chosen.trace, picks.commit_workload(mod), chosen.run_secs, chosen.target,
                chosen.args_info))
    console = Console(width=160)
    console.print(table)
    for name, total in sums.items():
        console.print(f"convolutions x calls, {name}: {total / 1e3:.3f} ms")


if __name__ == "__main__":
    main()
