"""A model's tuning tasks: what tune is configured with, the fused kernels it tunes (their
kind and weight), and the records of each in a database."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import tvm

from .. import pipeline, toolchain
from ..records import DEFAULT_METHOD, Method, mean_ms
from ..target import TargetConfig

log = logging.getLogger(__name__)

OPS_CHOICES = ("grouped", "depthwise", "conv", "dense", "other")
DEFAULT_OPS = ("grouped", "depthwise")


@dataclass(frozen=True)
class TuneConfig:
    target: TargetConfig
    db_dir: Path | None  # None: tasks are extracted, nothing is tuned
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
    # databases whose records of a kernel db_dir has none of are copied into it first (the
    # shipped database, when tuning into the user's): the tune resumes from them, their trials
    # counted, the other CPUs' schedules among them re-timed here
    seed_dbs: tuple[Path, ...] = ()

    def __post_init__(self):
        from .. import places

        if self.db_dir is not None:
            places.writable(Path(self.db_dir))
        object.__setattr__(self, "seed_dbs",
                           tuple(places.readable(Path(db)) for db in self.seed_dbs))


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

    def seeded(self, count: int, seeds: list[str]) -> None: ...

    def remeasuring(self, count: int, cpus: list[str]) -> None: ...

    def start(self, tasks: list[Task], budget: dict[str, int]) -> None: ...

    def task_started(self, task: Task, budget: int) -> None: ...

    def refining(self, task: Task, count: int) -> None: ...

    def trials(self, task: Task, done: int, best_ms: float | None) -> None: ...

    def task_finished(self, result: TaskResult) -> None: ...


# ---------------------------------------------------------------------------------------- tasks


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
        kind, macs = pipeline.kernel_work(extracted.dispatched[0]["main"], config.layout)
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


def _signature(trace) -> str:
    """A schedule's instructions with their decisions, postprocessing left out: two records with
    one signature are the same candidate."""
    return "\n".join(trace.as_python(remove_postproc=True))
