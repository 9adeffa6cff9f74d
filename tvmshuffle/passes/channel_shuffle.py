"""Channel shuffle made free: the permutation fused into the convolution that consumes it.

What it does. A channel shuffle reaches Relax, from every exporter we know (the paper's
``reshape(n, g, c/g, h, w) -> transpose -> reshape``, the inverse grouping ``(n, c/g, g, h, w)``,
``view``/``flatten`` variants, ``nn.ChannelShuffle`` / ``F.channel_shuffle`` after export
decomposition, ONNX ``Reshape -> Transpose(perm=[0,2,1,3,4]) -> Reshape``) as one chain:
``reshape`` splitting only the channel axis, ``permute_dims`` permuting only the split axes, and
``reshape`` merging them back. Such a chain is a pure channel permutation: output channel ``o``
reads input channel ``src(o)``, an affine expression of ``o`` with floordiv/floormod. TVM's
default fusion cannot fuse an injective producer into a convolution, so the chain stays a kernel
of its own that reads and writes the whole feature map once more.

The pass, in two steps:

1. ``sink``: moves the permutation forward, past per-channel operators, where that is exact:
   element-wise activations (``relu``, ``clip``, ``sigmoid``, ...), ``add``/``subtract``/
   ``multiply``/``divide`` by a per-channel constant (whose values are permuted), and inference
   BatchNorm (parameters permuted). A shuffle written directly after the group convolution, in
   front of BN + ReLU, thus ends up right in front of the next convolution, and the BN becomes
   foldable into the group convolution again.
2. ``fuse``: ``conv2d(permutation(x), w)`` becomes one ``call_tir`` to a convolution whose input
   read is the permuted one: ``pad[n, c, h, w] = x[n, src(c), h - pt, w - pl]``. For a
   depthwise consumer (ShuffleNet's case) the gather rides on the padding copy that TVM's conv
   makes anyway, so the shuffle costs no kernel and no extra pass over memory. Without padding
   the gather is inlined straight into the convolution's loads. The kernel is an ordinary
   reduction: AnnotateTIROpPattern marks it out-element-wise fusable, FuseOps fuses its
   epilogue (bias, ReLU) into it, and MetaSchedule extracts and tunes it like any other conv.

Why not fold the permutation into weights: between two *group* convolutions (the very place
ShuffleNet puts it) a channel permutation mixes groups, so it is not expressible as a permutation
of either convolution's weights; only a per-channel (depthwise) conv or a dense conv could absorb
it, and ShuffleNet's depthwise conv is followed by another group conv. Fusing the gather into
the consumer's input indexing is exact for every consumer, and the permuted read costs nothing
where the consumer copies its input for padding.

Preconditions: runs on a Relax module as imported (static shapes, constants bound), before
legalization; ``sink`` before BatchNorm folding, ``fuse`` after it (see ``pipeline.py``).
Deliberately left alone: reshapes that split a spatial or batch axis, transposes that move a
non-channel axis, reshapes that do not merge back to the input's shape (look-alikes that are not
a channel permutation), convolutions in layouts other than NCHW/OIHW and NHWC/HWIO (the latter
matched with the transposes ``ConvertLayout`` puts around the chain), and permutations whose
consumer is not a convolution (they stay correct, as their own kernel).
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod

import numpy as np
import tvm
from tvm import relax, te, tirx
from tvm.relax.dpl import TupleGetItemPattern, is_const, is_op, rewrite_call, wildcard

from . import ledger
from .gathered_conv import conv_out_dtype, gathered_conv2d, i64

# Operators with out[..., c, ...] = f(in[..., c, ...]): a channel permutation commutes with them.
ELEMENTWISE_OPS = ("relax.nn.relu", "relax.nn.silu", "relax.nn.gelu", "relax.nn.selu",
                   "relax.nn.leakyrelu", "relax.clip", "relax.sigmoid", "relax.tanh",
                   "relax.nn.gelu_tanh", "relax.nn.softplus")
PER_CHANNEL_BINARY_OPS = ("relax.add", "relax.subtract", "relax.multiply", "relax.divide")


@dataclass(frozen=True)
class ChannelPermutation:
    """A channel permutation given as a split of C into ``split`` and an order of those axes.

    Output channel o, unravelled over the permuted split ``[split[a] for a in axes]``, reads the
    input channel whose index over ``split`` has those coordinates in ``axes`` order.
    """

    split: tuple[int, ...]
    axes: tuple[int, ...]

    @property
    def channels(self) -> int:
        return prod(self.split)

    def source(self) -> np.ndarray:
        """src[o]: the input channel that output channel o reads."""
        return np.arange(self.channels).reshape(self.split).transpose(self.axes).reshape(-1)

    def source_index(self, o: tirx.PrimExpr) -> tirx.PrimExpr:
        """src(o) as an affine TIR expression (floordiv/floormod), no lookup table."""
        permuted = [self.split[a] for a in self.axes]
        coords = {}
        rest = o
        for axis, extent in reversed(list(zip(self.axes, permuted))):
            coords[axis] = tirx.floormod(rest, extent)
            rest = tirx.floordiv(rest, extent)
        index = coords[0]
        for axis in range(1, len(self.split)):
            index = index * self.split[axis] + coords[axis]
        return index

    @property
    def is_identity(self) -> bool:
        return bool(np.array_equal(self.source(), np.arange(self.channels)))


def _static_shape(expr: relax.Expr) -> tuple[int, ...] | None:
    ty = expr.ty
    if not isinstance(ty, relax.TensorType) or ty.shape is None:
        return None
    values = getattr(ty.shape, "values", None)
    if values is None or not all(isinstance(v, tirx.IntImm) for v in values):
        return None
    return tuple(int(v) for v in values)


def match_permutation(first: relax.Call, transpose: relax.Call,
                      last: relax.Call) -> ChannelPermutation | None:
    """The channel permutation a reshape -> permute_dims -> reshape chain computes, or None if
    the chain is anything else (splits another axis, moves a non-channel axis, changes shape)."""
    x_shape = _static_shape(first.args[0])
    mid = _static_shape(first)
    out = _static_shape(last)
    if x_shape is None or mid is None or out is None or out != x_shape or len(x_shape) < 2:
        return None
    # the split may have any number of channel factors k: (n, *split, *rest)
    n, c, rest = x_shape[0], x_shape[1], x_shape[2:]
    k = len(mid) - len(x_shape) + 1
    if k < 2 or mid[0] != n or tuple(mid[1 + k:]) != rest or prod(mid[1:1 + k]) != c:
        return None
    if transpose.attrs.axes is None:
        return None
    axes = [int(a) for a in transpose.attrs.axes]
    # batch and trailing axes stay; only the channel factors (axes 1..k) move among themselves
    if (axes[0] != 0 or axes[1 + k:] != list(range(1 + k, len(mid)))
            or sorted(axes[1:1 + k]) != list(range(1, 1 + k))):
        return None
    return ChannelPermutation(tuple(mid[1:1 + k]), tuple(a - 1 for a in axes[1:1 + k]))


class _Chain:
    """dpl pattern of reshape -> permute_dims -> reshape, and the permutation it computes."""

    def __init__(self, data=None):
        self.data = wildcard() if data is None else data
        self.first = is_op("relax.reshape")(self.data, wildcard())
        self.transpose = is_op("relax.permute_dims")(self.first)
        self.pattern = is_op("relax.reshape")(self.transpose, wildcard())

    def permutation(self, matches) -> ChannelPermutation | None:
        return match_permutation(matches[self.first], matches[self.transpose],
                                 matches[self.pattern])

    def reapply(self, data: relax.Expr, matches) -> relax.Expr:
        """The matched chain, applied to ``data`` instead of its original input."""
        first = relax.op.reshape(data, matches[self.first].args[1])
        moved = relax.op.permute_dims(first, matches[self.transpose].attrs.axes)
        return relax.op.reshape(moved, matches[self.pattern].args[1])


def _channel_axis_of(const: relax.Expr, channels: int, ndim: int) -> int | None:
    """For a constant broadcast against an (N, C, ...) tensor: the axis of the constant that
    runs over C, -1 if it does not vary with the channel, None if it varies otherwise."""
    shape = tuple(int(d) for d in const.value.shape)
    if len(shape) > ndim:
        return None
    padded = (1,) * (ndim - len(shape)) + shape
    varying = [axis for axis, d in enumerate(padded) if d != 1]
    if not varying:
        return -1
    if varying == [1] and padded[1] == channels:
        return 1 - (ndim - len(shape))
    return None


def _unpermute(const: relax.Expr, permutation: ChannelPermutation,
               axis: int) -> relax.Expr:
    """P^-1 applied to a per-channel constant: f(P x, b) = P f(x, P^-1 b)."""
    data = const.value.numpy()
    src = permutation.source()
    inverse = np.empty_like(src)
    inverse[src] = np.arange(len(src))
    return relax.const(np.take(data, inverse, axis=axis), str(data.dtype))


def _sink(func: relax.Function) -> relax.Function:
    """Move every channel permutation forward past per-channel operators, to a fixed point."""
    chain = _Chain()
    const = is_const()
    bn_params = [is_const() for _ in range(4)]
    bn = is_op("relax.nn.batch_norm")(chain.pattern, *bn_params)
    patterns = [TupleGetItemPattern(bn, 0)]
    patterns += [is_op(name)(chain.pattern) for name in ELEMENTWISE_OPS]
    patterns += [is_op("relax.clip")(chain.pattern, wildcard(), wildcard())]
    patterns += [is_op(name)(chain.pattern, const) for name in PER_CHANNEL_BINARY_OPS]
    pattern = patterns[0]
    for other in patterns[1:]:
        pattern = pattern | other

    moved = []  # rewrites done in the current round

    def rewriter(expr: relax.Expr, matches) -> relax.Expr:
        result = _move(expr, matches)
        if not result.same_as(expr):
            moved.append(expr)
        return result

    def _move(expr: relax.Expr, matches) -> relax.Expr:
        permutation = chain.permutation(matches)
        if permutation is None:
            return expr
        data = matches[chain.data]
        if isinstance(expr, relax.TupleGetItem):  # batch_norm(...)[0]
            call = matches[bn]
            if int(call.attrs.axis) != 1:
                return expr
            params = [_unpermute(matches[p], permutation, 0) for p in bn_params]
            return chain.reapply(relax.TupleGetItem(relax.Call(call.op, [data, *params],
                                                               call.attrs), 0), matches)
        if expr.op.name in PER_CHANNEL_BINARY_OPS:
            rhs = matches[const]
            axis = _channel_axis_of(rhs, permutation.channels, len(_static_shape(data)))
            if axis is None:
                return expr
            rhs = rhs if axis == -1 else _unpermute(rhs, permutation, axis)
            return chain.reapply(relax.Call(expr.op, [data, rhs], expr.attrs), matches)
        return chain.reapply(relax.Call(expr.op, [data, *expr.args[1:]], expr.attrs), matches)

    for _ in range(64):  # each round moves every permutation one operator further
        moved.clear()
        func = rewrite_call(pattern, rewriter, func)
        if not moved:
            break
    return func


def _shuffled_conv2d(data: te.Tensor, weight: te.Tensor, permutation: ChannelPermutation,
                     strides, padding, dilation, groups: int, out_dtype: str,
                     layout: str) -> te.Tensor:
    """Grouped convolution whose input channel c is read from src(c); ``layout`` NCHW (OIHW
    weights) or NHWC (HWIO weights). The shuffle rides on the padding copy."""
    nhwc = layout == "NHWC"

    def read(b, ch, y, x):
        source = permutation.source_index(ch)
        return data[b, y, x, source] if nhwc else data[b, source, y, x]

    return gathered_conv2d(tuple(int(d) for d in data.shape), data.dtype, read, weight, strides,
                           padding, dilation, groups, out_dtype, layout, "shuffle_pad")


def _conv_prim_func(call: relax.Call, data: relax.Expr,
                    permutation: ChannelPermutation) -> tirx.PrimFunc:
    attrs = call.attrs
    x = te.placeholder(i64(*_static_shape(data)), _dtype(data), name="data")
    w = te.placeholder(i64(*_static_shape(call.args[1])), _dtype(call.args[1]), name="weight")
    out_dtype = conv_out_dtype(attrs) or x.dtype
    out = _shuffled_conv2d(x, w, permutation, [int(v) for v in attrs.strides],
                           [int(v) for v in attrs.padding], [int(v) for v in attrs.dilation],
                           int(attrs.groups), out_dtype, str(attrs.data_layout))
    func = te.create_prim_func([x, w, out])
    if not any(int(v) for v in attrs.padding):
        # no padding copy to ride on: read the permuted input straight from the conv's loads
        sch = tvm.s_tir.Schedule(func)
        sch.compute_inline(sch.get_sblock("shuffle_pad"))
        func = sch.mod["main"]
    return func.without_attr("global_symbol")


def _dtype(expr: relax.Expr) -> str:
    return str(expr.ty.dtype)


# conv layouts the fused kernel implements: data layout -> (weight layout, the permute_dims axes
# that ConvertLayout puts around a layout-agnostic shuffle chain: into NCHW, back out of it)
_FUSABLE = {"NCHW": ("OIHW", None), "NHWC": ("HWIO", ((0, 3, 1, 2), (0, 2, 3, 1)))}


def _fuse(mod: tvm.IRModule, func_name: str, builder: relax.BlockBuilder) -> relax.Function:
    """Both forms: conv2d_NCHW(chain(x)), and conv2d_NHWC(to_nhwc(chain(to_nchw(x)))), the
    latter being what ConvertLayout makes of a shuffle in front of a converted convolution."""
    func = mod[func_name]
    for layout, (kernel_layout, transposes) in _FUSABLE.items():
        if transposes is None:
            chain = _Chain()
            conv_input = chain.pattern
        else:
            chain = _Chain(is_op("relax.permute_dims")(wildcard()))
            conv_input = is_op("relax.permute_dims")(chain.pattern)
        weight = wildcard()
        conv = is_op("relax.nn.conv2d")(conv_input, weight)

        def rewriter(expr: relax.Call, matches, chain=chain, weight=weight,
                     conv_input=conv_input, layout=layout, kernel_layout=kernel_layout,
                     transposes=transposes) -> relax.Expr:
            permutation = chain.permutation(matches)
            attrs = expr.attrs
            data = matches[chain.data]
            if transposes is not None:
                inner, outer = data, matches[conv_input]
                if (_axes(inner) != transposes[0] or _axes(outer) != transposes[1]):
                    return expr
                data = inner.args[0]
            if (permutation is None or str(attrs.data_layout) != layout
                    or str(attrs.kernel_layout) != kernel_layout
                    or str(attrs.out_layout or layout) != layout
                    or _static_shape(matches[weight]) is None):
                return expr
            kernel = _conv_prim_func(expr, data, permutation)
            gvar = builder.add_func(kernel, "shuffled_conv2d")
            ledger.note("shuffles_fused_into_convolutions")
            return relax.call_tir(gvar, [data, matches[weight]], expr.ty)

        func = rewrite_call(conv, rewriter, func)
    return func


def _axes(call: relax.Call) -> tuple[int, ...] | None:
    axes = call.attrs.axes
    return None if axes is None else tuple(int(a) for a in axes)


def _drop_identity(func: relax.Function) -> relax.Function:
    """A chain that permutes nothing (a shuffle with g = 1) is removed outright."""
    chain = _Chain()

    def rewriter(expr, matches):
        permutation = chain.permutation(matches)
        if permutation is None or not permutation.is_identity:
            return expr
        ledger.note("identity_shuffles_removed")
        return matches[chain.data]

    return rewrite_call(chain.pattern, rewriter, func)


def _relax_functions(mod: tvm.IRModule) -> list[str]:
    return [gv.name_hint for gv, f in mod.functions.items()
            if isinstance(f, relax.Function) and not f.attrs.get("Primitive", False)]


def rewrite_functions(mod: tvm.IRModule, rewrite) -> tvm.IRModule:
    """``rewrite(module, name, builder)`` -> the new function, for every Relax function of a
    copy of ``mod`` (the caller's module stays as it was), the kernels it makes added through
    ``builder``; dead code removed."""
    mod = mod.clone()
    for name in _relax_functions(mod):
        builder = relax.BlockBuilder(mod)
        rewritten = rewrite(mod, name, builder)
        mod = builder.get()
        mod[name] = rewritten
    return relax.transform.DeadCodeElimination()(mod)


@tvm.transform.module_pass(opt_level=0, name="tvmshuffle.SinkChannelShuffle")
def sink_channel_shuffle(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
    """Step 1: identity shuffles removed, permutations moved past per-channel operators."""
    mod = mod.clone()  # the caller's module stays as it was
    for name in _relax_functions(mod):
        mod[name] = _sink(_drop_identity(mod[name]))
    return mod


@tvm.transform.module_pass(opt_level=0, name="tvmshuffle.FuseChannelShuffle")
def fuse_channel_shuffle(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
    """Step 2: every permutation feeding a conv2d becomes that conv's permuted input read."""
    return rewrite_functions(mod, _fuse)
