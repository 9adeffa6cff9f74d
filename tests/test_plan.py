"""How `tune` shares a trial budget among tasks (even warm-up, then where the time is) and
when a task's search stops early."""

from __future__ import annotations

import threading

import pytest
from tvmshuffle import tune


def _task(name: str, weight: int, macs: int) -> tune.Task:
    return tune.Task(name, "grouped", weight, macs, extracted=None)


TASKS = [_task("heavy", 7, 4_000_000), _task("light", 1, 1_000_000), _task("mid", 3, 2_000_000)]


def test_small_budgets_are_spread_evenly():
    """Up to the warm-up per task, every task gets the same share (rounded up)."""
    shares = tune._shares(TASKS, 60, {t.name: None for t in TASKS})
    assert shares == {"heavy": 20, "light": 20, "mid": 20}


def test_beyond_the_warm_up_trials_follow_the_weighted_flops_before_measurements():
    """With tasks not yet measured, the budget past the warm-up follows calls x multiply-adds."""
    shares = tune._shares(TASKS, 3 * tune.WARMUP + 360, {t.name: None for t in TASKS})
    # weighted FLOPs 28 : 1 : 6 (in millions of MACs)
    assert shares == {"heavy": 32 + 288, "light": 32 + 10, "mid": 32 + 62}


def test_beyond_the_warm_up_trials_follow_the_weighted_latency_once_measured():
    """Once every task has a best time, the extra budget follows calls x best latency, so a
    light task that runs slowly gets more than its FLOPs would give it."""
    best = {"heavy": 0.1, "light": 1.3, "mid": 0.1}  # ms; weighted 0.7 : 1.3 : 0.3
    shares = tune._shares(TASKS, 3 * tune.WARMUP + 230, best)
    assert shares == {"heavy": 32 + 70, "light": 32 + 130, "mid": 32 + 30}
    assert sum(shares.values()) == 3 * tune.WARMUP + 230


class _Quiet:
    def trials(self, *args):
        pass


def _batches_until_stopped(batches: list[list[float]], patience: int, budget: int):
    """Feed measured batches (seconds per trial) to the progress callback as MetaSchedule
    would; returns (batches seen before it stopped the search, converged)."""
    from tvm.s_tir import meta_schedule as ms

    scheduler = ms.task_scheduler.TaskScheduler.create("round-robin")
    report = tune._progress_callback(TASKS[0], _Quiet(), None, threading.Event(), patience,
                                     budget)
    for seen, batch in enumerate(batches, 1):
        results = [ms.runner.RunnerResult([secs], None) for secs in batch]
        try:
            report.apply(scheduler, 0, [], [], results)
        except Exception:  # its _Stop, raised back through the FFI
            return seen, report.converged
    return len(batches), report.converged


@pytest.mark.parametrize("first, stops_after, converged", [
    ([2e-3] * 31 + [1e-3], 2, False),  # the batch's last trial was its best: the budget runs out
    ([1e-3] + [2e-3] * 31, 1, True),  # 31 trials without a gain: stopped before the budget
])
def test_patience_stops_a_task_only_before_its_budget(first, stops_after, converged):
    """A task is converged (stopped early) when `patience` trials brought no 1% gain and
    trials of its budget are left; a stale last batch of the budget is not an early stop."""
    assert _batches_until_stopped([first, [1e-3] * 8], patience=8, budget=40) == (
        stops_after, converged)
