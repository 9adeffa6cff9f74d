"""Load an artifact, run it, check its numerics and time it; time the peers the same way.

Measures and returns data; never prints (report.py formats).
"""

from __future__ import annotations

import json
import struct
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import tvm
from tvm import relax

from .errors import BadInputError, NumericsError, first_line
from .export import MANIFEST_NAME, sha256
from .target import TargetConfig

DEFAULT_TOLERANCE = 1e-4


@dataclass(frozen=True)
class Latency:
    """Per-inference latency over ``samples`` timed repeats, in milliseconds."""

    median_ms: float
    p90_ms: float
    min_ms: float
    mean_ms: float
    samples: int

    @classmethod
    def from_seconds(cls, seconds: list[float]) -> "Latency":
        ms = sorted(s * 1e3 for s in seconds)
        p90 = ms[min(len(ms) - 1, int(round(0.9 * (len(ms) - 1))))]
        return cls(statistics.median(ms), p90, ms[0], statistics.fmean(ms), len(ms))

    def as_json(self) -> dict:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class Artifact:
    path: Path
    manifest: dict
    input: np.ndarray
    expected: tuple[np.ndarray, ...]

    @property
    def library(self) -> Path:
        return self.path / self.manifest["library"]["file"]

    @property
    def target(self) -> TargetConfig:
        return TargetConfig.from_json(self.manifest["target"])


@dataclass(frozen=True)
class RunResult:
    max_abs_err: float
    latency: Latency
    threads: int


def load_artifact(out_dir: Path) -> Artifact:
    """Read an artifact directory written by ``export.write_artifact``; check its library."""
    manifest_path = out_dir / MANIFEST_NAME
    if not manifest_path.is_file():
        raise BadInputError(f"{out_dir} is not a tvmshuffle artifact: no {MANIFEST_NAME} "
                            "(make one with `tvmshuffle compile`)")
    try:
        manifest = json.loads(manifest_path.read_text())
        library = out_dir / manifest["library"]["file"]
        reference = np.load(out_dir / manifest["reference"]["file"])
        expected = tuple(reference[f"output_{i}"] for i in range(len(manifest["outputs"])))
        x = reference["input"]
    except Exception as err:  # noqa: BLE001 - a damaged .npz fails in zipfile, pickle, numpy
        raise BadInputError(f"{out_dir}: damaged artifact ({type(err).__name__}: "
                            f"{first_line(err)})") from err
    if not library.is_file() or sha256(library) != manifest["library"]["sha256"]:
        raise BadInputError(f"{library} is missing or does not match the sha256 in "
                            f"{manifest_path}: recompile")
    damage = damaged_library(library)
    if damage is not None:
        raise BadInputError(f"{library} is damaged ({damage}) though its sha256 matches "
                            f"{manifest_path}: recompile")
    declared = manifest.get("input", {})
    if (list(declared.get("shape", [])) != list(x.shape)
            or str(declared.get("dtype")) != str(x.dtype)):
        raise BadInputError(f"{manifest_path} says the input is {declared.get('shape')} "
                            f"{declared.get('dtype')}, but the library was built for "
                            f"{list(x.shape)} {x.dtype}: the manifest was edited; recompile")
    return Artifact(out_dir, manifest, x, expected)


def damaged_library(path: Path) -> str | None:
    """Why ``path`` cannot be a whole 64-bit shared library, or None. Checks the ELF header and
    that the program and section header tables and every loaded segment lie within the file:
    loading a cut library maps pages past its end, and the process dies of SIGBUS with no
    word (seen: a truncated .so whose manifest sha256 was updated)."""
    data = path.read_bytes()
    if len(data) < 64 or data[:4] != b"\x7fELF":
        return "not an ELF file"
    if data[4] != 2 or data[5] != 1:
        return "not a 64-bit little-endian ELF file"
    (e_type, _machine, _version, _entry, phoff, shoff, _flags, _ehsize, phentsize, phnum,
     shentsize, shnum, _shstrndx) = struct.unpack_from("<HHIQQQIHHHHHH", data, 16)
    if e_type != 3:  # ET_DYN
        return "not a shared library"
    if phoff + phnum * phentsize > len(data) or phentsize < 56:
        return "its program headers run past the end of the file"
    if shoff and shoff + shnum * shentsize > len(data):
        return f"cut: its section headers end past its {len(data)} bytes"
    for i in range(phnum):
        p_type, _, offset, _, _, filesz, _, _ = struct.unpack_from("<IIQQQQQQ", data,
                                                                     phoff + i * phentsize)
        if p_type == 1 and offset + filesz > len(data):  # PT_LOAD
            return f"cut: a loaded segment ends at byte {offset + filesz} of {len(data)}"
    return None


def set_threads(threads: int) -> None:
    """Size TVM's thread pool (mode 1: plain workers, no little-core pinning)."""
    tvm.get_global_func("runtime.config_threadpool")(1, threads)


def max_abs_error(outputs: list[np.ndarray], expected: tuple[np.ndarray, ...]) -> float:
    if len(outputs) != len(expected):
        raise NumericsError(f"module returned {len(outputs)} outputs, reference has "
                            f"{len(expected)}")
    worst = 0.0
    for got, want in zip(outputs, expected):
        if got.shape != want.shape:
            raise NumericsError(f"output shape {got.shape} differs from reference {want.shape}")
        worst = max(worst, float(np.max(np.abs(got.astype(np.float64) - want))))
    return worst


def flatten_outputs(value) -> list[np.ndarray]:
    if isinstance(value, (tuple, list)) or type(value).__name__ == "Array":
        return [v for item in value for v in flatten_outputs(item)]
    return [value.numpy()]


def _host_vm(artifact: Artifact, threads: int) -> tuple[relax.VirtualMachine, tvm.runtime.Tensor]:
    """The artifact's library in a VM on this CPU's ``threads``, and its input on the CPU."""
    set_threads(threads)
    dev = tvm.cpu()
    vm = relax.VirtualMachine(tvm.runtime.load_module(str(artifact.library)), dev)
    return vm, tvm.runtime.tensor(artifact.input, dev)


def run_local(artifact: Artifact, threads: int = 1, repeat: int = 30, number: int = 1,
              tolerance: float = DEFAULT_TOLERANCE) -> RunResult:
    """Run the artifact in this process: check it against the reference, then time it.

    A wrong result raises NumericsError before any latency is measured.
    """
    if not artifact.target.runs_on_host:
        raise BadInputError(f"{artifact.path} was built for {artifact.target.triple}, which "
                            "cannot run on this machine: use `tvmshuffle deploy` with a device")
    vm, x = _host_vm(artifact, threads)
    err = max_abs_error(flatten_outputs(vm["main"](x)), artifact.expected)
    if not err <= tolerance:
        raise NumericsError(f"max abs error {err:.3g} exceeds tolerance {tolerance:g}: "
                            "the compiled module disagrees with the reference")
    timer = vm.time_evaluator("main", tvm.cpu(), number=number, repeat=repeat)
    # one untimed call first: page in weights, warm caches
    timer(x)
    return RunResult(err, Latency.from_seconds(list(timer(x).results)), threads)


def vm_runner(artifact: Artifact, threads: int = 1) -> Callable[[], object]:
    """One inference of a host artifact per call, from Python like the peers' runners."""
    vm, x = _host_vm(artifact, threads)
    main = vm["main"]
    return lambda: main(x)


def time_interleaved(fns: dict[str, Callable[[], object]], rounds: int = 10,
                     calls: int = 5) -> dict[str, Latency]:
    """Latency of each callable, timed in rounds: per round each callable in turn (the order
    rotating) makes one untimed call, which brings its weights back into the caches the others
    evicted, then ``calls`` timed ones. A burst of load on a shared machine then slows every
    engine alike instead of whichever happened to be timed at that moment."""
    names = list(fns)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(rounds):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            fn = fns[name]
            fn()
            for _ in range(calls):
                start = time.perf_counter()
                fn()
                samples[name].append(time.perf_counter() - start)
    return {name: Latency.from_seconds(s) for name, s in samples.items()}


def time_callable(fn: Callable[[], object], repeat: int = 30, number: int = 1,
                  warmup: int = 3) -> Latency:
    """Median/p90/min of ``fn`` per call, for the peers (PyTorch, ONNX Runtime)."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(number):
            fn()
        samples.append((time.perf_counter() - start) / number)
    return Latency.from_seconds(samples)


def torch_runner(module, x: np.ndarray, threads: int) -> Callable[[], object]:
    import torch

    torch.set_num_threads(threads)
    tensor = torch.from_numpy(x)

    def run():
        with torch.inference_mode():
            return module(tensor)

    return run


def onnxruntime_runner(path: Path, input_name: str, x: np.ndarray,
                       threads: int) -> Callable[[], object]:
    from .frontends import onnxruntime_session

    session = onnxruntime_session(path, threads)
    return lambda: session.run(None, {input_name: x})


@dataclass(frozen=True)
class KernelTime:
    name: str
    calls: int
    total_ms: float  # per inference, all calls


class KernelTimer:
    """Times every kernel call of a Relax VM (``vm.set_instrument``; the Relax VM has no
    profiler): each call of the timer runs one inference and returns the seconds each kernel
    took in it, all its calls together (the VM's own builtins left out)."""

    def __init__(self, vm: relax.VirtualMachine):
        self._main = vm["main"]
        self._times: dict[str, float] = {}
        self._started: list[float] = []
        self.calls: dict[str, int] = {}  # per inference, counted in the first
        self._counting = True
        vm.set_instrument(self._instrument)

    def _instrument(self, func, name, before_run, ret_value, *args):
        if before_run:
            self._started.append(time.perf_counter())
            if self._counting:
                self.calls[name] = self.calls.get(name, 0) + 1
        else:
            elapsed = time.perf_counter() - self._started.pop()
            self._times[name] = self._times.get(name, 0.0) + elapsed
        return 0  # VMInstrumentReturnKind.NO_OP

    def __call__(self, *inputs) -> dict[str, float]:
        self._times = {}
        self._main(*inputs)
        self._counting = False
        return {name: secs for name, secs in self._times.items()
                if not name.startswith("vm.builtin")}


def profile_kernels(artifact: Artifact, threads: int = 1, runs: int = 10) -> list[KernelTime]:
    """Per-inference milliseconds of each kernel of the artifact's VM, median over ``runs``
    inferences, heaviest first."""
    vm, x = _host_vm(artifact, threads)
    vm["main"](x)  # warm-up, uninstrumented
    timer = KernelTimer(vm)
    samples: dict[str, list[float]] = {}
    for _ in range(runs):
        for name, secs in timer(x).items():
            samples.setdefault(name, []).append(secs * 1e3)
    kernels = [KernelTime(name, timer.calls[name], statistics.median(values))
               for name, values in samples.items()]
    return sorted(kernels, key=lambda k: -k.total_ms)
