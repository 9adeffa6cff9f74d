"""The pass lists, in one place: graph passes on the imported module, then TVM's build pipeline.

Graph passes run on an imported module before fusion: ``take`` of a constant index rewritten as
the slice it means (``passes/take_to_slice.py``), ShuffleNet v2's concat -> shuffle -> split
regions rebuilt from the branch outputs as gathers of channel ranges, their order folded into
the dense convolutions that read them (``passes/channel_split.py``), channel shuffles moved past
per-channel operators (so that BatchNorm behind a shuffle still folds), BatchNorm folded into
the preceding convolution's weights and bias (``passes/fold_batchnorm.py``), remaining
inference-mode ops decomposed, constants folded, dead code removed, convolutions converted to
the channels-last layout (NHWC data, HWIO weights; TVM's ``ConvertLayout``, weights transposed
at compile time), each channel shuffle fused into the convolution that consumes it
(``passes/channel_shuffle.py``), each remaining constant channel gather moved into the next
dense convolution's weights (``passes/channel_ranges.py``), and, in the default NHWGC layout,
each 1x1 group convolution given the group as an axis of its own (``passes/group_axis.py``;
3.5-12.5% faster ShuffleNets once tuned, benchmarks/RESULTS.md).

Why channels-last: a 1x1 convolution in NCHW vectorizes along the image width, which is 7-28
pixels in ShuffleNet's later stages, so most vector lanes are masked or wasted; in NHWC it
vectorizes along output channels (hundreds, contiguous in the HWIO weights). Tuned alone with 64
trials on an AVX-512 core, ShuffleNet 1x's stage-3 120 -> 480 group convolution runs 1.53x
faster in NHWC, its stem 2.39x, its depthwise 1.35x (``benchmarks/conv_layouts.py``,
benchmarks/RESULTS.md). The network's input and output keep their NCHW shapes:
``ConvertLayout`` transposes at the edges. The build pipeline is TVM's
default for the target (legalize, FoldConstant, FuseOps, FuseTIR, lower to the VM);
``relax.build`` alone does not fuse on CPU.
"""

from __future__ import annotations

import collections
import contextlib
import math

import tvm
from tvm import relax

from . import space
from .passes import (fold_batchnorm, fold_channel_split, fuse_channel_ranges,
                     fuse_channel_shuffle, group_axis, sink_channel_shuffle, sink_channel_take,
                     take_channels_last, take_to_slice)
from .passes.bias_init import bias_init, keep_init_layouts
from .passes.shuffle_writes import shuffle_writes

# data, weight layout of convs; NHWGC is NHWC with the 1x1 group convolutions computed with the
# group as an axis of its own (passes/group_axis.py)
LAYOUTS = {"NHWC": ("NHWC", "HWIO"), "NCHW": ("NCHW", "OIHW"), "NHWGC": ("NHWC", "HWIO")}
DEFAULT_LAYOUT = "NHWGC"


def graph_passes(fuse_shuffle: bool = True, layout: str = DEFAULT_LAYOUT) -> tvm.transform.Pass:
    """Inference clean-up of an imported module, the layout of its convolutions, and the
    shuffle fusion (unless turned off)."""
    cleanup = [
        take_to_slice,  # y[0] / Gather of a constant index: a slice, not a gather kernel
        fold_batchnorm,
        relax.transform.DecomposeOpsForInference(),
        relax.transform.CanonicalizeBindings(),
        relax.transform.FoldConstant(),
        relax.transform.DeadCodeElimination(),
    ]
    if layout != "NCHW":  # imported modules are NCHW already
        cleanup += [relax.transform.ConvertLayout({"relax.nn.conv2d": list(LAYOUTS[layout])}),
                    relax.transform.FoldConstant(),  # the weights' transposes, done now
                    relax.transform.DeadCodeElimination()]
    if fuse_shuffle:
        # FoldConstant first: ONNX computes a Gather's index (negative indices wrapped)
        passes = [relax.transform.FoldConstant(), take_to_slice, fold_channel_split,
                  sink_channel_shuffle, *cleanup,
                  take_channels_last, fuse_channel_shuffle, sink_channel_take]
    else:
        passes = cleanup
    if layout == "NHWGC":
        passes += [group_axis, relax.transform.RemoveRedundantReshape(),
                   relax.transform.FoldConstant(), relax.transform.DeadCodeElimination()]
    return tvm.transform.Sequential(passes, name="tvmshuffle.graph_passes")


def optimize(mod: tvm.IRModule, fuse_shuffle: bool = True,
             layout: str = DEFAULT_LAYOUT) -> tvm.IRModule:
    """The module tuning and building start from."""
    return graph_passes(fuse_shuffle, layout)(mod)


def fuse(mod: tvm.IRModule, target: tvm.target.Target, prepack: bool = False) -> tvm.IRModule:
    """The zero pipeline without a database (legalize, fold, fuse): the fused TIR kernels that
    tuning extracts as tasks and that a database's records apply to. With ``prepack`` each
    kernel is told which of its buffers are weights (TVM's ``AttachAttrLayoutFreeBuffers``), so
    that a schedule may ask for them in a layout of its own: repacked once at build time.

    On NEON (no FMA memory operand) two rewrites of ours come with it: the group
    convolutions' biases become their accumulators' first values (``passes.bias_init``), and
    each channel shuffle is written by the convolution before it (``passes.shuffle_writes``).
    x86 keeps the kernels its shipped database was tuned on. On x86 the convolutions that read
    a concat of channel ranges read them themselves (``passes.channel_ranges``): on NEON their
    range copy ran 1.3x the instructions of the vectorized concat kernels it replaced
    (ShuffleNet v2 1.0x: 60.8 -> 78.1 M, benchmarks/RESULTS.md), so NEON keeps those."""
    neon = not space.memory_operands(target)
    with target:
        if neon:
            mod = bias_init(mod)
        else:
            mod = fuse_channel_ranges(mod)
        mod = relax.pipeline.zero_pipeline()(mod)
        if neon:
            mod = shuffle_writes(mod)
        if prepack:
            mod = relax.transform.AttachAttrLayoutFreeBuffers()(mod)
            mod = keep_init_layouts(mod)
    return mod


def running_tasks(fused: tvm.IRModule, target: tvm.target.Target) -> list:
    """MetaSchedule's tasks of a module ``fuse`` made, minus the kernels that only reshape: the
    build turns those into views of their input (``RewriteDataflowReshape``), so they never
    run, are never tuned and have no records."""
    from tvm.s_tir import meta_schedule as ms

    return [task for task in ms.relax_integration.extract_tasks(fused, target)
            if not relax.analysis.has_reshape_pattern(task.dispatched[0]["main"])]


def lower(mod: tvm.IRModule, target: tvm.target.Target, database=None,
          prepack: bool = False) -> tvm.IRModule:
    """TVM's build pipeline for ``target`` (legalize, fuse: ``fuse``; lower to the VM): fused
    TIR kernels and VM code. With a MetaSchedule ``database``, kernels found in it get their
    tuned schedules, the others stay as TVM writes them (all of them without one). With
    ``prepack`` (records tuned with it), the weight layouts the schedules ask for are split out
    of the kernels and computed at build time (``SplitLayoutRewritePreproc``, ``FoldConstant``):
    the library holds the weights already repacked."""
    return lower_fused(fuse(mod, target, prepack and database is not None), target, database,
                       prepack and database is not None)


def lower_fused(mod: tvm.IRModule, target: tvm.target.Target, database,
                prepack: bool = False) -> tvm.IRModule:
    """``lower`` of a module ``fuse`` made already (so that one fused module serves several
    databases, and the tasks read from it)."""
    from tvm.relax.backend.cpu_generic import pipeline as cpu_generic

    with target, (database if database is not None else contextlib.nullcontext()):
        # the passes look both up when constructed
        passes = [relax.transform.MetaScheduleApplyDatabase()] if database is not None else []
        if prepack:
            passes += [relax.transform.SplitLayoutRewritePreproc(),
                       relax.transform.FoldConstant(), relax.transform.DeadCodeElimination()]
        passes += cpu_generic.dataflow_lower_passes(target) + cpu_generic.finalize_passes(target)
        return tvm.transform.Sequential(passes)(mod)


def kernel_work(func: tvm.tirx.PrimFunc, layout: str) -> tuple[str, int]:
    """(kind, multiply-adds per call) of a fused kernel, from its anchor block's buffers (the
    convolutions' ``layout``: NCHW data with OIHW weights, or NHWC with HWIO): grouped,
    depthwise, conv, dense, or other (no multiply-adds counted)."""
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    names = [sch.get(b).name_hint for b in sch.get_child_blocks(sch.get_sblock("root"))]
    shapes = [tuple(int(d) for d in p.ty.shape) for p in func.params]
    out = shapes[-1]
    if any("conv2d_nhwgc" in n for n in names) and len(shapes) >= 3:
        # passes/group_axis.py: (n, h, w, g, c / g), (g, c / g, o / g), a 1x1 group conv
        return "grouped", math.prod(out) * shapes[1][1]
    # the anchor block's two reads: the (padded) input and the weights; a convolution reading
    # channel ranges of several tensors (passes/channel_ranges.py) has them as parameters
    # before its weights
    anchor = s_tir.analysis.find_anchor_sblock(tvm.IRModule({"main": func}))
    reads = ([tuple(int(d) for d in r.source.shape) for r in anchor.reads[:2]]
             if anchor is not None and len(anchor.reads) >= 2 else [])
    if (any("conv" in n for n in names) and len(shapes) >= 3 and len(reads) == 2
            and all(len(shape) == 4 for shape in reads)):
        data, weight = reads
        if layout.upper() != "NCHW":  # (n, h, w, c), (kh, kw, c / groups, o)
            channels, in_per_group, window = data[3], weight[2], weight[0] * weight[1]
        else:  # (n, c, h, w), (o, c / groups, kh, kw)
            channels, in_per_group, window = data[1], weight[1], weight[2] * weight[3]
        macs = math.prod(out) * in_per_group * window
        groups = channels // in_per_group if in_per_group else 1
        if groups == 1:
            return "conv", macs
        return ("depthwise" if in_per_group == 1 else "grouped"), macs
    if any("matmul" in n or "dense" in n for n in names) and len(shapes) >= 3:
        return "dense", math.prod(out) * shapes[0][-1]
    return "other", 0


def kernel_macs(tasks: list, layout: str) -> dict[str, int]:
    """Multiply-adds of each kernel that runs, per inference (its calls x its work per call),
    of ``running_tasks``; kernels with none left out."""
    work = {task.task_name: int(task.weight) * kernel_work(task.dispatched[0]["main"], layout)[1]
            for task in tasks}
    return {name: macs for name, macs in sorted(work.items()) if macs}


def kernel_names(mod: tvm.IRModule) -> list[str]:
    """Names of the TIR kernels of a lowered module, sorted."""
    return sorted(gv.name_hint for gv, func in mod.functions.items()
                  if isinstance(func, tvm.tirx.PrimFunc))


def data_movement_kernels(mod: tvm.IRModule) -> list[str]:
    """Kernels of a lowered module whose only work is moving one tensor into another of the
    same shape: every block a plain load -> store (a reshape-transpose-reshape channel shuffle
    compiled on its own is one). The channel shuffle pass exists to make this list empty."""
    from tvm import s_tir

    names = []
    for gv, func in mod.functions.items():
        if not isinstance(func, tvm.tirx.PrimFunc) or len(func.params) != 2:
            continue
        shapes = [tuple(int(d) for d in param.ty.shape) for param in func.params]
        if shapes[0] != shapes[1]:
            continue
        sch = s_tir.Schedule(func)
        bodies = [sch.get(block).body
                  for block in sch.get_child_blocks(sch.get_sblock("root"))]
        # TIR node classes are not importable by name in TVM 0.27; their type names are stable
        if bodies and all(type(b).__name__ == "BufferStore"
                          and type(b.value).__name__ in ("BufferLoad", "TensorLoad")
                          for b in bodies):
            names.append(gv.name_hint)
    return sorted(names)


# a stored value made of loads (a gather's index is a load too), constants, casts and
# selections between them (concat, padding: the conditions only test indices) does no arithmetic
_MOVING_CALLS = {"prim.if_then_else", "tirx.if_then_else", "tir.if_then_else"}


def _moves_only(value) -> bool:
    kind = type(value).__name__
    if kind in ("BufferLoad", "TensorLoad", "IntImm", "FloatImm"):
        return True  # its indices may compute; what it yields is a stored element
    if kind == "Cast":
        return _moves_only(value.value)
    if kind == "Select":
        return _moves_only(value.true_value) and _moves_only(value.false_value)
    if kind == "Call" and str(getattr(value.op, "name", "")) in _MOVING_CALLS:
        branches = value.args[1:] if len(value.args) == 3 else value.args
        return all(_moves_only(arg) for arg in branches)
    return False


def _stores(stmt):
    """The BufferStore statements under ``stmt`` (TVM 0.27 has no Python TIR visitor)."""
    if stmt is None:
        return
    kind = type(stmt).__name__
    if kind == "BufferStore":
        yield stmt
        return
    if kind == "SeqStmt":
        for child in stmt.seq:
            yield from _stores(child)
        return
    for field in ("block", "init", "body", "then_case", "else_case"):
        child = getattr(stmt, field, None)
        if child is not None and not isinstance(child, (int, float, str)):
            yield from _stores(child)


def copy_kernels(mod: tvm.IRModule) -> dict[str, int]:
    """Kernels of a lowered module that do no arithmetic, with how many times ``main`` calls
    each, those it calls only: copies, concatenations, gathers (``take``), transposes and other
    layout changes, slices, padding. Every value such a kernel stores is an element it loaded
    (or a constant), chosen by index alone. The layout changes at the network's edges are among
    them; ``data_movement_kernels`` are the channel shuffles among them."""
    moving = []
    for gv, func in mod.functions.items():
        if not isinstance(func, tvm.tirx.PrimFunc):
            continue
        stores = list(_stores(func.body))
        if stores and all(_moves_only(store.value) for store in stores):
            moving.append(gv.name_hint)
    if not moving:
        return {}
    called: collections.Counter = collections.Counter()

    def count(node) -> None:  # lowered, main calls kernel(...); before, R.call_tir(kernel, ...)
        if isinstance(node, relax.Call):
            for callee in (node.op, *node.args[:1]):
                if isinstance(callee, tvm.ir.GlobalVar):
                    called[callee.name_hint] += 1

    for gv, func in mod.functions.items():
        if gv.name_hint == "main" and isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, count)
    # a kernel main never calls does not run (a reshape the build made a view of)
    return {name: called[name] for name in sorted(moving) if called[name]}
