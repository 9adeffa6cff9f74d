"""Where the time goes: every kernel of a compiled model against this CPU's roofline.

Two ceilings for one core: compute, the nominal fp32 peak (the clock /proc/cpuinfo reports x
FLOPs per cycle: 64 with AVX-512 on two full-width FMA pipes as in Zen 5, 32 with AVX2 FMA;
``--flops-per-cycle`` to override; PyTorch's 1-thread matmul is printed beside it, but MKL runs
its AVX2 path on AMD CPUs, so it is no ceiling there) and memory bandwidth (a copy of a 512 MB
array: read + write bytes per second). Then compiles the model (with a tuning database
if given), times every kernel call (``vm.set_instrument``), and for each kernel reports FLOPs
(TVM's ``estimate_tir_flops`` of its PrimFunc), bytes (its buffers, each counted once: a lower
bound of its traffic), arithmetic intensity, attained GFLOP/s, the roofline bound
min(peak, intensity x bandwidth) and the fraction of that bound attained.

    python benchmarks/roofline.py [--model shufflenet_v1_g3_1.0x] [--size 224x224]
        [--db schedules/host-znver5] [--top 20] [--flops-per-cycle N] [--json]
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import tvm
from rich.console import Console
from rich.table import Table

from tvmshuffle import bench, export, frontends, pipeline, target


def compute_peak_gflops(n: int = 1024, repeat: int = 10) -> float:
    import torch

    torch.set_num_threads(1)
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n ** 3 / best_seconds(lambda: torch.mm(a, b), repeat) / 1e9


def best_seconds(fn, repeat: int) -> float:
    """The fastest of ``repeat`` timed calls, after one untimed call."""
    fn()
    best = math.inf
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def nominal_peak_gflops(flops_per_cycle: int | None) -> tuple[float, int, float]:
    """(GFLOP/s, FLOPs per cycle, GHz) from /proc/cpuinfo's clock and vector flags."""
    text = Path("/proc/cpuinfo").read_text()
    mhz = max(float(line.split(":")[1]) for line in text.splitlines()
              if line.startswith("cpu MHz"))
    flags = next(line for line in text.splitlines() if line.startswith("flags")).split()
    if flops_per_cycle is None:
        flops_per_cycle = 64 if "avx512f" in flags else 32 if "fma" in flags else 8
    return mhz / 1e3 * flops_per_cycle, flops_per_cycle, mhz / 1e3


def bandwidth_gbs(megabytes: int = 512, repeat: int = 5) -> float:
    src = np.ones(megabytes * (1 << 20) // 4, dtype=np.float32)
    dst = np.empty_like(src)
    return 2 * src.nbytes / best_seconds(lambda: np.copyto(dst, src), repeat) / 1e9


def kernel_costs(mod: tvm.IRModule) -> dict[str, tuple[float, int]]:
    """PrimFunc name -> (FLOPs, bytes of its buffers)."""
    from tvm.s_tir.analysis import estimate_tir_flops

    costs = {}
    for gvar, func in mod.functions.items():
        if type(func).__name__ != "PrimFunc":
            continue
        nbytes = 0
        for param in func.params:  # in TVM 0.27 a PrimFunc's params are its buffers
            shape = getattr(param, "shape", None)
            if shape is not None:
                elems = math.prod(int(d) for d in shape)
                nbytes += elems * tvm.runtime.DataType(str(param.dtype)).bits // 8
        try:
            flops = float(estimate_tir_flops(tvm.IRModule({gvar: func})))
        except Exception:  # kernels with no arithmetic TVM can count
            flops = 0.0
        costs[gvar.name_hint] = (flops, nbytes)
    return costs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="shufflenet_v1_g3_1.0x")
    parser.add_argument("--size", default="224x224")
    parser.add_argument("--db", type=Path)
    parser.add_argument("--top", type=int, default=20)
    parser.add_argument("--flops-per-cycle", type=int)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    peak, per_cycle, ghz = nominal_peak_gflops(args.flops_per_cycle)
    blas, bw = compute_peak_gflops(), bandwidth_gbs()
    imported = frontends.load(frontends.ModelSpec(args.model,
                                                  frontends.parse_input_size(args.size)))
    config = export.CompileConfig(target.resolve("host"), db=args.db)
    with tempfile.TemporaryDirectory() as tmp:
        compiled = export.compile_module(pipeline.optimize(imported.mod), config)
        from tvmshuffle import flops as flop_count

        export.write_artifact(Path(tmp), compiled, imported, config,
                              flop_count.count(imported.mod))
        artifact = bench.load_artifact(Path(tmp))
        total_ms = bench.run_local(artifact, repeat=30).latency.median_ms
        kernels = bench.profile_kernels(artifact, runs=20)
    costs = kernel_costs(compiled.final_mod)
    # where each kernel's schedule came from: a record, the default (defaults.py), TVM's loops
    sources = compiled.schedules
    rows = []
    for k in kernels:
        flops, nbytes = costs.get(k.name, (0.0, 0))
        flops *= k.calls
        nbytes *= k.calls
        seconds = k.total_ms / 1e3
        intensity = flops / nbytes if nbytes else 0.0
        bound = min(peak, intensity * bw) if nbytes else peak
        attained = flops / seconds / 1e9 if seconds else 0.0
        rows.append({"kernel": k.name, "calls": k.calls, "ms": round(k.total_ms, 4),
                     "share": k.total_ms / sum(x.total_ms for x in kernels),
                     "mflops": flops / 1e6, "mbytes": nbytes / 1e6,
                     "intensity": intensity, "gflops": attained, "bound_gflops": bound,
                     "of_bound": attained / bound if bound else 0.0,
                     "schedule": sources.get(k.name, export.TVM_LOOPS)})
    data = {"model": args.model, "size": args.size, "db": str(args.db) if args.db else None,
            "compute_peak_gflops": peak, "flops_per_cycle": per_cycle, "ghz": ghz,
            "torch_matmul_gflops": blas, "bandwidth_gbs": bw, "total_ms": total_ms,
            "kernels": rows}
    if args.json:
        print(json.dumps(data, indent=2))
        return
    console = Console(width=170)
    console.print(f"{args.model} {args.size}: {total_ms:.3f} ms (median of 30). Ceilings, 1 "
                  f"core: compute {peak:.1f} GFLOP/s ({per_cycle} FLOP/cycle at {ghz:.2f} GHz; "
                  f"PyTorch fp32 matmul reaches {blas:.1f}), bandwidth {bw:.1f} GB/s (512 MB "
                  f"copy); ridge at {peak / bw:.1f} FLOP/byte")
    table = Table()
    for column in ("kernel", "calls", "ms", "share", "MFLOP", "MB", "FLOP/B", "GFLOP/s",
                   "bound", "of bound", "schedule"):
        table.add_column(column, justify="left" if column == "kernel" else "right")
    for r in rows[:args.top]:
        table.add_row(r["kernel"], str(r["calls"]), f"{r['ms']:.3f}", f"{100 * r['share']:.1f}%",
                      f"{r['mflops']:.1f}", f"{r['mbytes']:.2f}", f"{r['intensity']:.1f}",
                      f"{r['gflops']:.1f}", f"{r['bound_gflops']:.1f}",
                      f"{100 * r['of_bound']:.0f}%", r["schedule"])
    console.print(table)


if __name__ == "__main__":
    main()
