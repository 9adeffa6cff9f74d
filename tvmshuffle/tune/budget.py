"""How a trial budget is shared out over the tasks of a tune."""

from __future__ import annotations

import math

from ..records import best_ms
from .tasks import Task, TuneConfig, _records


def plan(tasks: list[Task], config: TuneConfig, database,
         spent: dict[str, int] | None = None) -> dict[str, tuple[int, int]]:
    """Per task: (trials already spent: its records in the database, and ``spent``, those a
    compacted database no longer shows; trials still to run).

    With ``trials_per_task`` every task gets that budget. Without it, ``trials`` is shared out
    where the time is: each task first gets an even share of up to WARMUP trials, and whatever
    is left goes to tasks in proportion to their weighted latency (calls x best measured time)
    once every task has been measured, else to their weighted FLOPs (calls x multiply-adds).
    Budgets count the records already there, so re-running an interrupted command finishes the
    same budget, and a larger ``trials`` on a tuned database buys trials for the heavy tasks."""
    target = config.target.tvm_target
    records = {task.name: _records(database, task, target) for task in tasks}
    before = {name: len(found) + (spent or {}).get(name, 0) for name, found in records.items()}
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
