"""Host latency of the tvmshuffle .so against ONNX Runtime and PyTorch, in one process.

Same input, same thread count, numerics checked for every engine; prints latencies and each
engine's ratio to ONNX Runtime (machines are noisy: compare ratios from one run, not absolute
numbers across runs). The engines are timed interleaved, from Python, in rounds of a warm-up
call and 5 timed calls each (``--repeat`` timed calls in all), so that load from other tenants
of a shared machine falls on all of them alike.

    python benchmarks/host_vs_peers.py [--models a,b] [--size 224x224] [--threads 1] [--repeat 30]
        [--db schedules/host-znver5]   # compile with a tuning database (default: untuned)
        [--builds unscheduled,default,DB,...]  # several tvmshuffle builds in the same run:
                                       # TVM's unscheduled loops, the default schedules
                                       # (no database), or a database directory
        [--layout nhwc|nchw|nhwgc]     # convolution layout of the tvmshuffle build
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from tvmshuffle import bench, export, frontends, models, pipeline, target

DEFAULT_MODELS = ("shufflenet_v1_g3_0.5x", "shufflenet_v1_g3_1.0x", "shufflenet_v1_g3_2.0x",
                  "mobilenet_v1_1.0", "alexnet")


UNSCHEDULED, DEFAULT = "unscheduled", "default"


def build_config(build: str, threads: int, layout: str = pipeline.DEFAULT_LAYOUT,
                 fuse_shuffle: bool = True) -> export.CompileConfig:
    """A build of ``--builds``: TVM's unscheduled loops, the default schedules, or a database."""
    host = target.resolve("host", threads=threads)
    if build == UNSCHEDULED:
        return export.CompileConfig(host, fuse_shuffle, layout=layout, default_schedules=False)
    if build == DEFAULT:
        return export.CompileConfig(host, fuse_shuffle, layout=layout)
    return export.CompileConfig(host, fuse_shuffle, db=Path(build), layout=layout)


def measure(name: str, size: tuple[int, int], threads: int, repeat: int, work: Path,
            builds: list[str], layout: str) -> dict:
    spec = frontends.ModelSpec(name, size)
    imported = frontends.load(spec)
    runners, built = {}, {}
    for i, build in enumerate(builds):
        start = time.perf_counter()
        manifest = export.build_artifact(imported, build_config(build, threads, layout),
                                         work / f"{name}-{i}")
        artifact = bench.load_artifact(work / f"{name}-{i}")
        tvm_run = bench.run_local(artifact, threads=threads, repeat=3)  # numerics checked here
        sources = list(manifest["tuning"]["schedules"].values())
        built[build] = {"build_s": round(time.perf_counter() - start, 1),
                        "tuned_kernels": len(manifest["tuning"]["tuned_kernels"]),
                        "default_kernels": sources.count("default"),
                        "kernels": len(sources), "max_abs_err": tvm_run.max_abs_err}
        runners[build] = bench.vm_runner(artifact, threads)

    x = artifact.input
    module = models.build(name)
    torch_fn = bench.torch_runner(module, x, threads)
    onnx_path = frontends.export_onnx(module, imported.input_shape, work / f"{name}.onnx")
    ort_fn = bench.onnxruntime_runner(onnx_path, "input", x, threads)
    errors = {
        "torch": bench.max_abs_error([torch_fn().numpy()], artifact.expected),
        "onnxruntime": bench.max_abs_error([np.asarray(ort_fn()[0])], artifact.expected),
    }
    latency = bench.time_interleaved({**runners, "onnxruntime": ort_fn, "torch": torch_fn},
                                     rounds=max(1, repeat // 5), calls=5)
    return {
        "model": name, "mflops": manifest["flops"]["mflops"], "builds": built,
        "max_abs_err": {**{b: v["max_abs_err"] for b, v in built.items()}, **errors},
        "latency_ms": {engine: lat.as_json() for engine, lat in latency.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS))
    parser.add_argument("--size", default="224x224")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--db", type=Path, help="Tuning database to compile with.")
    parser.add_argument("--builds",
                        help="tvmshuffle builds timed in the same run, comma-separated: "
                             f"'{UNSCHEDULED}' (TVM's loops), '{DEFAULT}' (default schedules, "
                             "no database) or a database directory (default: --db, else "
                             f"'{DEFAULT}').")
    parser.add_argument("--layout", default=pipeline.DEFAULT_LAYOUT.lower(),
                        choices=[name.lower() for name in pipeline.LAYOUTS],
                        help="Convolution layout of the tvmshuffle build.")
    parser.add_argument("--json", type=Path, help="Also write the results here.")
    args = parser.parse_args()
    size = frontends.parse_input_size(args.size)
    builds = (args.builds.split(",") if args.builds
              else [str(args.db)] if args.db else [DEFAULT])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            models.lookup(name)
            rows.append(measure(name, size, args.threads, args.repeat, Path(tmp), builds,
                                args.layout.upper()))

    table = Table(title=f"host, {args.threads} thread(s), {args.size}, {args.layout}, "
                        "median ms (ratio to ONNX Runtime)")
    table.add_column("model")
    table.add_column("MFLOPs", justify="right")
    for build in builds:
        table.add_column(f"tvmshuffle {build} (records/default/kernels)", justify="right")
    for column in ("ONNX Runtime", "PyTorch", "max abs err"):
        table.add_column(column, justify="right")
    for row in rows:
        lat = {k: v["median_ms"] for k, v in row["latency_ms"].items()}
        ort = lat["onnxruntime"]
        cells = []
        for build in builds:
            b = row["builds"][build]
            cells.append(f"{lat[build]:.2f} ({lat[build] / ort:.2f}x) "
                         f"{b['tuned_kernels']}/{b['default_kernels']}/{b['kernels']}")
        table.add_row(row["model"], f"{row['mflops']:.0f}", *cells,
                      f"{ort:.2f} (1.00x)", f"{lat['torch']:.2f} ({lat['torch'] / ort:.2f}x)",
                      f"{max(row['max_abs_err'].values()):.1e}")
    Console(width=200).print(table)
    if args.json:
        args.json.write_text(json.dumps({
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "machine": platform.processor() or platform.machine(),
            "threads": args.threads, "size": args.size, "builds": builds,
            "layout": args.layout,
            "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
