"""The tuning loop: per task, MetaSchedule's evolutionary search (XGBoost cost model), early
stopping, refine, and Ctrl-C handled where it cannot crash MetaSchedule's C++ loop."""

from __future__ import annotations

import logging
import threading
from dataclasses import replace
from pathlib import Path
from typing import Callable

import tvm

from .. import interrupts, space
from ..errors import DeviceError, TvmShuffleError, first_line
from ..records import (LEGACY_METHOD, best_ms, database_method, mean_ms, settle_method,
                       write_method)
from ..remote import TrackerConfig, free_devices
from ..taskdb import TaskDatabase
from .budget import plan
from .builders import _builder, _runner, import_tensor_intrinsics
from .measure import keep_untuned_if_faster, measure_untuned, remeasure, seed_defaults
from .refine import refine
from .tasks import Progress, Task, TaskResult, TuneConfig, _records, extract_tasks, select

log = logging.getLogger(__name__)


GAIN = 0.01  # an improvement smaller than 1% does not count as progress for early stopping


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
                          space_generator=space.space_generator(task.extracted.target),
                          search_strategy=_search(budget),
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
                       saved: Callable[[], None] = lambda: None,
                       devices_left: Callable[[], None] = lambda: None):
    """The measure callback that reports each batch, saves it, and ends the task's search
    (raising _Stop) on Ctrl-C, on ``patience`` trials without a gain, or when a batch failed
    to run throughout and ``devices_left`` raises (no device left under the key: ``lost``)."""
    from tvm.ir.utils import derived_object
    from tvm.s_tir import meta_schedule as ms

    @derived_object
    class _Report(ms.measure_callback.PyMeasureCallback):
        def __init__(self):
            self.done = 0
            self.best = start_best
            self.stale = 0  # trials since the best last improved by GAIN or more
            self.converged = False
            self.lost = None  # the DeviceError that ended the search

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
            if runner_results and all(r.error_msg for r in runner_results):
                try:
                    devices_left()
                except DeviceError as err:
                    self.lost = err
                    raise _Stop() from None
            # converged means stopped early: a stale last batch of the budget ends it anyway
            if patience and self.stale >= patience and self.done < budget:
                self.converged = True
                raise _Stop()

    return _Report()


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
    # a seed's records count only if made as this tune makes its own
    seeds = tuple(seed for seed in config.seed_dbs
                  if (database_method(seed) or LEGACY_METHOD) == config.method)
    view = TaskDatabase(config.db_dir, [task.extracted.dispatched[0] for task in tasks], seeds)
    if view.seeded:
        log.info("%d records of %s copied into %s to start from", view.seeded,
                 ", ".join(map(str, seeds)), config.db_dir)
        progress.seeded(view.seeded, [str(seed) for seed in seeds])
    write_method(config.db_dir, config.method)
    builder = _builder(config)
    try:
        return _interruptible(lambda stop: _tune_tasks(tasks, config, view, builder, tracker,
                                                       devices, progress, stop))
    finally:
        builder.close()
        view.close()  # the last records reach db_dir whatever ended the tune


def _interruptible(work: Callable[[threading.Event], list[TaskResult]]) -> list[TaskResult]:
    """Run ``work(stop)`` so that Ctrl-C lands in plain Python, never inside MetaSchedule's C++
    loop or a callback it runs, where it crashes the process; ``work`` checks ``stop`` between
    batches and raises KeyboardInterrupt.

    In the command line's worker thread no signal is raised: ``interrupts.STOP`` says it, and
    the main thread waits for this shielded region. Called from the main thread (the Python
    API), ``work`` runs in a thread of its own and a KeyboardInterrupt here sets ``stop``."""
    if interrupts.in_command_thread():
        with interrupts.shielded():
            return work(interrupts.STOP)
    stop = threading.Event()
    # the wait on an Event (``interrupts.in_thread``): with Thread.join the cleanup stopped the
    # tracker under a tune still measuring, which retried it for a minute per candidate
    # (seen: no exit 300 s after SIGINT)
    done, outcome = interrupts.in_thread(lambda: work(stop), "tvmshuffle-tune")
    try:
        while not done.wait(0.2):
            pass
    except KeyboardInterrupt:
        stop.set()
        while not done.wait(0.2):  # the batch being measured ends, nothing more is started
            pass
        raise
    return interrupts.result(outcome)


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
    def device_left() -> bool:
        """Whether a device is still registered under the key (a batch that failed throughout
        is the device's failure only when none is)."""
        try:
            return free_devices(tracker, timeout=10.0) > 0
        except DeviceError:
            return False

    remeasured = remeasure(tasks, database, builder, runner, progress, stop, device_left)
    view.sync()
    if stop.is_set():
        raise KeyboardInterrupt
    target = config.target.tvm_target
    spent = {task.name: view.spent(task.extracted.dispatched[0], target) for task in tasks}
    budget = plan(tasks, config, database, spent)
    # each task tuned now has its default timed first, as the first of its trials (a task at
    # its budget measures nothing)
    tuned_now = [t for t in tasks if budget[t.name][1] > 0]
    default_ms, seeded = seed_defaults(tuned_now, database, builder, runner, stop, device_left)
    view.sync()
    if stop.is_set():
        raise KeyboardInterrupt
    budget = {name: (before, todo - (name in seeded)) for name, (before, todo) in budget.items()}
    progress.start(tasks, {name: todo for name, (_, todo) in budget.items()})
    # one XGBoost model for all tasks, so what it learns on one conv helps the next; it ranks
    # candidates after 16 measurements instead of MetaSchedule's 100 (our budgets are small)
    cost_model = ms.cost_model.XGBModel(num_warmup_samples=16)
    # untuned latency only of the tasks tuned now: resumed ones keep the table's "-"
    untuned = {task.name: None for task in tasks}
    untuned.update(measure_untuned(tuned_now, builder, runner, stop, device_left))
    if stop.is_set():
        raise KeyboardInterrupt
    results = []
    for task in tasks:
        if stop.is_set():
            raise KeyboardInterrupt
        before, todo = budget[task.name]
        untuned_secs = untuned[task.name]
        result = TaskResult(task, before, untuned_ms=mean_ms(untuned_secs),
                            remeasured=remeasured[task.name],
                            default_ms=default_ms.get(task.name))
        progress.task_started(task, todo)
        if todo > 0:
            report = _progress_callback(task, progress, best_ms(_records(database, task, target)),
                                        stop, config.patience, todo, view.sync,
                                        lambda: free_devices(tracker, timeout=10.0))
            callbacks = [*ms.measure_callback.MeasureCallback.create("default"), report]
            try:
                ms.tune_tasks(tasks=[_context(task, config, todo)],
                              task_weights=[float(task.weight)], work_dir=str(config.db_dir),
                              max_trials_global=todo, max_trials_per_task=todo,
                              num_trials_per_iter=min(todo, 32), builder=builder,
                              runner=runner, database=database, cost_model=cost_model,
                              measure_callbacks=callbacks, task_scheduler="round-robin")
            except Exception as err:
                if stop.is_set():  # our _Stop, come back through MetaSchedule's C++ loop
                    raise KeyboardInterrupt from None
                if report.lost is not None:
                    raise DeviceError(f"tuning {task.name} stopped: {report.lost} (every "
                                      "record measured so far is kept; re-run to resume)"
                                      ) from None
                if not report.converged:
                    # a failure inside MetaSchedule's search (C++): one line, the trace logged
                    log.debug("MetaSchedule failed on %s", task.name, exc_info=True)
                    raise TvmShuffleError(f"tuning {task.name} failed inside MetaSchedule: "
                                          f"{first_line(err)} (every record measured so far "
                                          "is kept; the full trace is in the log file)"
                                          ) from None
                log.info("%s: no 1%% gain in %d trials, stopped early", task.name,
                         config.patience)
                result.converged = True
        if config.refine and not stop.is_set():
            progress.refining(task, config.refine)
            result.refined, result.refined_rejected, result.refined_from_ms = refine(
                task, _context(task, config, 1), database, builder, runner, config.refine, stop,
                cold_runner, device_left)
            view.sync()
        records = _records(database, task, target)  # one scan of the database per task
        result.trials_run = len(records) - (before - spent[task.name])
        result.tuned_ms = best_ms(records)
        if untuned_secs is not None and keep_untuned_if_faster(database, task, untuned_secs,
                                                               result.tuned_ms):
            result.kept_untuned = True
            result.tuned_ms = result.untuned_ms  # the best record is now the unscheduled one
            view.sync()
        progress.task_finished(result)
        results.append(result)
    return results
