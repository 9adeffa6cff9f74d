"""The only formatter: rich tables and progress for people, JSON for machines.

Tables and JSON go to stdout; progress and status go to stderr, so ``--json`` output stays
parseable while a person still sees what is happening.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import re
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
    out.print(f"  convolutions {manifest.get('layout', 'NCHW')}; channel shuffle {state}")
    copies = manifest.get("copy_kernels", {})
    out.print(f"  kernels that do no arithmetic (copies, concat, gathers, transposes): "
              f"{len(copies)}, {sum(copies.values())} calls"
              + (f" ({', '.join(f'{name} x{calls}' for name, calls in copies.items())})"
                 if copies else ""))
    out.print(f"  {out_dir}/{manifest['library']['file']} "
              f"({manifest['library']['bytes'] / 1e6:.1f} MB), {out_dir}/manifest.json")


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


def _size(size) -> str:
    return f"{size[0]}x{size[1]}"


def compare_json(cells, config, environment: dict) -> dict:
    from . import compare

    same_machine = config.target.runs_on_host and not environment["emulated"]
    over = {b: compare.speedups(cells, b, same_machine) for b in ("alexnet", "mobilenet_v1_1.0")}
    rows = []
    for cell in cells:
        key = (cell.model, cell.size)
        paper = compare.PAPER_SD820_MS.get(cell.model, (None, {}))[1].get(tuple(cell.size))
        rows.append({
            "model": cell.model, "size": _size(cell.size), "mflops": round(cell.macs / 1e6, 2),
            "latency_ms": cell.latency_ms, "max_abs_err": cell.max_abs_err,
            "tuned_kernels": cell.tuned_kernels, "default_kernels": cell.default_kernels,
            "kernels": cell.kernels,
            "measured_elsewhere": cell.measured_elsewhere,
            "peers_ms": cell.peers_ms, "error": cell.error, "paper_sd820_ms": paper,
            "instructions": cell.instructions, "fma_lane_use": cell.fma_lane_use,
            "speedup_over": {b: over[b].get(key) for b in over},
        })
    return {"environment": environment, "rows": rows, "measured_by": compare.measured_by(cells),
            "flops_to_speed": compare.flops_to_speed(cells)}


def compare_table(data: dict, console: Console | None = None) -> None:
    console = console or out
    env = data["environment"]
    by_count = data.get("measured_by") == "instructions"
    table = Table(title=f"FLOPs vs measured latency on {env['device']} ({env['threads']} "
                        f"thread(s){', EMULATED: timings mean nothing' if env['emulated'] else ''})"
                        "; speedups: theoretical / measured (efficiency)"
                        + (", measured by instructions counted on the emulated device"
                           if by_count else ""))
    for column in ("model", "size", "MFLOPs",
                   "tvmshuffle M instructions (FMA lane use)" if by_count else "tvmshuffle ms",
                   "tuned", "host PyTorch ms",
                   "host ORT ms", "paper SD820 ms", "vs AlexNet", "vs MobileNet"):
        table.add_column(column, justify="left" if column in ("model", "size") else "right",
                         no_wrap=column in ("model", "size"))

    def speed(entry):
        if not entry:
            return "-"
        measured = f"{entry['measured']:.1f}x" if entry["measured"] else "?"
        eff = f" ({entry['efficiency']:.2f})" if entry["efficiency"] else ""
        fastest = (f"; {entry['measured_vs_fastest']:.1f}x "
                   f"({entry['efficiency_vs_fastest']:.2f}) vs its fastest engine "
                   f"({entry['fastest_engine']})" if entry.get("measured_vs_fastest") else "")
        return f"{entry['theoretical']:.1f}x / {measured}{eff}{fastest}"

    for row in data["rows"]:
        peers = row["peers_ms"] or {}
        latency = (f"{row['latency_ms']:.2f}" if row["latency_ms"] is not None
                   else "[red]missing[/red]")
        if by_count:
            lanes = row.get("fma_lane_use")
            latency = (f"{row['instructions'] / 1e6:.1f} ({100 * lanes:.0f}%)" if lanes
                       else f"{row['instructions'] / 1e6:.1f}" if row.get("instructions")
                       else "[red]not counted[/red]")
        table.add_row(row["model"], row["size"], f"{row['mflops']:.0f}", latency,
                      f"{row['tuned_kernels']}/{row['kernels']}"
                      + (f" +{row['default_kernels']} default" if row.get("default_kernels")
                         else "")
                      + (f" ({row['measured_elsewhere']} timed elsewhere)"
                         if row.get("measured_elsewhere") else ""),
                      f"{peers['torch']:.2f}" if "torch" in peers else "-",
                      f"{peers['onnxruntime']:.2f}" if "onnxruntime" in peers else "-",
                      f"{row['paper_sd820_ms']}" if row["paper_sd820_ms"] else "-",
                      speed(row["speedup_over"]["alexnet"]),
                      speed(row["speedup_over"]["mobilenet_v1_1.0"]))
    console.print(table)
    fit = data["flops_to_speed"]
    if fit:
        speed = fit["speed_for_4x_fewer_flops"]
        console.print(f"ShuffleNet family: 4x fewer FLOPs -> {speed:.2f}x "
                      f"{'fewer instructions' if by_count else 'faster'} "
                      f"(slope {fit['slope']:.2f}; the paper: 4x -> 2.6x)")
    for row in data["rows"]:
        if row["error"]:
            console.print(f"[red]missing[/red] {row['model']} at {row['size']}: {row['error']}")


def write_compare(report_dir, data: dict) -> None:
    """report.json, report.md and speedup.png (FLOPs vs latency, log-log) in ``report_dir``."""
    from pathlib import Path

    report_dir = Path(report_dir)
    (report_dir / "report.json").write_text(json.dumps(data, indent=2) + "\n")
    with open(os.devnull, "w") as sink:
        record = Console(record=True, width=200, file=sink)
        compare_table(data, record)
    env = data["environment"]
    (report_dir / "report.md").write_text(
        "# tvmshuffle compare\n\n"
        + "".join(f"- {k}: {v}\n" for k, v in env.items())
        + ("- speedups measured by: instructions counted on the emulated device (one "
           "inference each; the emulator's timings mean nothing)\n"
           if data.get("measured_by") == "instructions" else "")
        + "\n```\n" + record.export_text() + "```\n\n![FLOPs vs latency](speedup.png)\n")
    _plot(data, report_dir / "speedup.png")


def _shufflenet_family(model: str) -> str | None:
    """'ShuffleNet v1 g3' for shufflenet_v1_g3_1.0x, 'ShuffleNet v2' for shufflenet_v2_0.5x;
    None for any other model."""
    match = re.match(r"shufflenet_(v1)_(g\d+)_|shufflenet_(v2)_", model)
    if match is None:
        return None
    return "ShuffleNet " + " ".join(part for part in match.groups() if part)


def _family_and_points(ax, points, marker, colour, line, label, label_points, alpha=1.0):
    """Each ShuffleNet family of ``points`` (flops, ms, model) as a line (v1 with g groups, v2),
    other models as unjoined markers, named beside them when ``label_points``."""
    families: dict[str, list] = {}
    others = []
    for x, y, model in sorted(points):
        family = _shufflenet_family(model)
        if family is None:
            others.append((x, y, model))
        else:
            families.setdefault(family, []).append((x, y))
    for family, family_points in families.items():
        ax.plot(*zip(*family_points), marker=marker, color=colour, linestyle=line, alpha=alpha,
                label=f"{label} ({family})")
    for i, (x, y, model) in enumerate(others):
        ax.plot([x], [y], marker=marker, color=colour, linestyle="none", alpha=alpha,
                label=label if not families and i == 0 else None)
        if label_points:
            ax.annotate(model, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7,
                        color=colour)


def _plot(data: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from . import compare

    fig, ax = plt.subplots(figsize=(8, 6))
    series: dict = {}
    # an emulated device's instruction counts, in millions, where its timings mean nothing;
    # then the host peers' and the paper's milliseconds are another unit and stay out
    by_count = data.get("measured_by") == "instructions"
    key, scale = ("instructions", 1e-6) if by_count else ("latency_ms", 1.0)
    for row in data["rows"]:
        flops = row["mflops"]
        if row.get(key):
            series.setdefault(("tvmshuffle", row["size"]), []).append(
                (flops, row[key] * scale, row["model"]))
        for engine, ms_value in ({} if by_count else row["peers_ms"] or {}).items():
            series.setdefault((f"{engine} (host)", row["size"]), []).append(
                (flops, ms_value, row["model"]))
    # colour and marker name the engine, the line style the input size; the ShuffleNet family
    # is a line, other models (MobileNet, AlexNet, a user's) are points labelled by name
    styles = {"tvmshuffle": ("o", "C3"), "torch (host)": ("s", "C0"),
              "onnxruntime (host)": ("^", "C2")}
    dashes = {}
    for (engine, size), points in sorted(series.items()):
        marker, colour = styles.get(engine, ("x", "C7"))
        line = dashes.setdefault(size, ("-", "--", "-.", ":")[len(dashes) % 4])
        _family_and_points(ax, points, marker, colour, line, f"{engine} {size}",
                           label_points=engine == "tvmshuffle")
    # the paper's phone, at the FLOPs we count for the same model and size (ours reproduce
    # the paper's at 224x224)
    counted = {(r["model"], r["size"]): r["mflops"] for r in data["rows"]}
    for size in () if by_count else compare.DEFAULT_SIZES:
        points = [(counted[(model, _size(size))], by_size[size], model)
                  for model, (_, by_size) in compare.PAPER_SD820_MS.items()
                  if (model, _size(size)) in counted]
        if points:
            _family_and_points(ax, points, "*", "grey", ":", f"paper SD820 {_size(size)}",
                               label_points=False, alpha=0.6)
    measured = [(r["mflops"], r[key] * scale) for r in data["rows"] if r.get(key)]
    what = "instructions" if by_count else "latency"
    if measured:
        x0, y0 = min(measured)
        xs = [min(m for m, _ in measured), max(m for m, _ in measured) * 2]
        ax.plot(xs, [y0 * x / x0 for x in xs], color="black", linewidth=0.8,
                label=f"ideal: {what} proportional to FLOPs")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("MFLOPs (multiply-adds, at the input size)")
    ax.set_ylabel("instructions of one inference, millions" if by_count else "latency, ms")
    env = data["environment"]
    ax.set_title(f"FLOPs vs {what} on {env['device']}" + (" (emulated)" if env["emulated"]
                                                          else ""))
    ax.legend(fontsize=7, ncol=2)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
