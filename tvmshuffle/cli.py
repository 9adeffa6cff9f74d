"""The ``tvmshuffle`` command line: each command wires stages, nothing more."""

from __future__ import annotations

import fnmatch
import logging
import os
import sys
from pathlib import Path

import click

from .errors import BadInputError, DatabaseError, TvmShuffleError

log = logging.getLogger(__name__)


class _Group(click.Group):
    """Runs the command in a worker thread (``interrupts``: Ctrl-C never lands inside TVM's C++
    code), and turns TvmShuffleError into one line on stderr and the error's exit code."""

    def invoke(self, ctx: click.Context):
        from . import interrupts, logs

        try:
            return interrupts.run_command(lambda: click.Group.invoke(self, ctx))
        except TvmShuffleError as err:
            click.echo(f"Error: {err}", file=logs.terminal())
            sys.exit(err.exit_code)
        except click.ClickException as err:
            # a bad option of the command (parsed here, after stderr went to the log file)
            err.show(file=logs.terminal())
            sys.exit(err.exit_code)
        except KeyboardInterrupt as err:
            # Records were saved by the shielded stages before this (``interrupts``); the
            # embedded servers end with this process (``watchdog``). Exit without interpreter
            # teardown: the command's thread may still be inside TVM, and TVM's worker pools,
            # cut short by the same Ctrl-C, can abort the process while it finalizes.
            from . import remote

            remote.stop_embedded()
            terminated = type(err).__name__ == "Terminated"
            click.echo(f"Error: {'terminated' if terminated else 'interrupted'}",
                       file=logs.terminal())
            sys.stdout.flush()
            logs.terminal().flush()
            sys.stderr.flush()
            os._exit(143 if terminated else 130)


def _input_size(ctx, param, value):
    from .frontends import parse_input_size

    # A BadInputError (not click.BadParameter) so that it reads as one line like every other
    # input error.
    return None if value is None else parse_input_size(value)


MAX_BATCH = 1024


MODEL_HELP = ("MODEL is a zoo name (see `tvmshuffle models`), an .onnx file or a .pt2 file saved "
              "with torch.export.save.")
input_size_option = click.option(
    "--input-size", callback=_input_size, metavar="HxW",
    help="Input height x width, e.g. 224x224, 480x640, 720x1280 (default: 224x224, or the "
         "file's own fixed size).")
batch_option = click.option(
    "--batch", type=click.IntRange(min=1, max=MAX_BATCH), default=None,
    help="Batch size of the compiled input (default: 1, or the file's own fixed batch; an "
         "ONNX model with a dynamic batch is compiled for this one).")


def input_options(command):
    """--input-size and --batch: the input shape a model is compiled for."""
    return input_size_option(batch_option(command))


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON to stdout.")
threads_option = click.option(
    "--threads", type=click.IntRange(min=1), default=None,
    help="Threads the model will run with: the target's num-cores (default: 1 on the host, the "
         "device preset's cores on ARM).")


def timing_options(repeat: int, where: str):
    """--repeat, --number and --tolerance, shared by `run` and `deploy`."""
    def apply(command):
        for option in reversed((
            click.option("--repeat", default=repeat, show_default=True,
                         type=click.IntRange(min=1),
                         help=f"Timed repeats{where} (median / p90 over them)."),
            click.option("--number", default=1, show_default=True, type=click.IntRange(min=1),
                         help="Runs averaged inside each repeat."),
            click.option("--tolerance", default=1e-4, show_default=True, type=float,
                         help="Largest max-abs error accepted against the host reference."),
        )):
            command = option(command)
        return command
    return apply


rpc_tracker_option = click.option(
    "--rpc-tracker", metavar="HOST:PORT",
    help="TVM RPC tracker to get devices from (default: an embedded tracker and a host-CPU "
         "device on 127.0.0.1, stopped afterwards).")
rpc_key_option = click.option("--rpc-key", help="Device key at the tracker, e.g. snapdragon820.")


target_option = click.option(
    "--target", "target_name", default="host", show_default=True,
    help="host, arm (Android aarch64), arm-linux, or a TVM target as JSON.")
android_api_option = click.option(
    "--android-api", default=24, show_default=True, type=click.IntRange(min=21),
    help="Android API level the arm library is linked for (NDK clang or clang+lld).")
layout_option = click.option(
    "--layout", type=click.Choice(["nhwgc", "nhwc", "nchw"], case_sensitive=False),
    default="nhwgc", show_default=True,  # pipeline.DEFAULT_LAYOUT (tvm is imported lazily)
    help="Layout of the convolutions: nhwgc is nhwc with each 1x1 group convolution computed "
         "with the group as an axis of its own (fastest on CPUs), nhwc vectorizes over "
         "channels, nchw is the imported layout. Tuning records apply only to the layout they "
         "were tuned in.")
device_option = click.option(
    "--device", default="generic", show_default=True,
    help="Device preset for arm targets (core count, mcpu), e.g. snapdragon820.")


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="tvmshuffle")
@click.option("-v", "--verbose", is_flag=True,
              help="Log what each stage does, and let TVM's and other libraries' own output "
                   "(C++ log lines, warnings) print; without it that goes to a log file "
                   "($TVMSHUFFLE_LOG_DIR, else ~/.local/state/tvmshuffle/log).")
@click.pass_context
def cli(ctx: click.Context, verbose: bool) -> None:
    """Compile, tune and deploy ShuffleNet (and any CNN) with Apache TVM, and report FLOPs
    against measured speed.

    \b
    tvmshuffle models                       list the zoo with FLOPs and parameters
    tvmshuffle flops MODEL                  multiply-adds, as the ShuffleNet paper counts them
    tvmshuffle tune MODEL                   auto-tune its kernels (embedded device or tracker)
    tvmshuffle pick MODEL                   choose each kernel's schedule by its network time
    tvmshuffle compile MODEL -o OUT         build OUT/model.so + manifest.json (--db: tuned)
    tvmshuffle run OUT                      check numerics and time it on this machine
    tvmshuffle deploy OUT                   the same on a device over RPC (tracker or embedded)
    tvmshuffle compare                      FLOPs vs measured speedup (the paper's Table 8)
    """
    from . import logs, report

    logs.configure(verbose, ctx.invoked_subcommand, native=_ENTRY_POINT)
    if _ENTRY_POINT:
        report.err.file = logs.terminal()  # progress and status on the real stderr


@cli.command()
@click.argument("pattern", required=False)
@json_option
def models(pattern: str | None, as_json: bool) -> None:
    """List the model zoo (optionally names matching PATTERN, e.g. 'shufflenet*g3*') with
    FLOPs at 224x224 and parameter counts. Weights are random with a fixed seed."""
    from . import report, zoo_facts

    rows = [row for row in zoo_facts.rows()
            if pattern is None or fnmatch.fnmatch(row["name"], pattern)]
    if not rows:
        raise BadInputError(f"no zoo model matches '{pattern}'")
    report.emit_json(rows) if as_json else report.models_table(rows)


@cli.command(name="flops", epilog=MODEL_HELP)
@click.argument("model")
@input_options
@click.option("--per-layer", is_flag=True, help="List every counted layer.")
@json_option
def flops_cmd(model: str, input_size, batch, per_layer: bool, as_json: bool) -> None:
    """Count multiply-adds of convolutions and FC layers (the paper's "FLOPs") of MODEL, from
    its imported Relax module."""
    from . import flops, frontends, report

    with report.step(f"importing {model}", quiet=as_json):
        imported = frontends.load(frontends.ModelSpec(model, input_size, batch=batch),
                                  decompose=False)
    counted = flops.count(imported.mod)
    if as_json:
        report.emit_json(report.flops_json(imported.name, imported.input_shape, counted,
                                           per_layer))
    else:
        report.flops_table(imported.name, imported.input_shape, counted, per_layer)


@cli.command(name="compile", epilog=MODEL_HELP)
@click.argument("model")
@target_option
@device_option
@click.option("-o", "--output", "out_dir", required=True, type=click.Path(path_type=Path),
              help="Artifact directory to write.")
@input_options
@click.option("--state-dict", type=click.Path(path_type=Path),
              help="Weights for a zoo model (a PyTorch state_dict file).")
@click.option("--dump-ir", is_flag=True, help="Also write the final IRModule as OUT/final_ir.py.")
@click.option("--no-fuse-shuffle", is_flag=True,
              help="Leave channel shuffles, and ShuffleNet v2's split / concat / shuffle, as "
                   "TVM compiles them: kernels of their own (for comparison).")
@layout_option
@click.option("--db", type=click.Path(path_type=Path),
              help="Apply the best schedules of this tuning database, and only it (default: "
                   "your database for the target, where `tvmshuffle tune` writes, then for the "
                   "kernels it has no record of the shipped one; for a host CPU with no "
                   "shipped database of its own, that of a CPU with the same vector ISA).")
@click.option("--no-db", is_flag=True,
              help="Build untuned, ignoring any database: every kernel with its default "
                   "schedule (derived from the target's vector registers and cores).")
@click.option("--no-default-schedules", is_flag=True,
              help="Kernels without a record keep TVM's unscheduled loops instead of their "
                   "default schedule (for comparison).")
@threads_option
@android_api_option
@json_option
def compile_cmd(model, target_name, device, out_dir, input_size, batch, state_dict, dump_ir,
                no_fuse_shuffle, layout, db, no_db, no_default_schedules, threads, android_api,
                as_json) -> None:
    """Import MODEL, optimize it and build OUT/model.so with OUT/manifest.json.

    Channel shuffles are fused into the convolution that consumes them, ShuffleNet v2's
    split / concat / shuffle rebuilt as gathers of channel ranges; the summary and
    manifest.json ("copy_kernels") list every kernel left that only moves data, with calls."""
    from . import api, report

    manifest = api.compile(model, target_name, device=device, db=db, no_db=no_db,
                           default_schedules=not no_default_schedules,
                           fuse_shuffle=not no_fuse_shuffle, layout=layout, threads=threads,
                           android_api=android_api, out_dir=out_dir, dump_ir=dump_ir,
                           input_size=input_size, batch=batch, state_dict=state_dict,
                           show=not as_json).manifest
    if as_json:
        report.emit_json(manifest)
    else:
        report.compile_summary(manifest, str(out_dir))


@cli.command(epilog=MODEL_HELP)
@click.argument("model")
@target_option
@device_option
@rpc_tracker_option
@rpc_key_option
@click.option("--trials", default=64, show_default=True, type=click.IntRange(min=1),
              help="Measurement budget over all tuned tasks: an even share of up to 32 each, "
                   "the rest in proportion to each task's calls x best measured latency "
                   "(calls x FLOPs before all are measured). Records already in the database "
                   "count against it.")
@click.option("--trials-per-task", type=click.IntRange(min=1),
              help="Budget of one task (default: --trials spread evenly).")
@click.option("--ops", default="grouped,depthwise", show_default=True,
              help="Kinds of task to tune: grouped, depthwise, conv, dense, other, or all.")
@click.option("--db", type=click.Path(path_type=Path),
              help="Tuning database directory (default: your database for the target in "
                   "$TVMSHUFFLE_HOME/schedules or the user data folder, started from the "
                   "shipped records of the model's kernels, those another CPU of the same vector "
                   "ISA measured re-timed here first). Appended to, never rewritten; re-running "
                   "resumes.")
@click.option("--timeout", default=60, show_default=True, type=click.IntRange(min=1),
              help="Seconds allowed for one build and for one device session.")
@click.option("--patience", default=64, show_default=True, type=click.IntRange(min=0),
              help="Stop a task early after this many trials in a row without a 1% gain "
                   "(0: spend every task's whole budget).")
@click.option("--refine", default=0, show_default=True, type=click.IntRange(min=0),
              help="After each task's search, time up to this many neighbours of its best "
                   "schedule that the database lacks: other register blocks (the output tile "
                   "kept in vector registers), then other inner reduction splits. The random "
                   "search often stops at a block of half a vector; re-running refines around "
                   "the new best.")
@click.option("--prepack/--no-prepack", default=None,
              help="Let schedules ask for the weights in a layout of their own, repacked once "
                   "when the library is built (default: the database's method; for a new "
                   "database that of the shipped one it starts from, else on). A database "
                   "holds one method; compile follows it, and prepacks without a database.")
@click.option("--flush-caches/--warm-caches", default=None,
              help="Time candidates with their weights and output flushed from the CPU caches, "
                   "as they are inside the network, or warm, as run in a loop (default: the "
                   "database's method; warm for a new database).")
@input_options
@click.option("--no-fuse-shuffle", is_flag=True, help="Tune without the channel shuffle pass.")
@layout_option
@threads_option
@android_api_option
@json_option
def tune(model, target_name, device, rpc_tracker, rpc_key, trials, trials_per_task, ops, db,
         timeout, patience, refine, prepack, flush_caches, input_size, batch, no_fuse_shuffle,
         layout, threads, android_api, as_json) -> None:
    """Auto-tune MODEL's kernels with MetaSchedule (XGBoost cost model) on devices from a TVM RPC
    tracker, appending records to a database that `tvmshuffle compile --db` applies.

    Only records measured with this target count: a task's fastest schedules that another CPU
    of the same kind measured (another mcpu) are first re-timed here."""
    from . import api, report

    data = api.tune(model, target_name, device=device, tracker=rpc_tracker, key=rpc_key,
                    trials=trials, trials_per_task=trials_per_task, ops=tuple(ops.split(",")),
                    db=db, timeout=timeout, patience=patience, refine=refine, prepack=prepack,
                    flush_caches=flush_caches, fuse_shuffle=not no_fuse_shuffle, layout=layout,
                    threads=threads, android_api=android_api, input_size=input_size,
                    batch=batch, show=not as_json)
    report.emit_json(data) if as_json else report.tune_table(data)


@cli.command(epilog=MODEL_HELP)
@click.argument("model")
@click.option("--db", type=click.Path(path_type=Path),
              help="Tuning database to pick in and append the picks to (default: yours for "
                   "this CPU, where `tvmshuffle tune` writes).")
@click.option("--candidates", default=4, show_default=True, type=click.IntRange(min=2),
              help="Schedules judged per kernel: the one compile applies now, then the other "
                   "fastest the database holds for this CPU.")
@click.option("--within", default=1.5, show_default=True, type=click.FloatRange(min=1.0),
              help="Only candidates at most this many times slower alone than the fastest.")
@click.option("--runs", default=200, show_default=True, type=click.IntRange(min=3),
              help="Instrumented inferences of each build (median per kernel).")
@click.option("--checks", default=5, show_default=True, type=click.IntRange(min=1),
              help="Whole-network timings (100 calls each) of the picks against the current "
                   "schedules; the picks are written only if faster in every one.")
@input_options
@click.option("--no-fuse-shuffle", is_flag=True, help="As the records were tuned.")
@layout_option
@threads_option
@json_option
def pick(model, db, candidates, within, runs, checks, input_size, batch, no_fuse_shuffle, layout,
         threads, as_json) -> None:
    """Choose each tuned kernel's schedule by its time inside the network, on this machine.

    Tuning times kernels alone; in the network they rank otherwise. MODEL is built once per
    candidate rank, every kernel call timed in the builds run interleaved, each kernel takes
    its fastest candidate there, and the network with those picks is timed against the
    current one: only if faster in every timing are the picks appended to the database
    (tvmshuffle_picks.json), which compile then follows. Records keep their measured times.
    Run it again after tuning: a record faster than the one a pick was made against makes the
    pick stale."""
    from . import frontends, places, records, report, target
    from . import picks as picking

    resolved = target.resolve("host", "generic", threads)
    db = db or places.user_db(resolved, "generic")
    if records.database_method(db) is None:  # before the import
        raise DatabaseError(f"no tuning database in {db}: tune first or give --db")
    config = picking.PickConfig(resolved, db, not no_fuse_shuffle, layout.upper(), candidates,
                                within, runs, checks)
    with report.step(f"importing {model}", quiet=as_json):
        imported = frontends.load(frontends.ModelSpec(model, input_size, batch=batch))
    with report.step("picking in the network", quiet=as_json) as at:
        result = picking.pick(imported, config, at)
    data = report.pick_json(result, config)
    report.emit_json(data) if as_json else report.pick_table(data)


@cli.command()
@target_option
@device_option
@rpc_tracker_option
@rpc_key_option
@click.option("--models", "model_list", help="Comma-separated zoo models (default: ShuffleNet "
              "0.5x/1x/2x g3, AlexNet, MobileNet v1 1.0, as in the paper's Table 8).")
@click.option("--sizes", default="224x224,480x640,720x1280", show_default=True,
              help="Comma-separated input sizes HxW.")
@click.option("--db", type=click.Path(path_type=Path),
              help="Tuning database, and only it (default: as `compile` and `tune` choose: "
                   "yours, then the shipped one).")
@click.option("--tune-trials", type=click.IntRange(min=1),
              help="Tune every kernel of each model at each size first, this many trials per "
                   "model and size (resuming the database: records already there count).")
@click.option("--baselines", default="torch,onnxruntime", show_default=True,
              help="Host peers to time in the same run: torch, onnxruntime, or none.")
@threads_option
@click.option("--repeat", default=10, show_default=True, type=click.IntRange(min=1),
              help="Timed runs per cell (median); fewer for cells slower than 10 s in all.")
@click.option("--timeout", default=600, show_default=True, type=click.IntRange(min=1),
              help="Seconds a device session may last.")
@android_api_option
@click.option("--emulated/--not-emulated", default=None,
              help="Label the device timings as an emulator's (default: key starts with 'emu').")
@click.option("-o", "--output", "report_dir", default="report", show_default=True,
              type=click.Path(path_type=Path),
              help="Report directory: report.md, report.json, speedup.png.")
@json_option
def compare(target_name, device, rpc_tracker, rpc_key, model_list, sizes, db, tune_trials,
            baselines, threads, repeat, timeout, android_api, emulated, report_dir,
            as_json) -> None:
    """FLOPs against measured latency, the paper's Table 8 on a device: theoretical and
    measured speedup over AlexNet and MobileNet, beside PyTorch and ONNX Runtime on the host.

    Each model is compiled (tuned first with --tune-trials), deployed to the device, checked
    against the host reference and timed there. Without --rpc-tracker the device is this
    machine's CPU behind an embedded tracker. AlexNet takes every size: adaptive average pooling
    before its classifier (the identity at 224x224) keeps its FC layers' shapes."""
    from . import api, compare_report, report
    from . import compare as comparing

    names = tuple(n.strip() for n in (model_list or ",".join(comparing.DEFAULT_MODELS))
                  .split(",") if n.strip())
    peers = tuple(b.strip() for b in baselines.split(",") if b.strip() and b.strip() != "none")
    data = api.compare(names, comparing.parse_sizes(sizes), target_name, device=device,
                       tracker=rpc_tracker, key=rpc_key, db=db, tune_trials=tune_trials or 0,
                       baselines=peers, threads=threads, repeat=repeat, timeout=timeout,
                       android_api=android_api, emulated=emulated, report_dir=report_dir,
                       show=not as_json)
    if as_json:
        report.emit_json(data)
    else:
        compare_report.compare_table(data)
        report.out.print(f"report: {report_dir}/report.md, report.json, speedup.png")


@cli.command()
@click.argument("out_dir", type=click.Path(path_type=Path))
@click.option("--threads", default=1, show_default=True, type=click.IntRange(min=1),
              help="Threads of TVM's pool.")
@timing_options(30, "")
@click.option("--profile", is_flag=True, help="Also time every kernel (calls, ms, share).")
@json_option
def run(out_dir: Path, threads: int, repeat: int, number: int, tolerance: float,
        profile: bool, as_json: bool) -> None:
    """Run a compiled artifact on this machine: check its output against the host reference
    (PyTorch, or ONNX Runtime for .onnx models) and time it."""
    from . import bench, report

    artifact = bench.load_artifact(out_dir)
    with report.step("running", quiet=as_json):
        result = bench.run_local(artifact, threads, repeat, number, tolerance)
        kernels = bench.profile_kernels(artifact, threads) if profile else None
    if as_json:
        report.emit_json(report.run_json(artifact.manifest, result, kernels))
    else:
        report.run_table(artifact.manifest, result)
        if kernels is not None:
            report.profile_table(kernels)


@cli.command()
@click.argument("out_dir", type=click.Path(path_type=Path))
@rpc_tracker_option
@rpc_key_option
@click.option("--threads", type=click.IntRange(min=1),
              help="Threads on the device (default: the target's num-cores).")
@timing_options(10, " on the device")
@click.option("--wait", default=60, show_default=True, type=click.IntRange(min=1),
              help="Seconds to wait for a free device under the key.")
@click.option("--timeout", default=600, show_default=True, type=click.IntRange(min=1),
              help="Seconds the device session may last (upload, checks, timing).")
@click.option("--emulated/--not-emulated", default=None,
              help="Label the timings as an emulator's (default: when the key starts with "
                   "'emu').")
@click.option("--count-instructions", is_flag=True,
              help="Count what an aarch64 library executes: one inference on the emulated "
                   "arm64 device set up here (rpc/emu_arm64.sh) under an instruction counter, "
                   "output checked; per kernel MACs, dynamic instructions, vector FMAs, FMA "
                   "lane use, instructions per MAC (caches not modelled). Without "
                   "--rpc-tracker only the count runs; a key that is not emulated is refused.")
@json_option
def deploy(out_dir: Path, rpc_tracker, rpc_key, threads, repeat, number, tolerance, wait,
           timeout, emulated, count_instructions, as_json) -> None:
    """Upload a compiled artifact to a device over TVM RPC, check its output against the host
    reference and time it there; the uploaded file is removed afterwards. Without
    --rpc-tracker, the device is this machine's CPU behind an embedded tracker."""
    from . import api, insncount, report

    if count_instructions:
        api.countable(out_dir, tracker=rpc_tracker, key=rpc_key, emulated=emulated)
    manifest = deployed = counted = None
    if rpc_tracker or not count_instructions:
        manifest, deployed = api.deployment(out_dir, tracker=rpc_tracker, key=rpc_key,
                                            threads=threads, repeat=repeat, number=number,
                                            tolerance=tolerance, wait=wait, timeout=timeout,
                                            emulated=emulated, show=not as_json)
    if count_instructions:
        counted = api.count_instructions(out_dir, tolerance=tolerance, show=not as_json)
    if as_json:
        data = (report.deploy_json(manifest, deployed) if deployed
                else {"model": counted.model})
        if counted:
            data["instructions"] = counted.as_json()
        report.emit_json(data)
        return
    if deployed:
        report.deploy_table(manifest, deployed)
    if counted:
        insncount.table(counted, report.out)


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C: the stages' cleanup runs (embedded servers stopped,
    records saved), then exit 143."""


def _on_sigterm(_signum, _frame) -> None:
    raise Terminated()


_ENTRY_POINT = False  # main() ran: this process is the command's own (not a test's runner)


def main() -> None:
    import signal

    global _ENTRY_POINT
    _ENTRY_POINT = True
    signal.signal(signal.SIGTERM, _on_sigterm)
    cli(prog_name="tvmshuffle")


if __name__ == "__main__":
    main()
