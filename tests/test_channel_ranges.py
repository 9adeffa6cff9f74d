"""Convolutions that read channel ranges of several tensors, and channel permutations sunk
into weights (passes/channel_ranges.py): exact, no kernel that only moves data, look-alikes
untouched, the ranges copied per register block by the default schedules."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import relax

from tvmshuffle import defaults, pipeline, target
from tvmshuffle.passes import fuse_channel_ranges, sink_channel_take

RNG = np.random.default_rng(0)
SIZE, HALF = 6, 8
NHWC = {"data_layout": "NHWC", "kernel_layout": "HWIO"}


def _const(*shape: int) -> relax.Expr:
    return relax.const(RNG.standard_normal(shape).astype("float32"))


def _module(body) -> tvm.IRModule:
    """``main(a, b, c)`` of three NHWC tensors of HALF channels, ``body`` emitting the rest."""
    bb = relax.BlockBuilder()
    params = [relax.Var(name, relax.TensorType((1, SIZE, SIZE, HALF), "float32"))
              for name in "abc"]
    with bb.function("main", params):
        with bb.dataflow():
            out = bb.emit_output(body(bb, *params))
        bb.emit_func_output(out)
    return bb.get()


def _ranges(bb, a, b, c):
    """A v2 unit's reader: a 1x1 convolution and a depthwise one of a concat of channel
    ranges of three tensors (a whole one among them), 2 + 8 + 6 channels."""
    parts = [bb.emit(relax.op.strided_slice(a, axes=[3], begin=[5], end=[7])), b,
             bb.emit(relax.op.strided_slice(c, axes=[3], begin=[0], end=[6]))]
    x = bb.emit(relax.op.concat(parts, axis=3))
    dense = bb.emit(relax.op.nn.conv2d(x, _const(1, 1, 16, 12), **NHWC))
    dense = bb.emit(relax.op.nn.relu(relax.op.add(dense, _const(12))))
    depthwise = bb.emit(relax.op.nn.conv2d(x, _const(3, 3, 1, 16), strides=2, padding=1,
                                           groups=16, **NHWC))
    return relax.op.add(bb.emit(relax.op.sum(dense, axis=[1, 2, 3])),
                        relax.op.sum(depthwise, axis=[1, 2, 3]))


def _take_chain(bb, a, b, c):
    """A stride-2 unit's left branch reading a permuted input: take -> depthwise conv -> bias
    -> 1x1 conv -> bias -> ReLU."""
    x = bb.emit(relax.op.concat([a, b], axis=3))
    order = RNG.permutation(2 * HALF).astype("int64")
    y = bb.emit(relax.op.take(x, relax.const(order), axis=3, mode="clip"))
    y = bb.emit(relax.op.nn.conv2d(y, _const(3, 3, 1, 16), strides=2, padding=1, groups=16,
                                   **NHWC))
    y = bb.emit(relax.op.multiply(relax.op.add(y, _const(1, 1, 1, 16)), _const(16)))
    y = bb.emit(relax.op.nn.conv2d(relax.op.clip(y, 0, 6), _const(1, 1, 16, 10), **NHWC))
    return relax.op.nn.relu(relax.op.add(y, _const(10)))


def _inputs() -> list[np.ndarray]:
    return [RNG.standard_normal((1, SIZE, SIZE, HALF)).astype("float32") for _ in range(3)]


def _run(mod: tvm.IRModule, inputs: list[np.ndarray], plain: bool = False) -> np.ndarray:
    """``mod`` built for the host with tvmshuffle's pipeline, or (``plain``) with TVM's fusion
    alone, which reads no ranges in convolutions: the reference."""
    tgt = target.resolve("host").tvm_target
    if plain:
        with tgt:
            fused = relax.pipeline.zero_pipeline()(mod)
        lowered = pipeline.lower_fused(fused, tgt, None)
    else:
        lowered = pipeline.lower(mod, tgt)
    exe = tvm.compile(lowered, target=tgt, relax_pipeline=None)
    out = relax.VirtualMachine(exe, tvm.cpu())["main"](*map(tvm.runtime.tensor, inputs))
    return out.numpy()


def _ops(mod: tvm.IRModule) -> list[str]:
    names = []
    relax.analysis.post_order_visit(
        mod["main"], lambda node: names.append(getattr(node.op, "name", "call_tir"))
        if isinstance(node, relax.Call) else None)
    return names


def _both(mod: tvm.IRModule) -> tvm.IRModule:
    return fuse_channel_ranges(sink_channel_take(mod))


def test_convolutions_read_the_ranges_themselves_exactly():
    """Both readers of the concat read its ranges in their input stage: no concat, no slice
    left, the same output."""
    mod = _module(_ranges)
    rewritten = _both(mod)
    ops = _ops(rewritten)
    assert not {"relax.concat", "relax.strided_slice", "relax.nn.conv2d"} & set(ops), ops
    assert ops.count("relax.call_tir") == 2, ops
    inputs = _inputs()
    np.testing.assert_allclose(_run(rewritten, inputs), _run(mod, inputs, plain=True),
                               rtol=1e-5, atol=1e-4)


def test_a_permutation_sinks_into_the_next_dense_convolution_exactly():
    """take -> depthwise -> add, multiply, clip -> 1x1 conv: the permutation ends in the 1x1
    convolution's weights, no take left, the same output."""
    mod = _module(_take_chain)
    rewritten = sink_channel_take(mod)
    assert "relax.take" not in _ops(rewritten) and "relax.take" in _ops(mod)
    inputs = _inputs()
    np.testing.assert_allclose(_run(rewritten, inputs), _run(mod, inputs, plain=True),
                               rtol=1e-5, atol=1e-4)
    # then the depthwise convolution reads the concat's two tensors itself
    assert "relax.concat" not in _ops(_both(mod))


def test_passes_are_idempotent():
    for body in (_ranges, _take_chain):
        once = _both(_module(body))
        tvm.ir.assert_structural_equal(_both(once), once)


def _not_a_permutation(bb, a, b, c):
    x = bb.emit(relax.op.concat([a, b], axis=3))
    y = bb.emit(relax.op.take(x, relax.const(np.arange(16)[::-1] % 8), axis=3))  # repeats
    return relax.op.nn.conv2d(y, _const(1, 1, 16, 4), **NHWC)


def _pixels_taken(bb, a, b, c):
    y = bb.emit(relax.op.take(a, relax.const(RNG.permutation(SIZE)), axis=2))  # moves columns
    return relax.op.nn.conv2d(y, _const(1, 1, HALF, 4), **NHWC)


def _concat_of_rows(bb, a, b, c):
    x = bb.emit(relax.op.concat([a, b], axis=1))  # along H
    return relax.op.nn.conv2d(x, _const(1, 1, HALF, 4), **NHWC)


def _strided_range(bb, a, b, c):
    every_other = bb.emit(relax.op.strided_slice(a, axes=[3], begin=[0], end=[8], strides=[2]))
    x = bb.emit(relax.op.concat([every_other, b], axis=3))
    return relax.op.nn.conv2d(x, _const(1, 1, 12, 4), **NHWC)


def _weights_not_constant(bb, a, b, c):
    x = bb.emit(relax.op.concat([a, b], axis=3))
    weight = bb.emit(relax.op.reshape(c, (1, 1, 16, 18)))
    return relax.op.nn.conv2d(x, weight, **NHWC)


@pytest.mark.parametrize("body", [_not_a_permutation, _pixels_taken, _concat_of_rows,
                                  _strided_range, _weights_not_constant])
def test_look_alikes_are_left_untouched(body):
    mod = _module(body)
    tvm.ir.assert_structural_equal(_both(mod), mod)


def test_default_schedule_copies_the_ranges_per_block_of_pixels():
    """A 1x1 convolution reading ranges gets a default whose range copy sits inside the pixel
    loops (the block's pixels, every input channel), not at the kernel's root."""
    tgt = target.resolve("host").tvm_target
    fused = pipeline.fuse(_both(_module(_ranges)), tgt)
    kernels = [t for t in pipeline.running_tasks(fused, tgt) if "ranged" in t.task_name
               and defaults.window_of(t.dispatched[0]) is None]  # the 1x1 reader
    assert len(kernels) == 1
    for task in kernels:
        default = defaults.default_schedule(task.dispatched[0], tgt)
        assert default is not None, task.task_name
        sch = default.schedule
        copy = sch.get_loops(sch.get_sblock("range_pad"))
        conv = sch.get_loops(sch.get_sblock("shuffled_conv2d_update"))
        # under the convolution's parallel and pixel loops, outside its reduction
        assert len(copy) >= 2 and sch.get_sref(copy[0]).same_as(sch.get_sref(conv[0]))
        assert len(copy) < len(conv), task.task_name


def test_kernel_work_reads_the_weights_after_the_ranges():
    """The multiply-adds of a convolution reading ranges (what tuning budgets and reports
    use) come from its weights, not from the range tensors before them in its parameters."""
    tgt = target.resolve("host").tvm_target
    fused = pipeline.fuse(_both(_module(_ranges)), tgt)
    work = sorted(pipeline.kernel_work(t.dispatched[0]["main"], "NHWGC")
                  for t in pipeline.running_tasks(fused, tgt) if "ranged" in t.task_name)
    # 1x1: 6 x 6 pixels x 12 outputs x 16 inputs; depthwise 3x3 stride 2: 3 x 3 x 16 x 9
    assert work == [("conv", SIZE * SIZE * 12 * 16), ("depthwise", 3 * 3 * 16 * 9)], work


def test_neon_keeps_the_concat_kernels():
    """On NEON (no FMA memory operand) the range copy cost more instructions than the
    vectorized concat kernel it replaced: ``fuse`` reads ranges in convolutions on x86 only;
    the permutation is folded into weights on both."""
    mod = sink_channel_take(_module(_take_chain))
    names = {}
    for name in ("host", "arm"):
        tgt = target.resolve(name).tvm_target
        names[name] = [t.task_name for t in pipeline.running_tasks(pipeline.fuse(mod, tgt), tgt)]
    assert any("ranged" in n for n in names["host"]), names
    assert not any("ranged" in n for n in names["arm"]), names
    assert any("concatenate" in n for n in names["arm"]), names
    assert not any("take" in n for kernels in names.values() for n in kernels), names


def test_compile_summary_names_only_the_rewrites_counted():
    from tvmshuffle import report

    said = report.channel_passes_done({"split_regions_rebuilt": 16,
                                       "split_regions_in_conv_weights": 14,
                                       "split_regions_gathered": 2,
                                       "ranges_read_by_convolutions": 0,
                                       "gathers_folded_into_weights": 2})
    assert said == ("16 v2 split/concat/shuffle outputs rebuilt from the branches (14 in "
                    "convolution weights, 2 gathered); 2 channel gathers folded into convolution "
                    "weights"), said
    assert report.channel_passes_done({"ranges_read_by_convolutions": 0}) == ""
