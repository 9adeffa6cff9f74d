"""Candidates timed before a search: TVM's unscheduled kernels, schedules measured on another
CPU, and each task's default schedule (``defaults``), the search's first candidate."""

from __future__ import annotations

import logging
import threading
from typing import Callable

from .. import schedule_cache
from ..records import mean_ms
from .builders import _build_and_run
from .tasks import Progress, Task, _cpu_of, _records, _signature, foreign_schedules

log = logging.getLogger(__name__)


def measure_untuned(tasks: list[Task], builder, runner, stop: threading.Event | None = None,
                    device_left: Callable[[], bool] | None = None
                    ) -> dict[str, list[float] | None]:
    """Run times (seconds) of each task's kernel as TVM compiles it without a schedule, on the
    device: one batch of builds and runs for all tasks (cut short once ``stop`` is set)."""
    from tvm.s_tir import meta_schedule as ms

    if not tasks:
        return {}
    mods = [task.extracted.dispatched[0] for task in tasks]
    latencies: dict[str, list[float] | None] = {task.name: None for task in tasks}
    for i, step, error, secs in _build_and_run(builder, runner, [
            (mod, task.extracted.target, ms.arg_info.ArgInfo.from_prim_func(mod["main"]))
            for mod, task in zip(mods, tasks)], stop, device_left):
        if error:
            log.warning("untuned %s of %s failed: %s", step, tasks[i].name, error)
        latencies[tasks[i].name] = secs
    return latencies


def remeasure(tasks: list[Task], database, builder, runner, progress: Progress | None = None,
              stop: threading.Event | None = None,
              device_left: Callable[[], bool] | None = None) -> dict[str, int]:
    """Re-time here, in one batch, each task's fastest schedules measured on another CPU
    (``foreign_schedules``) and record them with this target: the search then starts from what
    the other CPU found, compared with times measured here. Returns the count per task.
    Once ``stop`` is set, nothing more is recorded."""
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
            for c, (task, _) in zip(candidates, picks)], stop, device_left):
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


def seed_defaults(tasks: list[Task], database, builder, runner,
                  stop: threading.Event | None = None,
                  device_left: Callable[[], bool] | None = None
                  ) -> tuple[dict[str, float | None], set[str]]:
    """Time, in one batch, the default schedule (``defaults``) of each task whose database
    does not hold it yet, and record it with this target: each task's first measured
    candidate, so that its search starts from it (MetaSchedule's evolutionary search seeds its
    population with the database's fastest records) and ends at least as fast. Returns the
    default's ms per task (None: no default, or it failed; a failure of the kernel is recorded
    as MetaSchedule records one, so it is not timed again, while a batch the device failed
    throughout records nothing (``_build_and_run``) and is timed by the next tune; once ``stop``
    is set nothing more is recorded) and the tasks whose default was recorded now."""
    from tvm.s_tir import meta_schedule as ms

    found: dict[str, float | None] = {task.name: None for task in tasks}
    batch = []
    for task in tasks:
        mod = task.extracted.dispatched[0]
        default = schedule_cache.default_schedule(mod, task.extracted.target)
        if default is None:
            continue
        signature = _signature(default.schedule.trace)
        known = [r for r in _records(database, task, task.extracted.target)
                 if _signature(r.trace) == signature]
        if known:
            found[task.name] = mean_ms(known[0].run_secs)
            continue
        # the arguments as the schedule takes them, as MetaSchedule gives its candidates (with
        # prepacked weights, the weights in their packed layout)
        batch.append((task, default, ms.arg_info.ArgInfo.from_entry_func(default.schedule.mod,
                                                                          remove_preproc=True)))
    recorded = set()
    for i, step, error, secs in _build_and_run(builder, runner, [
            (d.schedule.mod, task.extracted.target, args) for task, d, args in batch], stop,
            device_left):
        task, default, args = batch[i]
        if error:
            log.warning("the default schedule of %s failed to %s: %s", task.name, step, error)
        database.commit_tuning_record(ms.database.TuningRecord(
            default.schedule.trace, database.commit_workload(task.extracted.dispatched[0]),
            secs or [1e10], task.extracted.target, args))
        found[task.name] = mean_ms(secs)
        recorded.add(task.name)
    return found, recorded


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
