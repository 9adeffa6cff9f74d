"""Single convolutions of ShuffleNet 1x g3 tuned in NCHW and in NHWC, in one run.

Each convolution (+ bias + ReLU) is written as a one-operator NCHW Relax module and tuned with
tvmshuffle's own tuning (MetaSchedule, XGBoost, the embedded host device) twice: with the
convolutions left in NCHW/OIHW and converted to NHWC/HWIO by the graph passes. Prints the best
latency of each, GFLOP/s, and the NCHW / NHWC ratio (machines are noisy: compare ratios from one
run, not absolute numbers across runs).

    python benchmarks/conv_layouts.py [--trials 64] [--convs stage3_reduce,stage3_expand,...]
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import tempfile
from pathlib import Path

import numpy as np
import tvm
from rich.console import Console
from rich.table import Table
from tvm import relax

from tvmshuffle import remote, target, tune

# name -> (input channels, output channels, groups, kernel, stride, input size)
CONVS = {
    "stage3_reduce": (480, 120, 3, 1, 1, 14),  # 1x1 group conv into the bottleneck, 7 calls
    "stage3_expand": (120, 480, 3, 1, 1, 14),  # 1x1 group conv out of it (+ residual), 7 calls
    "stage4_reduce": (960, 240, 3, 1, 1, 7),
    "stage2_expand": (60, 240, 3, 1, 1, 28),
    "stage3_depthwise": (120, 120, 120, 3, 1, 14),
    "stem": (3, 24, 1, 3, 2, 224),
}


def conv_module(cin: int, cout: int, groups: int, kernel: int, stride: int,
                size: int) -> tvm.IRModule:
    """conv2d + bias + ReLU on a (1, cin, size, size) NCHW input, random constant weights."""
    rng = np.random.default_rng(0)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, cin, size, size), "float32"))
    weight = relax.const(rng.standard_normal((cout, cin // groups, kernel, kernel), "float32"))
    bias = relax.const(rng.standard_normal((1, cout, 1, 1), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.nn.conv2d(x, weight, strides=stride, padding=kernel // 2,
                                           groups=groups))
            y = bb.emit(relax.op.add(y, bias))
            y = bb.emit_output(relax.op.nn.relu(y))
        bb.emit_func_output(y)
    return bb.get()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=64, help="trials per convolution and layout")
    parser.add_argument("--convs", default=",".join(CONVS))
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    names = [n.strip() for n in args.convs.split(",") if n.strip()]
    tgt = target.resolve("host")
    rows = []
    with tempfile.TemporaryDirectory() as tmp, remote.embedded_device(1) as tracker:
        for name in names:
            cin, cout, groups, kernel, stride, size = CONVS[name]
            mod = conv_module(*CONVS[name])
            row = {"conv": name, "shape": CONVS[name]}
            for layout in ("NCHW", "NHWC"):
                config = tune.TuneConfig(tgt, Path(tmp) / f"{name}-{layout}", trials=args.trials,
                                         trials_per_task=args.trials, ops=("grouped", "depthwise",
                                                                           "conv"),
                                         layout=layout, patience=None)
                (result,) = tune.tune(mod, config, tracker, 1)
                out_size = (size + 2 * (kernel // 2) - kernel) // stride + 1
                flop = 2 * out_size * out_size * cout * (cin // groups) * kernel * kernel
                row[layout] = {"untuned_ms": result.untuned_ms, "tuned_ms": result.tuned_ms,
                               "gflops": flop / result.tuned_ms / 1e6,
                               "trials": result.trials_run}
            row["nchw_over_nhwc"] = row["NCHW"]["tuned_ms"] / row["NHWC"]["tuned_ms"]
            rows.append(row)

    table = Table(title=f"conv layouts, {args.trials} trials each, 1 thread, "
                        f"{datetime.date.today()}, {platform.node()}")
    for column in ("conv", "NCHW ms", "NCHW GFLOP/s", "NHWC ms", "NHWC GFLOP/s", "NCHW / NHWC"):
        table.add_column(column, justify="left" if column == "conv" else "right")
    for row in rows:
        table.add_row(row["conv"], f"{row['NCHW']['tuned_ms']:.4f}",
                      f"{row['NCHW']['gflops']:.1f}", f"{row['NHWC']['tuned_ms']:.4f}",
                      f"{row['NHWC']['gflops']:.1f}", f"{row['nchw_over_nhwc']:.2f}x")
    Console(width=120).print(table)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
