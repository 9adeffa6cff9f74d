"""Single convolutions of ShuffleNet 1x g3 tuned in NCHW and in NHWC, in one run.

Each convolution (+ bias + ReLU) is written as a one-operator NCHW Relax module and tuned with
tvmshuffle's own tuning (MetaSchedule, XGBoost, the embedded host device) twice: with the
convolutions left in NCHW/OIHW and converted to NHWC/HWIO by the graph passes. Prints the best
latency of each, GFLOP/s, and the NCHW / NHWC ratio (machines are noisy: compare ratios from one
run, not absolute numbers across runs).

``--group-axis`` adds a third form for the 1x1 group convolutions: the group made an axis of its
own, (1, h, w, groups, c / groups) data and (groups, c / groups, o / groups) weights, so that
MetaSchedule tiles groups and channels within a group apart (TVM's NHWC group convolution
computes the input channel as ``o // (o / groups) * (c / groups) + rc`` from the output channel,
and a vector of output channels that straddles two groups reads two input slices).

    python benchmarks/conv_layouts.py [--trials 64] [--convs stage3_reduce,stage3_expand,...]
        [--group-axis]
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
from tvm import relax, te, tirx

from tvmshuffle import remote, target, tune

# name -> (input channels, output channels, groups, kernel, stride, input size)
CONVS = {
    "stage3_reduce": (480, 120, 3, 1, 1, 14),  # 1x1 group conv into the bottleneck, 7 calls
    "stage3_expand": (120, 480, 3, 1, 1, 14),  # 1x1 group conv out of it (+ residual), 7 calls
    "stage4_reduce": (960, 240, 3, 1, 1, 7),
    "stage2_reduce": (240, 60, 3, 1, 1, 28),
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


def group_axis_module(cin: int, cout: int, groups: int, size: int) -> tvm.IRModule:
    """The 1x1 group convolution + bias + ReLU of ``conv_module`` on NHWC data, computed with
    the group as an axis: (1, s, s, cin) -> (1, s, s, g, cin/g) -> (1, s, s, g, cout/g)."""
    rng = np.random.default_rng(0)
    cig, cog = cin // groups, cout // groups
    i64 = lambda *v: tuple(tirx.IntImm("int64", d) for d in v)  # noqa: E731
    data = te.placeholder(i64(1, size, size, groups, cig), "float32", name="data")
    weight = te.placeholder(i64(groups, cig, cog), "float32", name="weight")
    rc = te.reduce_axis(i64(0, cig), name="rc")
    out = te.compute(i64(1, size, size, groups, cog),
                     lambda n, h, w, g, c: te.sum(data[n, h, w, g, rc] * weight[g, rc, c],
                                                  axis=rc),
                     name="group_conv2d_nhwgc")
    bb = relax.BlockBuilder()
    kernel = bb.add_func(te.create_prim_func([data, weight, out]).without_attr("global_symbol"),
                         "group_conv2d")
    x = relax.Var("x", relax.TensorType((1, size, size, cin), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            x5 = bb.emit(relax.op.reshape(x, (1, size, size, groups, cig)))
            y = bb.emit(relax.call_tir(
                kernel, [x5, relax.const(rng.standard_normal((groups, cig, cog), "float32"))],
                relax.TensorType((1, size, size, groups, cog), "float32")))
            y = bb.emit(relax.op.add(y, relax.const(rng.standard_normal((groups, cog),
                                                                        "float32"))))
            y = bb.emit(relax.op.nn.relu(y))
            y = bb.emit_output(relax.op.reshape(y, (1, size, size, cout)))
        bb.emit_func_output(y)
    return bb.get()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=64, help="trials per convolution and layout")
    parser.add_argument("--convs", default=",".join(CONVS))
    parser.add_argument("--group-axis", action="store_true",
                        help="also tune 1x1 group convolutions with the group as an axis")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    names = [n.strip() for n in args.convs.split(",") if n.strip()]
    tgt = target.resolve("host")
    rows = []
    with tempfile.TemporaryDirectory() as tmp, remote.embedded_device(1) as tracker:
        for name in names:
            cin, cout, groups, kernel, stride, size = CONVS[name]
            mod = conv_module(*CONVS[name])
            forms = {"NCHW": (mod, "NCHW"), "NHWC": (mod, "NHWC")}
            if args.group_axis and kernel == 1 and 1 < groups < cin:
                forms["NHWGC"] = (group_axis_module(cin, cout, groups, size), "NHWC")
            row = {"conv": name, "shape": CONVS[name]}
            out_size = (size + 2 * (kernel // 2) - kernel) // stride + 1
            flop = 2 * out_size * out_size * cout * (cin // groups) * kernel * kernel
            for form, (mod, layout) in forms.items():
                # the group-axis kernel is no conv2d to pipeline.kernel_work: tune every task (the
                # layout transposes or reshapes around the convolution too) and report the
                # convolution's
                config = tune.TuneConfig(tgt, Path(tmp) / f"{name}-{form}", trials=args.trials,
                                         trials_per_task=args.trials, ops=("all",),
                                         layout=layout, patience=None)
                results = tune.tune(mod, config, tracker, 1)
                result = next(r for r in results if "conv2d" in r.task.name)
                row[form] = {"untuned_ms": result.untuned_ms, "tuned_ms": result.tuned_ms,
                             "gflops": flop / result.tuned_ms / 1e6,
                             "trials": result.trials_run}
            row["nchw_over_nhwc"] = row["NCHW"]["tuned_ms"] / row["NHWC"]["tuned_ms"]
            rows.append(row)

    table = Table(title=f"conv layouts, {args.trials} trials each, 1 thread, "
                        f"{datetime.date.today()}, {platform.node()}")
    columns = ["conv", "NCHW ms", "NCHW GFLOP/s", "NHWC ms", "NHWC GFLOP/s", "NCHW / NHWC"]
    if args.group_axis:
        columns += ["NHWGC ms", "NHWC / NHWGC"]
    for column in columns:
        table.add_column(column, justify="left" if column == "conv" else "right")
    for row in rows:
        cells = [row["conv"], f"{row['NCHW']['tuned_ms']:.4f}", f"{row['NCHW']['gflops']:.1f}",
                 f"{row['NHWC']['tuned_ms']:.4f}", f"{row['NHWC']['gflops']:.1f}",
                 f"{row['nchw_over_nhwc']:.2f}x"]
        if args.group_axis:
            grouped = row.get("NHWGC")
            cells += ["-", "-"] if grouped is None else [
                f"{grouped['tuned_ms']:.4f}",
                f"{row['NHWC']['tuned_ms'] / grouped['tuned_ms']:.2f}x"]
        table.add_row(*cells)
    Console(width=120).print(table)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
