"""Build an optimized Relax module for a target and write the deployable artifact.

An artifact directory holds ``model.so`` (the exported Relax VM executable with its weights
embedded as constants), ``manifest.json`` (what it is and how it was made), ``reference.npz``
(the fixed input and the host reference's outputs, so any later run, local or on a device, can
check numerics without PyTorch or the model file), and with ``dump_ir`` the final IRModule as
TVMScript in ``final_ir.py``.
"""

from __future__ import annotations

import collections
import datetime
import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tvm

from . import __version__, flops, frontends, pipeline, records, schedule_cache, toolchain
from .errors import BadInputError, BuildError, TvmShuffleError, first_line
from .flops import FlopReport
from .passes import ledger
from .target import TargetConfig

log = logging.getLogger(__name__)

# where a kernel's schedule came from (manifest.json "tuning"/"schedules")
RECORD, DEFAULT, TVM_LOOPS = "record", "default", "tvm"

SO_NAME = "model.so"
MANIFEST_NAME = "manifest.json"
REFERENCE_NAME = "reference.npz"
IR_NAME = "final_ir.py"


@dataclass(frozen=True)
class CompileConfig:
    target: TargetConfig
    fuse_shuffle: bool = True  # the channel shuffle pass (passes/channel_shuffle.py)
    layout: str = pipeline.DEFAULT_LAYOUT  # of the convolutions: a key of pipeline.LAYOUTS
    db: Path | None = None  # a MetaSchedule database whose records are applied
    # kernels without a record get a schedule derived from the target (defaults.py), not
    # TVM's unscheduled loops
    default_schedules: bool = True
    android_api: int = toolchain.DEFAULT_ANDROID_API  # for --target arm
    # databases read after it, for kernels it has no record of (the shipped one after the
    # user's); only those whose records were made with the same method
    fallback_dbs: tuple[Path, ...] = ()

    def __post_init__(self):
        from . import places

        # a compressed (shipped) database is read from its unpacked copy
        if self.db is not None:
            object.__setattr__(self, "db", places.readable(Path(self.db)))
        object.__setattr__(self, "fallback_dbs",
                           tuple(places.readable(Path(db)) for db in self.fallback_dbs))

    def linker(self) -> toolchain.Toolchain:
        """The toolchain that links the library; BuildError saying what to install if none."""
        return toolchain.find(self.target, self.android_api)


@dataclass(frozen=True)
class Compiled:
    executable: tvm.runtime.Executable
    final_mod: tvm.IRModule
    kernels: tuple[str, ...]
    method: records.Method | None = None  # how the applied database's records were made
    picks: int = 0  # kernels compiled with a schedule picked in the network (tvmshuffle pick)
    # kernels compiled with a record measured with another target, by what tells it apart
    measured_elsewhere: dict[str, int] = field(default_factory=dict)
    # each kernel that runs (not those the build makes views of): RECORD, DEFAULT or TVM_LOOPS
    schedules: dict[str, str] = field(default_factory=dict)
    fallback_dbs: tuple[Path, ...] = ()  # of CompileConfig's, those applied
    prepacked: bool = False  # weights repacked at build time into the layouts kernels read
    # multiply-adds of each kernel per inference (pipeline.kernel_macs), for per-kernel counts
    kernel_macs: dict[str, int] = field(default_factory=dict)


def compile_module(mod: tvm.IRModule, config: CompileConfig) -> Compiled:
    """Lower ``mod`` (already through the graph passes) with TVM's pipeline and build it: each
    kernel with its record in the database, else its default schedule (``defaults``), else as
    TVM writes it."""
    target = config.target.tvm_target
    if config.db is None and not config.default_schedules:  # TVM's loops throughout
        fused = pipeline.fuse(mod, target)
        running = pipeline.running_tasks(fused, target)
        return Compiled(*build(lambda: pipeline.lower_fused(fused, target, None), target),
                        schedules={task.task_name: TVM_LOOPS for task in running},
                        kernel_macs=pipeline.kernel_macs(running, config.layout))
    method, picks, ranked, chosen, picked = None, 0, None, {}, set()
    if config.db is not None:
        ranked = records.read_ranked(config.db, target)
        chosen, picked = records.choose(ranked, records.read_picks(config.db, target))
        method = records.database_method(config.db)
    # the database's records decide; without one the default schedules prepack the weights
    prepack = method.prepack if method is not None else records.DEFAULT_METHOD.prepack
    fused = pipeline.fuse(mod, target, prepack)
    # counted over this model's kernels that run (extracted in 12 ms for ShuffleNet 1x), as tune
    # counts them, not over the database's
    tasks = pipeline.running_tasks(fused, target)
    if picked:
        in_picks = records.memory_database(ranked, {i: chosen[i] for i in picked})
        picks = sum(1 for task in tasks if in_picks.has_workload(task.dispatched[0]))
    database = records.memory_database(ranked, chosen) if ranked is not None \
        else records.empty_memory_database()
    fallbacks = tuple(_fallbacks(config, method))
    for fallback in fallbacks:
        fallback_ranked = records.read_ranked(fallback, target)
        fallback_chosen, _ = records.choose(fallback_ranked,
                                            records.read_picks(fallback, target))
        records.memory_database(fallback_ranked, fallback_chosen, into=database)
    applied = {task.task_name: database.query_tuning_record(task.dispatched[0], target, "main")
               for task in tasks}
    elsewhere = collections.Counter(_measured_on(record.target, target)
                                    for record in applied.values()
                                    if record is not None and str(record.target) != str(target))
    sources = {}
    for task in tasks:
        if applied[task.task_name] is not None:
            sources[task.task_name] = RECORD
        elif config.default_schedules and schedule_cache.commit(database, task.dispatched[0],
                                                                target):
            sources[task.task_name] = DEFAULT
        else:
            sources[task.task_name] = TVM_LOOPS
    return Compiled(*build(lambda: pipeline.lower_fused(fused, target, database, prepack),
                           target), method, picks, dict(sorted(elsewhere.items())),
                    dict(sorted(sources.items())), fallbacks, prepack,
                    pipeline.kernel_macs(tasks, config.layout))


def _fallbacks(config: CompileConfig, method: records.Method | None) -> list[Path]:
    """The fallback databases whose records apply beside the first's: made the same way
    (records of prepacked weights are other workloads, and warm and flushed times do not
    compare)."""
    usable = []
    for fallback in config.fallback_dbs:
        other = records.database_method(fallback)
        if method is not None and other is not None and other != method:
            log.warning("%s holds records of another method (%s) than %s (%s): not applied",
                        fallback, other.describe(), config.db, method.describe())
            continue
        usable.append(fallback)
    return usable


def _measured_on(measured: tvm.target.Target, target: tvm.target.Target) -> str:
    """A record's target as told apart from the compile target: its CPU, else its cores."""
    if measured.attrs.get("mcpu") != target.attrs.get("mcpu"):
        return str(measured.attrs.get("mcpu", "generic"))
    if measured.attrs.get("num-cores") != target.attrs.get("num-cores"):
        return f"{measured.attrs.get('num-cores')} cores"
    return str(measured)


def build(lower, target: tvm.target.Target) -> tuple[tvm.runtime.Executable, tvm.IRModule,
                                                      tuple[str, ...]]:
    """(executable, final module, its kernel names) of the module ``lower()`` returns; TVM's
    errors as BuildError."""
    try:
        final = lower()
        executable = tvm.compile(final, target=target, relax_pipeline=None)
    except Exception as err:  # TVM raises InternalError, TVMError, ValueError...
        raise BuildError(f"TVM failed to build for {target}: {first_line(err)}") from err
    return executable, final, tuple(pipeline.kernel_names(final))


def prepare_out_dir(out_dir: Path) -> Path:
    """Create ``out_dir`` or fail with one clear line before any long work starts."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out_dir):
            pass
    except OSError as err:
        raise BadInputError(f"output directory {out_dir} is not writable: "
                            f"{err.strerror or err}") from err
    return out_dir


def write_artifact(out_dir: Path, compiled: Compiled, model: frontends.ImportedModel,
                   config: CompileConfig, flops: FlopReport, dump_ir: bool = False,
                   channel_passes: dict | None = None) -> dict:
    """Export the library, reference data and manifest into ``out_dir``; return the manifest.
    ``channel_passes``: what the channel passes rewrote (``passes.ledger``), when counted.

    The manifest comes last and an earlier one goes first: a folder with a manifest holds the
    library and reference it describes, and an export that fails leaves no library behind."""
    x = frontends.fixed_input(model.input_shape, model.dtype)
    try:
        outputs = model.reference(x)
    except TvmShuffleError:
        raise
    except Exception as err:  # the reference engine's own errors
        raise BuildError(f"the reference ({model.reference_engine}) failed on {model.source}: "
                         f"{first_line(err)}") from err
    (out_dir / MANIFEST_NAME).unlink(missing_ok=True)
    so_path = out_dir / SO_NAME
    linker = config.linker()
    try:
        try:
            compiled.executable.export_library(str(so_path), fcompile=linker)
        except TvmShuffleError:
            raise
        except Exception as err:
            raise BuildError(f"exporting {so_path} failed: {first_line(err)}") from err
        np.savez(out_dir / REFERENCE_NAME, input=x,
                 **{f"output_{i}": out for i, out in enumerate(outputs)})
        if dump_ir:
            (out_dir / IR_NAME).write_text(compiled.final_mod.script())
    except BaseException:
        for name in (SO_NAME, REFERENCE_NAME):
            (out_dir / name).unlink(missing_ok=True)
        raise

    manifest = {
        "model": model.name,
        "source": {"kind": model.kind, "path": model.source},
        "input": {"name": model.input_name, "shape": list(model.input_shape),
                  "dtype": model.dtype},
        "outputs": [{"shape": list(o.shape), "dtype": str(o.dtype)} for o in outputs],
        "reference": {"engine": model.reference_engine, "file": REFERENCE_NAME},
        "target": config.target.as_json(),
        "toolchain": {**linker.as_json(),
                      **({"android_api": config.android_api} if "android" in
                         config.target.triple else {})},
        "tvm_version": tvm.__version__,
        "tvmshuffle_version": __version__,
        "flops": {"macs": flops.macs, "mflops": round(flops.mflops, 3),
                  "by_kind": flops.by_kind()},
        "library": {"file": SO_NAME, "sha256": sha256(so_path),
                    "bytes": so_path.stat().st_size},
        "kernels": list(compiled.kernels),
        # multiply-adds per inference of each kernel that does any (deploy --count-instructions)
        "kernel_macs": compiled.kernel_macs,
        "fuse_shuffle": config.fuse_shuffle,
        # the rewrites the channel passes made (passes/ledger.py): shuffles fused, v2 regions
        # rebuilt; none when the pass is off
        "channel_passes": channel_passes,
        "layout": config.layout,
        "tuning": {"db": str(config.db) if config.db else None,
                   "fallback_dbs": [str(db) for db in compiled.fallback_dbs],
                   "method": compiled.method.as_json() if compiled.method else None,
                   "tuned_kernels": sorted(k for k, s in compiled.schedules.items()
                                           if s == RECORD),
                   "default_schedules": config.default_schedules,
                   "prepacked_weights": compiled.prepacked,
                   "schedules": compiled.schedules,
                   "picked_in_network": compiled.picks,
                   "measured_elsewhere": compiled.measured_elsewhere},
        "data_movement_kernels": pipeline.data_movement_kernels(compiled.final_mod),
        # every kernel that runs and does no arithmetic, with its calls
        "copy_kernels": pipeline.copy_kernels(compiled.final_mod),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    tmp = out_dir / (MANIFEST_NAME + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, out_dir / MANIFEST_NAME)
    return manifest


def build_artifact(model: frontends.ImportedModel, config: CompileConfig, out_dir: Path,
                   dump_ir: bool = False) -> dict:
    """Graph passes, build and export of an imported model into ``out_dir``: its manifest."""
    config.linker()  # no linker for the target: say so before any work
    prepare_out_dir(out_dir)
    with ledger.recording() as channel_passes:  # the graph passes, and fuse's on NEON
        optimized = pipeline.optimize(model.mod, config.fuse_shuffle, config.layout)
        compiled = compile_module(optimized, config)
    # counted before the shuffle pass turns the convolutions it fuses into call_tir kernels
    return write_artifact(out_dir, compiled, model, config, flops.count(model.mod), dump_ir,
                          dict(channel_passes) if config.fuse_shuffle else None)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
