"""Default schedules of kernels that only move data, on cores whose FMA takes no memory operand
(NEON): concatenations, slices, constant gathers, reshapes, and the element-wise epilogues
FuseOps puts with them (a stride-2 ShuffleNet unit's concat + ReLU, its two reshapes between
the group axis and the channels).

TVM writes such a kernel as one loop nest per operator, each through a buffer of its own: a
ShuffleNet v1 stride-2 unit's concatenation reads and writes the feature map four times, a
scalar at a time. Here every block but the last is inlined into it (TVM simplifies the
composed index expressions, the reshapes cancel), its innermost loop is split a register wide
and vectorized. The loops stay serial, as TVM's were: run in parallel (the outer two fused),
the same three kernels executed 1.19 M instructions on one thread instead of 0.92 M, for work
that is about 1% of the network's. Counted on the emulated arm64 device (benchmarks/RESULTS.md,
session 25): ShuffleNet 1x g3's three concatenation kernels 3.55 -> 0.92 M instructions of one
inference.

A kernel that does not inline into one loop nest (pooling and other reductions, several
outputs) or whose innermost loop is not a multiple of a register (the NCHW -> NHWC edge's 3
channels) keeps TVM's loops. x86 keeps them too: there LLVM vectorizes TVM's loops itself
(2-8x faster than MetaSchedule's annotations, session 16), and this schedule, timed once in
the network (ShuffleNet 1x, interleaved: 4.71 -> 4.64 ms for AVX-512 code, 5.64 -> 5.61 for AVX2,
session 25), gained within the noise.
"""

from __future__ import annotations

import tvm


def copy_schedule(mod: tvm.IRModule, lanes: int):
    """The schedule (tvm.s_tir.Schedule) of a kernel that only moves data, or None."""
    from tvm import s_tir, tirx

    sch = s_tir.Schedule(mod)
    root = sch.get_sblock("root")
    blocks = sch.get_child_blocks(root)
    if any(int(iv.iter_type) != 0 for b in blocks for iv in sch.get(b).iter_vars):
        return None  # a reduction: pooling, a mean
    try:
        for block in blocks[:-1]:
            sch.compute_inline(block)
    except (RuntimeError, ValueError):  # TVM's ScheduleError: not inlinable
        return None
    blocks = sch.get_child_blocks(root)
    if len(blocks) != 1:
        return None
    loops = sch.get_loops(blocks[0])
    if not loops:
        return None
    extent = sch.get(loops[-1]).extent
    if not isinstance(extent, tirx.IntImm) or int(extent) % lanes:
        return None
    _, inner = sch.split(loops[-1], [None, lanes])
    sch.vectorize(inner)
    return sch


def row_copies(sch, lanes: int) -> bool:
    """In a kernel's schedule ``sch`` (a convolution's default), a padding copy left at the
    root, of fewer channels a pixel than fill a register (an RGB stem's 3): its pixel and
    channel loops fused, and the interior of each row, where the copy reads the input, split
    from the padding columns. TVM vectorizes 3 channels as one odd vector behind a test of
    the column, a pixel at a time (15 instructions a pixel on NEON); the interior is then one
    contiguous run of the row, which LLVM copies 8 floats at a time. Whether it applied."""
    from tvm import tirx

    for block in sch.get_child_blocks(sch.get_sblock("root")):
        node = sch.get(block)
        loops = sch.get_loops(block)
        # a loop nest of its own (not inside the register block's loops), one input
        if (len(node.iter_vars) != 4 or len(loops) != 3 or len(node.reads) != 1
                or len(sch.get_child_blocks(loops[0])) != 1):
            continue
        channels = sch.get(loops[2]).extent
        columns = sch.get(loops[1]).extent
        source = node.reads[0].source
        if (not isinstance(channels, tirx.IntImm) or int(channels) % lanes == 0
                or int(channels) != int(node.iter_vars[3].dom.extent)
                or int(columns) != int(node.iter_vars[2].dom.extent)
                or len(source.shape) != 4 or int(source.shape[3]) != int(channels)):
            continue
        # the column the copy reads for column x of the padded buffer: x - left
        column = node.reads[0].region[2].min
        if any(not v.same_as(node.iter_vars[2].var)
               for v in tirx.analysis.undefined_vars(column)):
            continue
        offset = tirx.IndexMap([node.iter_vars[2].var], [column], None).map_indices(
            [tirx.IntImm(str(node.iter_vars[2].var.ty), 0)])[0]
        if not isinstance(offset, tirx.IntImm):
            continue
        left, width = -int(offset), int(source.shape[2])
        if not 0 < left < int(columns) - width + 1:
            continue
        fused = sch.fuse(loops[1], loops[2])
        sch.loop_partition(fused, [left * int(channels), width * int(channels), None])
        return True
    return False
