"""The ``tvmshuffle`` command line: each command wires stages, nothing more."""

from __future__ import annotations

import fnmatch
import logging
import sys
from pathlib import Path

import click

from .errors import BadInputError, TvmShuffleError

log = logging.getLogger(__name__)


class _Group(click.Group):
    """Turns TvmShuffleError into one line on stderr and the error's exit code."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except TvmShuffleError as err:
            click.echo(f"Error: {err}", err=True)
            sys.exit(err.exit_code)
        except KeyboardInterrupt:
            click.echo("Error: interrupted", err=True)
            sys.exit(130)


def _input_size(ctx, param, value):
    from .frontends import parse_input_size

    # A BadInputError (not click.BadParameter) so that it reads as one line like every other
    # input error.
    return None if value is None else parse_input_size(value)


MODEL_HELP = ("MODEL is a zoo name (see `tvmshuffle models`), an .onnx file or a .pt2 file saved "
              "with torch.export.save.")
input_size_option = click.option(
    "--input-size", callback=_input_size, metavar="HxW",
    help="Input height x width, e.g. 224x224, 480x640, 720x1280 (default: 224x224, or the "
         "file's own fixed size).")
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON to stdout.")


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="tvmshuffle")
@click.option("-v", "--verbose", is_flag=True, help="Log what each stage does.")
def cli(verbose: bool) -> None:
    """Compile, tune and deploy ShuffleNet (and any CNN) with Apache TVM, and report FLOPs
    against measured speed.

    \b
    tvmshuffle models                       list the zoo with FLOPs and parameters
    tvmshuffle flops MODEL                  multiply-adds, as the ShuffleNet paper counts them
    tvmshuffle compile MODEL -o OUT         build OUT/model.so + manifest.json
    tvmshuffle run OUT                      check numerics and time it on this machine
    """
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")


@cli.command()
@click.argument("pattern", required=False)
@json_option
def models(pattern: str | None, as_json: bool) -> None:
    """List the model zoo (optionally names matching PATTERN, e.g. 'shufflenet*g3*') with
    FLOPs at 224x224 and parameter counts. Weights are random with a fixed seed."""
    from . import flops, frontends, report
    from . import models as zoo

    names = [n for n in zoo.model_names() if pattern is None or fnmatch.fnmatch(n, pattern)]
    if not names:
        raise BadInputError(f"no zoo model matches '{pattern}'")
    rows = []
    with report.step("counting FLOPs", quiet=as_json):
        for name in names:
            imported = frontends.load(frontends.ModelSpec(name), decompose=False)
            rows.append({"name": name, "family": zoo.ZOO[name].family,
                         "mflops": round(flops.count(imported.mod).mflops, 3),
                         "params": zoo.parameter_count(zoo.build(name))})
    report.emit_json(rows) if as_json else report.models_table(rows)


@cli.command(name="flops", epilog=MODEL_HELP)
@click.argument("model")
@input_size_option
@click.option("--per-layer", is_flag=True, help="List every counted layer.")
@json_option
def flops_cmd(model: str, input_size, per_layer: bool, as_json: bool) -> None:
    """Count multiply-adds of convolutions and FC layers (the paper's "FLOPs") of MODEL, from
    its imported Relax module."""
    from . import flops, frontends, report

    with report.step(f"importing {model}", quiet=as_json):
        imported = frontends.load(frontends.ModelSpec(model, input_size), decompose=False)
    counted = flops.count(imported.mod)
    if as_json:
        report.emit_json(report.flops_json(imported.name, imported.input_shape, counted,
                                           per_layer))
    else:
        report.flops_table(imported.name, imported.input_shape, counted, per_layer)


@cli.command(name="compile", epilog=MODEL_HELP)
@click.argument("model")
@click.option("--target", "target_name", default="host", show_default=True,
              help="host, arm (Android aarch64), arm-linux, or a TVM target as JSON.")
@click.option("--device", default="generic", show_default=True,
              help="Device preset for arm targets (core count, mcpu), e.g. snapdragon820.")
@click.option("-o", "--output", "out_dir", required=True, type=click.Path(path_type=Path),
              help="Artifact directory to write.")
@input_size_option
@click.option("--state-dict", type=click.Path(path_type=Path),
              help="Weights for a zoo model (a PyTorch state_dict file).")
@click.option("--dump-ir", is_flag=True, help="Also write the final IRModule as OUT/final_ir.py.")
@click.option("--no-fuse-shuffle", is_flag=True,
              help="Leave channel shuffles as their own kernels (for comparison).")
@json_option
def compile_cmd(model, target_name, device, out_dir, input_size, state_dict, dump_ir,
                no_fuse_shuffle, as_json) -> None:
    """Import MODEL, optimize it and build OUT/model.so with OUT/manifest.json.

    Channel shuffles are fused into the convolution that consumes them; the summary and
    manifest.json ("data_movement_kernels") list any kernel left that only moves data."""
    from . import export, frontends, report, target

    config = export.CompileConfig(target.resolve(target_name, device), not no_fuse_shuffle)
    export.prepare_out_dir(out_dir)
    with report.step(f"importing {model}", quiet=as_json):
        imported = frontends.load(frontends.ModelSpec(model, input_size, state_dict))
    with report.step(f"building for {config.target.name} into {out_dir}", quiet=as_json):
        manifest = export.build_artifact(imported, config, out_dir, dump_ir)
    if as_json:
        report.emit_json(manifest)
    else:
        report.compile_summary(manifest, str(out_dir))


@cli.command()
@click.argument("out_dir", type=click.Path(path_type=Path))
@click.option("--threads", default=1, show_default=True, type=click.IntRange(min=1),
              help="Threads of TVM's pool.")
@click.option("--repeat", default=30, show_default=True, type=click.IntRange(min=1),
              help="Timed repeats (median / p90 over them).")
@click.option("--number", default=1, show_default=True, type=click.IntRange(min=1),
              help="Runs averaged inside each repeat.")
@click.option("--tolerance", default=1e-4, show_default=True, type=float,
              help="Largest max-abs error accepted against the reference.")
@json_option
def run(out_dir: Path, threads: int, repeat: int, number: int, tolerance: float,
        as_json: bool) -> None:
    """Run a compiled artifact on this machine: check its output against the host reference
    (PyTorch, or ONNX Runtime for .onnx models) and time it."""
    from . import bench, report

    artifact = bench.load_artifact(out_dir)
    with report.step("running", quiet=as_json):
        result = bench.run_local(artifact, threads, repeat, number, tolerance)
    if as_json:
        report.emit_json(report.run_json(artifact.manifest, result))
    else:
        report.run_table(artifact.manifest, result)


def main() -> None:
    cli(prog_name="tvmshuffle")


if __name__ == "__main__":
    main()
