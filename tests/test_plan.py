"""How `tune` shares a trial budget among tasks: even warm-up, then where the time is."""

from __future__ import annotations

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
