"""The design space the default schedules and tuning share: MetaSchedule's for the target
(``post-order-apply``, the target's schedule rules, mutators and postprocessors), with two
steps of ours for cores whose FMA takes no memory operand (NEON):

* ``RegisterVectors``, a postprocessor after MetaSchedule's parallelize / vectorize / unroll
  one: a vectorized loop wider than a register (the 20 output channels of ShuffleNet's group
  convolutions' blocks) is split into a register-wide vectorized loop inside an unrolled one.
  LLVM legalizes a ``<20 x float>`` value by splitting it, and kept part of such a block's
  accumulators on the stack, moved lane by lane at the reduction loop's edges; as five
  ``<4 x float>`` values they stay in registers. Counted on the emulated arm64 device
  (benchmarks/RESULTS.md, session 25): ShuffleNet 1x g3's library 71.4 -> 60.4 M instructions
  for one inference, its heaviest kernel 11.3 -> 8.3 M, its stores 5.3 -> 2.4 M, the same vector
  FMAs. Every candidate tuning makes gets it too, as the default does.
* ``vector_input_loads`` (a step of the default's trace, before the postprocessors): the
  input read a vector of reduction steps at a time, the FMAs broadcasting its lanes.

x86 keeps MetaSchedule's space as it is: its FMA takes the broadcast from memory, and its
vectors were measured by time, not by these counts.
"""

from __future__ import annotations

import functools

import tvm

from . import tiles


def memory_operands(target: tvm.target.Target) -> bool:
    """Whether the target's FMA may take a load as an operand (x86): its broadcasts need no
    register, and the NEON steps of this module do not apply."""
    return str(target.attrs.get("mtriple", "x86_64")).startswith(("x86_64", "i686"))


def register_vectors(sch, lanes: int) -> None:
    """Split every vectorized loop of ``sch`` that is a multiple of ``lanes`` wide, and wider,
    into an outer loop (unrolled by the unroll annotation around it) and a vectorized loop of
    ``lanes``. Must run before the reduction blocks are decomposed (TVM vectorizes only a
    loop over a complete or reduction block)."""
    from tvm import tirx

    for block in sch.get_child_blocks(sch.get_sblock("root")):
        for loop in sch.get_loops(block):
            node = sch.get(loop)
            if (node.kind == tirx.ForKind.VECTORIZED and isinstance(node.extent, tirx.IntImm)
                    and int(node.extent) > lanes and int(node.extent) % lanes == 0):
                _, inner = sch.split(loop, [None, lanes])
                sch.vectorize(inner)


@functools.cache
def _register_vectors_class():
    """The ``RegisterVectors`` postprocessor class, defined once (MetaSchedule is imported
    only when a design space is made)."""
    from tvm.ir.utils import derived_object
    from tvm.s_tir import meta_schedule as ms

    @derived_object
    class RegisterVectors(ms.postproc.PyPostproc):
        """``register_vectors`` as a MetaSchedule postprocessor, with the target's lanes."""

        def __init__(self, lanes: int):
            super().__init__()
            self.lanes = lanes

        def _initialize_with_tune_context(self, context) -> None:
            self.lanes = tiles.registers(context.target).lanes

        def apply(self, sch) -> bool:
            register_vectors(sch, self.lanes)
            return True

        def clone(self):
            return RegisterVectors(self.lanes)

    return RegisterVectors


def postprocs(target: tvm.target.Target) -> list:
    """MetaSchedule's postprocessors for ``target``, with ``RegisterVectors`` after its
    parallelize / vectorize / unroll one where the target's FMA takes no memory operand."""
    from tvm.s_tir import meta_schedule as ms

    steps = list(ms.postproc.Postproc.create("llvm"))
    if memory_operands(target):
        return steps
    at = next(i for i, p in enumerate(steps)
              if isinstance(p, ms.postproc.RewriteParallelVectorizeUnroll)) + 1
    register = _register_vectors_class()(tiles.registers(target).lanes)
    return [*steps[:at], register, *steps[at:]]


def space_generator(target: tvm.target.Target):
    """The design space of a kernel for ``target``: a TuneContext's ``space_generator``."""
    from tvm.s_tir import meta_schedule as ms

    return ms.space_generator.PostOrderApply(postprocs=postprocs(target))


def vector_input_loads(sch, lanes: int) -> bool:
    """Load the input of the tiled block ``lanes`` reduction steps at a time: split the inner
    reduction loop (R1) by ``lanes``, read the input tile those steps use into a small buffer
    at the outer part, with a vectorized copy. The multiply-adds then take their broadcast
    from a lane of a register (NEON's ``fmla v.4s, v.4s, v.s[i]``) instead of a scalar load
    each. Applies when the input's innermost index is the innermost reduction variable (NHWC
    and the group axis: the input channels, contiguous) and R1 is a multiple of ``lanes``;
    returns whether it did. Counted on the emulated arm64 device, all instructions of one
    inference (benchmarks/RESULTS.md, session 22): ShuffleNet 0.5x g3 34.5 -> 28.0 M, 1x
    81.3 -> 73.6 M, MobileNet v1 239.2 -> 198.6 M, every FMA lane still used. Not for x86,
    whose FMA takes its broadcast from memory as an operand."""
    from tvm import tirx

    for block in sch.get_child_blocks(sch.get_sblock("root")):
        stmt = sch.get(block)
        if stmt.annotations.get("meta_schedule.tiling_structure") is None:
            continue
        spatial = sum(1 for iv in stmt.iter_vars if iv.iter_type == 0)
        reduction = [iv.var for iv in stmt.iter_vars if iv.iter_type == 2]
        loops = sch.get_loops(block)
        if not reduction or len(loops) <= spatial:
            return False
        inner = loops[len(loops) - spatial - 1]  # SSRSRS: R1, just outside the last S level
        extent = sch.get(inner).extent
        if not isinstance(extent, tirx.IntImm) or int(extent) % lanes:
            return False
        data = [i for i, region in enumerate(stmt.reads)
                if int(region.region[-1].extent) == 1
                and isinstance(region.region[-1].min, tirx.Var)
                and region.region[-1].min.same_as(reduction[-1])]
        if len(data) != 1:
            return False
        outer, _ = sch.split(inner, [None, lanes])
        # "global", not "local": TVM puts a small global buffer on the stack, and any "local"
        # one, inside a parallel loop, in its workspace pool (a runtime call per iteration:
        # 2.3 M instructions on ShuffleNet 1x)
        cache = sch.cache_read(block, data[0], "global")
        # unit loops kept: the copy's loop count must not depend on the tile decisions, which
        # tuning mutates and replays this trace with (a GetLoops of another length fails)
        sch.compute_at(cache, outer, preserve_unit_loops=True)
        sch.vectorize(sch.get_loops(cache)[-1])
        return True
    return False
