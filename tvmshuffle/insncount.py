"""What an aarch64 library executes, counted on the emulated arm64 device: the measure of ARM
code quality that needs no phone (`tvmshuffle deploy OUT --count-instructions`).

One inference runs in the emulated device's python (``rpc/emu_arm64.sh``, qemu-user) under
the instruction counter plugin (``rpc/insn_count.c``), which counts how often each guest
instruction ran inside a window the run marks (``_emu_count.py``: a warm-up inference first,
then the counted one). Here the counts are merged by address, attributed to the library's
functions (its ELF symbols, through where the emulator mapped it) and so to its kernels
(``fused_conv2d_..._compute_``, the unnamed parallel-loop body LLVM emits after it, and its
``__tvm_ffi_`` wrapper are one kernel), and each instruction is classed by its A64 encoding:

* vector FMA: ``fmla`` / ``fmls`` on vectors (by vector or by element), with the lanes each
  does (4 on a 128-bit fp32 vector, 2 on a 64-bit one);
* SIMD / FP other: every other Advanced SIMD and floating-point data-processing instruction
  (scalar floating point included);
* loads and stores (SIMD and general registers alike), branches, and scalar other.

FMA lane utilisation is the kernel's multiply-adds (the manifest's ``kernel_macs``) over the
FMA lanes executed: 100% means every lane of every vector FMA did a multiply-add the network
needs. Instruction counts ignore caches and memory: a kernel that executes few instructions
can still wait on memory on a phone. Everything the counted inference executed outside the
library (the TVM runtime's VM, libc) is counted apart.
"""

from __future__ import annotations

import bisect
import json
import os
import re
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from . import bench
from .errors import BadInputError, DeviceError, NumericsError

GUEST_SCRIPT = Path(__file__).with_name("_emu_count.py")
PLUGIN = "plugins/libinsncount.so"
OUTSIDE = "(outside the library: TVM runtime, libc)"
CLASSES = ("vector_fma", "simd_fp_other", "loads", "stores", "branches", "scalar_other")
TIMEOUT_S = 1800
# ARMv8.0-A with NEON, the ISA of the Snapdragon 820 class (Kryo): qemu's default core ("max")
# also has SVE, fp16 and dot-product instructions, which an engine may pick at run time
EMULATED_CPU = "cortex-a72"


def emu_root() -> Path:
    """Where ``rpc/emu_arm64.sh setup`` put the emulated device (its ``TVMSHUFFLE_EMU_ROOT``)."""
    return Path(os.environ.get("TVMSHUFFLE_EMU_ROOT")
                or Path.home() / ".cache" / "tvmshuffle" / "emu-arm64")


# ------------------------------------------------------------------------------ A64 encodings

def classify(word: int) -> tuple[str, int]:
    """(class, FMA lanes) of one A64 instruction word."""
    # FMLA / FMLS (vector): 0 Q 0 01110 0 sz 1 Rm 11001 1 Rn Rd, bit 23 telling FMLS
    # FMLA / FMLS (by element): 0 Q 0 01111 1 sz L M Rm 0 x 0 1 H 0 Rn Rd, bit 14 telling FMLS
    if (word & 0xBF20FC00) == 0x0E20CC00 or (word & 0xBF80B400) == 0x0F801000:
        q, double = (word >> 30) & 1, (word >> 22) & 1
        return "vector_fma", (2 if q else 1) * (1 if double else 2)
    if (word >> 25) & 0x7 == 0x7:  # op0 x111: Advanced SIMD and floating point
        return "simd_fp_other", 0
    if (word >> 25) & 0x5 == 0x4:  # op0 x1x0: loads and stores
        literal = (word >> 27) & 0x7 == 0x3 and not (word >> 24) & 1
        return ("loads" if literal or (word >> 22) & 1 else "stores"), 0
    if (word >> 26) & 0x7 == 0x5:  # op0 101x: branches, exceptions, system
        return "branches", 0
    return "scalar_other", 0


# ------------------------------------------------------------------------------------ results

@dataclass
class KernelCount:
    name: str
    macs: int = 0  # per inference, from the manifest
    instructions: int = 0
    vector_fma: int = 0
    simd_fp_other: int = 0
    loads: int = 0
    stores: int = 0
    branches: int = 0
    scalar_other: int = 0
    fma_lanes: int = 0

    @property
    def lane_utilisation(self) -> float | None:
        """Multiply-adds over FMA lanes executed (None without either)."""
        return self.macs / self.fma_lanes if self.macs and self.fma_lanes else None

    @property
    def per_mac(self) -> float | None:
        return self.instructions / self.macs if self.macs else None

    def add(self, word: int, count: int) -> None:
        kind, lanes = classify(word)
        self.instructions += count
        setattr(self, kind, getattr(self, kind) + count)
        self.fma_lanes += lanes * count

    @classmethod
    def total(cls, name: str, kernels) -> "KernelCount":
        """``kernels`` together, under ``name``."""
        total = cls(name)
        for kernel in kernels:
            for field_name in ("macs", "instructions", *CLASSES, "fma_lanes"):
                setattr(total, field_name, getattr(total, field_name) + getattr(kernel, field_name))
        return total

    def as_json(self) -> dict:
        data = asdict(self)
        util, per_mac = self.lane_utilisation, self.per_mac
        data["fma_lane_utilisation"] = None if util is None else round(util, 4)
        data["instructions_per_mac"] = None if per_mac is None else round(per_mac, 4)
        return data


@dataclass
class Counted:
    model: str
    library: str
    triple: str
    kernels: list[KernelCount]  # the library's, most instructions first
    outside: KernelCount  # executed in the window outside the library
    max_abs_err: float
    seconds: float  # wall time of the counting run (the emulator's, not a phone's)
    emulator: dict = field(default_factory=dict)

    @property
    def network(self) -> KernelCount:
        """The library's kernels together."""
        return KernelCount.total("network", self.kernels)

    @property
    def all_instructions(self) -> int:
        """Everything the counted inference executed: the library and outside it."""
        return self.network.instructions + self.outside.instructions

    def as_json(self) -> dict:
        return {"model": self.model, "library": self.library, "triple": self.triple,
                "network": self.network.as_json(), "outside_library": self.outside.as_json(),
                "all_instructions": self.all_instructions,
                "kernels": [k.as_json() for k in self.kernels],
                "max_abs_err": self.max_abs_err, "counting_s": round(self.seconds, 1),
                "emulator": self.emulator,
                "caveat": "dynamic instruction counts on an emulator: caches and memory "
                          "are not modelled"}


# ----------------------------------------------------------------------------------- counting

def check_countable(artifact: bench.Artifact) -> Path:
    """The emulated device's root, after refusing what cannot be counted here."""
    triple = artifact.target.triple
    if not triple.startswith("aarch64"):
        raise BadInputError(f"{artifact.library} is built for {triple}: instructions are counted "
                            "for aarch64 libraries (--target arm or arm-linux) on the emulated "
                            "arm64 device")
    root = emu_root()
    if not (root / "bin" / "python").is_file():
        raise BadInputError(f"the emulated arm64 device is not set up in {root}: run "
                            "rpc/emu_arm64.sh setup")
    if not (root / PLUGIN).is_file():
        raise BadInputError(f"the instruction counter is not built in {root / PLUGIN}: run "
                            "rpc/emu_arm64.sh counter (it needs gcc, qemu-user and Debian's "
                            "source package of qemu)")
    return root


def count(artifact: bench.Artifact, tolerance: float = bench.DEFAULT_TOLERANCE) -> Counted:
    """One inference of ``artifact`` on the emulated arm64 device, counted per kernel; its
    output checked against the reference first (NumericsError: no counts for a wrong run)."""
    check_countable(artifact)
    with tempfile.TemporaryDirectory(prefix="tvmshuffle-count-") as tmp:
        work = Path(tmp)
        np.save(work / "input.npy", artifact.input)
        start = time.perf_counter()
        counts = counted_run([str(GUEST_SCRIPT), str(artifact.library.resolve()),
                              str(work / "input.npy"), str(work)], work)
        seconds = time.perf_counter() - start
        outputs = [np.load(work / f"output_{i}.npy") for i in range(len(artifact.expected))]
        err = bench.max_abs_error(outputs, artifact.expected)
        if not err <= tolerance:
            raise NumericsError(f"max abs error {err:.3g} on the emulated device exceeds "
                                f"tolerance {tolerance:g}: no counts for a wrong result")
        maps = json.loads((work / "maps.json").read_text())
        kernels, outside = attribute(counts, maps, artifact.library,
                                     artifact.manifest.get("kernel_macs", {}))
    return Counted(artifact.manifest["model"], str(artifact.library), artifact.target.triple,
                   kernels, outside, err, seconds, emulator())


def emulator() -> dict:
    return {"qemu": _qemu_version(), "cpu": EMULATED_CPU, "threads": 1}


def counted_run(args: list[str], work: Path) -> dict[int, tuple[int, int]]:
    """Run the emulated device's python with ``args`` under the counter (one thread, the
    EMULATED_CPU core), the counts file in ``work``, and return the counts of the window the
    run marked: {address: (encoding, executions)}."""
    root = emu_root()
    counts_file = work / "counts.txt"
    counts_file.unlink(missing_ok=True)
    env = {**os.environ, "TVM_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
           "QEMU_CPU": EMULATED_CPU,
           "TVMSHUFFLE_EMU_PLUGIN": f"{root / PLUGIN},out={counts_file}"}
    try:
        proc = subprocess.run([str(root / "bin" / "python"), *args], env=env,
                              capture_output=True, text=True, timeout=TIMEOUT_S,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as err:
        raise DeviceError(f"the counted run on the emulated device did not end within "
                          f"{TIMEOUT_S} s") from err
    if proc.returncode != 0 or not counts_file.is_file():
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise DeviceError(f"the counted run on the emulated device failed "
                          f"(exit {proc.returncode}): {last}")
    return read_counts(counts_file)


def read_counts(path: Path) -> dict[int, tuple[int, int]]:
    """{address: (encoding, executions)} from the plugin's lines (a block translated twice
    appears twice: added up)."""
    merged: dict[int, list[int]] = {}
    with open(path) as lines:
        for line in lines:
            address, word, times = line.split()
            entry = merged.setdefault(int(address, 16), [int(word, 16), 0])
            entry[1] += int(times)
    return {address: (word, times) for address, (word, times) in merged.items()}


_WRAPPER = re.compile(r"^__tvm_ffi_")
_BODY = re.compile(r"(_prepacked)?(_compute_.*)?$")


def kernel_of(symbol: str) -> str:
    """The kernel a function of a TVM library belongs to: its FFI wrapper and its body
    (``<kernel>[_prepacked]_compute_``) are the kernel's."""
    return _BODY.sub("", _WRAPPER.sub("", symbol)) or symbol


def attribute(counts: dict[int, tuple[int, int]], maps: list[dict], library: Path,
              kernel_macs: dict[str, int]) -> tuple[list[KernelCount], KernelCount]:
    """Per kernel of ``library`` (mapped at ``maps`` in the run), and outside it."""
    from elftools.elf.elffile import ELFFile

    with open(library, "rb") as handle:
        elf = ELFFile(handle)
        loads = [(seg["p_offset"], seg["p_filesz"], seg["p_vaddr"])
                 for seg in elf.iter_segments() if seg["p_type"] == "PT_LOAD"]
        functions = []
        for name in (".symtab", ".dynsym"):
            table = elf.get_section_by_name(name)
            if table is not None:
                functions += [(sym["st_value"], sym["st_size"], sym.name)
                              for sym in table.iter_symbols()
                              if sym["st_info"]["type"] == "STT_FUNC" and sym["st_size"]]
    functions.sort()
    starts = [f[0] for f in functions]
    executable = [m for m in maps if "x" in m["perms"]]
    kernels: dict[str, KernelCount] = {}
    outside = KernelCount(OUTSIDE)
    for address, (word, times) in counts.items():
        owner = outside
        for mapping in executable:
            if mapping["start"] <= address < mapping["end"]:
                offset = address - mapping["start"] + mapping["offset"]
                vaddr = next((offset - off + va for off, size, va in loads
                              if off <= offset < off + size), None)
                # code with no symbol of its own is the function's before it: LLVM emits a
                # parallel loop's body (a private function) right after the kernel launching it
                i = bisect.bisect_right(starts, vaddr) - 1 if vaddr is not None else -1
                name = kernel_of(functions[i][2]) if i >= 0 else "(library, no symbol)"
                owner = kernels.setdefault(name, KernelCount(name, kernel_macs.get(name, 0)))
                break
        owner.add(word, times)
    return sorted(kernels.values(), key=lambda k: -k.instructions), outside


def _qemu_version() -> str:
    try:
        out = subprocess.run(["qemu-aarch64", "--version"], capture_output=True, text=True,
                             timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return (out.splitlines() or ["unknown"])[0]


# ------------------------------------------------------------------------------------- output

def table(counted: Counted, console, limit: int = 0) -> None:
    """The per-kernel table and the network's totals (``limit``: heaviest kernels only)."""
    from rich.table import Table

    def pct(value):
        return "-" if value is None else f"{100 * value:.0f}%"

    def ratio(value):
        return "-" if value is None else f"{value:.2f}"

    grid = Table(title=f"instructions of one inference, emulated {counted.triple} "
                       f"(counted in {counted.seconds:.0f} s)")
    for name in ("kernel", "MACs", "instructions", "vector FMAs", "FMA lane use",
                 "instr/MAC", "loads", "stores"):
        grid.add_column(name, justify="left" if name == "kernel" else "right")
    network = counted.network
    rows = counted.kernels[:limit] if limit else counted.kernels
    for k in [*rows, network, counted.outside]:
        grid.add_row(k.name, f"{k.macs:,}" if k.macs else "-", f"{k.instructions:,}",
                     f"{k.vector_fma:,}", pct(k.lane_utilisation), ratio(k.per_mac),
                     f"{k.loads:,}", f"{k.stores:,}",
                     style="bold" if k is network else None)
    console.print(grid)
    console.print("instruction counts ignore caches and memory: they say what the code "
                  "executes, not how long a phone takes; FMA lane use = MACs / (vector FMA "
                  "lanes executed)")

