"""NEON: a 1x1 group convolution's bias as its accumulators' first value (passes/bias_init)."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import relax

from tvmshuffle import defaults, frontends, pipeline, target
from tvmshuffle.passes import bias_init

SMALL = frontends.ModelSpec("shufflenet_v1_g3_0.25x", (64, 64))


@pytest.fixture(scope="module")
def imported():
    return frontends.load(SMALL)


def _kernels(mod: tvm.IRModule) -> list[str]:
    return [gv.name_hint for gv, f in mod.functions.items() if isinstance(f, tvm.tirx.PrimFunc)]


def test_biased_group_convolutions_compute_the_network(imported):
    """Every group convolution's bias add becomes its init, residual adds stay adds, and the
    network built for the host from the rewritten module gives the reference's output."""
    optimized = pipeline.optimize(imported.mod)
    rewritten = bias_init.bias_init(optimized)
    before, after = _kernels(optimized), _kernels(rewritten)
    plain = [n for n in before if n.startswith("group_conv2d_nhwgc")]
    assert plain and not [n for n in after if n.startswith("group_conv2d_nhwgc")
                          and "bias" not in n]
    adds = [n for n in _ops(optimized) if n == "relax.add"]
    left = [n for n in _ops(rewritten) if n == "relax.add"]
    # one bias add a group convolution gone, the residual adds of the stride-1 units kept
    assert len(left) < len(adds) and left, (len(adds), len(left))
    tgt = target.resolve("host").tvm_target
    x = np.random.default_rng(0).standard_normal(imported.input_shape).astype("float32")
    exe = tvm.compile(pipeline.lower_fused(pipeline.fuse(rewritten, tgt), tgt, None),
                      target=tgt, relax_pipeline=None)
    out = relax.VirtualMachine(exe, tvm.cpu())["main"](tvm.runtime.tensor(x))
    out = out.numpy() if hasattr(out, "numpy") else out[0].numpy()
    assert np.abs(out - imported.reference(x)[0]).max() < 1e-4


def _ops(mod: tvm.IRModule) -> list[str]:
    names = []
    relax.analysis.post_order_visit(
        mod["main"], lambda node: names.append(node.op.name)
        if isinstance(node, relax.Call) and isinstance(node.op, tvm.ir.Op) else None)
    return names


def test_neon_fuse_keeps_the_bias_layout_and_schedules_the_kernel(imported):
    """On NEON ``fuse`` makes the biased kernels (x86: none), their bias is not left to the
    layout rewrite (which fails on a buffer an init reads), and each gets a default schedule
    whose register block ignores the bias read (one a block, not one a reduction step)."""
    optimized = pipeline.optimize(imported.mod)
    arm_target = target.resolve("arm").tvm_target
    arm = pipeline.fuse(optimized, arm_target, prepack=True)
    host = pipeline.fuse(optimized, target.resolve("host").tvm_target, prepack=True)
    assert not [n for n in _kernels(host) if "bias" in n]
    biased = {gv.name_hint: f for gv, f in arm.functions.items()
              if isinstance(f, tvm.tirx.PrimFunc) and "nhwgc_bias" in gv.name_hint}
    assert biased
    for name, func in biased.items():
        free = [int(i) for i in func.attrs["layout_free_buffers"]]
        assert not set(free) & bias_init._init_reads(func), name
        mod = tvm.IRModule({"main": func})
        assert len(defaults.spatial_reads(mod)) == 2, name  # data and weights
        assert defaults.default_schedule(mod, arm_target) is not None, name
