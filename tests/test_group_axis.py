"""The group-axis pass: 1x1 group convolutions with the group as an axis, epilogue and all."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import relax

from tvmshuffle import pipeline
from tvmshuffle.passes import group_axis

RNG = np.random.default_rng(0)


def _conv_block(kernel: int = 1, groups: int = 3, stride: int = 1, residual: bool = True,
                cin: int = 12, cout: int = 24) -> tvm.IRModule:
    """NHWC conv2d + bias (+ residual) + ReLU, the shape of a ShuffleNet unit's expanding
    convolution after the graph passes."""
    size = 6
    out_size = (size - kernel) // stride + 1
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, size, size, cin), "float32"))
    r = relax.Var("r", relax.TensorType((1, out_size, out_size, cout), "float32"))
    params = [x, r] if residual else [x]
    with bb.function("main", params):
        with bb.dataflow():
            weight = RNG.standard_normal((kernel, kernel, cin // groups, cout), "float32")
            y = bb.emit(relax.op.nn.conv2d(x, relax.const(weight), strides=stride,
                                           groups=groups, data_layout="NHWC",
                                           kernel_layout="HWIO"))
            y = bb.emit(relax.op.add(y, relax.const(RNG.standard_normal((1, 1, 1, cout),
                                                                        "float32"))))
            if residual:
                y = bb.emit(relax.op.add(r, y))
            y = bb.emit_output(relax.op.nn.relu(y))
        bb.emit_func_output(y)
    return bb.get()


def _calls(mod: tvm.IRModule) -> list[relax.Call]:
    calls = []
    relax.analysis.post_order_visit(
        mod["main"], lambda e: calls.append(e) if isinstance(e, relax.Call) else None)
    return calls


def _op_names(mod: tvm.IRModule) -> list[str]:
    return [getattr(c.op, "name", "") for c in _calls(mod)]


def _run(mod: tvm.IRModule, *args: np.ndarray) -> np.ndarray:
    target = tvm.target.Target({"kind": "llvm", "num-cores": 1})
    vm = relax.VirtualMachine(relax.build(pipeline.lower(mod, target), target), tvm.cpu())
    return vm["main"](*[tvm.runtime.tensor(a) for a in args]).numpy()


def test_group_conv_and_its_epilogue_go_five_dimensional():
    """A 1x1 group conv becomes one grouped kernel on a (n, h, w, g, c/g) view, and its bias,
    residual and ReLU follow it in 5-d, so that one reshape back to 4-d is left, at the end."""
    after = group_axis(_conv_block())
    names = _op_names(after)
    assert "relax.nn.conv2d" not in names
    kernels = [c for c in _calls(after) if c.op.name == "relax.call_tir"]
    assert len(kernels) == 1 and kernels[0].args[0].name_hint.startswith("group_conv2d_nhwgc")
    assert [tuple(int(d) for d in a.ty.shape) for a in kernels[0].args[1]] == [
        (1, 6, 6, 3, 4), (3, 4, 8)]
    for call in _calls(after):
        if call.op.name in ("relax.add", "relax.nn.relu"):
            assert len(call.ty.shape) == 5, call
    assert after["main"].ret_ty.shape[-1] == 24


def test_rewritten_block_computes_the_same():
    """Weights repacked from HWIO to (g, c/g, o/g) and the epilogue's operands viewed in 5-d
    give the convolution's numbers, residual operand on either side of the add."""
    x = RNG.standard_normal((1, 6, 6, 12), "float32")
    r = RNG.standard_normal((1, 6, 6, 24), "float32")
    before = _conv_block()
    np.testing.assert_allclose(_run(group_axis(before), x, r), _run(before, x, r),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", [dict(kernel=3), dict(stride=2), dict(groups=12),
                                  dict(groups=1)])
def test_other_convolutions_are_left_alone(case):
    """3x3, strided, depthwise and dense convolutions are not 1x1 group convolutions: the
    module comes back unchanged."""
    before = _conv_block(residual=False, **case)
    tvm.ir.assert_structural_equal(group_axis(before), before)


def test_running_twice_changes_nothing():
    """The pass is idempotent: its output has nothing left to rewrite."""
    once = group_axis(_conv_block())
    tvm.ir.assert_structural_equal(group_axis(once), once)


def test_broadcasting_operand_is_not_an_epilogue():
    """An add whose other operand is larger than the conv output (it broadcasts the result)
    stays in 4-d, after the reshape."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 1, 1, 12), "float32"))
    big = relax.Var("big", relax.TensorType((1, 5, 5, 24), "float32"))
    with bb.function("main", [x, big]):
        with bb.dataflow():
            weight = relax.const(RNG.standard_normal((1, 1, 4, 24), "float32"))
            y = bb.emit(relax.op.nn.conv2d(x, weight, groups=3, data_layout="NHWC",
                                           kernel_layout="HWIO"))
            y = bb.emit_output(relax.op.add(y, big))
        bb.emit_func_output(y)
    after = group_axis(bb.get())
    adds = [c for c in _calls(after) if c.op.name == "relax.add"]
    assert len(adds) == 1 and len(adds[0].ty.shape) == 4
    xs = RNG.standard_normal((1, 1, 1, 12), "float32")
    bigs = RNG.standard_normal((1, 5, 5, 24), "float32")
    np.testing.assert_allclose(_run(after, xs, bigs), _run(bb.get(), xs, bigs),
                               rtol=1e-5, atol=1e-5)
