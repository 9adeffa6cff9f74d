"""``tune --refine``: tile neighbours (``tiles``) of each task's fastest schedule, timed and
recorded like trials."""

from __future__ import annotations

import logging
import threading
from typing import Callable

from .. import tiles
from ..errors import first_line
from ..records import mean_ms
from .builders import _build_and_run
from .tasks import Task, _records, _signature, _workload_records

log = logging.getLogger(__name__)


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
    except (RuntimeError, ValueError) as err:  # TVM: InternalError, ScheduleError...
        log.debug("tile decisions %s rejected: %s", decisions, first_line(str(err)))
        return None
    return sch


def _timed(builder, runner, kernels: list, name: str, stop: threading.Event,
           device_left: Callable[[], bool] | None = None) -> dict[int, list[float] | None]:
    """Run seconds of each kernel that built (None for a failed run), by index; only those
    timed before ``stop`` was set."""
    found = {}
    for i, step, error, secs in _build_and_run(builder, runner, kernels, stop, device_left):
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
           cold_runner=None, device_left: Callable[[], bool] | None = None
           ) -> tuple[int, int, float | None]:
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
                      task.name, stop, device_left)
        timed += len(secs)
        best_ms_now = mean_ms(best.run_secs)
        faster = [i for i, s in secs.items() if mean_ms(s) is not None
                  and mean_ms(s) < best_ms_now]
        rejected = set()
        if cold_runner is not None and faster:
            cold = _timed(builder, cold_runner, [
                (best.as_measure_candidate().sch.mod, target, args_info),
                *((batch[i].mod, target, args_info) for i in faster)], task.name, stop,
                device_left)
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
