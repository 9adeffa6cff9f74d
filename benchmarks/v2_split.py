"""What ShuffleNet v2's split, concat and shuffle cost: the network with the channel split pass,
without it, and with the shuffle deleted (concat and split kept: the lower bound), beside ONNX
Runtime and PyTorch, all timed interleaved in one process.

    python benchmarks/v2_split.py [--models shufflenet_v2_1.0x,shufflenet_v2_0.5x]
        [--builds unscheduled,default] [--threads 1] [--repeat 50] [--json FILE]

Each tvmshuffle variant is built once per ``--builds`` entry: TVM's unscheduled loops, the
default schedules (no database), or a database directory. Numerics of every build are checked
against its own PyTorch reference (the shuffle-free network computes something else). The
kernels that do no arithmetic are counted from each build's manifest.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import tempfile
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from host_vs_peers import build_config  # benchmarks/ is the script's folder
from tvmshuffle import bench, export, frontends, models

VARIANTS = ("split pass (tvmshuffle)", "split pass off", "shuffle deleted (lower bound)")


def measure(name: str, builds: list[str], threads: int, repeat: int, work: Path) -> dict:
    scale = float(name.rsplit("_", 1)[1].rstrip("x"))
    bound = models.ShuffleNetV2(scale, shuffle=False)
    bound.load_state_dict(models.build(name).state_dict())  # same weights, shuffles removed
    bound_path = work / f"{name}-no-shuffle.pt2"
    torch.export.save(torch.export.export(bound.eval(), (torch.zeros(1, 3, 224, 224),)),
                      str(bound_path))
    imported = frontends.load(frontends.ModelSpec(name))
    cases = {VARIANTS[0]: (imported, True), VARIANTS[1]: (imported, False),
             VARIANTS[2]: (frontends.load(frontends.ModelSpec(str(bound_path))), True)}
    runners, info = {}, {}
    for build in builds:
        for label, (model, fuse) in cases.items():
            key = f"{label} / {build}"
            out = work / f"{name}-{len(runners)}"
            manifest = export.build_artifact(
                model, build_config(build, threads, fuse_shuffle=fuse), out)
            artifact = bench.load_artifact(out)
            checked = bench.run_local(artifact, threads=threads, repeat=3)
            copies = manifest["copy_kernels"]
            info[key] = {"max_abs_err": checked.max_abs_err, "copy_kernels": len(copies),
                         "copy_calls": sum(copies.values())}
            runners[key] = bench.vm_runner(artifact, threads)
    module = models.build(name)
    x = artifact.input  # the same fixed input in every build
    runners["torch"] = bench.torch_runner(module, x, threads)
    onnx_path = frontends.export_onnx(module, imported.input_shape, work / f"{name}.onnx")
    runners["onnxruntime"] = bench.onnxruntime_runner(onnx_path, "input", x, threads)
    latency = bench.time_interleaved(runners, rounds=max(1, repeat // 5), calls=5)
    return {"model": name, "builds": info,
            "latency_ms": {key: lat.as_json() for key, lat in latency.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="shufflenet_v2_1.0x,shufflenet_v2_0.5x")
    parser.add_argument("--builds", default="unscheduled,default")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=50)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    builds = args.builds.split(",")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            results.append(measure(name, builds, args.threads, args.repeat, Path(tmp)))
    console = Console(width=150)
    for result in results:
        ms = {key: lat["median_ms"] for key, lat in result["latency_ms"].items()}
        table = Table(title=f"{result['model']}, host, {args.threads} thread(s), 224x224, "
                            "median ms (ratio to the lower bound of the same build; to ORT)")
        for column in ("variant / build", "copy kernels (calls)", "median ms", "/ bound",
                       "/ ORT", "max abs err"):
            table.add_column(column, justify="left" if column.startswith("variant") else "right")
        for key, value in ms.items():
            build = key.split(" / ")[-1]
            bound = ms.get(f"{VARIANTS[2]} / {build}")
            meta = result["builds"].get(key)
            table.add_row(key, f"{meta['copy_kernels']} ({meta['copy_calls']})" if meta else "-",
                          f"{value:.2f}", f"{value / bound:.3f}x" if meta else "-",
                          f"{value / ms['onnxruntime']:.2f}x",
                          f"{meta['max_abs_err']:.1e}" if meta else "-")
        console.print(table)
    if args.json:
        args.json.write_text(json.dumps({
            "date": datetime.date.today().isoformat(), "cpu": platform.processor() or None,
            "threads": args.threads, "builds": builds, "results": results}, indent=2))


if __name__ == "__main__":
    main()
