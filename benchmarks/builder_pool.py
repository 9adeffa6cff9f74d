"""What a batch of builds costs a `tune` with MetaSchedule's LocalBuilder (new worker processes
for every batch) and with tvmshuffle's pooled builder (workers that live for the whole tune).

Batches of a model's unscheduled kernels (as `tune` builds them to time the untuned network)
are built by each builder in turn, alternating, with the same build and link functions; the
median seconds a batch and their ratio are printed. Small batches are what a tune with a small
budget per task makes (one batch per task).

    python benchmarks/builder_pool.py [--model shufflenet_v1_g3_0.5x] [--batch 4] [--rounds 5]
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="shufflenet_v1_g3_0.5x")
    parser.add_argument("--batch", type=int, default=4, help="kernels a batch")
    parser.add_argument("--rounds", type=int, default=5, help="batches per builder")
    args = parser.parse_args()

    from tvm.s_tir import meta_schedule as ms

    from tvmshuffle import frontends, target, toolchain, tune

    config = tune.TuneConfig(target.resolve("host"), Path(tempfile.mkdtemp()), ops=("all",))
    tasks = tune.tasks_of(frontends.load(frontends.ModelSpec(args.model)).mod, config)
    inputs = [ms.builder.BuilderInput(t.extracted.dispatched[0], t.extracted.target)
              for t in tasks]
    linker = toolchain.find(config.target, config.android_api)
    export = functools.partial(tune.export_candidate, linker)
    workers = os.cpu_count() or 1
    builders = {
        "LocalBuilder": ms.builder.LocalBuilder(max_workers=workers, timeout_sec=60,
                                                f_build=tune.build_candidate, f_export=export),
        "pooled (tvmshuffle)": tune._builder(config),
    }
    seconds: dict[str, list[float]] = {name: [] for name in builders}
    for r in range(args.rounds):
        batch = [inputs[(r * args.batch + i) % len(inputs)] for i in range(args.batch)]
        for name in (list(builders) if r % 2 == 0 else list(builders)[::-1]):
            start = time.perf_counter()
            results = builders[name].build(batch)
            seconds[name].append(time.perf_counter() - start)
            failed = [res.error_msg for res in results if res.error_msg]
            assert not failed, failed[0]
            for res in results:
                ms.utils.remove_build_dir(res.artifact_path)
    builders["pooled (tvmshuffle)"].close()

    table = Table(title=f"{args.model}: {args.rounds} batches of {args.batch} kernels, "
                        f"{workers} workers")
    for column in ("builder", "median s a batch", "each batch (s)"):
        table.add_column(column)
    for name, times in seconds.items():
        table.add_row(name, f"{statistics.median(times):.2f}",
                      " ".join(f"{t:.2f}" for t in times))
    console = Console()
    console.print(table)
    ratio = statistics.median(seconds["LocalBuilder"]) / statistics.median(
        seconds["pooled (tvmshuffle)"])
    console.print(f"LocalBuilder / pooled: {ratio:.2f}x (the pooled builder's first batch "
                  "starts its workers)")


if __name__ == "__main__":
    main()
