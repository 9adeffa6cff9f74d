"""Each kernel's schedule chosen by its time inside the network: ``tvmshuffle pick``.

Tuning times a kernel alone, in a loop. In the network it runs after other kernels, with its
weights and inputs partly out of the caches, and its candidates no longer rank as they did alone:
ShuffleNet's tuned kernels ran 15-60% slower in the network than alone, and neither warm nor
flushed timing alone predicted their order there (benchmarks/RESULTS.md, sessions 5 and 11). So,
on this machine (``vm.set_instrument`` times kernel calls only in a local VM):

1. each kernel the database tuned gets up to ``candidates`` schedules: the one ``compile``
   applies now, then the other fastest distinct ones measured with this target, within
   ``within`` times the fastest;
2. the network is built once per rank: the r-th build gives every kernel its r-th candidate
   (its current one where it has fewer);
3. the builds run interleaved, every kernel call timed, each kernel's time per inference the
   median over ``runs`` inferences of a build;
4. a kernel takes the candidate fastest in the network when that beats its current one by
   MARGIN (a kernel's time in one build moves by a few percent from run to run);
5. the network with those picks is checked against the reference and timed whole against the
   current one, interleaved, ``checks`` times. Only when it is faster every time (by chance
   alone, 1 in 2**checks) are the picks appended to the database's PICKS_FILE, which
   ``compile`` follows; the records' times stay as measured.
"""

from __future__ import annotations

import datetime
import logging
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import tvm

from . import bench, export, frontends, pipeline, records
from .errors import BadInputError, BuildError, DatabaseError
from .target import TargetConfig

log = logging.getLogger(__name__)

MARGIN = 0.03  # a candidate replaces a kernel's current schedule only this much faster


@dataclass(frozen=True)
class PickConfig:
    target: TargetConfig
    db_dir: Path
    fuse_shuffle: bool = True
    layout: str = pipeline.DEFAULT_LAYOUT  # of the convolutions, as the records were tuned
    candidates: int = 4  # schedules judged per kernel, its current one included
    within: float = 1.5  # candidates at most this many times slower alone than the fastest
    runs: int = 200  # instrumented inferences of each build (an inference costs ms, a build s)
    checks: int = 5  # whole-network timings of the picks against the current schedules

    def __post_init__(self):
        from . import places

        places.writable(Path(self.db_dir))  # picks are appended to it


@dataclass
class KernelChoice:
    name: str
    calls: int  # per inference
    alone_ms: list[float]  # each candidate's recorded time, the current one first
    network_ms: list[float]  # each candidate's time per inference in the network
    chosen: int  # index into the candidates


@dataclass
class PickResult:
    model: str
    kernels: list[KernelChoice]  # those with two or more candidates
    current_ms: float | None  # whole network with the schedules compile applies now
    picked_ms: float | None  # with the picks (None: every kernel kept its schedule)
    max_abs_err: float | None  # of the network with the picks, against the reference
    written: int  # pick lines appended
    builds: int
    seconds: float
    # (current, picked) median ms of each whole-network timing (100 calls each, interleaved)
    checks: list[tuple[float, float]] = field(default_factory=list)


@dataclass
class _Kernel:
    name: str
    index: int  # workload index in the database
    candidates: list[list]  # records as JSON, the current one first


def _kernels(mod: tvm.IRModule, config: PickConfig, ranked: records.Ranked,
             current: dict[int, list]) -> list[_Kernel]:
    """The model's tuned kernels with their candidates (one or more each)."""
    from tvm.s_tir import meta_schedule as ms

    target = config.target.tvm_target
    extracted = ms.relax_integration.extract_tasks(mod, target)
    hashes = records.workload_hashes(config.db_dir, [t.dispatched[0] for t in extracted])
    index_of = {ranked.hashes[i]: i for i in ranked.records}
    kernels = []
    for task, shash in zip(extracted, hashes):
        index = index_of.get(shash)
        if index is None:
            continue
        own = [(ms_, record) for (other, ms_), record in ranked.records[index] if not other]
        if not own:
            continue  # measured on another CPU only: nothing to compare in this network
        limit = own[0][0] * config.within
        chosen = [current[index]]
        keys = {records.trace_key(current[index][0])}
        for time_ms, record in own:
            if len(chosen) >= config.candidates or time_ms > limit:
                break
            key = records.trace_key(record[0])
            if key not in keys:
                keys.add(key)
                chosen.append(record)
        kernels.append(_Kernel(task.task_name, index, chosen))
    return kernels


def _build(fused: tvm.IRModule, config: PickConfig, ranked: records.Ranked,
           chosen: dict[int, list], prepack: bool) -> tvm.runtime.Executable:
    """The network (``fused`` by ``pipeline.fuse``) compiled with ``chosen`` records."""
    target = config.target.tvm_target
    database = records.memory_database(ranked, chosen)
    executable, _, _ = export.build(
        lambda: pipeline.lower_fused(fused, target, database, prepack), target)
    return executable


def _vm(executable: tvm.runtime.Executable):
    from tvm import relax

    return relax.VirtualMachine(executable, tvm.cpu())


def _in_network(timers: list[bench.KernelTimer], x: tvm.runtime.Tensor,
                runs: int) -> list[dict[str, float]]:
    """Per build, each kernel's median ms per inference; the builds interleaved, the order
    rotating, each run after an untimed inference of the same build (its weights back in the
    caches, as in an inference loop)."""
    samples: list[dict[str, list[float]]] = [{} for _ in timers]
    for run in range(runs):
        shift = run % len(timers)
        for b in list(range(shift, len(timers))) + list(range(shift)):
            timers[b](x)
            for name, secs in timers[b](x).items():
                samples[b].setdefault(name, []).append(secs * 1e3)
    return [{name: statistics.median(values) for name, values in build.items()}
            for build in samples]


def _of(by_kernel: dict, task: str):
    """What ``by_kernel`` (by the names kernels run under) holds for ``task``'s kernel, which
    runs as ``<task>_prepacked`` when its weights are repacked at build time; None if neither."""
    found = by_kernel.get(task)
    return found if found is not None else by_kernel.get(task + "_prepacked")


def pick(imported: frontends.ImportedModel, config: PickConfig,
         step: Callable[[str], None] = lambda _: None) -> PickResult:
    """Judge the candidates of every tuned kernel of ``imported`` in the network, and append
    the picks to the database when the network with them is faster (module docstring)."""
    if not config.target.runs_on_host:
        raise BadInputError(f"pick times kernels inside the network on this machine: "
                            f"--target {config.target.name} does not run here (use host)")
    start = time.perf_counter()
    target = config.target.tvm_target
    method = records.database_method(config.db_dir)
    if method is None:
        raise DatabaseError(f"no tuning database in {config.db_dir}")
    ranked = records.read_ranked(config.db_dir, target)
    current, _ = records.choose(ranked, records.read_picks(config.db_dir, target))
    with target:
        optimized = pipeline.optimize(imported.mod, config.fuse_shuffle, config.layout)
    fused = pipeline.fuse(optimized, target, method.prepack)  # once, for every build
    kernels = _kernels(fused, config, ranked, current)
    judged = [k for k in kernels if len(k.candidates) > 1]
    if not judged:
        return PickResult(imported.name, [], None, None, None, 0, 0,
                          time.perf_counter() - start)
    ranks = max(len(k.candidates) for k in judged)
    bench.set_threads(config.target.num_cores)
    x_host = frontends.fixed_input(imported.input_shape, imported.dtype)
    x = tvm.runtime.tensor(x_host, tvm.cpu())
    builds = []
    for rank in range(ranks):
        step(f"building the network with each kernel's candidate {rank + 1} of {ranks}")
        chosen = dict(current)
        for kernel in judged:
            candidates = kernel.candidates
            chosen[kernel.index] = candidates[rank] if rank < len(candidates) else candidates[0]
        builds.append(_build(fused, config, ranked, chosen, method.prepack))
    step(f"timing {len(judged)} kernels' candidates in {ranks} builds, {config.runs} runs each")
    timers = [bench.KernelTimer(_vm(build)) for build in builds]
    medians = _in_network(timers, x, config.runs)
    choices = []
    for kernel in judged:
        # a kernel reading weights repacked at build time runs as <task>_prepacked
        times = [_of(medians[r], kernel.name) for r in range(len(kernel.candidates))]
        if any(t is None for t in times):  # a reshape the build made a view of
            log.info("%s: not called in the network; left as it is", kernel.name)
            continue
        best = min(range(len(times)), key=times.__getitem__)
        chosen = best if times[best] < times[0] * (1 - MARGIN) else 0
        choices.append(KernelChoice(
            kernel.name, _of(timers[0].calls, kernel.name) or 0,
            [records.mean_ms(c[1]) for c in kernel.candidates], times, chosen))
    result = PickResult(imported.name, choices, None, None, None, 0, ranks, 0.0)
    changed = [c for c in choices if c.chosen]
    if changed:
        step(f"checking the network with {len(changed)} kernels changed against the current")
        by_name = {k.name: k for k in judged}
        chosen = dict(current)
        for choice in changed:
            kernel = by_name[choice.name]
            chosen[kernel.index] = kernel.candidates[choice.chosen]
        builds.append(_build(fused, config, ranked, chosen, method.prepack))
        # VMs of their own: the timers' instruments would slow every kernel call
        current_vm, picked_vm = _vm(builds[0]), _vm(builds[-1])
        result.max_abs_err = bench.max_abs_error(bench.flatten_outputs(picked_vm["main"](x)),
                                                 imported.reference(x_host))
        if result.max_abs_err > bench.DEFAULT_TOLERANCE:
            raise BuildError(f"the network with the picks is off the reference by "
                             f"{result.max_abs_err:.2g}: a schedule in the database is wrong")
        step(f"timing the network with the picks against the current, {config.checks} times")
        for _ in range(config.checks):
            times = bench.time_interleaved({"current": lambda: current_vm["main"](x),
                                            "picked": lambda: picked_vm["main"](x)})
            result.checks.append((times["current"].median_ms, times["picked"].median_ms))
        result.current_ms = statistics.median(c for c, _ in result.checks)
        result.picked_ms = statistics.median(p for _, p in result.checks)
        # faster in every timing: by chance alone, with no difference, 1 in 2**checks
        if all(p < c for c, p in result.checks):
            result.written = _append(config, imported.name, target, ranked, by_name, changed)
    result.builds = len(builds)
    result.seconds = time.perf_counter() - start
    return result


def _append(config: PickConfig, model: str, target, ranked: records.Ranked,
            by_name: dict[str, _Kernel], changed: list[KernelChoice]) -> int:
    created = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    lines = []
    for choice in changed:
        kernel = by_name[choice.name]
        own = [ms_ for (other, ms_), _ in ranked.records[kernel.index] if not other]
        lines.append({
            "workload": ranked.hashes[kernel.index],
            "trace": records.trace_key(kernel.candidates[choice.chosen][0]),
            "target": str(target),
            "fastest_ms": own[0],
            "kernel": choice.name,
            "model": model,
            "alone_ms": choice.alone_ms[choice.chosen],
            "network_ms": choice.network_ms[choice.chosen],
            "replaced_network_ms": choice.network_ms[0],
            "created": created,
        })
    records.append_picks(config.db_dir, lines)
    return len(lines)
