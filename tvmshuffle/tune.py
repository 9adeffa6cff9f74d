"""MetaSchedule tuning of a model's kernels, measured on devices reached through a TVM tracker.

Tasks are the fused TIR kernels of the optimized module (after the channel shuffle pass, so the
shuffle+depthwise kernels are tasks too), extracted with MetaSchedule's Relax integration from
the module after the "zero" pipeline. Selected tasks are tuned one after another, the heaviest
(weight x FLOPs) first, each with the XGBoost cost model and evolutionary search, candidates
built and linked here with the target's toolchain (a phone has no compiler) and timed by an
RPCRunner with one worker per device under the key.

Records go to a tuning database (``records``), appended to, never rewritten. Re-running the
same tuning resumes: a task's records already in the database count against its budget, and the
search starts from them.

Each record keeps the target it was measured with, and times measured on different CPUs (or the
same schedule on a faster sibling) do not compare either. So a task is tuned against the records
of this target only: before its search, the task's fastest schedules measured on another CPU of
the same kind are re-timed here (REMEASURE of them), and ``compile`` picks, per kernel, the best
record measured with its own target when there is one, else the best of all.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import math
import os
import sys
import tempfile
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator

import tvm

from . import defaults, pipeline, tiles, toolchain
from .errors import first_line
from .records import (DEFAULT_METHOD, Method, TaskDatabase, best_ms, mean_ms, settle_method,
                      write_method)
from .remote import TrackerConfig
from .target import TargetConfig

log = logging.getLogger(__name__)

OPS_CHOICES = ("grouped", "depthwise", "conv", "dense", "other")
DEFAULT_OPS = ("grouped", "depthwise")
GAIN = 0.01  # an improvement smaller than 1% does not count as progress for early stopping


@dataclass(frozen=True)
class TuneConfig:
    target: TargetConfig
    db_dir: Path
    trials: int = 64  # over all selected tasks
    trials_per_task: int | None = None  # default: trials spread evenly over the tasks
    ops: tuple[str, ...] = DEFAULT_OPS  # kinds of task to tune; ("all",) for every task
    timeout: float = 60.0  # build timeout and RPC session timeout, seconds
    fuse_shuffle: bool = True
    layout: str = pipeline.DEFAULT_LAYOUT  # of the convolutions: a key of pipeline.LAYOUTS
    seed: int = 0
    android_api: int = toolchain.DEFAULT_ANDROID_API  # --target arm: how candidates are linked
    # A task stops early once this many trials in a row brought no gain of GAIN or more over
    # its best (None: every task spends its whole budget).
    patience: int | None = 64
    # how candidates are made and timed: a database holds records of one (settle_method)
    method: Method = DEFAULT_METHOD
    # after its search, time up to this many tile neighbours of each task's best schedule
    # (tiles.py) that the database does not hold yet
    refine: int = 0


@dataclass(frozen=True)
class Task:
    name: str
    kind: str  # grouped | depthwise | conv | dense | other
    weight: int  # how many times the model calls the kernel
    macs: int  # per call
    extracted: object = field(repr=False, compare=False)


@dataclass
class TaskResult:
    task: Task
    trials_before: int  # records already in the database (resumed)
    trials_run: int = 0
    untuned_ms: float | None = None
    tuned_ms: float | None = None
    converged: bool = False  # stopped early: `patience` trials without a 1% gain
    kept_untuned: bool = False  # TVM's unscheduled kernel beat every candidate: recorded as best
    remeasured: int = 0  # schedules measured on another CPU, re-timed here (in trials_before)
    refined: int = 0  # tile neighbours of the best schedule timed (``refine``)
    refined_rejected: int = 0  # of those, faster warm but slower cold: not recorded
    refined_from_ms: float | None = None  # the best before they were
    default_ms: float | None = None  # the default schedule (defaults.py), timed first

    @property
    def speedup(self) -> float | None:
        if self.untuned_ms and self.tuned_ms:
            return self.untuned_ms / self.tuned_ms
        return None


class Progress:
    """What a front end is told while tuning runs; the default says nothing."""

    def remeasuring(self, count: int, cpus: list[str]) -> None: ...

    def start(self, tasks: list[Task], budget: dict[str, int]) -> None: ...

    def task_started(self, task: Task, budget: int) -> None: ...

    def refining(self, task: Task, count: int) -> None: ...

    def trials(self, task: Task, done: int, best_ms: float | None) -> None: ...

    def task_finished(self, result: TaskResult) -> None: ...


# ---------------------------------------------------------------------------------------- tasks


def _classify(func: tvm.tirx.PrimFunc, layout: str) -> tuple[str, int]:
    """(kind, multiply-adds per call) of a fused kernel, from its anchor block's buffers (the
    convolutions' ``layout``: NCHW data with OIHW weights, or NHWC with HWIO)."""
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    names = [sch.get(b).name_hint for b in sch.get_child_blocks(sch.get_sblock("root"))]
    shapes = [tuple(int(d) for d in p.ty.shape) for p in func.params]
    out = shapes[-1]
    if any("conv2d_nhwgc" in n for n in names) and len(shapes) >= 3:
        # passes/group_axis.py: (n, h, w, g, c / g), (g, c / g, o / g), a 1x1 group conv
        return "grouped", math.prod(out) * shapes[1][1]
    if any("conv" in n for n in names) and len(shapes) >= 3 and len(shapes[0]) == 4:
        data, weight = shapes[0], shapes[1]
        if layout != "NCHW":  # (n, h, w, c), (kh, kw, c / groups, o)
            channels, in_per_group, window = data[3], weight[2], weight[0] * weight[1]
        else:  # (n, c, h, w), (o, c / groups, kh, kw)
            channels, in_per_group, window = data[1], weight[1], weight[2] * weight[3]
        macs = math.prod(out) * in_per_group * window
        groups = channels // in_per_group if in_per_group else 1
        if groups == 1:
            return "conv", macs
        return ("depthwise" if in_per_group == 1 else "grouped"), macs
    if any("matmul" in n or "dense" in n for n in names) and len(shapes) >= 3:
        return "dense", math.prod(out) * shapes[0][-1]
    return "other", 0


def extract_tasks(mod: tvm.IRModule, config: TuneConfig) -> list[Task]:
    """All tasks of ``mod`` after the graph passes and the zero pipeline, heaviest first.
    Kernels that only reshape are left out (``pipeline.running_tasks``): they never run and
    tuning them would waste trials."""
    target = config.target.tvm_target
    with target:
        optimized = pipeline.optimize(mod, config.fuse_shuffle, config.layout)
    lowered = pipeline.fuse(optimized, target, config.method.prepack)
    tasks = []
    for extracted in pipeline.running_tasks(lowered, target):
        kind, macs = _classify(extracted.dispatched[0]["main"], config.layout)
        tasks.append(Task(extracted.task_name, kind, int(extracted.weight), macs, extracted))
    tasks.sort(key=lambda t: (-t.weight * t.macs, t.name))
    return tasks


def select(tasks: list[Task], ops: tuple[str, ...]) -> list[Task]:
    if "all" in ops:
        return list(tasks)
    return [t for t in tasks if t.kind in ops]


def _workload_records(database, task: Task) -> list:
    """Every record of the task's kernel, whatever target measured it."""
    mod = task.extracted.dispatched[0]
    if not database.has_workload(mod):
        return []
    workload = database.commit_workload(mod)
    return [r for r in database.get_all_tuning_records() if r.workload.same_as(workload)]


def _records(database, task: Task, target: tvm.target.Target) -> list:
    target_str = str(target)
    return [r for r in _workload_records(database, task) if str(r.target) == target_str]


def _cpu_of(target) -> tuple[str, str]:
    """(the target without its mcpu, its mcpu): records whose targets differ only in mcpu were
    measured on CPUs of one kind, whose schedules carry over once re-timed."""
    spec = json.loads(str(target))
    mcpu = spec.pop("mcpu", "")
    return json.dumps(spec, sort_keys=True), mcpu


REMEASURE = 4  # of a task's fastest schedules measured on another CPU, re-timed before tuning


def foreign_schedules(database, task: Task, target: tvm.target.Target,
                      count: int = REMEASURE) -> list:
    """Those of the task's ``count`` fastest distinct schedules measured on another CPU of the
    target's kind (another mcpu) that have no record with ``target`` yet, fastest first."""
    kind, mcpu = _cpu_of(target)
    own, foreign = set(), {}
    for record in _workload_records(database, task):
        key = "\n".join(record.trace.as_python(remove_postproc=False))  # with its decisions
        record_kind, record_mcpu = _cpu_of(record.target)
        if record_kind == kind and record_mcpu == mcpu:
            own.add(key)
        elif record_kind == kind and mean_ms(record.run_secs) is not None:
            if key not in foreign or mean_ms(record.run_secs) < mean_ms(foreign[key].run_secs):
                foreign[key] = record
    fastest = sorted(foreign.items(), key=lambda item: mean_ms(item[1].run_secs))[:count]
    return [record for key, record in fastest if key not in own]


# ------------------------------------------------------------------------------------ measuring


def build_candidate(mod: tvm.IRModule, target: tvm.target.Target, _params) -> tvm.runtime.Module:
    """MetaSchedule's default build without ``import tvm.s_tir.tensor_intrin``, which costs about
    29 s in every fresh builder worker and so hits the 30 s build timeout."""
    from tvm.driver import build as tvm_build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    return tvm_build(mod, target=target)


def export_candidate(linker: toolchain.Toolchain, mod: tvm.runtime.Module) -> str:
    """Link a candidate into a ``.so`` here, with the final library's toolchain: a phone has no
    compiler to link MetaSchedule's default ``.tar`` export."""
    path = os.path.join(tempfile.mkdtemp(prefix="tvmshuffle-candidate-"), "candidate.so")
    mod.export_library(path, fcompile=linker)
    return path


def _build_in_worker(f_build, f_export, mod: tvm.IRModule, target: tvm.target.Target) -> str:
    return f_export(f_build(mod, target, None))


BUILDS_PER_WORKER = 64  # then a builder worker is replaced (LLVM leaks a little per build)


@functools.cache
def _pooled_builder_class():
    from tvm.ir.utils import derived_object
    from tvm.s_tir import meta_schedule as ms
    from tvm.support.popen_pool import PopenPoolExecutor, StatusKind

    @derived_object
    class PooledBuilder(ms.builder.PyBuilder):
        """MetaSchedule's LocalBuilder with worker processes that outlive a batch. LocalBuilder
        starts new ones for every batch (against a memory leak), and each fresh worker imports
        TVM, which imports PyTorch: about 3 s a batch on 2 cores, more than building a small
        batch. Here a worker is replaced after BUILDS_PER_WORKER builds or a timeout."""

        def __init__(self, max_workers: int, timeout: float, f_build, f_export):
            super().__init__()
            self.f_build, self.f_export = f_build, f_export
            self.pool = PopenPoolExecutor(max_workers=max_workers, timeout=timeout,
                                          maximum_process_uses=BUILDS_PER_WORKER)
            self.timeout = timeout

        def build(self, build_inputs):
            results = []
            outcomes = self.pool.map_with_error_catching(
                lambda args: _build_in_worker(*args),
                [(self.f_build, self.f_export, inp.mod, inp.target) for inp in build_inputs])
            for outcome in outcomes:
                if outcome.status == StatusKind.COMPLETE:
                    results.append(ms.builder.BuilderResult(outcome.value, None))
                elif outcome.status == StatusKind.TIMEOUT:
                    results.append(ms.builder.BuilderResult(
                        None, f"build timed out after {self.timeout:g} s"))
                else:
                    results.append(ms.builder.BuilderResult(
                        None, f"build failed: {outcome.value}"))
            return results

        def close(self) -> None:
            self.pool.shutdown()

    return PooledBuilder


def _builder(config: TuneConfig):
    linker = toolchain.find(config.target, config.android_api)
    return _pooled_builder_class()(os.cpu_count() or 1, config.timeout, build_candidate,
                                   functools.partial(export_candidate, linker))


def _runner(config: TuneConfig, tracker: TrackerConfig, devices: int):
    from tvm.s_tir import meta_schedule as ms

    rpc_config = ms.runner.RPCConfig(tracker_host=tracker.host, tracker_port=tracker.port,
                                     tracker_key=tracker.key,
                                     session_timeout_sec=int(max(config.timeout,
                                                                 tracker.session_timeout)))
    if config.method.flush_caches:  # one call a timing: a second would find the caches warm
        evaluator = ms.runner.EvaluatorConfig(number=1, repeat=20, min_repeat_ms=0,
                                              enable_cpu_cache_flush=True)
    else:
        evaluator = ms.runner.EvaluatorConfig(number=3, repeat=3, min_repeat_ms=20,
                                              enable_cpu_cache_flush=False)
    return ms.runner.RPCRunner(rpc_config, evaluator, max_workers=devices)


def _build_and_run(builder, runner, kernels: list) -> Iterator[tuple[int, str, str | None,
                                                                       list[float] | None]]:
    """Build ``kernels`` ((module, target, args info) each) in one batch and run those that
    built on the device, yielding as results arrive: (index, step, error, run seconds), step
    "build" or "run", error None when it ran. Build directories are removed at the end."""
    from tvm.s_tir import meta_schedule as ms

    built = builder.build([ms.builder.BuilderInput(mod, target) for mod, target, _ in kernels])
    try:
        for i, result in enumerate(built):
            if result.error_msg:
                yield i, "build", result.error_msg, None
        ran = [i for i, result in enumerate(built) if not result.error_msg]
        futures = runner.run([ms.runner.RunnerInput(built[i].artifact_path, "cpu", kernels[i][2])
                              for i in ran])
        for i, future in zip(ran, futures):
            result = future.result()
            if result.error_msg or not result.run_secs:
                yield i, "run", result.error_msg or "no timing", None
            else:
                yield i, "run", None, [float(s) for s in result.run_secs]
    finally:
        for result in built:
            if result.artifact_path:
                ms.utils.remove_build_dir(result.artifact_path)


def measure_untuned(tasks: list[Task], builder, runner) -> dict[str, list[float] | None]:
    """Run times (seconds) of each task's kernel as TVM compiles it without a schedule, on the
    device: one batch of builds and runs for all tasks."""
    from tvm.s_tir import meta_schedule as ms

    if not tasks:
        return {}
    mods = [task.extracted.dispatched[0] for task in tasks]
    latencies: dict[str, list[float] | None] = {task.name: None for task in tasks}
    for i, step, error, secs in _build_and_run(builder, runner, [
            (mod, task.extracted.target, ms.arg_info.ArgInfo.from_prim_func(mod["main"]))
            for mod, task in zip(mods, tasks)]):
        if error:
            log.warning("untuned %s of %s failed: %s", step, tasks[i].name, error)
        latencies[tasks[i].name] = secs
    return latencies


def remeasure(tasks: list[Task], database, builder, runner,
              progress: Progress | None = None) -> dict[str, int]:
    """Re-time here, in one batch, each task's fastest schedules measured on another CPU
    (``foreign_schedules``) and record them with this target: the search then starts from what
    the other CPU found, compared with times measured here. Returns the count per task."""
    from tvm.s_tir import meta_schedule as ms

    picks = [(task, record) for task in tasks
             for record in foreign_schedules(database, task, task.extracted.target)]
    counts = {task.name: 0 for task in tasks}
    if not picks:
        return counts
    if progress is not None:
        progress.remeasuring(len(picks), sorted({_cpu_of(r.target)[1] for _, r in picks}))
    candidates = [record.as_measure_candidate() for _, record in picks]
    for i, step, error, secs in _build_and_run(builder, runner, [
            (c.sch.mod, task.extracted.target, c.args_info)
            for c, (task, _) in zip(candidates, picks)]):
        task, record = picks[i]
        if step == "build":  # a build yields only when it failed
            log.warning("re-timing a schedule of %s failed to build: %s", task.name, error)
            continue
        # a failed run is recorded as MetaSchedule records one (1e10 s): never picked, and not
        # re-timed again
        database.commit_tuning_record(ms.database.TuningRecord(
            record.trace, database.commit_workload(task.extracted.dispatched[0]),
            secs or [1e10], task.extracted.target, record.args_info))
        counts[task.name] += 1
    return counts


def seed_defaults(tasks: list[Task], database, builder,
                  runner) -> tuple[dict[str, float | None], set[str]]:
    """Time, in one batch, the default schedule (``defaults``) of each task whose database
    does not hold it yet, and record it with this target: each task's first measured
    candidate, so that its search starts from it (MetaSchedule's evolutionary search seeds its
    population with the database's fastest records) and ends at least as fast. Returns the
    default's ms per task (None: no default, or it failed; a failure is recorded as
    MetaSchedule records one, so it is not timed again) and the tasks timed now."""
    from tvm.s_tir import meta_schedule as ms

    found: dict[str, float | None] = {task.name: None for task in tasks}
    batch = []
    for task in tasks:
        mod = task.extracted.dispatched[0]
        default = defaults.default_schedule(mod, task.extracted.target)
        if default is None:
            continue
        signature = _signature(default.schedule.trace)
        known = [r for r in _records(database, task, task.extracted.target)
                 if _signature(r.trace) == signature]
        if known:
            found[task.name] = mean_ms(known[0].run_secs)
            continue
        batch.append((task, default))
    for i, step, error, secs in _build_and_run(builder, runner, [
            (d.schedule.mod, task.extracted.target,
             ms.arg_info.ArgInfo.from_prim_func(task.extracted.dispatched[0]["main"]))
            for task, d in batch]):
        task, default = batch[i]
        if error:
            log.warning("the default schedule of %s failed to %s: %s", task.name, step, error)
        database.commit_tuning_record(ms.database.TuningRecord(
            default.schedule.trace, database.commit_workload(task.extracted.dispatched[0]),
            secs or [1e10], task.extracted.target,
            ms.arg_info.ArgInfo.from_prim_func(task.extracted.dispatched[0]["main"])))
        found[task.name] = mean_ms(secs)
    return found, {task.name for task, _ in batch}


def keep_untuned_if_faster(database, task: Task, run_secs: list[float],
                           best: float | None) -> bool:
    """Record the kernel as TVM writes it without a schedule with its measured run time, when
    it beat every tuned candidate: applying the database then picks it. Small
    data-movement kernels (transposes, pooling) are often best left as they are, and the
    search keeps its best candidate even when that is slower. ``best``: the best time (ms)
    in the database for the task. True if recorded."""
    from tvm import s_tir
    from tvm.s_tir import meta_schedule as ms

    target = task.extracted.target
    untuned = mean_ms(run_secs)
    if untuned is None or (best is not None and best <= untuned):
        return False
    mod = task.extracted.dispatched[0]
    schedule = s_tir.Schedule(mod)
    # a trace that changes nothing: MetaSchedule's databases skip records with an empty trace
    schedule.get_sblock("root")
    database.commit_tuning_record(ms.database.TuningRecord(
        schedule.trace, database.commit_workload(mod), run_secs, target,
        ms.arg_info.ArgInfo.from_prim_func(mod["main"])))
    return True


def _signature(trace) -> str:
    """A schedule's instructions with their decisions, postprocessing left out: two records with
    one signature are the same candidate."""
    return "\n".join(trace.as_python(remove_postproc=True))


def _with_tiles(context, trace, insts: list, decisions: list[list[int]]):
    """The schedule ``trace`` makes with the tile ``decisions`` at ``insts``, postprocessed as
    MetaSchedule postprocesses a candidate; None when a step or a postprocessor rejects it."""
    from tvm import s_tir

    for inst, decision in zip(insts, decisions):
        trace = trace.with_decision(inst, decision, remove_postproc=True)
    mod = context.mod
    sch = s_tir.Schedule(mod)
    try:
        trace.apply_to_schedule(sch, remove_postproc=True)
        sch.enter_postproc()
        if not all(postproc.apply(sch) for postproc in context.space_generator.postprocs):
            return None
    except (tvm.TVMError, ValueError, RuntimeError) as err:
        log.debug("tile decisions %s rejected: %s", decisions, first_line(str(err)))
        return None
    return sch


def _timed(builder, runner, kernels: list, name: str) -> dict[int, list[float] | None]:
    """Run seconds of each kernel that built (None for a failed run), by index."""
    found = {}
    for i, step, error, secs in _build_and_run(builder, runner, kernels):
        if step == "build":
            log.warning("a tile neighbour of %s failed to build: %s", name, error)
        else:
            found[i] = secs
    return found


def _tile_decisions(trace) -> tuple[list, list[list[int]]]:
    """(the SamplePerfectTile instructions of a trace, their decisions)."""
    insts = [i for i in trace.insts if i.kind.name == "SamplePerfectTile"]
    return insts, [[int(v) for v in trace.decisions[i]] for i in insts]


def refine(task: Task, context, database, builder, runner, budget: int, stop: threading.Event,
           cold_runner=None) -> tuple[int, int, float | None]:
    """Time up to ``budget`` tile neighbours (``tiles``) of the task's fastest schedule that the
    database does not hold, through the same builder and runner as the search, and record them:
    first other register blocks, then, around the best so far, other inner reduction splits.

    With ``cold_runner`` (a database timed warm), a neighbour faster than the best is timed
    again with the caches flushed, beside the best, and recorded only if no slower so: in the
    network a kernel finds its weights out of the caches, and a register block faster warm can
    be slower there. A neighbour left out is timed again by a later refine. Returns (neighbours
    timed, of them not recorded, the task's best ms before). The neighbours are those of the
    fastest schedule tiled SSRSRS, also where an untuned kernel kept is faster still (one of them
    may beat it); nothing for a task with no such record (a pooling, no record yet)."""
    from tvm.s_tir import meta_schedule as ms

    target = task.extracted.target
    records = [r for r in _records(database, task, target) if mean_ms(r.run_secs) is not None]
    tiled = [r for r in records if tiles.split_levels(_tile_decisions(r.trace)[1]) is not None]
    if not tiled or budget <= 0:
        return 0, 0, None
    best = min(tiled, key=lambda r: mean_ms(r.run_secs))
    start_ms = min(mean_ms(r.run_secs) for r in records)
    seen = {_signature(r.trace) for r in _workload_records(database, task)}
    regs = tiles.registers(target)
    workload = database.commit_workload(task.extracted.dispatched[0])
    args_info = best.args_info
    timed = unrecorded = 0
    for stage in ("register blocks", "reduction splits"):
        if stop.is_set() or timed >= budget:
            break
        insts, decisions = _tile_decisions(best.trace)
        room = budget - timed
        if stage == "register blocks":
            neighbours = tiles.register_blocks(decisions, regs)
            # up to a quarter of the budget is left for the reduction splits
            room -= min(len(tiles.reduction_splits(decisions)), budget // 4)
        else:
            neighbours = tiles.reduction_splits(decisions)
        batch = []
        for candidate in neighbours:
            if len(batch) >= room:
                break
            sch = _with_tiles(context, best.trace, insts, candidate)
            if sch is not None and _signature(sch.trace) not in seen:
                seen.add(_signature(sch.trace))
                batch.append(sch)
        if not batch:
            continue
        secs = _timed(builder, runner, [(sch.mod, target, args_info) for sch in batch],
                      task.name)
        timed += len(secs)
        best_ms_now = mean_ms(best.run_secs)
        faster = [i for i, s in secs.items() if mean_ms(s) is not None
                  and mean_ms(s) < best_ms_now]
        rejected = set()
        if cold_runner is not None and faster:
            cold = _timed(builder, cold_runner, [
                (best.as_measure_candidate().sch.mod, target, args_info),
                *((batch[i].mod, target, args_info) for i in faster)], task.name)
            best_cold = mean_ms(cold.get(0))
            for n, i in enumerate(faster, start=1):
                pick_cold = mean_ms(cold.get(n))
                if best_cold is None or pick_cold is None or pick_cold > best_cold:
                    rejected.add(i)
                    log.info("%s: a %s neighbour %.4f ms warm against %.4f, but %s cold "
                             "against %s: not recorded", task.name, stage, mean_ms(secs[i]),
                             best_ms_now, pick_cold, best_cold)
        unrecorded += len(rejected)
        for i, s in secs.items():
            if i in rejected:
                continue
            # a failed run is recorded as MetaSchedule records one: never picked or retried
            record = ms.database.TuningRecord(batch[i].trace, workload, s or [1e10], target,
                                              args_info)
            database.commit_tuning_record(record)
            if s and mean_ms(s) is not None and mean_ms(s) < mean_ms(best.run_secs):
                best = record
    return timed, unrecorded, start_ms


# Files of stack frames that no module is loaded from: importlib's frozen modules, the code
# TVMScript's parser evaluates, and `python -c`. Never keys of sys.modules, so inspect finds no
# module for them, as its scan of sys.modules does.
_NO_MODULE_FILES = ("<frozen importlib._bootstrap>", "<frozen importlib._bootstrap_external>",
                    "<ast>", "<string>")


def import_tensor_intrinsics() -> None:
    """Import ``tvm.s_tir.tensor_intrin`` (MetaSchedule's TuneContext does, to register the
    intrinsics its schedule rules name) in about 4 s instead of 35-65
    (``benchmarks/intrin_import.py``).

    Each of its ~500 TVMScript functions calls ``inspect.stack()``, which asks
    ``inspect.getmodule`` for every frame's module; for a frame whose file is not on disk (the
    frozen importlib frames of any import, TVMScript's "<ast>", ``python -c``) it scans all of
    sys.modules (about 2,000 with torch loaded) and finds none. Telling inspect's file-to-module
    cache that these files have no module gives the same answer without the scans."""
    if "tvm.s_tir.tensor_intrin" in sys.modules:
        return
    added = [name for name in _NO_MODULE_FILES if name not in inspect.modulesbyfile]
    for name in added:
        inspect.modulesbyfile[name] = name
    try:
        import tvm.s_tir.tensor_intrin  # noqa: F401
    finally:
        for name in added:
            inspect.modulesbyfile.pop(name, None)


def _task_logger(db_dir: Path, task: Task) -> logging.Logger:
    """A file logger per task in the database's logs/ folder. MetaSchedule's own helper
    reconfigures logging globally and logs every trial to stdout, which carries --json."""
    logger = logging.getLogger(f"tvmshuffle.tune.task.{task.name}")
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    if not logger.handlers:
        (db_dir / "logs").mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(db_dir / "logs" / f"{task.name}.log")
        handler.setFormatter(logging.Formatter("%(asctime)s [%(levelname)s] %(message)s"))
        logger.addHandler(handler)
    return logger


def _context(task: Task, config: TuneConfig, budget: int):
    from tvm.s_tir import meta_schedule as ms

    import_tensor_intrinsics()  # before TuneContext imports them, once, when a task is tuned
    return ms.TuneContext(mod=task.extracted.dispatched[0], target=task.extracted.target,
                          space_generator="post-order-apply", search_strategy=_search(budget),
                          task_name=task.name, logger=_task_logger(config.db_dir, task),
                          rand_state=config.seed, num_threads="physical").clone()


def _search(budget: int):
    """Evolutionary search sized to the budget: MetaSchedule's population of 512 and four
    genetic rounds cost ~14 s per task on 2 cores, more than measuring a small budget."""
    from tvm.s_tir import meta_schedule as ms

    population = min(512, max(64, 16 * budget))
    return ms.search_strategy.EvolutionarySearch(population_size=population,
                                                 genetic_num_iters=4 if budget >= 32 else 2)


class _Stop(Exception):
    """Raised from a measure callback to end tune_tasks after a batch has been recorded."""


def _progress_callback(task: Task, progress: Progress, start_best: float | None,
                       stop: threading.Event, patience: int | None, budget: int,
                       saved: Callable[[], None] = lambda: None):
    from tvm.ir.utils import derived_object
    from tvm.s_tir import meta_schedule as ms

    @derived_object
    class _Report(ms.measure_callback.PyMeasureCallback):
        def __init__(self):
            self.done = 0
            self.best = start_best
            self.stale = 0  # trials since the best last improved by GAIN or more
            self.converged = False

        def apply(self, task_scheduler, task_id, measure_candidates, builder_results,
                  runner_results):
            saved()  # the database callback before this one has recorded the batch
            for result in runner_results:
                self.done += 1
                self.stale += 1
                ms_value = None if result.error_msg else mean_ms(result.run_secs)
                if ms_value is not None:
                    if self.best is None or ms_value < self.best * (1 - GAIN):
                        self.stale = 0
                    self.best = ms_value if self.best is None else min(self.best, ms_value)
            progress.trials(task, self.done, self.best)
            if stop.is_set():  # the database callback before this one has saved the batch
                raise _Stop()
            # converged means stopped early: a stale last batch of the budget ends it anyway
            if patience and self.stale >= patience and self.done < budget:
                self.converged = True
                raise _Stop()

    return _Report()


# --------------------------------------------------------------------------------------- tuning


def plan(tasks: list[Task], config: TuneConfig, database) -> dict[str, tuple[int, int]]:
    """Per task: (records already in the database, trials still to run).

    With ``trials_per_task`` every task gets that budget. Without it, ``trials`` is shared out
    where the time is: each task first gets an even share of up to WARMUP trials, and whatever
    is left goes to tasks in proportion to their weighted latency (calls x best measured time)
    once every task has been measured, else to their weighted FLOPs (calls x multiply-adds).
    Budgets count the records already there, so re-running an interrupted command finishes the
    same budget, and a larger ``trials`` on a tuned database buys trials for the heavy tasks."""
    target = config.target.tvm_target
    records = {task.name: _records(database, task, target) for task in tasks}
    before = {name: len(found) for name, found in records.items()}
    if config.trials_per_task:
        goal = {task.name: config.trials_per_task for task in tasks}
    else:
        goal = _shares(tasks, config.trials, {t.name: best_ms(records[t.name]) for t in tasks})
    remaining = config.trials - sum(min(before[name], goal[name]) for name in goal)
    result = {}
    for task in tasks:
        todo = max(0, min(goal[task.name] - before[task.name], remaining))
        remaining -= todo
        result[task.name] = (before[task.name], todo)
    return result


WARMUP = 32  # trials every task gets before any task gets more


def _shares(tasks: list[Task], trials: int, best: dict[str, float | None]) -> dict[str, int]:
    """Per-task budgets summing to about ``trials``: an even warm-up, the rest by cost."""
    if not tasks:
        return {}
    floor = min(WARMUP, math.ceil(trials / len(tasks)))
    extra = trials - floor * len(tasks)
    if extra <= 0:
        return {task.name: floor for task in tasks}
    if all(best[task.name] for task in tasks):
        cost = {task.name: task.weight * best[task.name] for task in tasks}
    else:
        cost = {task.name: task.weight * task.macs for task in tasks}
    total = sum(cost.values())
    if total <= 0:  # nothing measured or counted: an even spread
        cost, total = {task.name: 1.0 for task in tasks}, float(len(tasks))
    return {name: floor + round(extra * c / total) for name, c in cost.items()}


def tune(mod: tvm.IRModule, config: TuneConfig, tracker: TrackerConfig, devices: int,
         progress: Progress | None = None) -> list[TaskResult]:
    """Tune the selected tasks of ``mod`` into the database in ``config.db_dir``."""
    return tune_tasks(tasks_of(mod, config), config, tracker, devices, progress)


def tasks_of(mod: tvm.IRModule, config: TuneConfig) -> list[Task]:
    """The tasks of ``mod`` that ``config`` tunes (no device needed yet); BadInputError if the
    database holds records of another method."""
    settle_method(config.db_dir, config.method.prepack, config.method.flush_caches)  # a mix?
    return select(extract_tasks(mod, config), config.ops)


def tune_tasks(tasks: list[Task], config: TuneConfig, tracker: TrackerConfig, devices: int,
               progress: Progress | None = None) -> list[TaskResult]:
    """Tune ``tasks`` (from ``tasks_of``) into the database in ``config.db_dir``.

    Ctrl-C ends tuning after the batch being measured is recorded, then raises
    KeyboardInterrupt: the database keeps every record, a re-run resumes."""
    import xgboost  # noqa: F401 - imported here, not inside a callback that Ctrl-C may hit

    progress = progress or Progress()
    view = TaskDatabase(config.db_dir, [task.extracted.dispatched[0] for task in tasks])
    write_method(config.db_dir, config.method)
    builder = _builder(config)
    try:
        return _interruptible(lambda stop: _tune_tasks(tasks, config, view, builder, tracker,
                                                       devices, progress, stop))
    finally:
        builder.close()
        view.close()  # the last records reach db_dir whatever ended the tune


def _interruptible(work: Callable[[threading.Event], list[TaskResult]]) -> list[TaskResult]:
    """Run ``work`` in a thread so that Ctrl-C lands in plain Python (here), never inside
    MetaSchedule's C++ loop or a callback it runs, where it crashes the process."""
    stop = threading.Event()
    outcome: dict = {}

    def run():
        try:
            outcome["value"] = work(stop)
        except BaseException as err:  # handed to the main thread
            outcome["error"] = err

    thread = threading.Thread(target=run, name="tvmshuffle-tune", daemon=True)
    thread.start()
    try:
        while thread.is_alive():
            thread.join(0.2)
    except KeyboardInterrupt:
        stop.set()
        thread.join()
        raise
    error = outcome.get("error")
    if error is not None:
        raise error
    return outcome["value"]


def _tune_tasks(tasks: list[Task], config: TuneConfig, view: TaskDatabase, builder,
                tracker: TrackerConfig, devices: int, progress: Progress,
                stop: threading.Event) -> list[TaskResult]:
    from tvm.s_tir import meta_schedule as ms

    database = view.database
    runner = _runner(config, tracker, devices)
    cold_runner = None  # refine's second look at warm winners, with the caches flushed
    if config.refine and not config.method.flush_caches:
        cold_runner = _runner(replace(config, method=replace(config.method, flush_caches=True)),
                              tracker, devices)
    remeasured = remeasure(tasks, database, builder, runner, progress)
    view.sync()
    if stop.is_set():
        raise KeyboardInterrupt
    default_ms, seeded = seed_defaults(tasks, database, builder, runner)
    view.sync()
    if stop.is_set():
        raise KeyboardInterrupt
    budget = plan(tasks, config, database)
    progress.start(tasks, {name: todo for name, (_, todo) in budget.items()})
    # one XGBoost model for all tasks, so what it learns on one conv helps the next; it ranks
    # candidates after 16 measurements instead of MetaSchedule's 100 (our budgets are small)
    cost_model = ms.cost_model.XGBModel(num_warmup_samples=16)
    target = config.target.tvm_target
    # untuned latency only of the tasks tuned now: resumed ones keep the table's "-"
    untuned = {task.name: None for task in tasks}
    untuned.update(measure_untuned([t for t in tasks if budget[t.name][1] > 0], builder, runner))
    results = []
    for task in tasks:
        if stop.is_set():
            raise KeyboardInterrupt
        before, todo = budget[task.name]
        # the default timed now is this run's first trial, not a resumed one (the budget
        # counts it either way)
        before -= task.name in seeded
        untuned_secs = untuned[task.name]
        result = TaskResult(task, before, untuned_ms=mean_ms(untuned_secs),
                            remeasured=remeasured[task.name], default_ms=default_ms[task.name])
        progress.task_started(task, todo)
        if todo > 0:
            report = _progress_callback(task, progress, best_ms(_records(database, task, target)),
                                        stop, config.patience, todo, view.sync)
            callbacks = [*ms.measure_callback.MeasureCallback.create("default"), report]
            try:
                ms.tune_tasks(tasks=[_context(task, config, todo)],
                              task_weights=[float(task.weight)], work_dir=str(config.db_dir),
                              max_trials_global=todo, max_trials_per_task=todo,
                              num_trials_per_iter=min(todo, 32), builder=builder,
                              runner=runner, database=database, cost_model=cost_model,
                              measure_callbacks=callbacks, task_scheduler="round-robin")
            except Exception:
                if stop.is_set():  # our _Stop, come back through MetaSchedule's C++ loop
                    raise KeyboardInterrupt from None
                if not report.converged:
                    raise
                log.info("%s: no 1%% gain in %d trials, stopped early", task.name,
                         config.patience)
                result.converged = True
        if config.refine and not stop.is_set():
            progress.refining(task, config.refine)
            result.refined, result.refined_rejected, result.refined_from_ms = refine(
                task, _context(task, config, 1), database, builder, runner, config.refine, stop,
                cold_runner)
            view.sync()
        records = _records(database, task, target)  # one scan of the database per task
        result.trials_run = len(records) - before
        result.tuned_ms = best_ms(records)
        if untuned_secs is not None and keep_untuned_if_faster(database, task, untuned_secs,
                                                               result.tuned_ms):
            result.kept_untuned = True
            result.tuned_ms = result.untuned_ms  # the best record is now the unscheduled one
            view.sync()
        progress.task_finished(result)
        results.append(result)
    return results
