"""The convolution layout: NHWGC by default, NHWC and NCHW on request, same numbers, same tuning
tasks."""

from __future__ import annotations

import json

import pytest
import tvm

from conftest import invoke
from tvmshuffle import frontends, pipeline, records, target, tune

SMALL = frontends.ModelSpec("shufflenet_v1_g3_0.25x", (64, 64))


def _tasks(layout: str) -> list[tuple[str, int, int]]:
    config = tune.TuneConfig(target.resolve("host"), db_dir=None, layout=layout)
    tasks = tune.extract_tasks(frontends.load(SMALL).mod, config)
    return sorted((t.kind, t.weight, t.macs) for t in tasks if t.kind != "other")


def test_tasks_are_classified_alike_in_every_layout():
    """Every convolution task has the same kind, call count and multiply-adds in NHWC and NHWGC
    as in NCHW, so budgets, ordering and --ops select the same work whichever layout is tuned."""
    nchw, nhwc = _tasks("NCHW"), _tasks("NHWC")
    assert nchw == nhwc == _tasks("NHWGC")
    assert {kind for kind, _, _ in nhwc} == {"conv", "grouped", "depthwise", "dense"}


@pytest.mark.parametrize("layout", ["NHWGC", "NCHW"])
def test_every_task_is_a_kernel_the_library_runs(layout):
    """Kernels that only reshape become views in the build and are not tasks: MetaSchedule
    extracts them, and trials spent on them would be wasted."""
    import re

    from tvm import relax
    from tvm.s_tir import meta_schedule as ms

    tgt = target.resolve("host").tvm_target
    config = tune.TuneConfig(target.resolve("host"), db_dir=None, layout=layout)
    with tgt:
        optimized = pipeline.optimize(frontends.load(SMALL).mod, True, layout)
    fused = pipeline.fuse(optimized, tgt, config.method.prepack)  # as tuning extracts them
    extracted = ms.relax_integration.extract_tasks(fused, tgt)
    reshapes = {t.task_name for t in extracted
                if relax.analysis.has_reshape_pattern(t.dispatched[0]["main"])}
    assert reshapes, "MetaSchedule extracts pure reshapes"
    names = {t.name for t in tune.extract_tasks(frontends.load(SMALL).mod, config)}
    assert names == {t.task_name for t in extracted} - reshapes
    lowered = pipeline.lower_fused(fused, tgt, records.empty_memory_database(),
                                   config.method.prepack)
    # a kernel that reads weights repacked at build time is named <task>_prepacked
    called = {name.removesuffix("_prepacked")
              for name in re.findall(r"(\w+)\(", lowered["main"].script())}
    assert names <= called and not reshapes & called


def _calls(mod: tvm.IRModule, op_name: str) -> list:
    from tvm import relax

    calls = []
    relax.analysis.post_order_visit(
        mod["main"], lambda e: calls.append(e)
        if isinstance(e, relax.Call) and getattr(e.op, "name", "") == op_name else None)
    return calls


def _channels(expr) -> int:
    return int(expr.ty.shape.values[-1])


def _grouped(conv) -> bool:
    """Neither dense nor depthwise."""
    return 1 < int(conv.attrs.groups) < _channels(conv.args[0])


def test_default_layout_is_nhwgc_and_weights_are_packed_at_compile_time():
    """By default every convolution is NHWC/HWIO with a constant weight, except the 1x1 group
    convolutions, each a 5-d kernel with its weight packed (g, c/g, o/g) as a constant: no weight
    transpose is left for run time."""
    from tvmshuffle.cli import cli

    assert pipeline.DEFAULT_LAYOUT == "NHWGC"
    for command in ("compile", "tune"):  # the CLI spells the default out (it imports tvm lazily)
        layout = next(p for p in cli.commands[command].params if p.name == "layout")
        assert layout.default.upper() == pipeline.DEFAULT_LAYOUT
    imported = frontends.load(SMALL).mod
    nhwc_groups = [c for c in _calls(pipeline.optimize(imported, layout="NHWC"),
                                     "relax.nn.conv2d") if _grouped(c)]
    optimized = pipeline.optimize(imported)
    convs = _calls(optimized, "relax.nn.conv2d")
    assert convs and nhwc_groups
    for conv in convs:
        assert (str(conv.attrs.data_layout), str(conv.attrs.kernel_layout)) == ("NHWC", "HWIO")
        assert isinstance(conv.args[1], tvm.ir.expr.Constant)
        assert not _grouped(conv)
    kernels = [c for c in _calls(optimized, "relax.call_tir")
               if c.args[0].name_hint.startswith("group_conv2d_nhwgc")]
    assert len(kernels) == len(nhwc_groups)
    for kernel in kernels:
        weight = kernel.args[1][1]
        assert isinstance(weight, tvm.ir.expr.Constant) and len(weight.ty.shape.values) == 3


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["nhwc", "nchw", "nhwgc"])
def test_compile_in_either_layout_matches_pytorch(layout, tmp_path):
    """`compile --layout` builds a library that matches PyTorch and records its layout, with
    the input and output shapes of the imported (NCHW) model."""
    out = tmp_path / "out"
    result = invoke("compile", "shufflenet_v1_g3_0.25x", "--input-size", "64x64", "--no-db",
                    "--layout", layout, "-o", str(out), "--json")
    assert result.exit_code == 0, result.output
    manifest = json.loads(result.stdout)
    assert manifest["layout"] == layout.upper()
    assert manifest["input"]["shape"] == [1, 3, 64, 64]
    assert manifest["data_movement_kernels"] == []
    run = invoke("run", str(out), "--repeat", "2", "--json")
    assert run.exit_code == 0, run.output
    assert json.loads(run.stdout)["max_abs_err"] < 1e-4


def test_bad_layout_is_one_line(tmp_path):
    """An unknown --layout is refused by the CLI in one line before any work."""
    result = invoke("compile", "shufflenet_v1_g3_0.25x", "--layout", "nchw16c",
                    "-o", str(tmp_path / "out"))
    assert result.exit_code == 2 and "nchw16c" in result.output
