"""The convolution layout: NHWC by default, NCHW on request, same numbers, same tuning tasks."""

from __future__ import annotations

import json

import pytest
import tvm

from conftest import invoke
from tvmshuffle import frontends, pipeline, target, tune

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


def test_default_layout_is_nhwc_and_weights_are_transposed_at_compile_time():
    """The graph passes leave every convolution NHWC/HWIO with a constant weight: no weight
    transpose is left for run time."""
    from tvm import relax

    optimized = pipeline.optimize(frontends.load(SMALL).mod)
    convs = []
    relax.analysis.post_order_visit(
        optimized["main"], lambda e: convs.append(e)
        if isinstance(e, relax.Call) and getattr(e.op, "name", "") == "relax.nn.conv2d" else None)
    assert convs
    for conv in convs:
        assert (str(conv.attrs.data_layout), str(conv.attrs.kernel_layout)) == ("NHWC", "HWIO")
        assert isinstance(conv.args[1], tvm.ir.expr.Constant)


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
