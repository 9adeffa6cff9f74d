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
