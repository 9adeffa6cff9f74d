"""On NEON, the channel shuffle written by the convolution before it, not gathered after.

What it does. ``channel_shuffle`` fuses a shuffle into the convolution that reads it: in
ShuffleNet v1 the depthwise convolution, whose padding copy reads each channel from where the
shuffle takes it (``pad[.., c] = x[.., src(c)]``). Channels a vector apart come from different
groups there, so on NEON that copy is a gather, a lane at a time, of every pixel of the
padded window: ShuffleNet 1x g3's depthwise kernels counted 6.9 M instructions on the emulated
arm64 device, 3.5 M with the shuffles deleted (benchmarks/RESULTS.md, session 25).

In the NHWGC layout the producer of a ShuffleNet shuffle is a 1x1 group convolution writing
``y[n, h, w, g, o]`` (group ``g``, its channel ``o``), and the G-group shuffle of its channels
is the transpose of those two axes: channel ``o * G + g`` of the shuffled tensor is ``y[.., g,
o]``. So this pass, on a module fused by TVM (kernels as TIR), takes each

    a = P(...)                # ends writing a[n, h, w, g, o], shape (n, h, w, G, C/G)
    r = reshape(a)            # (n, h, w, C), a view
    b = C(r, ...)             # reads r[.., src(c)], src the G-group shuffle

and gives ``P`` the shuffled output layout (its store goes to ``out[n, h, w, o * G + g]``: a
vector of ``o`` lanes stored a lane at a time, the multiply-adds and the epilogue unchanged)
and ``C`` the plain read (its gather becomes the identity: a vector copy). Both by TVM's
``transform_layout`` of one buffer, so every kernel stays an ordinary MetaSchedule task. A
producer with an (n, h, w, C) output (the dense 1x1 convolution that opens ShuffleNet's stage
2) stores channel c at the shuffled place the same way. ShuffleNet 1x g3, `arm`, counted:
depthwise kernels 6.89 -> 3.52 M instructions an inference, producers +1.10 M
(benchmarks/RESULTS.md, session 26).

Only for cores whose FMA takes no memory operand (NEON, ``space.memory_operands``; run by
``pipeline.fuse``): x86 keeps the fused gather, whose kernels its shipped database was tuned
on. Left alone: a shuffle that is not its producer's G-group transpose, a producer read by
anything else, a consumer without a padding copy (the gather is inlined into its loads), a
channels-first kernel.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax, tirx

from . import ledger
from .channel_shuffle import _relax_functions
from .channel_shuffle import _static_shape as _shape

PAD_BLOCK = "shuffle_pad"  # channel_shuffle's padding copy that gathers
ATTR = "tvmshuffle.shuffled_output"  # on a producer writing shuffled: its groups


def _loads(expr) -> list:
    """The BufferLoads in a TIR expression (TVM 0.27 has no Python TIR visitor)."""
    if type(expr).__name__ in ("BufferLoad", "TensorLoad"):
        return [expr]
    found = []
    for field in ("a", "b", "value", "condition", "true_value", "false_value"):
        child = getattr(expr, field, None)
        if child is not None and not isinstance(child, (int, float, str)):
            found += _loads(child)
    for child in getattr(expr, "args", None) or []:
        found += _loads(child)
    return found


def _pad_block(func: tirx.PrimFunc):
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    try:
        return sch.get(sch.get_sblock(PAD_BLOCK))
    except Exception:  # noqa: BLE001 - no block of that name (or several): not ours
        return None


def gather_source(func: tirx.PrimFunc) -> tuple[tirx.Buffer, np.ndarray] | None:
    """(input buffer, src) of a consumer whose padding copy reads channel c from src[c]: the
    block ``shuffle_pad`` of a channels-last kernel; None for any other kernel."""
    block = _pad_block(func)
    if block is None or len(block.iter_vars) != 4 or type(block.body).__name__ != "BufferStore":
        return None
    loads = _loads(block.body.value)
    source = loads[0].source if loads else None  # the buffer (a Var in TVM 0.27) read
    if source is None or any(not load.source.same_as(source) for load in loads):
        return None
    if not any(param.same_as(source) for param in func.params):
        return None
    channel = block.iter_vars[3]
    index = loads[0].indices[3]
    if any(not v.same_as(channel.var) for v in tirx.analysis.undefined_vars(index)):
        return None
    mapping = tirx.IndexMap([channel.var], [index], None)
    src = []
    for c in range(int(channel.dom.extent)):
        value = mapping.map_indices([tirx.IntImm(str(channel.var.ty), c)])[0]
        if not isinstance(value, tirx.IntImm):
            return None
        src.append(int(value))
    return source, np.array(src)


def group_shuffle(groups: int, per_group: int) -> np.ndarray:
    """src of the shuffle of ``groups`` groups of ``per_group`` channels: output channel
    o * groups + g reads input channel g * per_group + o."""
    return np.arange(groups * per_group).reshape(groups, per_group).T.reshape(-1)


def shuffle_groups(src: np.ndarray) -> int | None:
    """G if ``src`` is the G-group shuffle of its channels (G > 1), else None."""
    channels = len(src)
    return next((g for g in range(2, channels) if channels % g == 0
                 and np.array_equal(src, group_shuffle(g, channels // g))), None)


def _writer(sch, buffer_name: str):
    """(block, index of the write) of the one block that writes ``buffer_name``."""
    found = [(block, i) for block in sch.get_child_blocks(sch.get_sblock("root"))
             for i, region in enumerate(sch.get(block).writes)
             if region.source.name == buffer_name]
    return found[0] if len(found) == 1 else None


def _relayout_output(func: tirx.PrimFunc, index_map) -> tirx.PrimFunc | None:
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    found = _writer(sch, func.params[-1].name)
    if found is None:
        return None
    block, index = found
    try:
        sch.transform_layout(block, ("write", index), index_map)
    except Exception:  # noqa: BLE001 - ScheduleError: not transformable
        return None
    return sch.mod["main"]


def shuffled_producer(func: tirx.PrimFunc, groups: int) -> tirx.PrimFunc | None:
    """``func`` storing its output (the last parameter: (n, h, w, G, C/G) or (n, h, w, C))
    shuffled in ``groups`` groups, into an (n, h, w, C) output; None if TVM cannot."""
    shape = [int(d) for d in func.params[-1].shape]
    if len(shape) == 5:
        index_map = lambda n, h, w, g, o: (n, h, w, o * groups + g)  # noqa: E731
    else:
        per_group = shape[3] // groups
        index_map = lambda n, h, w, c: (  # noqa: E731
            n, h, w, c % per_group * groups + c // per_group)
    result = _relayout_output(func, index_map)
    return None if result is None else result.with_attr(ATTR, [groups, len(shape)])


def unshuffled(func: tirx.PrimFunc) -> tirx.PrimFunc | None:
    """The kernel ``shuffled_producer`` made ``func`` from, for a kernel it made; None for any
    other. MetaSchedule's rules fuse an epilogue into the register block only where it writes
    in the order it reads (``IsWriteCache``), so the default schedule is derived on this
    kernel and applied to ``func``: the same loops, the store going to shuffled places."""
    made = (func.attrs or {}).get(ATTR)
    if made is None:
        return None
    groups, rank = (int(v) for v in made)
    channels = int(func.params[-1].shape[3])
    per_group = channels // groups
    if rank == 5:
        index_map = lambda n, h, w, c: (n, h, w, c % groups, c // groups)  # noqa: E731
    else:
        index_map = lambda n, h, w, c: (  # noqa: E731
            n, h, w, c % groups * per_group + c // groups)
    return _relayout_output(func.without_attr(ATTR), index_map)


def plain_consumer(func: tirx.PrimFunc, buffer, groups: int) -> tirx.PrimFunc | None:
    """``func`` reading its input as the producer now writes it (shuffled), so that its
    gather is the identity; None if TVM cannot transform it or the read stays a gather."""
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    block = sch.get_sblock(PAD_BLOCK)
    reads = sch.get(block).reads
    index = next((i for i, r in enumerate(reads) if r.source.same_as(buffer)), None)
    if index is None:
        return None
    per_group = int(buffer.shape[3]) // groups
    try:
        sch.transform_layout(block, ("read", index), lambda n, h, w, c: (
            n, h, w, c % per_group * groups + c // per_group))
    except Exception:  # noqa: BLE001 - ScheduleError: not transformable
        return None
    result = sch.mod["main"]
    found = gather_source(result)
    if found is None or not np.array_equal(found[1], np.arange(len(found[1]))):
        return None
    return result


def _call_tir_func(mod: tvm.IRModule, call) -> tuple[tvm.ir.GlobalVar, tirx.PrimFunc] | None:
    if not (isinstance(call, relax.Call) and call.op.same_as(tvm.ir.Op.get("relax.call_tir"))):
        return None
    gvar = call.args[0]
    func = mod[gvar]
    return (gvar, func) if isinstance(func, tirx.PrimFunc) else None


def _uses(func: relax.Function) -> dict:
    counts: dict = {}

    def visit(node):
        if isinstance(node, relax.Var):
            counts[node] = counts.get(node, 0) + 1

    relax.analysis.post_order_visit(func.body, visit)
    return counts


def _producer_of(mod, var2val, uses, value: relax.Var):
    """(the producer's call, its output's rank) for the consumer's input ``value``: a kernel's
    (n, h, w, C) output, or its (n, h, w, G, C/G) output through a reshape (a view); each
    read by the next step alone. None otherwise."""
    if uses.get(value, 0) != 1 or not isinstance(var2val.get(value), relax.Call):
        return None
    call = var2val[value]
    kernel = _call_tir_func(mod, call)
    if kernel is None:
        return None
    shape = _shape(value)
    if relax.analysis.has_reshape_pattern(kernel[1]):
        inner = call.args[1].fields[0] if call.args[1].fields else None
        shape5 = _shape(inner) if inner is not None else None
        if (shape5 is None or len(shape5) != 5 or shape is None or shape5[:3] != shape[:3]
                or uses.get(inner, 0) != 1 or _call_tir_func(mod, var2val.get(inner)) is None):
            return None
        return var2val[inner], 5
    return (call, 4) if shape is not None and len(shape) == 4 else None


def _rewrite(mod: tvm.IRModule, name: str) -> tvm.IRModule:
    func = mod[name]
    var2val = relax.analysis.get_var2val(func)
    uses = _uses(func)  # reads of each var
    builder = relax.BlockBuilder(mod)
    made: dict = {}  # (producer, consumer, groups) -> their new kernels, or None
    replace: dict = {}  # consumer call -> new call

    for call in list(var2val.values()):
        consumer = _call_tir_func(mod, call)
        if consumer is None or not call.args[1].fields:
            continue
        gathered = gather_source(consumer[1])
        groups = None if gathered is None else shuffle_groups(gathered[1])
        data = call.args[1].fields[0]
        found = None if groups is None else _producer_of(mod, var2val, uses, data)
        if found is None:
            continue
        producer_call, rank = found
        producer = _call_tir_func(mod, producer_call)
        shape = _shape(producer_call)
        if rank == 5 and shape[3] != groups:
            continue  # a shuffle that is not the transpose of the group axis
        key = (producer[0], consumer[0], groups)
        if key not in made:
            new_producer = shuffled_producer(producer[1], groups)
            new_consumer = plain_consumer(consumer[1], gathered[0], groups)
            made[key] = None if new_producer is None or new_consumer is None else (
                builder.add_func(new_producer, producer[0].name_hint + "_shuffled"),
                builder.add_func(new_consumer, consumer[0].name_hint + "_plain"))
        if made[key] is None:
            continue
        new_producer, new_consumer = made[key]
        written = relax.call_tir(new_producer, producer_call.args[1], data.ty)
        replace[call] = relax.call_tir(new_consumer, [written, *call.args[1].fields[1:]],
                                       call.ty)
        ledger.note("shuffles_written_by_producers")

    if not replace:
        return mod

    @relax.expr_functor.mutator
    class Replace(relax.PyExprMutator):
        def visit_call_(self, op):  # noqa: N802 - TVM's visitor name
            if op in replace:
                return replace[op]
            return super().visit_call_(op)

    mod = builder.get()
    mod[name] = Replace(mod).visit_expr(func)
    return mod


@tvm.transform.module_pass(opt_level=0, name="tvmshuffle.ShuffleWrites")
def shuffle_writes(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
    """Each G-group shuffle between a group convolution's (n, h, w, G, C/G) output and the
    padding copy of the convolution that gathers it: written by the producer instead."""
    mod = mod.clone()  # the caller's module stays as it was
    for name in _relax_functions(mod):
        mod = _rewrite(mod, name)
    mod = relax.transform.DeadCodeElimination()(mod)
    return mod
