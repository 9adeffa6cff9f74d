"""The Python API: the command line's stages for a notebook or a training script.

    import tvmshuffle
    model = tvmshuffle.load(net, input_size=(224, 224))   # an nn.Module in memory
    lib = tvmshuffle.compile(model)                          # host CPU, schedules applied
    y = lib.run(x)                                           # numpy in, numpy out

``load`` takes an ``nn.Module`` (with an example input or an input size), a
``torch.export.ExportedProgram``, an ``onnx.ModelProto``, a ``.pt2`` or ``.onnx`` path or a zoo
name; ``compile`` returns an ``Artifact`` (the library, its manifest and the reference outputs
in a folder, as `tvmshuffle compile -o` writes one) that runs, checks and times itself on this
CPU; ``tune``, ``deploy`` and ``compare`` do what their commands do and return what their
``--json`` prints. Databases are found as the commands find them (the user's, then the shipped
one). Errors are the command line's: ``tvmshuffle.TvmShuffleError`` and its subclasses.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import bench, export, frontends, places, target
from .errors import BadInputError, NumericsError
from .frontends import ImportedModel as Model

__all__ = ["Artifact", "Model", "compare", "compile", "count_instructions", "deploy",
           "deployment", "load", "tune"]


def _size(input_size) -> tuple[int, int] | None:
    if input_size is None:
        return None
    if isinstance(input_size, str):
        return frontends.parse_input_size(input_size)
    if isinstance(input_size, int):
        return frontends.parse_input_size(f"{input_size}x{input_size}")
    height, width = input_size
    return frontends.parse_input_size(f"{int(height)}x{int(width)}")


def load(model: Any, input_size: tuple[int, int] | int | str | None = None, *,
         example_input: Any = None, batch: int | None = None, channels: int = 3,
         state_dict: str | Path | None = None, name: str | None = None) -> Model:
    """Import ``model`` into Relax with the reference its outputs are checked against.

    ``model``: a ``torch.nn.Module`` (exported with ``torch.export`` on ``example_input``, or on
    an input of ``batch`` x ``channels`` x ``input_size``: 224x224 when neither is given), a
    ``torch.export.ExportedProgram``, an ``onnx.ModelProto``, a path to a ``.pt2`` or ``.onnx``
    file, or a zoo name (``tvmshuffle models``). ``input_size`` (height, width) and ``batch``
    set a zoo model's or an ONNX model's dynamic dimensions, and are checked against fixed ones.
    ``state_dict`` loads weights into a zoo model."""
    size = _size(input_size)
    if isinstance(model, (str, Path)):
        return frontends.load(frontends.ModelSpec(str(model), size,
                                                  Path(state_dict) if state_dict else None,
                                                  batch))
    if state_dict is not None:
        raise BadInputError("state_dict applies to zoo models: load weights into your module "
                            "before passing it")
    # recognised by type name: neither onnx nor torch is imported for the other kinds
    if type(model).__name__ == "ModelProto":
        return frontends.load_onnx_model(model, name or model.graph.name or "onnx_model",
                                         f"<onnx.ModelProto {model.graph.name}>", size, batch)
    if type(model).__name__ == "ExportedProgram":
        return frontends.load_program(model, name or "exported_program",
                                      "<torch.export.ExportedProgram>", size, batch)
    import torch

    if isinstance(model, torch.nn.Module):
        if example_input is None:
            shape = (batch or 1, channels, *(size or frontends.DEFAULT_INPUT_SIZE))
            example = frontends.fixed_input(shape)
        else:
            example = np.ascontiguousarray(
                example_input.detach().cpu().numpy() if isinstance(example_input, torch.Tensor)
                else np.asarray(example_input))
            if size is not None and tuple(example.shape[-2:]) != size:
                raise BadInputError(f"example_input is {example.shape}, not of input_size "
                                    f"{size[0]}x{size[1]}")
        return frontends.load_module(model, example, name or type(model).__name__)
    raise BadInputError(f"cannot load a {type(model).__name__}: give an nn.Module, an "
                        "ExportedProgram, an onnx.ModelProto, a .pt2/.onnx path or a zoo name")


def _model(model: Any, input_size=None, batch: int | None = None,
           state_dict: str | Path | None = None, show: bool = False) -> Model:
    """``model`` itself if loaded already, else ``load`` of it (a spinner while it imports
    when ``show``)."""
    if isinstance(model, Model):
        return model
    from . import report

    label = model if isinstance(model, (str, Path)) else type(model).__name__
    with report.step(f"importing {label}", quiet=not show):
        return load(model, input_size, batch=batch, state_dict=state_dict)


@dataclass
class Artifact:
    """A compiled model in its folder (``model.so``, ``manifest.json``, ``reference.npz``), as
    `tvmshuffle compile -o DIR` writes it: run, checked and timed on this CPU, or deployed."""

    path: Path
    _vm: Any = field(default=None, repr=False)
    _threads: int = field(default=0, repr=False)

    @property
    def manifest(self) -> dict:
        return bench.load_artifact(self.path).manifest

    def _loaded(self) -> bench.Artifact:
        loaded = bench.load_artifact(self.path)
        if not loaded.target.runs_on_host:
            raise BadInputError(f"{self.path} was built for {loaded.target.triple}, which "
                                "cannot run on this machine: deploy it to a device")
        return loaded

    def _machine(self, threads: int):
        if self._vm is None or self._threads != threads:
            self._vm, _ = bench._host_vm(self._loaded(), threads)
            self._threads = threads
        return self._vm

    def run(self, x: Any, threads: int = 1) -> np.ndarray | list[np.ndarray]:
        """Outputs for the input ``x`` (numpy or a torch tensor of the compiled shape): one
        array, or a list for a model of several outputs."""
        import tvm

        array = np.ascontiguousarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x)
        declared = self.manifest["input"]
        if list(array.shape) != list(declared["shape"]) or str(array.dtype) != declared["dtype"]:
            raise BadInputError(f"input is {list(array.shape)} {array.dtype}; the model was "
                                f"compiled for {declared['shape']} {declared['dtype']}")
        outputs = bench.flatten_outputs(self._machine(threads)["main"](
            tvm.runtime.tensor(array, tvm.cpu())))
        return outputs[0] if len(outputs) == 1 else outputs

    def check(self, tolerance: float = bench.DEFAULT_TOLERANCE) -> float:
        """The largest absolute difference from the reference (PyTorch or ONNX Runtime) on the
        artifact's fixed input; NumericsError beyond ``tolerance``."""
        loaded = self._loaded()
        got = self.run(loaded.input)
        err = bench.max_abs_error(got if isinstance(got, list) else [got], loaded.expected)
        if not err <= tolerance:
            raise NumericsError(f"max abs error {err:.3g} exceeds tolerance {tolerance:g}: the "
                                "compiled module disagrees with the reference")
        return err

    def benchmark(self, threads: int = 1, repeat: int = 30, number: int = 1,
                  tolerance: float = bench.DEFAULT_TOLERANCE) -> bench.RunResult:
        """Numerics checked, then the latency on this CPU (`tvmshuffle run`)."""
        return bench.run_local(self._loaded(), threads, repeat, number, tolerance)

    def profile(self, threads: int = 1) -> list[bench.KernelTime]:
        """Time every kernel (`tvmshuffle run --profile`)."""
        return bench.profile_kernels(self._loaded(), threads)

    def save(self, directory: str | Path) -> Artifact:
        """Copy the artifact's files into ``directory`` (created; an existing artifact there is
        replaced, any other non-empty folder refused) and return the copy."""
        out = export.prepare_out_dir(Path(directory))
        for item in self.path.iterdir():
            if item.is_file():
                shutil.copy2(item, out / item.name)
        return Artifact(out)


def compile(model: Any, target_name: str = "host", *, device: str = "generic",
            db: str | Path | None = None, no_db: bool = False, default_schedules: bool = True,
            fuse_shuffle: bool = True, layout: str = "nhwgc", threads: int | None = None,
            android_api: int = 24, out_dir: str | Path | None = None,
            dump_ir: bool = False, input_size: tuple[int, int] | int | str | None = None,
            batch: int | None = None, state_dict: str | Path | None = None,
            show: bool = False) -> Artifact:
    """Build ``model`` (a ``Model`` from ``load``, or anything ``load`` takes, with its
    ``input_size``, ``batch`` and ``state_dict``) for ``target_name`` (host, arm, arm-linux or
    a TVM target as JSON) as `tvmshuffle compile` does: with ``db``, else the user's database
    and the shipped one for this CPU; ``no_db`` for the default schedules alone. Written to
    ``out_dir``, or a new temporary folder (``Artifact.save`` keeps it). ``show``: progress on
    stderr, as the command shows it."""
    from . import report

    resolved = target.resolve(target_name, device, threads)
    fallbacks: tuple[Path, ...] = ()
    if db is None and not no_db:
        db, fallbacks = places.compile_dbs(resolved, device)
    config = export.CompileConfig(resolved, fuse_shuffle, layout.upper(),
                                  None if no_db else Path(db) if db else None, default_schedules,
                                  android_api, () if no_db else fallbacks)
    config.linker()  # no linker for the target: say what to install before importing
    out = export.prepare_out_dir(Path(out_dir)) if out_dir is not None \
        else Path(tempfile.mkdtemp(prefix="tvmshuffle-"))
    imported = _model(model, input_size, batch, state_dict, show)
    with report.step(f"building for {config.target.name} into {out}", quiet=not show):
        export.build_artifact(imported, config, out, dump_ir)
    return Artifact(out)


def tune(model: Any, target_name: str = "host", *, device: str = "generic",
         tracker: str | None = None, key: str | None = None, trials: int = 64,
         trials_per_task: int | None = None, ops: tuple[str, ...] = ("grouped", "depthwise"),
         db: str | Path | None = None, timeout: int = 60, patience: int = 64, refine: int = 0,
         prepack: bool | None = None, flush_caches: bool | None = None,
         fuse_shuffle: bool = True, layout: str = "nhwgc", threads: int | None = None,
         android_api: int = 24, input_size: tuple[int, int] | int | str | None = None,
         batch: int | None = None, show: bool = False) -> dict:
    """Tune ``model``'s kernels as `tvmshuffle tune` does (records appended to ``db``, else to
    the user's database), on the devices under ``key`` at ``tracker`` (host:port), or on this
    CPU behind an embedded tracker; ``prepack`` / ``flush_caches`` the method of a new database
    (None: the database's own). Returns what `tune --json` prints. ``show``: progress on
    stderr, as the command shows it."""
    import time

    from . import records, report, toolchain
    from . import tune as tuning
    from .devices import need_device, starting

    resolved = target.resolve(target_name, device, threads)
    toolchain.find(resolved, android_api)  # candidates are linked like the final .so
    need_device(tracker, resolved)
    if isinstance(ops, str):  # "grouped,depthwise", as --ops takes it
        ops = tuple(ops.split(","))
    kinds = tuple(k.strip() for k in ops if k.strip())
    unknown = [k for k in kinds if k not in (*tuning.OPS_CHOICES, "all")]
    if unknown or not kinds:
        raise BadInputError(f"bad ops '{','.join(ops)}': choose from "
                            f"{', '.join(tuning.OPS_CHOICES)} or all")
    seeds: tuple[Path, ...] = ()
    if db is None:
        db, seeds = places.tune_dbs(resolved, device)
    config = tuning.TuneConfig(resolved, Path(db), trials, trials_per_task, kinds,
                               float(timeout), fuse_shuffle, layout.upper(),
                               android_api=android_api, patience=patience or None,
                               method=records.settle_method(Path(db), prepack, flush_caches,
                                                            seeds),
                               refine=refine, seed_dbs=seeds)
    with contextlib.ExitStack() as stack:
        devices_up = starting(stack, tracker, key, resolved.num_cores, timeout, not show)
        imported = _model(model, input_size, batch, show=show)
        start = time.perf_counter()
        with report.step("finding the kernels to tune", quiet=not show):
            tasks = tuning.tasks_of(imported.mod, config)
        rpc, devices = devices_up()
        with report.TuneProgress(quiet=not show) as progress:
            results = tuning.tune_tasks(tasks, config, rpc, devices, progress)
    return report.tune_json(results, config, rpc.address, rpc.key, time.perf_counter() - start)


def deployment(artifact: Artifact | str | Path, *, tracker: str | None = None,
               key: str | None = None, threads: int | None = None, repeat: int = 10,
               number: int = 1, tolerance: float = bench.DEFAULT_TOLERANCE, wait: int = 60,
               timeout: int = 600, emulated: bool | None = None, show: bool = False):
    """``deploy``'s whole result: (the artifact's manifest, ``deploy.Deployed``: the device,
    the numerics and the timings there)."""
    from . import deploy as deploying
    from . import report
    from .devices import acquire

    path = artifact.path if isinstance(artifact, Artifact) else Path(artifact)
    loaded = bench.load_artifact(path)
    threads = threads or loaded.target.num_cores
    if not tracker and not loaded.target.runs_on_host:
        raise BadInputError(f"{loaded.library} is built for {loaded.target.triple}; the "
                            "embedded default device is this machine's CPU: give the tracker "
                            "and key of an ARM device (--rpc-tracker, --rpc-key; "
                            "rpc/emu_arm64.sh runs an emulated one)")
    config = deploying.DeployConfig(threads, repeat, number, tolerance, float(wait), emulated)
    with contextlib.ExitStack() as stack:
        rpc, _ = acquire(stack, tracker, key, threads, timeout, not show)
        with report.step(f"deploying to '{rpc.key}' at {rpc.address}", quiet=not show):
            return loaded.manifest, deploying.run_remote(loaded, rpc, config)


def deploy(artifact: Artifact | str | Path, *, tracker: str | None = None,
           key: str | None = None, threads: int | None = None, repeat: int = 10,
           number: int = 1, tolerance: float = bench.DEFAULT_TOLERANCE, wait: int = 60,
           timeout: int = 600, emulated: bool | None = None, show: bool = False) -> dict:
    """Upload an artifact (or its folder) to a device over TVM RPC, check its numerics and time
    it there (`tvmshuffle deploy`); without ``tracker``, this CPU behind an embedded tracker.
    Returns what `deploy --json` prints."""
    from . import report

    return report.deploy_json(*deployment(
        artifact, tracker=tracker, key=key, threads=threads, repeat=repeat, number=number,
        tolerance=tolerance, wait=wait, timeout=timeout, emulated=emulated, show=show))


def countable(artifact: Artifact | str | Path, *, tracker: str | None = None,
              key: str | None = None, emulated: bool | None = None) -> None:
    """Refuse, before any work, what `deploy --count-instructions` cannot count: a library
    not built for aarch64, a device that is no emulator (a phone runs the code itself), an
    emulated device or counter not set up on this machine."""
    from . import deploy as deploying
    from . import insncount

    path = artifact.path if isinstance(artifact, Artifact) else Path(artifact)
    insncount.check_countable(bench.load_artifact(path))
    if tracker and not deploying.is_emulated(key or "", emulated):
        raise BadInputError(f"device '{key}' is not emulated: instructions are counted on the "
                            "emulated arm64 device (rpc/emu_arm64.sh; or --emulated)")


def count_instructions(artifact: Artifact | str | Path, *,
                       tolerance: float = bench.DEFAULT_TOLERANCE, show: bool = False):
    """One inference of an aarch64 artifact on the emulated arm64 device set up on this
    machine (rpc/emu_arm64.sh), its output checked, its dynamic instructions counted per
    kernel (``insncount.Counted``; ``.as_json()`` is what `deploy --count-instructions
    --json` prints under "instructions")."""
    from . import insncount, report

    path = artifact.path if isinstance(artifact, Artifact) else Path(artifact)
    with report.step("counting the instructions of one inference on the emulated arm64 device",
                     quiet=not show):
        return insncount.count(bench.load_artifact(path), tolerance)  # refuses what it cannot


def compare(models: tuple[str, ...] | None = None,
            sizes: tuple[tuple[int, int], ...] = ((224, 224),), target_name: str = "host", *,
            device: str = "generic", tracker: str | None = None, key: str | None = None,
            db: str | Path | None = None, tune_trials: int = 0,
            baselines: tuple[str, ...] = ("torch", "onnxruntime"), threads: int | None = None,
            repeat: int = 10, timeout: int = 600, android_api: int = 24,
            emulated: bool | None = None, report_dir: str | Path | None = None,
            show: bool = False) -> dict:
    """The paper's Table 8 on a device (`tvmshuffle compare`): FLOPs against measured latency
    for ``models`` (zoo names or files; the Table 8 five by default) at ``sizes``, beside the
    host peers; returns what `compare --json` prints, and writes the report (report.md,
    report.json, speedup.png) into ``report_dir`` when given. ``show``: progress on stderr,
    as the command shows it."""
    from . import compare as comparing
    from . import compare_report, report, toolchain
    from .devices import need_device, starting

    resolved = target.resolve(target_name, device, threads)
    toolchain.find(resolved, android_api)
    need_device(tracker, resolved)
    names = tuple(models or comparing.DEFAULT_MODELS)
    size_list = tuple(_size(s) for s in sizes)
    comparing.check_grid(names, size_list)
    unknown = [b for b in baselines if b not in comparing.BASELINES]
    if unknown:
        raise BadInputError(f"unknown baseline(s) {', '.join(unknown)}: use torch, onnxruntime")
    others: tuple[Path, ...] = ()
    if db is None:
        db, others = (places.tune_dbs(resolved, device) if tune_trials
                      else places.compile_dbs(resolved, device))
    if report_dir is not None:
        report_dir = export.prepare_out_dir(Path(report_dir))
    with contextlib.ExitStack() as stack:
        # quiet: the wait shows in the progress line below (one live display at a time)
        devices_up = starting(stack, tracker, key, resolved.num_cores, timeout, quiet=True)
        config = comparing.CompareConfig(resolved, None, names, size_list, tuple(baselines),
                                         Path(db) if db else None, resolved.num_cores, repeat,
                                         tune_trials, 1, android_api, emulated, others)
        with report.step("tuning, compiling, deploying and timing every model and size"
                         if tune_trials else "compiling, deploying and timing every model and "
                         "size", quiet=not show) as at:
            cells = comparing.run(config, at, devices_up)
        rpc, devices = devices_up()
        config = dataclasses.replace(config, tracker=rpc, devices=devices)
    where = (f"this machine's CPU ({dict(resolved.spec).get('mcpu')}, embedded device)"
             if not tracker else f"device '{rpc.key}' via {rpc.address}")
    data = compare_report.compare_json(cells, config, comparing.environment(config, where))
    if report_dir is not None:
        compare_report.write_compare(report_dir, data)
    return data
