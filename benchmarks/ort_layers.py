"""Where ONNX Runtime spends its time on a zoo model: its own profiler, per layer.

Exports the model to ONNX, runs ORT (1 thread, all graph optimizations, the NCHWc transformer
included) with profiling on, and prints the median kernel time of each node grouped by operator
and shapes (input, weight -> output), calls per inference, and the totals per operator type;
then ORT's latency with profiling off in the same process, since the profiler's own cost is not
negligible at this scale. Put beside ``roofline.py`` (tvmshuffle's kernels) it says which layers
ORT runs faster than the tuned kernels.

    python benchmarks/ort_layers.py [--model shufflenet_v1_g3_1.0x] [--size 224x224] [--runs 20]
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import tempfile
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from tvmshuffle import bench, frontends, models


def profile(onnx_path: Path, x: np.ndarray, runs: int, work: Path) -> list[dict]:
    """One dict per ORT node: op, shapes, microseconds of each profiled run."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.enable_profiling = True
    options.profile_file_prefix = str(work / "ort-profile")
    session = ort.InferenceSession(str(onnx_path), options,
                                   providers=["CPUExecutionProvider"])
    for _ in range(runs + 1):
        session.run(None, {"input": x})
    events = json.loads(Path(session.end_profiling()).read_text())
    nodes: dict[str, dict] = {}
    for event in events:
        if event.get("cat") != "Node" or not event["name"].endswith("_kernel_time"):
            continue
        node = nodes.setdefault(event["name"], {
            "op": event["args"]["op_name"],
            "inputs": [list(s.values())[0] for s in event["args"].get("input_type_shape", [])],
            "output": [list(s.values())[0]
                       for s in event["args"].get("output_type_shape", [])][:1],
            "us": []})
        node["us"].append(event["dur"])
    for node in nodes.values():
        node["us"] = node["us"][1:]  # the first run warms up
    return list(nodes.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="shufflenet_v1_g3_1.0x")
    parser.add_argument("--size", default="224x224")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    size = frontends.parse_input_size(args.size)
    module = models.build(args.model)
    x = np.random.default_rng(0).random((1, 3, *size), dtype=np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = frontends.export_onnx(module, (1, 3, *size), Path(tmp) / "model.onnx")
        nodes = profile(onnx_path, x, args.runs, Path(tmp))
        plain = bench.time_callable(bench.onnxruntime_runner(onnx_path, "input", x, 1),
                                    args.runs)

    layers: dict[tuple, list[float]] = collections.defaultdict(list)
    per_op: dict[str, float] = collections.defaultdict(float)
    for node in nodes:
        us = statistics.median(node["us"])
        shapes = " ".join("x".join(map(str, s)) for s in node["inputs"][:2])
        out = "x".join(map(str, node["output"][0])) if node["output"] else ""
        layers[(node["op"], f"{shapes} -> {out}")].append(us)
        per_op[node["op"]] += us
    profiled_ms = sum(per_op.values()) / 1e3

    console = Console(width=150)
    table = Table(title=f"ONNX Runtime on {args.model} {args.size}, 1 thread, median of "
                        f"{args.runs} profiled runs")
    for column in ("op", "shapes (input weight -> output)", "calls", "ms", "us a call"):
        numeric = column in ("calls", "ms", "us a call")
        table.add_column(column, justify="right" if numeric else "left")
    for (op, shapes), times in sorted(layers.items(), key=lambda kv: -sum(kv[1]))[:args.top]:
        table.add_row(op, shapes, str(len(times)), f"{sum(times) / 1e3:.3f}",
                      f"{sum(times) / len(times):.1f}")
    console.print(table)
    console.print("per operator: " + ", ".join(
        f"{op} {ms / 1e3:.3f}" for op, ms in sorted(per_op.items(), key=lambda kv: -kv[1])))
    console.print(f"node total {profiled_ms:.3f} ms profiled; ORT without the profiler "
                  f"{plain.median_ms:.3f} ms (median of {args.runs})")


if __name__ == "__main__":
    main()
