"""What reading a tuning database costs `compile` and `tune`, against parsing all of it.

MetaSchedule's JSONDatabase parses every record's schedule when it opens. `compile` instead
picks one record per kernel from the JSON lines and parses those (``records.apply_database``);
`tune` parses the records of the kernels it tunes (``taskdb.TaskDatabase``). This times the
three in one process, on the same database, and prints the ratios. Nothing is written to the
database (``TaskDatabase`` appends only what is committed to it).

    python benchmarks/db_open.py [--db schedules/host-znver5] [--models M1,M2] [--size 224x224]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from tvmshuffle import frontends, places, records, target, taskdb, tune


def _timed(work):
    start = time.perf_counter()
    value = work()
    return value, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=Path, default=Path("schedules/host-znver5"))
    parser.add_argument("--models", default="shufflenet_v1_g3_0.5x,shufflenet_v1_g3_1.0x,alexnet")
    parser.add_argument("--size", default="224x224")
    args = parser.parse_args()
    args.db = places.readable(args.db)  # a shipped database is compressed
    config = target.resolve("host", threads=1)
    full, all_secs = _timed(lambda: records.open_database(args.db))
    total = len(full.get_all_tuning_records())
    del full
    picked, apply_secs = _timed(lambda: records.apply_database(args.db, config.tvm_target))
    table = Table(title=f"{args.db}: {total} records; parsing all of them took {all_secs:.1f} s")
    for column in ("reader", "records parsed", "s", "all / this"):
        table.add_column(column, justify="left" if column == "reader" else "right")
    table.add_row("compile (apply_database)", str(len(picked.get_all_tuning_records())),
                  f"{apply_secs:.1f}", f"{all_secs / apply_secs:.1f}x")
    size = frontends.parse_input_size(args.size)
    for name in args.models.split(","):
        tasks = tune.extract_tasks(frontends.load(frontends.ModelSpec(name, size)).mod,
                                   tune.TuneConfig(config, args.db))
        view, secs = _timed(lambda: taskdb.TaskDatabase(
            args.db, [task.extracted.dispatched[0] for task in tasks]))
        table.add_row(f"tune {name} ({len(tasks)} tasks)",
                      str(len(view.database.get_all_tuning_records())), f"{secs:.1f}",
                      f"{all_secs / secs:.1f}x")
        view.close()
    Console(width=120).print(table)


if __name__ == "__main__":
    main()
