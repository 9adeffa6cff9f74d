"""The paper's Table 8 on a device: FLOPs against measured latency, per model and size.

For each model and input size: FLOPs counted from the imported module; the model tuned first
when asked (records appended to the database, resuming what is there), compiled with the
database, deployed to a device from the tracker (the embedded host device by default), its
numerics checked there and its latency measured there; and the host peers (PyTorch eager, ONNX
Runtime) timed in this process on the same input with the same threads. Theoretical speedup
over a baseline is the FLOPs ratio, measured speedup the latency ratio, and efficiency their
quotient. Measures and returns data; report.py formats and writes it.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import bench, deploy, export, flops, frontends, models, records, tune
from .errors import BadInputError, TvmShuffleError
from .remote import TrackerConfig
from .target import TargetConfig

log = logging.getLogger(__name__)

DEFAULT_MODELS = ("shufflenet_v1_g3_0.5x", "shufflenet_v1_g3_1.0x", "shufflenet_v1_g3_2.0x",
                  "alexnet", "mobilenet_v1_1.0")
DEFAULT_SIZES = ((224, 224), (480, 640), (720, 1280))
BASELINES = ("torch", "onnxruntime")

# The paper's Table 8 (Snapdragon 820, single thread, ms), for reference lines only.
PAPER_SD820_MS = {
    "shufflenet_v1_g3_0.5x": (38, {(224, 224): 15.2, (480, 640): 87.4, (720, 1280): 260.1}),
    "shufflenet_v1_g3_1.0x": (140, {(224, 224): 37.8, (480, 640): 222.2, (720, 1280): 684.5}),
    "shufflenet_v1_g3_2.0x": (524, {(224, 224): 108.8, (480, 640): 617.0, (720, 1280): 1857.6}),
    "alexnet": (720, {(224, 224): 184.0, (480, 640): 1156.7, (720, 1280): 3633.9}),
    "mobilenet_v1_1.0": (569, {(224, 224): 110.0, (480, 640): 612.0, (720, 1280): 1879.2}),
}


# Timing of one cell stops after about this long (at least 3 runs): untuned AlexNet at
# 720x1280 takes seconds a run, and an emulated device far longer.
CELL_SECONDS = 10.0


@dataclass(frozen=True)
class CompareConfig:
    target: TargetConfig
    tracker: TrackerConfig | None  # where the devices are; None until run's connect gives it
    models: tuple[str, ...] = DEFAULT_MODELS
    sizes: tuple[tuple[int, int], ...] = DEFAULT_SIZES
    baselines: tuple[str, ...] = BASELINES
    db: Path | None = None
    threads: int = 1
    repeat: int = 10
    tune_trials: int | None = None  # tune each model and size first, this budget each
    devices: int = 1  # devices under the key, for tuning
    android_api: int = 24
    emulated: bool | None = None  # None: judged from the key
    # the shipped database when db is the user's: tuning starts from it, compile falls back on it
    other_dbs: tuple[Path, ...] = ()


@dataclass
class Cell:
    """One model at one size."""

    model: str
    size: tuple[int, int]
    macs: int
    latency_ms: float | None = None  # tvmshuffle .so on the device
    max_abs_err: float | None = None
    tuned_kernels: int = 0
    default_kernels: int = 0  # with the default schedule derived from the target (no record)
    measured_elsewhere: int = 0  # of the tuned kernels, those with another target's records
    kernels: int = 0
    peers_ms: dict | None = None  # engine -> ms on the host
    error: str | None = None  # why the cell is missing
    # on an emulated arm64 device, counted here (insncount): one inference's instructions
    instructions: int | None = None
    fma_lane_use: float | None = None


def parse_sizes(text: str) -> tuple[tuple[int, int], ...]:
    sizes = tuple(frontends.parse_input_size(part) for part in text.split(",") if part.strip())
    if not sizes:
        raise BadInputError(f"bad --sizes '{text}': expected e.g. 224x224,480x640")
    return sizes


def check_grid(names: tuple[str, ...], sizes: tuple[tuple[int, int], ...]) -> None:
    """Every model known and every size one each model can take, before any work."""
    for name in names:
        entry = models.lookup(name)
        for size in sizes:
            frontends.check_size(entry.name, size, entry.min_input)


def measure_cell(imported: frontends.ImportedModel, name: str, size: tuple[int, int],
                 config: CompareConfig, work: Path) -> Cell:
    cell = Cell(name, size, flops.count(imported.mod).macs)
    out = work / f"{name}-{size[0]}x{size[1]}"
    try:
        if config.tune_trials and config.db is not None:
            tune.tune(imported.mod, tune.TuneConfig(
                config.target, config.db, config.tune_trials, ops=("all",),
                timeout=float(config.tracker.session_timeout),
                android_api=config.android_api, method=records.settle_method(
                    config.db, start_from=config.other_dbs),
                seed_dbs=config.other_dbs),
                config.tracker, config.devices)
        manifest = export.build_artifact(
            imported, export.CompileConfig(config.target, db=config.db,
                                           android_api=config.android_api,
                                           fallback_dbs=config.other_dbs), out)
        artifact = bench.load_artifact(out)
        result = deploy.run_remote(artifact, config.tracker, deploy.DeployConfig(
            config.threads, config.repeat, emulated=config.emulated,
            budget_s=CELL_SECONDS)).run
    except TvmShuffleError as err:  # a lost device or wrong numerics: mark the cell, go on
        cell.error = str(err)
        return cell
    cell.latency_ms = result.latency.median_ms
    cell.max_abs_err = result.max_abs_err
    if deploy.is_emulated(config.tracker.key, config.emulated):
        _count(cell, artifact)
    sources = list(manifest["tuning"]["schedules"].values())
    cell.tuned_kernels = sources.count("record")
    cell.default_kernels = sources.count("default")
    cell.measured_elsewhere = sum(manifest["tuning"]["measured_elsewhere"].values())
    cell.kernels = len(sources)  # those that run
    cell.peers_ms = _peers(name, imported, artifact, config, work)
    return cell


def _peers(name: str, imported, artifact: bench.Artifact, config: CompareConfig,
           work: Path) -> dict:
    peers = {}
    module = models.build(name)
    x = artifact.input
    if "torch" in config.baselines:
        peers["torch"] = bench.time_callable(bench.torch_runner(module, x, config.threads),
                                             config.repeat).median_ms
    if "onnxruntime" in config.baselines:
        path = frontends.export_onnx(module, imported.input_shape, work / f"{name}.onnx")
        runner = bench.onnxruntime_runner(path, "input", x, config.threads)
        err = bench.max_abs_error([np.asarray(runner()[0])], artifact.expected)
        if err > bench.DEFAULT_TOLERANCE:
            log.warning("ONNX Runtime disagrees with PyTorch on %s by %.2g", name, err)
        peers["onnxruntime"] = bench.time_callable(runner, config.repeat).median_ms
    return peers


def _count(cell: Cell, artifact: bench.Artifact) -> None:
    """An emulated device's timings mean nothing: count the instructions of an aarch64
    library on the emulated device set up here instead, when it is (``insncount``)."""
    from . import insncount

    try:
        counted = insncount.count(artifact)
    except TvmShuffleError as err:
        log.warning("%s at %sx%s: no instruction count (%s)", cell.model, *cell.size, err)
        return
    cell.instructions = counted.all_instructions
    cell.fma_lane_use = counted.network.lane_utilisation


def measured_by(cells: list[Cell]) -> str:
    """What measured speedups compare: instruction counts when the device was emulated and
    they were counted, else latencies."""
    return "instructions" if any(c.instructions for c in cells) else "latency_ms"


def environment(config: CompareConfig, where: str) -> dict:
    """What the report says about where and how it was measured."""
    import datetime

    import tvm

    return {
        "device": where, "device_key": config.tracker.key, "tracker": config.tracker.address,
        "emulated": deploy.is_emulated(config.tracker.key, config.emulated),
        "target": config.target.as_json()["str"], "target_name": config.target.name,
        "tvm_version": tvm.__version__, "threads": config.threads,
        "db": str(config.db) if config.db else None,
        "other_dbs": [str(db) for db in config.other_dbs], "tune_trials": config.tune_trials,
        "peers_on": "this machine (host)",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def run(config: CompareConfig, progress=None,
        connect: Callable[[], tuple[TrackerConfig, int]] | None = None) -> list[Cell]:
    """Every model at every size; a cell that fails is kept with its error. ``connect``, when
    given, gives (tracker, devices) for a config without them, and is called once the first
    model has imported: an embedded device starts in the meantime."""
    cells = []
    with tempfile.TemporaryDirectory(prefix="tvmshuffle-compare-") as tmp:
        grid = len(config.sizes) * len(config.models)
        for size in config.sizes:
            for name in config.models:
                if progress:
                    progress(f"{name} at {size[0]}x{size[1]} (cell {len(cells) + 1} of {grid})")
                imported = frontends.load(frontends.ModelSpec(name, size))
                if connect:
                    if progress:
                        progress(f"{name} at {size[0]}x{size[1]}: waiting for the device")
                    tracker, devices = connect()
                    config = dataclasses.replace(config, tracker=tracker, devices=devices)
                    connect = None
                cells.append(measure_cell(imported, name, size, config, Path(tmp)))
    return cells


def speedups(cells: list[Cell], baseline: str,
             peers_comparable: bool = False) -> dict[tuple[str, tuple[int, int]], dict]:
    """Per (model, size): theoretical (FLOPs) and measured (latency; on an emulated device,
    instructions counted) speedup over ``baseline`` at the same size, and efficiency =
    measured / theoretical. With ``peers_comparable`` (the device is this machine, where the
    peers ran), also the speedup over the baseline as the fastest engine of the run ran it
    (ours, PyTorch or ONNX Runtime): a baseline served worse by one engine than by another
    would otherwise flatter the models against it."""
    base = {c.size: c for c in cells if c.model == baseline}
    metric = measured_by(cells)
    result = {}
    for cell in cells:
        ref = base.get(cell.size)
        if ref is None:
            continue
        theoretical = ref.macs / cell.macs
        ours, theirs = getattr(cell, metric), getattr(ref, metric)
        measured = theirs / ours if ours and theirs else None
        entry = {"theoretical": theoretical, "measured": measured,
                 "efficiency": measured / theoretical if measured else None}
        engines = {**(ref.peers_ms or {}), **({"tvmshuffle": ref.latency_ms}
                                               if ref.latency_ms else {})}
        if peers_comparable and engines and cell.latency_ms:
            engine, fastest = min(engines.items(), key=lambda item: item[1])
            entry.update({"fastest_engine": engine,
                          "measured_vs_fastest": fastest / cell.latency_ms,
                          "efficiency_vs_fastest": fastest / cell.latency_ms / theoretical})
        result[(cell.model, cell.size)] = entry
    return result


def flops_to_speed(cells: list[Cell], family: str = "shufflenet") -> dict | None:
    """Least-squares slope b of log(latency) (or of instructions, ``measured_by``) against
    log(FLOPs) over a model family at each size: k x fewer FLOPs gives k**b x the speed (the
    paper: 4x -> 2.6x, b = 0.69)."""
    # one intercept per size, one slope for all: centre each size's points
    by_size: dict = {}
    metric = measured_by(cells)
    for cell in cells:
        if cell.model.startswith(family) and getattr(cell, metric):
            by_size.setdefault(cell.size, []).append((math.log(cell.macs),
                                                      math.log(getattr(cell, metric))))
    xs, ys = [], []
    for group in by_size.values():
        if len(group) < 2:
            continue
        mx = sum(x for x, _ in group) / len(group)
        my = sum(y for _, y in group) / len(group)
        xs += [x - mx for x, _ in group]
        ys += [y - my for _, y in group]
    denominator = sum(x * x for x in xs)
    if not denominator:
        return None
    slope = sum(x * y for x, y in zip(xs, ys)) / denominator
    return {"slope": slope, "speed_for_4x_fewer_flops": 4 ** slope}


from ._callable import make_callable  # noqa: E402 - tvmshuffle.compare(...) is api.compare

make_callable(__name__)
