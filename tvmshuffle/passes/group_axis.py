"""1x1 group convolutions computed with the group as an axis of its own (the NHWGC form).

What it does. TVM's NHWC group convolution (``topi.nn.group_conv2d_nhwc``) finds the input slice
of output channel ``o`` as ``o // (o / g) * (c / g) + rc``: MetaSchedule tiles the output
channels as one axis, and a vector of them that straddles two groups reads two input slices.
For a 1x1, stride-1, unpadded group convolution on NHWC data the pass writes instead

    x (n, h, w, c) -> view (n, h, w, g, c/g)
    y[n, h, w, g, o] = sum_k x[n, h, w, g, k] * w[g, k, o]     (weights (g, c/g, o/g), repacked
                                                                from HWIO at compile time)
    y (n, h, w, g, o/g) -> view (n, h, w, o)

so that the group and the channels within it are separate loops to tile. Both reshapes only
split or merge the last axis, so memory is unchanged and the VM runs them as views
(``RewriteDataflowReshape``). The reshape back to 4-d is then moved past the element-wise
epilogue (bias add, residual add, ReLU), whose other operands are viewed in 5-d as well: a
reshape between a reduction and its epilogue would stop ``FuseOps``, and the convolution would
write its output twice.

Preconditions: runs after ``ConvertLayout`` to NHWC/HWIO, BatchNorm folding and constant
folding (the weights must be constants) and after the channel shuffle fusion
(``pipeline.py``); a FoldConstant afterwards reshapes the epilogue's constants.
Deliberately left alone: depthwise and dense convolutions, kernels larger than 1x1, strides,
padding or dilation other than none, layouts other than NHWC/HWIO, weights that are not
constants. Records tuned for the plain NHWC form do not apply to the kernels it makes.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax, te, tirx
from tvm.relax.dpl import is_const, is_op, rewrite_call, wildcard

from .channel_shuffle import _static_shape as _shape
from .channel_shuffle import rewrite_functions
from .gathered_conv import i64

EPILOGUE_UNARY = ("relax.nn.relu", "relax.clip", "relax.sigmoid", "relax.tanh", "relax.nn.silu")
EPILOGUE_BINARY = ("relax.add", "relax.subtract", "relax.multiply", "relax.divide")


def _group_conv_prim_func(shape5: tuple[int, ...], groups: int, cig: int, cog: int,
                          dtype: str) -> tirx.PrimFunc:
    data = te.placeholder(i64(*shape5), dtype, name="data")
    weight = te.placeholder(i64(groups, cig, cog), dtype, name="weight")
    k = te.reduce_axis(i64(0, cig), name="k")
    out = te.compute(i64(*shape5[:3], groups, cog),
                     lambda n, h, w, g, o: te.sum(data[n, h, w, g, k] * weight[g, k, o], axis=k),
                     name="conv2d_nhwgc")
    return te.create_prim_func([data, weight, out]).without_attr("global_symbol")


def _eligible(call: relax.Call) -> bool:
    attrs = call.attrs
    weight = _shape(call.args[1])
    data = _shape(call.args[0])
    if weight is None or data is None or len(data) != 4:
        return False
    groups = int(attrs.groups)
    return (str(attrs.data_layout) == "NHWC" and str(attrs.kernel_layout) == "HWIO"
            and str(attrs.out_layout or "NHWC") == "NHWC"
            and weight[:2] == (1, 1) and 1 < groups < data[3]
            and all(int(v) == 1 for v in attrs.strides)
            and all(int(v) == 1 for v in attrs.dilation)
            and not any(int(v) for v in attrs.padding)
            and str(call.args[0].ty.dtype) == str(call.args[1].ty.dtype)
            and str(attrs.out_dtype) in ("", "None", "void", str(call.args[0].ty.dtype)))


def _rewrite_convs(func: relax.Function, builder: relax.BlockBuilder) -> relax.Function:
    weight = is_const()
    conv = is_op("relax.nn.conv2d")(wildcard(), weight)

    def rewriter(expr: relax.Call, matches) -> relax.Expr:
        if not _eligible(expr):
            return expr
        data = expr.args[0]
        n, h, w, _ = _shape(data)
        groups = int(expr.attrs.groups)
        hwio = matches[weight].value.numpy()  # (1, 1, c/g, o)
        cig, out_channels = hwio.shape[2], hwio.shape[3]
        cog = out_channels // groups
        # (c/g, o) -> (c/g, g, o/g) -> (g, c/g, o/g)
        packed = np.ascontiguousarray(hwio[0, 0].reshape(cig, groups, cog).transpose(1, 0, 2))
        dtype = str(data.ty.dtype)
        shape5 = (n, h, w, groups, cig)
        kernel = builder.add_func(_group_conv_prim_func(shape5, groups, cig, cog, dtype),
                                  "group_conv2d_nhwgc")
        grouped = relax.call_tir(kernel, [relax.op.reshape(data, shape5), relax.const(packed)],
                                 relax.TensorType((n, h, w, groups, cog), dtype))
        return relax.op.reshape(grouped, (n, h, w, out_channels))

    return rewrite_call(conv, rewriter, func)


def _merges_group_axis(call: relax.Call) -> tuple[int, ...] | None:
    """The 5-d shape of a reshape (n, h, w, g, o/g) -> (n, h, w, o), else None."""
    source, target = _shape(call.args[0]), _shape(call)
    if (source is None or target is None or len(source) != 5 or len(target) != 4
            or source[:3] != target[:3] or source[3] * source[4] != target[3]):
        return None
    return source


def _as_5d(operand: relax.Expr, shape5: tuple[int, ...]) -> relax.Expr | None:
    """``operand`` as broadcast against (n, h, w, g, o/g) where it broadcast against the 4-d
    (n, h, w, o): its last axis split the same way, or kept as a size-1 axis."""
    shape = _shape(operand)
    if shape is None or not shape or len(shape) > 4:
        return None
    if shape[-1] == shape5[3] * shape5[4]:
        last = shape5[3:]
    elif shape[-1] == 1:
        last = (1, 1)
    else:
        return None
    lead = (1,) * (4 - len(shape)) + shape[:-1]
    if any(d not in (1, full) for d, full in zip(lead, shape5[:3])):
        return None
    return relax.op.reshape(operand, lead + last)


def _sink_reshapes(func: relax.Function) -> relax.Function:
    """reshape back to 4-d moved past element-wise ops, one op per rewrite."""
    merged = is_op("relax.reshape")(wildcard(), wildcard())
    other = wildcard()
    unary = None
    for name in EPILOGUE_UNARY:
        pattern = is_op(name)(merged)
        unary = pattern if unary is None else unary | pattern
    binary = None
    for name in EPILOGUE_BINARY:
        pattern = is_op(name)(merged, other) | is_op(name)(other, merged)
        binary = pattern if binary is None else binary | pattern

    moved = []

    def rewriter(expr: relax.Call, matches) -> relax.Expr:
        reshape = matches[merged]
        shape5 = _merges_group_axis(reshape)
        if shape5 is None:
            return expr
        source = reshape.args[0]
        if len(expr.args) == 1:
            inner = relax.Call(expr.op, [source], expr.attrs)
        else:
            operand = matches[other]
            if _shape(expr) != shape5[:3] + (shape5[3] * shape5[4],):
                return expr  # the other operand broadcasts the result: not an epilogue
            viewed = _as_5d(operand, shape5)
            if viewed is None:
                return expr
            args = [source, viewed] if expr.args[0].same_as(reshape) else [viewed, source]
            inner = relax.Call(expr.op, args, expr.attrs)
        moved.append(expr)
        return relax.op.reshape(inner, _shape(expr))

    for _ in range(8):  # a bias, a residual and an activation: three rounds; a few to spare
        moved.clear()
        func = rewrite_call(binary | unary, rewriter, func)
        if not moved:
            break
    return func


@tvm.transform.module_pass(opt_level=0, name="tvmshuffle.GroupAxis")
def group_axis(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
    """Every eligible 1x1 group convolution in the NHWGC form, its epilogue with it."""
    return rewrite_functions(
        mod, lambda module, name, builder: _sink_reshapes(_rewrite_convs(module[name], builder)))
