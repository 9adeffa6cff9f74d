"""Convolutions that read their channels where the branches wrote them: ShuffleNet v2's last
data movement folded into the convolutions.

What it does. ``channel_split`` leaves each tensor a ShuffleNet v2 unit reads as a ``concat`` of
channel ranges of earlier branch outputs (2-8 ranges), the order of the shuffle in the reading
convolution's weights, and, where a depthwise convolution reads the stage's output (the
stride-2 units' left branch), a ``take`` of the shuffle's order after it. Each was a kernel
that only moves data (ShuffleNet v2 1.0x: 18 of them, called once each). Two rewrites of the
channels-last module remove them:

1. ``sink`` (a graph pass, every target): ``take(x, I, axis=3)`` of a constant permutation
   ``I`` is moved forward past what works channel by channel — a depthwise convolution (its
   weights and so its output channels permuted: ``dw(take(x, I), W) = take(dw(x, W[...,
   I^-1]), I)``), an add / subtract / multiply / divide by a per-channel constant (permuted),
   an element-wise activation — into the next convolution with groups = 1, which absorbs it in
   its weights' input channels (``conv(take(x, I), W) = conv(x, W[:, :, I^-1, :])``). Exact;
   no gather is left.
2. ``fuse`` (``pipeline.fuse``, x86): ``conv2d(concat([x1[..., a1:b1], x2, ...], axis=3), W)``
   becomes one kernel (``gathered_conv.gathered_conv2d``) whose input stage reads each channel
   from its range: the concat is neither a kernel nor a tensor. The stage is the padding copy
   a convolution with a window makes anyway; a 1x1 convolution gets one too (not inlined into
   the multiply-adds, where its range test would run at every step), which the default
   schedules compute per register block, for the block's pixels and all input channels
   (``defaults.default_schedule``): a copy that stays in cache instead of a pass over memory.

Why this design and not producers writing into one shared buffer (the issue's ideal): with v2
1.0x's 116 / 232 / 464 channels the ranges a unit reads are 29, 15, 7... channels long, so the
writes would land in runs that no vector covers (``channel_split``'s docstring). Reading the
ranges in the consumer keeps every producer's channels-last vector stores and gives each
consumer one copy of its own input per register block, the same work as the padding copy it
already had (1x1 readers: a block of a few pixels by all input channels). Measured with the
default schedules on one Xeon core (benchmarks/RESULTS.md, session 27): ShuffleNet v2 1.0x
6.16 -> 6.04 ms against the gather kernels (their 0.32 ms of kernel time gone, the 1x1
readers 2-5 us slower a call in stage 3, where they read up to 6 ranges), 1.03-1.06x the same
network with its shuffles deleted; tuned briefly, more (its readers are tuning tasks of their
own). On NEON the range copy, a test a channel at a time, ran 1.6-2.1x a plain reader's
instructions (v2 1.0x 78.1 M against 59.8 M with the concat kernels, which are vectorized
copies there): NEON keeps them. Tried and not kept: the range test inlined into the
multiply-adds, the reduction loop split at the ranges' bounds where it ran whole (the network
2.6x slower: a reader whose reduction is tiled in two kept the test in every multiply-add, 24x
slower; the split ones 15-40% slower), and the copy's channel loop split at the bounds (no
change in the network, two runs).

Preconditions: static shapes, constants bound, NHWC convolutions with HWIO weights (what
``graph_passes`` makes; ``sink`` runs after ``take_channels_last``, ``fuse`` before
legalization). Anything else is left alone: a
``take`` that is not a permutation of the whole channel axis, a concat along another axis, a
convolution whose weights are not constant.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax, te, tirx
from tvm.relax.dpl import is_const, is_op, rewrite_call, wildcard

from . import ledger
from .channel_split import _bindings, _ints
from .channel_shuffle import (ELEMENTWISE_OPS, PER_CHANNEL_BINARY_OPS, _relax_functions,
                              _static_shape, rewrite_functions)
from .gathered_conv import conv_out_dtype, gathered_conv2d, i64

MAX_SINK_STEPS = 64  # per function: a take crosses a few operators (v2: dw conv, add, conv)


def _permutation(take: relax.Call) -> np.ndarray | None:
    """The constant channel permutation of ``take(x, I, axis=3)`` on an NHWC tensor."""
    shape = _static_shape(take.args[0])
    index = take.args[1]
    if (shape is None or len(shape) != 4 or take.attrs.axis is None
            or int(take.attrs.axis) not in (3, -1) or not isinstance(index, tvm.ir.Constant)):
        return None
    order = index.value.numpy()
    if order.ndim != 1 or not np.array_equal(np.sort(order), np.arange(shape[3])):
        return None
    return order.astype(np.int64)


def _conv_attrs_nhwc(conv: relax.Call) -> bool:
    attrs = conv.attrs
    return (str(attrs.data_layout) == "NHWC" and str(attrs.kernel_layout) == "HWIO"
            and str(attrs.out_layout or "NHWC") == "NHWC")


def _constant(array: np.ndarray) -> tvm.ir.Constant:
    return relax.const(np.ascontiguousarray(array))


def _sink_step(func: relax.Function) -> tuple[relax.Function, int]:
    """One round of moving permutations forward; (function, rewrites made)."""
    made = 0
    data, index, const = wildcard(), is_const(), is_const()
    take = is_op("relax.take")(data, index)

    def taken(matches, order: np.ndarray, expr: relax.Expr) -> relax.Expr:
        return relax.op.take(expr, relax.const(order), axis=3, mode=str(matches[take].attrs.mode))

    def conv_rewriter(expr: relax.Call, matches) -> relax.Expr:
        nonlocal made
        order = _permutation(matches[take])
        weight = matches[const].value.numpy()
        if order is None or not _conv_attrs_nhwc(expr) or weight.ndim != 4:
            return expr
        inverse = np.argsort(order)
        channels, groups = len(order), int(expr.attrs.groups)
        if groups == 1 and weight.shape[2] == channels:  # absorbed: no gather left
            made += 1
            ledger.note("gathers_folded_into_weights")
            return relax.op.nn.conv2d(matches[data], _constant(weight[:, :, inverse, :]),
                                      **_conv_kwargs(expr))
        if groups == channels and weight.shape[2:] == (1, channels):  # depthwise: passed on
            made += 1
            moved = relax.op.nn.conv2d(matches[data], _constant(weight[..., inverse]),
                                       **_conv_kwargs(expr))
            return taken(matches, order, moved)
        return expr

    func = rewrite_call(is_op("relax.nn.conv2d")(take, const), conv_rewriter, func)

    for name in PER_CHANNEL_BINARY_OPS:
        def binary_rewriter(expr: relax.Call, matches, name=name) -> relax.Expr:
            nonlocal made
            order = _permutation(matches[take])
            value = matches[const].value.numpy()
            shape = _static_shape(expr)
            # a per-channel constant (channels last, broadcast elsewhere) or a scalar
            if (order is None or shape is None or value.ndim > 4
                    or any(d != 1 for d in value.shape[:-1])
                    or (value.ndim and value.shape[-1] not in (1, len(order)))):
                return expr
            if value.ndim and value.shape[-1] == len(order):
                value = value[..., np.argsort(order)]
            made += 1
            moved = relax.Call(tvm.ir.Op.get(name), [matches[data], _constant(value)],
                               expr.attrs)
            return taken(matches, order, moved)

        func = rewrite_call(is_op(name)(take, const), binary_rewriter, func)

    for name in ELEMENTWISE_OPS:
        def unary_rewriter(expr: relax.Call, matches, name=name) -> relax.Expr:
            nonlocal made
            order = _permutation(matches[take])
            if order is None:
                return expr
            made += 1
            moved = relax.Call(tvm.ir.Op.get(name), [matches[data], *expr.args[1:]],
                               expr.attrs)
            return taken(matches, order, moved)

        func = rewrite_call(is_op(name)(take, varg_default_wildcard=True), unary_rewriter,
                            func)
    return func, made


def _conv_kwargs(conv: relax.Call) -> dict:
    attrs = conv.attrs
    return {"strides": [int(v) for v in attrs.strides],
            "padding": [int(v) for v in attrs.padding],
            "dilation": [int(v) for v in attrs.dilation], "groups": int(attrs.groups),
            "data_layout": "NHWC", "kernel_layout": "HWIO", "out_layout": "NHWC",
            "out_dtype": conv_out_dtype(attrs)}


def _runs(fields, bound: dict) -> list[tuple[relax.Expr, int, int]] | None:
    """(source, first, end channel) of each field of a channels-last concat, in its order: a
    ``strided_slice`` of the channel axis with step 1, or a whole tensor."""
    runs = []
    for field in fields:
        value = bound.get(field, field)
        if (isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op)
                and value.op.name == "relax.strided_slice"):
            shape = _static_shape(value.args[0])
            axes, begin, end = (_ints(value.args[i]) for i in (1, 2, 3))
            strides = _ints(value.args[4]) if len(value.args) > 4 else None
            if (shape is None or axes is None or begin is None or end is None
                    or len(axes) != 1 or axes[0] not in (3, -1) or len(shape) != 4
                    or (strides and any(s != 1 for s in strides))):
                return None
            first, last = begin[0], min(end[0], shape[3])
            if not 0 <= first < last:
                return None
            runs.append((value.args[0], first, last))
        else:
            shape = _static_shape(field)
            if shape is None or len(shape) != 4:
                return None
            runs.append((field, 0, shape[3]))
    return runs


def _ranged_conv(conv: relax.Call, runs, weight: tvm.ir.Constant):
    """(PrimFunc, its tensor arguments): the convolution reading its input from ``runs``."""
    sources: list[relax.Expr] = []
    for source, _, _ in runs:
        if not any(source.same_as(s) for s in sources):
            sources.append(source)
    shapes = [_static_shape(s) for s in sources]
    dtypes = {str(s.ty.dtype) for s in sources}
    n, h, w = shapes[0][:3]
    if len(dtypes) != 1 or any(shape[:3] != (n, h, w) for shape in shapes):
        return None
    dtype = dtypes.pop()
    placeholders = [te.placeholder(i64(*shape), dtype, name=f"range_source{i}")
                    for i, shape in enumerate(shapes)]
    w_shape = _static_shape(weight)
    kernel = te.placeholder(i64(*w_shape), str(weight.ty.dtype), name="weight")
    starts, position = [], 0
    for source, first, last in runs:
        starts.append(position)
        position += last - first

    def read(b, ch, y, x):
        # channel ch is in run j when starts[j] <= ch < starts[j + 1]
        value, end = None, position
        for (source, first, _), start in reversed(list(zip(runs, starts))):
            tensor = placeholders[next(i for i, s in enumerate(sources) if s.same_as(source))]
            here = tensor[b, y, x, ch - start + first]
            value = here if value is None else tirx.if_then_else(ch < end, here, value)
            end = start
        return value

    kwargs = _conv_kwargs(conv)
    out = gathered_conv2d((n, h, w, position), dtype, read, kernel, kwargs["strides"],
                          kwargs["padding"], kwargs["dilation"], kwargs["groups"],
                          kwargs["out_dtype"] or dtype, "NHWC", "range_pad")
    func = te.create_prim_func([*placeholders, kernel, out]).without_attr("global_symbol")
    return func, sources


def _fuse(mod: tvm.IRModule, name: str, builder: relax.BlockBuilder) -> relax.Function:
    func = mod[name]
    bound = {b.var: b.value for b in _bindings(func) if isinstance(b, relax.VarBinding)}
    fields, weight = wildcard(), is_const()
    concat = is_op("relax.concat")(fields)
    pattern = is_op("relax.nn.conv2d")(concat, weight)

    def rewriter(expr: relax.Call, matches) -> relax.Expr:
        cat = matches[concat]
        tup = cat.args[0]
        if isinstance(tup, relax.Var):
            tup = bound.get(tup, tup)
        shape = _static_shape(cat)
        if (not isinstance(tup, relax.Tuple) or shape is None or len(shape) != 4
                or cat.attrs.axis is None or int(cat.attrs.axis) not in (3, -1)
                or not _conv_attrs_nhwc(expr) or _static_shape(matches[weight]) is None):
            return expr
        runs = _runs(tup.fields, bound)
        if runs is None or sum(last - first for _, first, last in runs) != shape[3]:
            return expr
        made = _ranged_conv(expr, runs, matches[weight])
        if made is None:
            return expr
        kernel, sources = made
        gvar = builder.add_func(kernel, "ranged_conv2d")
        ledger.note("ranges_read_by_convolutions")
        return relax.call_tir(gvar, [*sources, matches[weight]], expr.ty)

    return rewrite_call(pattern, rewriter, func)


@tvm.transform.module_pass(opt_level=0, name="tvmshuffle.SinkChannelTake")
def sink_channel_take(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
    """Step 1: every constant channel permutation moved forward into a convolution's weights,
    where per-channel operators lead to one."""
    mod = mod.clone()  # the caller's module stays as it was
    for name in _relax_functions(mod):
        func = mod[name]
        for _ in range(MAX_SINK_STEPS):
            func, made = _sink_step(func)
            if not made:
                break
        mod[name] = func
    return relax.transform.DeadCodeElimination()(mod)


@tvm.transform.module_pass(opt_level=0, name="tvmshuffle.FuseChannelRanges")
def fuse_channel_ranges(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
    """Step 2: every concat of channel ranges a convolution reads becomes that convolution's
    input stage."""
    return rewrite_functions(mod, _fuse)
