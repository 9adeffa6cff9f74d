"""What importing TVM's tensor intrinsics costs a `tune`, plainly and through
``tune.import_tensor_intrinsics``.

MetaSchedule's TuneContext imports ``tvm.s_tir.tensor_intrin`` once per process. Each run here
is a fresh Python that first imports what the CLI has loaded by then (torch, TVM, tvmshuffle's
stages), then times the one import; the two ways alternate, and the ratio of their medians is
printed.

    python benchmarks/intrin_import.py [--repeat 2]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys

from rich.console import Console
from rich.table import Table

SETUP = ("import time, torch, tvm\n"
         "from tvm.s_tir import meta_schedule\n"
         "from tvmshuffle import cli, tune\n"
         "start = time.perf_counter()\n")
WAYS = {
    "import tvm.s_tir.tensor_intrin": "import tvm.s_tir.tensor_intrin\n",
    "tune.import_tensor_intrinsics()": "tune.import_tensor_intrinsics()\n",
}


def _seconds(code: str) -> float:
    done = subprocess.run([sys.executable, "-c", SETUP + code +
                           "print(time.perf_counter() - start)"],
                          capture_output=True, text=True, check=True)
    return float(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    times: dict[str, list[float]] = {way: [] for way in WAYS}
    for _ in range(args.repeat):
        for way, code in WAYS.items():
            times[way].append(_seconds(code))
    table = Table(title="importing the tensor intrinsics, fresh process each time")
    for column in ("way", "seconds (each run)", "median"):
        table.add_column(column)
    for way, secs in times.items():
        table.add_row(way, ", ".join(f"{s:.1f}" for s in secs), f"{statistics.median(secs):.1f}")
    console = Console()
    console.print(table)
    plain, ours = (statistics.median(secs) for secs in times.values())
    console.print(f"ratio: {plain / ours:.1f}x less time through tune.import_tensor_intrinsics")


if __name__ == "__main__":
    main()
