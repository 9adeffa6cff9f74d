"""One model compiled with each of several tuning databases, timed interleaved in one process.

What a tuning round (or any change to a database) is worth for the whole network: build the
model once per database, check each build against the reference, then time the builds in
rounds (``bench.time_interleaved``), ``--runs`` times over. A database as it was at an earlier
commit comes from git, e.g. ``mkdir old && git show REV:schedules/host-znver5/database_workload.json
> old/database_workload.json`` (and the same for ``database_tuning_record.json``).

    python benchmarks/compare_dbs.py MODEL DB [DB ...] [--size 224x224] [--runs 3]
        [--layouts nhwc,nhwgc]   (one per database, to compare layouts; default nhwgc for all)
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from rich.console import Console

from tvmshuffle import bench, export, frontends, pipeline, target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("dbs", nargs="+", type=Path)
    parser.add_argument("--size", default="224x224")
    parser.add_argument("--runs", type=int, default=3, help="timings of 100 calls each")
    parser.add_argument("--layouts", default=None,
                        help="comma-separated convolution layout per database (default nhwgc)")
    args = parser.parse_args()
    layouts = (args.layouts.upper().split(",") if args.layouts
               else [pipeline.DEFAULT_LAYOUT] * len(args.dbs))
    if len(layouts) != len(args.dbs) or not set(layouts) <= set(pipeline.LAYOUTS):
        parser.error(f"--layouts needs one of {sorted(pipeline.LAYOUTS)} per database")
    config = target.resolve("host", threads=1)
    imported = frontends.load(frontends.ModelSpec(args.model,
                                                  frontends.parse_input_size(args.size)))
    console = Console(width=120)
    with tempfile.TemporaryDirectory() as tmp:
        runners = {}
        for i, (db, layout) in enumerate(zip(args.dbs, layouts)):
            out = Path(tmp) / str(i)
            export.build_artifact(imported, export.CompileConfig(config, layout=layout, db=db),
                                  out)
            artifact = bench.load_artifact(out)
            bench.run_local(artifact, repeat=2)  # numerics checked here
            runners[f"{db} ({layout})"] = bench.vm_runner(artifact)
        for run in range(args.runs):
            latency = bench.time_interleaved(runners, rounds=20, calls=5)
            console.print(f"run {run + 1}: " + ", ".join(
                f"{db} {lat.median_ms:.3f} ms" for db, lat in latency.items()))


if __name__ == "__main__":
    main()
