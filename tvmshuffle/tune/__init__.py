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

The package, a module a step: ``tasks`` (the configuration, the tasks and their records),
``builders`` (building and timing candidates), ``measure`` (what is timed before a search:
unscheduled kernels, other CPUs' schedules, the default schedules), ``budget`` (trials per
task), ``search`` (the tuning loop) and ``refine`` (tile neighbours of the best).
"""

from __future__ import annotations

# private names too: tests and benchmarks reach them as tune._name
from .budget import WARMUP, _shares, plan
from .builders import (BUILDS_PER_WORKER, _NO_MODULE_FILES, _build_and_run, _builder, _runner,
                       build_candidate, export_candidate, import_tensor_intrinsics)
from .measure import keep_untuned_if_faster, measure_untuned, remeasure, seed_defaults
from .refine import refine
from .search import GAIN, _progress_callback, tasks_of, tune, tune_tasks
from .tasks import (DEFAULT_OPS, OPS_CHOICES, REMEASURE, Progress, Task, TaskResult, TuneConfig,
                    _cpu_of, _records, _signature, _workload_records, extract_tasks,
                    foreign_schedules, select)

__all__ = [
    "BUILDS_PER_WORKER", "DEFAULT_OPS", "GAIN", "OPS_CHOICES", "REMEASURE", "WARMUP", "Progress",
    "Task", "TaskResult", "TuneConfig", "build_candidate", "export_candidate", "extract_tasks",
    "foreign_schedules", "import_tensor_intrinsics", "keep_untuned_if_faster",
    "measure_untuned", "plan", "refine", "remeasure", "seed_defaults", "select", "tasks_of",
    "tune", "tune_tasks",
]


from .._callable import make_callable  # noqa: E402 - tvmshuffle.tune(...) is api.tune

make_callable(__name__)
