"""The only formatter: rich tables and progress for people, JSON for machines.

Tables and JSON go to stdout; progress and status go to stderr, so ``--json`` output stays
parseable while a person still sees what is happening.
"""

from __future__ import annotations

import collections
import contextlib
import json
import sys
import threading
import time
from typing import Callable, Iterator

from rich.console import Console
from rich.table import Table

from .flops import FlopReport

out = Console()
if not out.is_terminal:  # piped or captured: do not squeeze tables into 80 columns
    out = Console(width=160)
err = Console(stderr=True)


def emit_json(data: object) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


HEARTBEAT_SECONDS = 30.0


class _Heartbeat:
    """Where stderr is no terminal (a CI log, ``| tee``), no spinner or bars can show: while a
    long stage runs, a plain line at least every HEARTBEAT_SECONDS says what it is doing (n of
    N where known) and for how long. Nothing for stages shorter than that, so a quick command's
    output (and its one-line error) is unchanged."""

    def __init__(self):
        self._lock = threading.Lock()
        self._what: list[str] = []  # a stack: the innermost stage speaks
        self._since = time.monotonic()
        self._thread = None

    @contextlib.contextmanager
    def doing(self, what: str) -> Iterator[Callable[[str], None]]:
        with self._lock:
            self._what.append(what)
            depth = len(self._what)
            if self._thread is None:
                self._since = time.monotonic()
                self._thread = threading.Thread(target=self._beat, name="tvmshuffle-heartbeat",
                                                daemon=True)
                self._thread.start()

        def detail(text: str) -> None:
            with self._lock:
                if len(self._what) >= depth:
                    self._what[depth - 1] = f"{what}: {text}" if text else what

        try:
            yield detail
        finally:
            with self._lock:
                del self._what[depth - 1:]

    def _beat(self) -> None:
        last = time.monotonic()
        while True:
            time.sleep(min(HEARTBEAT_SECONDS, 1.0))
            now = time.monotonic()
            if now - last < HEARTBEAT_SECONDS:
                continue
            last = now
            with self._lock:
                what = self._what[-1] if self._what else None
                elapsed = int(now - self._since)
            if what:
                err.print(f"[{elapsed // 60}:{elapsed % 60:02d}] {what}", highlight=False,
                          markup=False, soft_wrap=True)


heartbeat = _Heartbeat()


@contextlib.contextmanager
def step(message: str, quiet: bool = False) -> Iterator[Callable[[str], None]]:
    """A spinner on stderr while one long stage runs (import, build, export), or in a
    non-terminal the heartbeat's lines; it yields a function that shows what the stage is
    at."""
    if quiet:
        yield lambda _detail: None
        return
    if not err.is_terminal:
        with heartbeat.doing(message) as detail:
            yield detail
        return
    with err.status(message) as status:
        yield lambda detail: status.update(f"{message}: {detail}")


def models_table(rows: list[dict]) -> None:
    table = Table(title="tvmshuffle model zoo (224x224)")
    table.add_column("model")
    table.add_column("family")
    table.add_column("MFLOPs", justify="right")
    table.add_column("params (M)", justify="right")
    for row in rows:
        table.add_row(row["name"], row["family"], f"{row['mflops']:.1f}",
                      f"{row['params'] / 1e6:.2f}")
    out.print(table)


def flops_json(model: str, input_shape: tuple[int, ...], report: FlopReport,
               per_layer: bool) -> dict:
    data = {"model": model, "input_shape": list(input_shape), "macs": report.macs,
            "mflops": round(report.mflops, 3), "by_kind": report.by_kind()}
    if per_layer:
        data["layers"] = [{"op": layer.op, "kind": layer.kind, "out_shape": list(layer.out_shape),
                           "macs": layer.macs} for layer in report.layers]
    return data


def flops_table(model: str, input_shape: tuple[int, ...], report: FlopReport,
                per_layer: bool) -> None:
    if per_layer:
        table = Table(title=f"{model}: layers")
        for column in ("#", "kind", "output", "MFLOPs"):
            table.add_column(column, justify="right" if column in ("#", "MFLOPs") else "left")
        for i, layer in enumerate(report.layers):
            table.add_row(str(i), layer.kind, "x".join(map(str, layer.out_shape)),
                          f"{layer.macs / 1e6:.2f}")
        out.print(table)
    table = Table(title=f"{model} at {'x'.join(map(str, input_shape))}: multiply-adds")
    table.add_column("kind")
    table.add_column("MFLOPs", justify="right")
    table.add_column("share", justify="right")
    total = report.macs or 1
    for kind, macs in sorted(report.by_kind().items(), key=lambda kv: -kv[1]):
        table.add_row(kind, f"{macs / 1e6:.2f}", f"{100 * macs / total:.1f}%")
    table.add_row("[bold]total[/bold]", f"[bold]{report.mflops:.2f}[/bold]", "100%")
    out.print(table)


def compile_summary(manifest: dict, out_dir: str) -> None:
    spec = manifest["target"]["tvm"]
    linker = manifest.get("toolchain", {})
    out.print(f"[bold green]compiled[/bold green] {manifest['model']} for "
              f"{manifest['target']['name']} ({spec.get('mtriple')}, mcpu "
              f"{spec.get('mcpu', 'generic')}, {spec.get('num-cores', 1)} core(s)), linked with "
              f"{linker.get('name', 'host')} ({linker.get('version', 'unknown')})")
    shape = "x".join(map(str, manifest["input"]["shape"]))
    out.print(f"  input {manifest['input']['name']} {shape} {manifest['input']['dtype']}, "
              f"{manifest['flops']['mflops']:.1f} MFLOPs, {len(manifest['kernels'])} kernels")
    tuning = manifest["tuning"]
    sources = collections.Counter((tuning.get("schedules") or {}).values())
    running = sum(sources.values())
    if tuning["db"]:
        picked = tuning.get("picked_in_network")
        out.print(f"  tuned kernels: {len(tuning['tuned_kernels'])}/{running}"
                  f" from {' then '.join([tuning['db'], *tuning.get('fallback_dbs', [])])}"
                  + (f" ({picked} with schedules picked in the network)" if picked else ""))
        elsewhere = tuning.get("measured_elsewhere") or {}
        if elsewhere:
            out.print(f"  [yellow]{sum(elsewhere.values())} of them timed on another target "
                      f"only[/yellow] ({', '.join(f'{n} on {t}' for t, n in elsewhere.items())})"
                      ": `tvmshuffle tune` re-times them here first")
    else:
        out.print("  no tuning database: untuned (run `tvmshuffle tune` to tune)")
    out.print(f"  schedules of the {running} kernels that run: {sources.get('record', 0)} from "
              f"records, {sources.get('default', 0)} default (derived from the target), "
              f"{sources.get('tvm', 0)} TVM's loops"
              + ("" if tuning.get("default_schedules", True)
                 else " ([yellow]--no-default-schedules[/yellow])"))
    # data_movement_kernels (manifest) sees only shuffles that keep their tensor's shape (in
    # NHWGC it misses those that absorb a view): not printed as a count of shuffles left
    state = "pass on" if manifest["fuse_shuffle"] else "pass off (--no-fuse-shuffle)"
    done = channel_passes_done(manifest.get("channel_passes"))
    out.print(f"  convolutions {manifest.get('layout', 'NCHW')}; channel shuffle {state}"
              + (f": {done}" if done else ""))
    copies = manifest.get("copy_kernels", {})
    out.print(f"  kernels that do no arithmetic (copies, concat, gathers, transposes): "
              f"{len(copies)}, {sum(copies.values())} calls"
              + (f" ({', '.join(f'{name} x{calls}' for name, calls in copies.items())})"
                 if copies else ""))
    out.print(f"  {out_dir}/{manifest['library']['file']} "
              f"({manifest['library']['bytes'] / 1e6:.1f} MB), {out_dir}/manifest.json")


# what each counted rewrite of the channel passes is called, in the order said
_PASS_PHRASES = {
    "shuffles_fused_into_convolutions": "{n} shuffles fused into the convolutions that read them",
    "shuffles_written_by_producers": "{n} of them then written shuffled by the convolutions "
                                     "before them",
    "identity_shuffles_removed": "{n} one-group shuffles removed",
    "split_regions_rebuilt": "{n} v2 split/concat/shuffle outputs rebuilt from the branches "
                             "({split_regions_in_conv_weights} in convolution weights, "
                             "{split_regions_gathered} gathered)",
    "ranges_read_by_convolutions": "{n} concats of channel ranges read by the convolutions "
                                   "themselves",
    "gathers_folded_into_weights": "{n} channel gathers folded into convolution weights",
    "constant_takes_as_slices": "{n} constant gathers made slices",
}


def channel_passes_done(counts: dict | None) -> str:
    """What the channel passes rewrote, in words (manifest ``channel_passes``); "" for nothing.
    Only rewrites the passes counted as they made them are named."""
    if not counts:
        return ""
    parts = {"split_regions_in_conv_weights": counts.get("split_regions_in_conv_weights", 0),
             "split_regions_gathered": counts.get("split_regions_gathered", 0)}
    return "; ".join(phrase.format(n=counts[event], **parts)
                     for event, phrase in _PASS_PHRASES.items() if counts.get(event))


def run_json(manifest: dict, result, kernels=None) -> dict:
    data = {
        "model": manifest["model"],
        "target": manifest["target"]["name"],
        "input_shape": manifest["input"]["shape"],
        "reference_engine": manifest["reference"]["engine"],
        "max_abs_err": result.max_abs_err,
        "threads": result.threads,
        "latency_ms": result.latency.as_json(),
    }
    if kernels is not None:
        data["kernels"] = [{"name": k.name, "calls": k.calls, "ms": round(k.total_ms, 4)}
                           for k in kernels]
    return data


def profile_table(kernels) -> None:
    total = sum(k.total_ms for k in kernels) or 1.0
    table = Table(title="kernels (per inference, median of 10 instrumented runs)")
    for column in ("kernel", "calls", "ms", "share"):
        table.add_column(column, justify="left" if column == "kernel" else "right")
    for k in kernels:
        table.add_row(k.name, str(k.calls), f"{k.total_ms:.3f}", f"{100 * k.total_ms / total:.1f}%")
    out.print(table)


def run_table(manifest: dict, result, where: str = "this machine") -> None:
    lat = result.latency
    table = Table(title=f"{manifest['model']} ({manifest['target']['name']}) on {where}, "
                        f"{result.threads} thread(s)")
    for column in ("max abs err", "median ms", "p90 ms", "min ms", "runs"):
        table.add_column(column, justify="right")
    table.add_row(f"{result.max_abs_err:.2e}", f"{lat.median_ms:.3f}", f"{lat.p90_ms:.3f}",
                  f"{lat.min_ms:.3f}", str(lat.samples))
    out.print(table)
    out.print(f"numerics checked against {manifest['reference']['engine']}: ok")


def deploy_json(manifest: dict, deployed) -> dict:
    return {**run_json(manifest, deployed.run), "device": deployed.device.as_json(),
            "upload_s": round(deployed.upload_s, 3)}


def deploy_table(manifest: dict, deployed) -> None:
    device = deployed.device
    where = f"device '{device.key}' via {device.tracker}"
    if device.triple:
        where += f" ({device.triple})"
    run_table(manifest, deployed.run, where)
    if device.emulated:
        out.print("[yellow]emulated device[/yellow]: these timings measure the emulator, not "
                  "a phone; they prove the build runs correctly, nothing about its speed")


class TuneProgress:
    """Rich progress on stderr for `tvmshuffle tune`: one bar per task and one overall."""

    def __init__(self, quiet: bool = False):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
        from rich.progress import TimeElapsedColumn

        self.bars = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                             TextColumn("{task.fields[best]}"), TimeElapsedColumn(),
                             console=err, disable=quiet or not err.is_terminal)
        self.quiet = quiet
        self.overall = None
        self.current = None
        self.finished = 0
        self.count = 0
        self.done = 0  # trials of the current task already added to the overall bar
        self.budget = 0
        self._beat = None  # the heartbeat's line, where no bars show (not a terminal)
        self._stack = contextlib.ExitStack()

    def __enter__(self):
        self.bars.start()
        if not self.quiet and not err.is_terminal:
            self._beat = self._stack.enter_context(heartbeat.doing("tuning"))
        return self

    def __exit__(self, *exc):
        self.bars.stop()
        self._stack.close()

    def _say(self, text: str) -> None:
        if self._beat is not None:
            self._beat(text)

    def seeded(self, count: int, seeds: list[str]) -> None:
        if self.quiet:
            return
        self.bars.console.print(f"starting from {count} records of {', '.join(seeds)} (the "
                                "shipped schedules of this model's kernels)")

    def remeasuring(self, count: int, cpus: list[str]) -> None:
        if self.quiet:
            return
        self.bars.console.print(f"re-timing {count} schedules measured on {', '.join(cpus)} "
                                "here first (times of other CPUs do not compare)")

    def start(self, tasks, budget: dict[str, int]) -> None:
        self.count = len(tasks)
        self.overall = self.bars.add_task(f"all tasks (0/{self.count} done)",
                                          total=max(1, sum(budget.values())), best="")
        self._say(f"{self.count} tasks, {sum(budget.values())} trials")

    def task_started(self, task, budget: int) -> None:
        self.current = self.bars.add_task(f"  {task.name} [{task.kind}]", total=max(1, budget),
                                          best="" if budget else "at budget: resumed")
        self.done = 0
        self.budget = budget
        self._say(f"task {self.finished + 1} of {self.count}, {task.name} [{task.kind}]: "
                  f"0 of {budget} trials")

    def refining(self, task, count: int) -> None:
        self.bars.update(self.current, best=f"timing up to {count} tile neighbours")

    def trials(self, task, done: int, best_ms) -> None:
        best = f"best {best_ms:.4f} ms" if best_ms is not None else "no valid run yet"
        self.bars.update(self.current, completed=done, best=best)
        self.bars.advance(self.overall, done - self.done)
        self.done = done
        self._say(f"task {self.finished + 1} of {self.count}, {task.name} [{task.kind}]: "
                  f"{done} of {self.budget} trials, {best}")

    def task_finished(self, result) -> None:
        self.finished += 1
        self.bars.update(self.current, visible=False)
        self.bars.update(self.overall,
                         description=f"all tasks ({self.finished}/{self.count} done)")


def tune_json(results, config, tracker_address: str, key: str, wall_s: float) -> dict:
    return {
        "target": config.target.as_json(),
        "db": str(config.db_dir),
        "method": config.method.as_json(),
        "tracker": tracker_address,
        "key": key,
        "wall_time_s": round(wall_s, 1),
        "tasks": [{
            "name": r.task.name, "kind": r.task.kind, "weight": r.task.weight,
            "mflops": round(r.task.macs / 1e6, 3), "trials_before": r.trials_before,
            "trials_run": r.trials_run, "untuned_ms": r.untuned_ms,
            "default_ms": r.default_ms, "tuned_ms": r.tuned_ms,
            "speedup": r.speedup, "converged": r.converged, "kept_untuned": r.kept_untuned,
            "remeasured": r.remeasured, "refined": r.refined,
            "refined_rejected": r.refined_rejected, "refined_from_ms": r.refined_from_ms,
        } for r in results],
    }


def tune_table(data: dict) -> None:
    from .records import Method  # tvm: imported when a table is printed, not at start-up

    how = Method(**data["method"]).describe()
    table = Table(title=f"tuned into {data['db']} ({how}; {data['wall_time_s']:.0f} s, "
                        f"device key '{data['key']}' at {data['tracker']})")
    for column in ("task", "kind", "MFLOPs", "weight", "trials", "untuned ms", "default ms",
                   "tuned ms", "speedup"):
        table.add_column(column, justify="left" if column in ("task", "kind") else "right")

    def fmt(value, spec=".4f"):
        return "-" if value is None else format(value, spec)

    for row in data["tasks"]:
        trials = f"{row['trials_before'] + row['trials_run']}"
        if row["trials_before"]:
            trials += f" ({row['trials_before']} resumed"
            trials += (f", {row['remeasured']} re-timed from another CPU)"
                       if row.get("remeasured") else ")")
        if row.get("converged"):
            trials += " (converged)"
        if row.get("refined"):
            trials += f" ({row['refined']} tile neighbours timed"
            trials += (f", {row['refined_rejected']} of them faster warm but not cold: not "
                       "recorded)" if row.get("refined_rejected") else ")")
        if row.get("kept_untuned"):
            trials += " (untuned kept: faster)"
        table.add_row(row["name"], row["kind"], f"{row['mflops']:.2f}", str(row["weight"]),
                      trials, fmt(row["untuned_ms"]), fmt(row.get("default_ms")),
                      fmt(row["tuned_ms"]),
                      fmt(row["speedup"], ".1f") + ("x" if row["speedup"] else ""))
    out.print(table)


def pick_json(result, config) -> dict:
    return {
        "model": result.model,
        "target": config.target.as_json(),
        "db": str(config.db_dir),
        "candidates": config.candidates,
        "runs": config.runs,
        "builds": result.builds,
        "wall_time_s": round(result.seconds, 1),
        "current_ms": result.current_ms,
        "picked_ms": result.picked_ms,
        "max_abs_err": result.max_abs_err,
        "written": result.written,
        "checks": [{"current_ms": c, "picked_ms": p} for c, p in result.checks],
        "kernels": [{"name": k.name, "calls": k.calls, "alone_ms": k.alone_ms,
                     "network_ms": k.network_ms, "chosen": k.chosen} for k in result.kernels],
    }


def pick_table(data: dict) -> None:
    if not data["kernels"]:
        out.print(f"no kernel of {data['model']} has two schedules recorded for this CPU in "
                  f"{data['db']}: nothing to pick (tune it first)")
        return
    table = Table(title=f"{data['model']}: each kernel's candidates, ms alone (recorded) / in "
                        f"the network (median of {data['runs']} inferences); * chosen")
    for column in ("kernel", "calls", "current", "other candidates"):
        table.add_column(column, justify="right" if column == "calls" else "left")
    for k in data["kernels"]:
        cells = [f"{'*' if i == k['chosen'] else ''}{alone:.4f} / {net:.4f}"
                 for i, (alone, net) in enumerate(zip(k["alone_ms"], k["network_ms"]))]
        table.add_row(k["name"], str(k["calls"]), cells[0], "  ".join(cells[1:]))
    out.print(table)
    changed = sum(1 for k in data["kernels"] if k["chosen"])
    if not changed:
        out.print("every kernel's current schedule is the fastest in the network: nothing "
                  "written")
        return
    ratios = ", ".join(f"{c['picked_ms'] / c['current_ms']:.3f}x" for c in data["checks"])
    out.print(f"network with {changed} kernels changed: {data['picked_ms']:.3f} ms against "
              f"{data['current_ms']:.3f} (timings: {ratios}; max abs err "
              f"{data['max_abs_err']:.1e})")
    out.print(f"{data['written']} picks appended to {data['db']}, which compile follows"
              if data["written"] else "not faster in every timing: nothing written")
