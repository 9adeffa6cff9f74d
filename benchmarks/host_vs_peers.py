"""Host latency of the tvmshuffle .so against ONNX Runtime and PyTorch, in one process.

Same input, same thread count, numerics checked for every engine; prints latencies and each
engine's ratio to ONNX Runtime (machines are noisy: compare ratios from one run, not absolute
numbers across runs). The engines are timed interleaved, from Python, in rounds of a warm-up
call and 5 timed calls each (``--repeat`` timed calls in all), so that load from other tenants
of a shared machine falls on all of them alike.

    python benchmarks/host_vs_peers.py [--models a,b] [--size 224x224] [--threads 1] [--repeat 30]
        [--db schedules/host-znver5]   # compile with a tuning database (default: untuned)
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


def measure(name: str, size: tuple[int, int], threads: int, repeat: int, work: Path,
            db: Path | None, layout: str) -> dict:
    spec = frontends.ModelSpec(name, size)
    imported = frontends.load(spec)
    start = time.perf_counter()
    config = export.CompileConfig(target.resolve("host", threads=threads), db=db, layout=layout)
    manifest = export.build_artifact(imported, config, work / name)
    build_s = time.perf_counter() - start
    artifact = bench.load_artifact(work / name)
    tvm_run = bench.run_local(artifact, threads=threads, repeat=3)  # numerics checked here

    x = artifact.input
    module = models.build(name)
    torch_fn = bench.torch_runner(module, x, threads)
    onnx_path = frontends.export_onnx(module, imported.input_shape, work / f"{name}.onnx")
    ort_fn = bench.onnxruntime_runner(onnx_path, "input", x, threads)
    errors = {
        "torch": bench.max_abs_error([torch_fn().numpy()], artifact.expected),
        "onnxruntime": bench.max_abs_error([np.asarray(ort_fn()[0])], artifact.expected),
    }
    latency = bench.time_interleaved({"tvmshuffle": bench.vm_runner(artifact, threads),
                                      "onnxruntime": ort_fn, "torch": torch_fn},
                                     rounds=max(1, repeat // 5), calls=5)
    return {
        "model": name, "mflops": manifest["flops"]["mflops"], "build_s": round(build_s, 1),
        "tuned_kernels": len(manifest["tuning"]["tuned_kernels"]),
        "kernels": len(manifest["kernels"]),
        "max_abs_err": {"tvmshuffle": tvm_run.max_abs_err, **errors},
        "latency_ms": {engine: lat.as_json() for engine, lat in latency.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS))
    parser.add_argument("--size", default="224x224")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--db", type=Path, help="Tuning database to compile with.")
    parser.add_argument("--layout", default=pipeline.DEFAULT_LAYOUT.lower(),
                        choices=[name.lower() for name in pipeline.LAYOUTS],
                        help="Convolution layout of the tvmshuffle build.")
    parser.add_argument("--json", type=Path, help="Also write the results here.")
    args = parser.parse_args()
    size = frontends.parse_input_size(args.size)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            models.lookup(name)
            rows.append(measure(name, size, args.threads, args.repeat, Path(tmp), args.db,
                                args.layout.upper()))

    state = (f"tuned with {args.db}" if args.db else "untuned") + f", {args.layout}"
    table = Table(title=f"host, {args.threads} thread(s), {args.size}, tvmshuffle {state}, "
                        "median ms (ratio to ONNX Runtime)")
    for column in ("model", "MFLOPs", "tuned kernels", "tvmshuffle", "ONNX Runtime", "PyTorch",
                   "max abs err"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for row in rows:
        lat = {k: v["median_ms"] for k, v in row["latency_ms"].items()}
        ort = lat["onnxruntime"]
        table.add_row(row["model"], f"{row['mflops']:.0f}",
                      f"{row['tuned_kernels']}/{row['kernels']}",
                      f"{lat['tvmshuffle']:.2f} ({lat['tvmshuffle'] / ort:.2f}x)",
                      f"{ort:.2f} (1.00x)", f"{lat['torch']:.2f} ({lat['torch'] / ort:.2f}x)",
                      f"{max(row['max_abs_err'].values()):.1e}")
    Console(width=140).print(table)
    if args.json:
        args.json.write_text(json.dumps({
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "machine": platform.processor() or platform.machine(),
            "threads": args.threads, "size": args.size, "db": str(args.db) if args.db else None,
            "layout": args.layout,
            "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
