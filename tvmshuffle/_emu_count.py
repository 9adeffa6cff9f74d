"""One inference of a library, counted: run by the emulated arm64 python (rpc/emu_arm64.sh)
under the instruction counter plugin (rpc/insn_count.c), not imported by tvmshuffle itself.

    python _emu_count.py LIBRARY INPUT.npy OUT_DIR

Loads LIBRARY into a Relax VM on one thread, runs it once uncounted (first-call work: the
VM's allocations, pages of weights), then marks the counting window around a second run with
the syscall the plugin watches for, and writes into OUT_DIR the outputs of the counted run
(output_I.npy) and where the library was mapped (maps.json: start, end, file offset of each
mapping of LIBRARY, from the emulator's /proc/self/maps).
"""

import json
import os
import sys

import numpy as np
import tvm
from _emu_mark import MARK_START, MARK_STOP, mark  # beside this script, run as a file
from tvm import relax


def outputs(value) -> list:
    if isinstance(value, (tuple, list)) or type(value).__name__ == "Array":
        return [v for item in value for v in outputs(item)]
    return [value.numpy()]


def main(library: str, input_path: str, out_dir: str) -> None:
    tvm.get_global_func("runtime.config_threadpool")(1, 1)
    dev = tvm.cpu()
    vm = relax.VirtualMachine(tvm.runtime.load_module(library), dev)
    vm.set_input("main", tvm.runtime.tensor(np.load(input_path), dev))
    vm.invoke_stateful("main")
    mark(MARK_START)
    vm.invoke_stateful("main")
    mark(MARK_STOP)
    for i, array in enumerate(outputs(vm.get_outputs("main"))):
        np.save(os.path.join(out_dir, f"output_{i}.npy"), array)
    real = os.path.realpath(library)
    maps = []
    with open("/proc/self/maps") as lines:
        for line in lines:
            fields = line.split()
            if len(fields) >= 6 and os.path.realpath(fields[5]) == real:
                start, end = (int(x, 16) for x in fields[0].split("-"))
                maps.append({"start": start, "end": end, "offset": int(fields[2], 16),
                             "perms": fields[1]})
    with open(os.path.join(out_dir, "maps.json"), "w") as out:
        json.dump(maps, out)


if __name__ == "__main__":
    main(*sys.argv[1:4])
