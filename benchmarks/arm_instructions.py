"""ARM code quality without a phone: the dynamic instructions of one inference on the emulated
arm64 device, tvmshuffle's `--target arm` library beside ncnn, same network, input and core.

    python benchmarks/arm_instructions.py [--models a,b] [--size 224x224] [--json FILE]
        [--builds default,unscheduled]   # tvmshuffle builds counted (default: both)

Per model:
* tvmshuffle: the zoo model compiled for `--target arm` as a user without a phone gets it, the
  default schedules (`compile --no-db`), and TVM's unscheduled loops beside it
  (`--no-default-schedules`);
* ncnn: PyPI's aarch64 wheel (`rpc/emu_arm64.sh ncnn`), running the same network (same seeded
  weights) exported to ONNX and converted on the host by pnnx (`pip install pnnx`; fp32
  weights), fp16 and bf16 storage and arithmetic off, one thread, no Vulkan.

Both engines get the same input and their outputs are checked against PyTorch's; both are
counted by tvmshuffle's instruction counter (`tvmshuffle.insncount`, the plugin of
`rpc/emu_arm64.sh setup`) on the same emulated core (`insncount.EMULATED_CPU`, ARMv8.0-A with
NEON), over one inference after a warm-up one: every instruction executed in that window (the
engine, its runtime, libc), its vector FMAs and their lanes. `ratio` is tvmshuffle's default
build's instructions over ncnn's. Instruction counts ignore caches and memory: they say what
the code executes, not how long a phone takes. The counts need no tracker: the emulated device
runs here, in its own process per count, and nothing is left running.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from tvmshuffle import bench, export, frontends, insncount, models, target

DEFAULT_MODELS = ("shufflenet_v1_g3_0.5x", "shufflenet_v1_g3_1.0x", "mobilenet_v1_1.0",
                  "shufflenet_v2_1.0x")
BUILDS = ("default", "unscheduled")
REPO = Path(__file__).resolve().parents[1]
NCNN_SCRIPT = Path(__file__).with_name("_ncnn_count.py")


def tvmshuffle_counts(name: str, size: tuple[int, int], build: str, work: Path) -> dict:
    spec = frontends.ModelSpec(name, size)
    config = export.CompileConfig(target.resolve("arm"), default_schedules=build == "default")
    out = work / f"{name}-{build}"
    start = time.perf_counter()
    export.build_artifact(frontends.load(spec), config, out)
    build_s = time.perf_counter() - start
    counted = insncount.count(bench.load_artifact(out))
    network = counted.network
    grouped = insncount.KernelCount.total(
        "grouped 1x1", [k for k in counted.kernels if "group_conv2d_nhwgc" in k.name])
    return {"instructions": counted.all_instructions,
            "library_instructions": network.instructions, "macs": network.macs,
            "vector_fma": network.vector_fma, "fma_lanes": network.fma_lanes,
            "fma_lane_utilisation": network.lane_utilisation,
            "grouped_1x1_fma_lane_utilisation": grouped.lane_utilisation,
            "max_abs_err": counted.max_abs_err, "build_s": round(build_s, 1),
            "counting_s": round(counted.seconds, 1), "artifact": out,
            "top_kernels": [k.as_json() for k in counted.kernels[:5]]}


def ncnn_counts(name: str, artifact_dir: Path, macs: int, work: Path) -> dict:
    import pnnx

    artifact = bench.load_artifact(artifact_dir)
    shape = tuple(artifact.input.shape)
    onnx_path = frontends.export_onnx(models.build(name), shape, work / f"{name}.onnx")
    converted = subprocess.run(
        [pnnx.EXEC_PATH, str(onnx_path), f"inputshape=[{','.join(map(str, shape))}]",
         "fp16=0"], cwd=work, capture_output=True, text=True)
    param, weights = work / f"{name}.ncnn.param", work / f"{name}.ncnn.bin"
    if converted.returncode != 0 or not param.is_file():
        raise SystemExit(f"pnnx failed on {onnx_path}: {converted.stderr[-500:]}")
    np.save(work / "input.npy", artifact.input)
    start = time.perf_counter()
    counts = insncount.counted_run(
        [str(NCNN_SCRIPT), str(insncount.emu_root() / "site-ncnn"), str(param), str(weights),
         str(work / "input.npy"), str(work)], work)
    seconds = time.perf_counter() - start
    out = np.load(work / "output_0.npy").reshape(artifact.expected[0].shape)
    total = insncount.KernelCount("ncnn", macs)
    for word, times in counts.values():
        total.add(word, times)
    return {"instructions": total.instructions, "vector_fma": total.vector_fma,
            "fma_lanes": total.fma_lanes, "fma_lane_utilisation": total.lane_utilisation,
            "max_abs_err": bench.max_abs_error([out], artifact.expected),
            "counting_s": round(seconds, 1)}


def setup() -> None:
    if importlib.util.find_spec("pnnx") is None:
        raise SystemExit("pnnx is not installed: pip install pnnx")
    for step in ("setup", "ncnn"):
        subprocess.run(["bash", str(REPO / "rpc" / "emu_arm64.sh"), step], check=True,
                       env={**os.environ, "PYTHON": sys.executable})


def pct(value) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS))
    parser.add_argument("--size", default="224x224")
    parser.add_argument("--builds", default=",".join(BUILDS))
    parser.add_argument("--json", type=Path, help="Also write the results here.")
    args = parser.parse_args()
    size = frontends.parse_input_size(args.size)
    builds = args.builds.split(",")
    if "default" not in builds or set(builds) - set(BUILDS):
        raise SystemExit(f"--builds: 'default' and optionally 'unscheduled', not {args.builds}")
    setup()
    rows = []
    with tempfile.TemporaryDirectory(prefix="arm-instructions-") as tmp:
        for name in args.models.split(","):
            models.lookup(name)
            work = Path(tmp) / name
            work.mkdir()
            row = {"model": name, "size": args.size}
            for build in builds:
                row[build] = tvmshuffle_counts(name, size, build, work)
            macs = row["default"]["macs"]
            row["ncnn"] = ncnn_counts(name, row["default"]["artifact"], macs, work)
            row["ratio"] = row["default"]["instructions"] / row["ncnn"]["instructions"]
            rows.append(row)
            print(f"{name}: tvmshuffle {row['default']['instructions']:,} instructions, ncnn "
                  f"{row['ncnn']['instructions']:,} (ratio {row['ratio']:.2f})",
                  file=sys.stderr, flush=True)

    table = Table(title=f"dynamic instructions of one inference, emulated "
                        f"{insncount.EMULATED_CPU}, 1 thread, {args.size} (millions)")
    for column in ("model", "MMACs", "tvmshuffle default", "FMA lane use (grouped 1x1)",
                   *(["tvmshuffle unscheduled"] if "unscheduled" in builds else []),
                   "ncnn", "ncnn FMA lane use", "ratio tvmshuffle/ncnn", "max abs err"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for row in rows:
        d, n = row["default"], row["ncnn"]
        table.add_row(
            row["model"], f"{d['macs'] / 1e6:.1f}", f"{d['instructions'] / 1e6:.1f}",
            f"{pct(d['fma_lane_utilisation'])} ({pct(d['grouped_1x1_fma_lane_utilisation'])})",
            *([f"{row['unscheduled']['instructions'] / 1e6:.1f}"]
              if "unscheduled" in builds else []),
            f"{n['instructions'] / 1e6:.1f}", pct(n["fma_lane_utilisation"]),
            f"{row['ratio']:.2f}",
            f"{max(d['max_abs_err'], n['max_abs_err']):.1e}")
    Console(width=200).print(table)
    print("instruction counts ignore caches and memory; FMA lane use = MACs / vector FMA lanes "
          "executed (a MAC done another way, or an algorithm doing fewer, can lift it past 100%)")
    if args.json:
        args.json.write_text(json.dumps({
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "emulator": insncount.emulator(), "size": args.size, "builds": builds,
            "rows": rows}, indent=2, default=str))


if __name__ == "__main__":
    main()
