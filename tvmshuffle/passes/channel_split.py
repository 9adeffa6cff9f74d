"""ShuffleNet v2's channel split, concat and shuffle composed into one index map, and folded.

What it does. A ShuffleNet v2 unit concatenates two branches, shuffles the result with two
groups and splits it in halves for the next unit; public code writes this as ``cat`` ->
reshape/permute/reshape (or ``nn.ChannelShuffle``, ``F.channel_shuffle``) -> ``chunk``,
``split``, slicing, or the form that reshapes to ``(b*c/2, 2, h*w)``, permutes, reshapes to
``(2, b, c/2, h, w)`` and takes ``[0]`` and ``[1]`` (ONNX: Concat, Reshape, Transpose, Split,
Slice, Gather). Every one of these operators only moves channels. Compiled as written, each
is a kernel that reads and writes the feature map (ShuffleNet v2 1.0x: 16 of its 35 kernels
did no arithmetic, called 35 times).

The pass treats a connected region of such operators, seeded by a ``concat``, as one index map
from the tensors entering it (the *sources*: branch outputs, the block's input) to the tensors
leaving it (the *terminals*: what a convolution or anything else reads). The map is found by
evaluating the region's operators with numpy on an encoded index tensor (each source element
numbered by source channel and pixel): no pattern per idiom, and a look-alike that moves a
pixel, a batch element or a spatial axis is recognised as such, because its terminal then reads
something other than one whole source channel per output channel, and is left alone. The stride-1
unit's pass-through half, the concat and the shuffle leave no trace but the map.

Each terminal then becomes, at most, one kernel:

* read by convolutions with groups = 1 only (a v2 unit's right branch, conv5): the source
  channels it needs, in source order, as one ``concat`` of channel ranges of the sources
  (``strided_slice``), and each convolution's weights permuted along their input channels at
  compile time (``W'[:, j] = W[:, p(j)]``; exact). The interleaving of the shuffle costs
  nothing; the kernel left gathers the contiguous runs of channels from the branches
  of earlier units that this unit's right branch reads (2-8 runs in ShuffleNet v2 1.0x).
* read by anything else (a depthwise convolution, a pooling, the function's result): the same
  concat followed by ``take`` of a constant channel index (mode ``clip``: TVM prints a warning
  for each ``take`` in its default ``fast`` mode), fused by TVM into one gather kernel.
* a terminal that is one source, whole and in order, is that source: no kernel.

Why this design and not a shared buffer that each unit's last convolution writes into beside
the untouched half (the issue's ideal, no data-movement kernel at all): with the 116 / 232 / 464
channels of v2 1.0x, the channels a unit's right branch reads are, after a few units, scattered
over the buffer in runs that no affine index covers; writing into them needs a scatter on the
store side of a convolution, which breaks the vectorised channels-last stores the default and
tuned schedules rely on. The gather of a stride-1 unit reads and writes half the unit's
channels once, where the concat it replaces read and wrote all of them (ShuffleNet v2 with the
default schedules: 4.5-8.8% faster, benchmarks/RESULTS.md); ``channel_ranges`` then makes it
the reading convolution's input stage and folds the ``take`` into weights, so that no kernel
of its own is left.

Preconditions: NCHW module as imported (static shapes, constants bound), before ConvertLayout;
the ``take`` this leaves is made channels-last by ``take_channels_last`` after ConvertLayout
(ConvertLayout has no layout rule for ``take`` and would wrap it in transposes).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import tvm
from tvm import relax, tirx
from tvm.relax.dpl import is_const, is_op, rewrite_call, wildcard

from . import ledger
from .channel_shuffle import _relax_functions, _static_shape

MOVEMENT_OPS = ("relax.concat", "relax.reshape", "relax.permute_dims", "relax.strided_slice",
                "relax.split", "relax.squeeze", "relax.expand_dims", "relax.take")
_POSITIONS = np.int64(1) << 32  # encoded element: global source channel * 2^32 + pixel


def _ints(values) -> list[int] | None:
    """Integers of an attribute or of a relax Tuple of PrimValues / a ShapeExpr."""
    if isinstance(values, relax.Tuple):
        values = [v.value for v in values.fields]
    elif isinstance(values, relax.ShapeExpr):
        values = values.values
    out = []
    for v in values:
        if not isinstance(v, (int, tirx.IntImm)):
            return None
        out.append(int(v))
    return out


def _evaluate(call: relax.Call, args: list) -> np.ndarray | tuple | None:
    """numpy's result of one movement operator on index arrays, None where the operator's form
    is not one this pass knows (then the region ends before it)."""
    name, attrs = call.op.name, call.attrs
    if name == "relax.concat":
        return np.concatenate(args[0], axis=int(attrs.axis))
    data = args[0]
    if name == "relax.reshape":
        shape = _static_shape(call)
        return None if shape is None else data.reshape(shape)
    if name == "relax.permute_dims":
        axes = None if attrs.axes is None else [int(a) for a in attrs.axes]
        return np.transpose(data, axes)
    if name == "relax.strided_slice":
        axes, begin, end = (_ints(a) for a in call.args[1:4])
        strides = _ints(call.args[4]) if len(call.args) > 4 else [1] * len(axes or [])
        if None in (axes, begin, end, strides):
            return None
        index = [slice(None)] * data.ndim
        for axis, b, e, s in zip(axes, begin, end, strides):
            index[axis % data.ndim] = slice(b, e, s)
        return data[tuple(index)]
    if name == "relax.split":
        sections = attrs.indices_or_sections
        sections = int(sections) if isinstance(sections, tirx.IntImm) else _ints(sections)
        return None if sections is None else tuple(np.split(data, sections,
                                                            axis=int(attrs.axis)))
    if name == "relax.squeeze":
        axes = None if attrs.axis is None else tuple(int(a) for a in attrs.axis)
        return np.squeeze(data, axis=axes)
    if name == "relax.expand_dims":
        return np.expand_dims(data, tuple(int(a) for a in attrs.axis))
    if name == "relax.take":
        if attrs.axis is None or not isinstance(call.args[1], tvm.ir.Constant):
            return None
        index = call.args[1].value.numpy()
        if index.dtype.kind not in "iu":
            return None
        mode = {"fast": "raise", "clip": "clip", "wrap": "wrap"}.get(str(attrs.mode), "raise")
        try:
            return np.take(data, index, axis=int(attrs.axis), mode=mode)
        except IndexError:
            return None
    return None


@dataclass
class _Sources:
    """The tensors entering the regions of a function, numbered; global channel ids run over
    their channels in order."""

    exprs: list = field(default_factory=list)
    offsets: list = field(default_factory=list)
    grids: list = field(default_factory=list)  # (n, h, w) of each
    ids: dict = field(default_factory=dict)  # var -> source number
    channels: int = 0

    def encode(self, expr: relax.Expr) -> np.ndarray | None:
        """The index array of a source: element (n, c, h, w) -> id(c) * 2^32 + pixel."""
        shape = _static_shape(expr)
        if shape is None or len(shape) != 4:
            return None
        n, c, h, w = shape
        if expr in self.ids:
            number = self.ids[expr]
        else:
            number = len(self.exprs)
            self.ids[expr] = number
            self.exprs.append(expr)
            self.offsets.append(self.channels)
            self.grids.append((n, h, w))
            self.channels += c
        channel = (self.offsets[number] + np.arange(c, dtype=np.int64)).reshape(1, c, 1, 1)
        return channel * _POSITIONS + _pixels(n, h, w)

    def locate(self, gid: int) -> tuple[int, int]:
        number = int(np.searchsorted(self.offsets, gid, side="right")) - 1
        return number, gid - self.offsets[number]


def _pixels(n: int, h: int, w: int) -> np.ndarray:
    return np.arange(n * h * w, dtype=np.int64).reshape(n, h, w)[:, None, :, :]


def _channel_map(index: np.ndarray, sources: _Sources) -> np.ndarray | None:
    """For a terminal of shape (n, c, h, w): the global source channel each of its channels
    is, or None if it is not channel for channel a whole source channel at the same pixels."""
    if not isinstance(index, np.ndarray) or index.ndim != 4:
        return None
    n, c, h, w = index.shape
    gids = index // _POSITIONS
    if not np.array_equal(index % _POSITIONS, np.broadcast_to(_pixels(n, h, w), index.shape)):
        return None
    channel_map = gids[0, :, 0, 0]
    if not np.array_equal(gids, np.broadcast_to(channel_map.reshape(1, c, 1, 1), index.shape)):
        return None
    if any(sources.grids[sources.locate(int(g))[0]] != (n, h, w) for g in set(channel_map)):
        return None
    return channel_map


@dataclass
class _Plan:
    """How a terminal is rebuilt: the pieces (source number, first, end channel) in source
    order that make up ``S``, the index of each terminal channel in ``S``, and whether a
    logical-order tensor is needed at all (a consumer other than a dense convolution)."""

    pieces: list
    index: np.ndarray
    logical: bool


def _pieces(ids: np.ndarray, sources: _Sources) -> list[tuple[int, int, int]]:
    pieces: list[list[int]] = []
    for gid in ids:
        number, channel = sources.locate(int(gid))
        if pieces and pieces[-1][0] == number and pieces[-1][2] == channel:
            pieces[-1][2] += 1
        else:
            pieces.append([number, channel, channel + 1])
    return [tuple(p) for p in pieces]


def _dense_conv_reading(call: relax.Expr, var: relax.Var) -> bool:
    """Whether ``call`` is a groups = 1 NCHW convolution with constant weights that reads
    ``var`` as its data (and only there): it absorbs a permutation of its input channels."""
    return (isinstance(call, relax.Call) and isinstance(call.op, tvm.ir.Op)
            and call.op.name == "relax.nn.conv2d" and call.args[0].same_as(var)
            and isinstance(call.args[1], tvm.ir.Constant) and int(call.attrs.groups) == 1
            and str(call.attrs.data_layout) == "NCHW"
            and str(call.attrs.kernel_layout) == "OIHW")


def _bindings(func: relax.Function) -> list:
    body = func.body
    if not isinstance(body, relax.SeqExpr):
        return []
    return [b for block in body.blocks for b in block.bindings]


def _plans(func: relax.Function) -> tuple[dict, _Sources]:
    """The terminals of the function's movement regions that are worth rebuilding, with their
    plans."""
    sources = _Sources()
    region: dict = {}  # var -> index array (or tuple of arrays) of values inside a region
    defined: dict = {}  # var -> bound value, for region members
    bindings = _bindings(func)
    for binding in bindings:
        if not isinstance(binding, relax.VarBinding):
            continue
        value, var = binding.value, binding.var
        if isinstance(value, relax.TupleGetItem):
            inner = region.get(value.tuple_value) if isinstance(value.tuple_value,
                                                                 relax.Var) else None
            if isinstance(inner, tuple):
                region[var], defined[var] = inner[int(value.index)], value
            continue
        if not (isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op)
                and value.op.name in MOVEMENT_OPS):
            continue
        if value.op.name == "relax.concat":  # seeds a region; inputs from outside are sources
            fields = value.args[0].fields if isinstance(value.args[0], relax.Tuple) else None
            if fields is None:
                continue
            inputs = [region.get(f) if isinstance(f, relax.Var) and f in region
                      else sources.encode(f) for f in fields]
            if any(i is None or isinstance(i, tuple) for i in inputs):
                continue
            args = [inputs]
        elif isinstance(value.args[0], relax.Var) and value.args[0] in region:
            args = [region[value.args[0]]]
            if isinstance(args[0], tuple):
                continue
        else:
            continue
        try:
            result = _evaluate(value, args)
        except (ValueError, IndexError):
            result = None
        if result is not None:
            region[var], defined[var] = result, value

    uses: dict = {}  # region var -> the values (or the function result) that read it
    for binding in bindings:
        if binding.var in defined:
            continue
        for used in relax.analysis.free_vars(binding.value):
            if used in region:
                uses.setdefault(used, []).append(binding.value)
    for used in relax.analysis.free_vars(func.body.body):
        if used in region:
            uses.setdefault(used, []).append(None)

    inside = set()  # region vars that region members read: they stay bound
    for var, value in defined.items():
        inside.update(relax.analysis.free_vars(value))

    plans = {}
    for var, readers in uses.items():
        channel_map = _channel_map(region[var], sources)
        if channel_map is None or _canonical(defined[var], defined):
            continue
        ids = np.unique(channel_map)
        logical = var in inside or not all(_dense_conv_reading(r, var) for r in readers)
        plans[var] = _Plan(_pieces(ids, sources), np.searchsorted(ids, channel_map), logical)
    return plans, sources


def _canonical(value: relax.Expr, defined: dict) -> bool:
    """A terminal already in the form this pass makes (left as it is, so that the pass is
    idempotent): a concat of sources, or a ``take`` of a constant index from one."""
    def plain_concat(expr):
        return (isinstance(expr, relax.Call) and expr.op.name == "relax.concat"
                and isinstance(expr.args[0], relax.Tuple)
                and not any(isinstance(f, relax.Var) and f in defined
                            for f in expr.args[0].fields))

    if isinstance(value, relax.Call) and value.op.name == "relax.take":
        return plain_concat(defined.get(value.args[0]))
    return plain_concat(value)


@relax.expr_functor.mutator
class _Rebuild(relax.PyExprMutator):
    """Rebuilds each planned terminal from its sources, and each dense convolution reading one
    with its weights permuted."""

    def __init__(self, mod: tvm.IRModule, plans: dict, sources: _Sources):
        super().__init__(mod)
        self.plans, self.sources = plans, sources
        self.gathered: dict = {}  # terminal var -> var of its pieces in source order

    def _gather(self, plan: _Plan) -> relax.Expr:
        pieces = []
        for number, begin, end in plan.pieces:
            source = self.visit_expr(self.sources.exprs[number])
            channels = _static_shape(self.sources.exprs[number])[1]
            if (begin, end) == (0, channels):
                pieces.append(source)
            else:
                pieces.append(self.builder_.emit(relax.op.strided_slice(
                    source, axes=[1], begin=[begin], end=[end], assume_inbound=True)))
        if len(pieces) == 1:
            return pieces[0]
        return self.builder_.emit(relax.op.concat(pieces, axis=1))

    def visit_var_binding_(self, binding: relax.VarBinding) -> None:
        var, value = binding.var, binding.value
        plan = self.plans.get(var)
        if plan is not None:
            gathered = self._gather(plan)
            self.gathered[var] = gathered
            ledger.note("split_regions_rebuilt")
            if not plan.logical:
                ledger.note("split_regions_in_conv_weights")
                return  # every reader is a convolution that reads ``gathered`` instead
            ledger.note("split_regions_gathered")
            if np.array_equal(plan.index, np.arange(len(plan.index))):
                new = gathered  # a copy of the binding: CanonicalizeBindings removes it
            else:
                index = relax.const(plan.index.astype("int64"), "int64")
                new = relax.op.take(gathered, index, axis=1, mode="clip")
            self.builder_.emit_normalized(relax.VarBinding(var, self.builder_.normalize(new)))
            return
        data = value.args[0] if isinstance(value, relax.Call) and value.args else None
        if data in self.gathered and _dense_conv_reading(value, data):
            plan = self.plans[data]
            weight = value.args[1].value.numpy()
            # W'[:, j] = sum of W[:, c] over the channels c that read gathered channel j
            channels = sum(end - begin for _, begin, end in plan.pieces)
            permuted = np.zeros((weight.shape[0], channels, *weight.shape[2:]), weight.dtype)
            np.add.at(permuted, (slice(None), plan.index), weight)
            call = relax.Call(value.op, [self.gathered[data],
                                         relax.const(permuted, str(weight.dtype))], value.attrs)
            self.builder_.emit_normalized(relax.VarBinding(var, self.builder_.normalize(call)))
            return
        super().visit_var_binding_(binding)


def _rewrite(mod: tvm.IRModule, name: str) -> relax.Function:
    func = mod[name]
    plans, sources = _plans(func)
    if not plans:
        return func
    rebuilt = _Rebuild(mod, plans, sources).visit_expr(func)
    return relax.analysis.remove_all_unused(rebuilt)


@tvm.transform.module_pass(opt_level=0, name="tvmshuffle.FoldChannelSplit")
def fold_channel_split(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
    """Every concat -> shuffle -> split region rebuilt from its sources (see the module)."""
    mod = mod.clone()  # the caller's module stays as it was
    for name in _relax_functions(mod):
        mod[name] = _rewrite(mod, name)
    return mod


@tvm.transform.module_pass(opt_level=0, name="tvmshuffle.TakeChannelsLast")
def take_channels_last(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
    """``to_nhwc(take(to_nchw(x), i, axis=1))`` -> ``take(x, i, axis=3)``: the channel gather
    ``fold_channel_split`` leaves, in the layout ConvertLayout chose around it."""
    mod = mod.clone()  # the caller's module stays as it was
    data, index = wildcard(), is_const()
    inner = is_op("relax.permute_dims")(data)
    take = is_op("relax.take")(inner, index)
    pattern = is_op("relax.permute_dims")(take)

    def rewriter(expr: relax.Call, matches) -> relax.Expr:
        axes_in = matches[inner].attrs.axes
        axes_out = expr.attrs.axes
        if (axes_in is None or axes_out is None
                or [int(a) for a in axes_in] != [0, 3, 1, 2]
                or [int(a) for a in axes_out] != [0, 2, 3, 1]
                or matches[take].attrs.axis is None or int(matches[take].attrs.axis) != 1):
            return expr
        return relax.op.take(matches[data], matches[index], axis=3,
                             mode=str(matches[take].attrs.mode))

    for name in _relax_functions(mod):
        mod[name] = rewrite_call(pattern, rewriter, mod[name])
    return mod
