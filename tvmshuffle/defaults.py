"""Default schedules derived from the target: what a kernel gets when no tuning record has it.

Without a record TVM 0.27 compiles a kernel as its loops are written: scalar, serial, the
accumulators in memory (8-54x ONNX Runtime's latency on ShuffleNet; ``dlight``'s CPU rules
cover GEMV and reductions only). This module gives every kernel MetaSchedule's own schedule
instead, with the decisions the search would sample chosen from the target:

* the design space is MetaSchedule's for the target (``post-order-apply`` with the CPU rules:
  multi-level tiling "SSRSRS", the cache write, parallelize / vectorize / unroll, compute
  locations), so a default is one point of the space tuning searches: a trace, stored and
  applied as any record, measured as the first candidate of a tune and seeding its search;
* the register block (the S3 tile levels: outputs kept in vector registers while the inner
  reduction runs) is an outer product of pixels by whole vectors of output channels, the
  broadcast-FMA micro-kernel of BLAS and ncnn, sized to the vector register file
  (``tiles.registers``: AVX-512 32 x 16 lanes, AVX2 16 x 8, NEON 32 x 4): accumulators, a
  broadcast register and the weight vectors within the file (on x86 one more, spilled at a
  price), chosen for the most multiply-adds per load, a weight vector costing two on x86
  (``register_block`` has the numbers); a block of an odd vector count (not 1, 2 or 4 whole
  vectors: 20, 40, 80 channels on AVX-512) fits 16 registers on x86, AVX-512's 32 included,
  and unrolls whole (``odd_vector``);
* the inner reduction (R1) is as long as MetaSchedule allows (64; for an odd block, as long as
  the unroll limit leaves the block and R1 whole: R1 x pixels <= 512), the cache-written tile is
  the register block (the accumulators stay in registers, the epilogue — bias, residual, ReLU
  — runs on them in place, vectorized), S2 is 1, the parallel level S0 gives each core a few
  jobs when the target names several;
* producers MetaSchedule may move (padding, the fused channel shuffle's gather) are computed
  at the register block's outer loop, where their tile is read, when that is one of their
  locations (else as a copy at the root; never inlined into the multiply-add loop); loops are
  unrolled up to 512 steps;
* on NEON (no FMA memory operand) the input is read a vector of reduction steps at a time
  into registers, whose lanes the FMAs broadcast, and every vectorized loop is one register
  wide, a block of 20 channels five registers (``space``: the design space tuning shares);
  of the blocks with as many accumulators, a kernel with a window of taps takes the one with
  the smallest padded copy, under 1 KB where one is (``register_block``, ``window_of``); an
  RGB stem's padding at the root is copied a row at a time (``copies.row_copies``); a
  producer that writes a channel shuffle (``passes.shuffle_writes``) gets the default of the
  kernel it was made from;
* the weights are read in the order the block reads them: with no database (and in a database
  made so, records.DEFAULT_METHOD) each kernel's weights are marked layout-free and
  MetaSchedule's RewriteLayout postprocessor, part of the design space's postprocessors,
  repacks them at build time (``pipeline.lower_fused``). An FC layer then streams its weights
  instead of reading 128 columns at a time down a 16 KB stride: the five Table 8 models ran
  1.15-1.74x faster so on an AVX2 core (MobileNet 45.3 -> 26.0 ms, AlexNet 91.1 -> 69.1).

Kernels MetaSchedule does not tile (pooling, concatenation, transposes, reductions) keep TVM's
own loops on x86, which LLVM vectorizes: on ShuffleNet 1x they ran 2-8x faster than the design
space's parallel / vectorize / unroll annotations (0.5 against 2.5 ms for the ten of them). On
NEON those that only move data are inlined into one loop nest, vectorized a register at a time
(``copies``: ShuffleNet 1x's concatenations 3.55 -> 0.92 M instructions).

Why this design and not the two others the issue names: a ``dlight``-style rule of our own would
re-implement what MetaSchedule's rules already write, and its schedules could not seed the
search; fp32 micro-kernel tensor intrinsics would need an intrinsic per ISA and per block shape,
and MetaSchedule's tensorize rule only matches whole blocks of the intrinsic's shape (ShuffleNet's
group convolutions have 20-320 output channels a group). Decisions in MetaSchedule's space carry
to a new ISA with its register count and lane width alone. The measurements that chose the
levels above are in benchmarks/RESULTS.md ("Default schedules derived from the target").
"""

from __future__ import annotations

import itertools
import logging
import math
from dataclasses import dataclass

import tvm

from . import copies, space, tiles
from .passes import shuffle_writes
from .errors import first_line

log = logging.getLogger(__name__)

UNROLL = 512  # of MetaSchedule's unroll choices (0, 16, 64, 512): the register block unrolled
MAX_INNER_REDUCTION = tiles.MAX_INNER_REDUCTION
X86_BLOCK_REGISTERS = 16  # vector registers a register block may fill on x86 (register_block)
JOBS_PER_CORE = 4  # parallel jobs at the S0 level per core, when the target has several


@dataclass(frozen=True)
class Default:
    """A kernel's default schedule and its register block."""

    schedule: object  # tvm.s_tir.Schedule, postprocessed: its trace is a record's
    block: tuple[int, ...]  # the S3 tile of each spatial loop


# ---------------------------------------------------------------------------- tile decisions


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def spatial_reads(mod: tvm.IRModule) -> list[frozenset[int]] | None:
    """For each buffer the anchor block (the convolution, the matmul) reads in its
    multiply-adds, the spatial loops (by position among the block's spatial iterators, the
    order MetaSchedule tiles them in) that index it; None for a kernel without one. A buffer
    no reduction loop indexes is read once per output, by the init (``passes.bias_init``):
    not a read of the reduction."""
    from tvm import s_tir, tirx

    block = s_tir.analysis.find_anchor_sblock(mod)
    if block is None:
        return None
    spatial = {iv.var.name: i for i, iv in enumerate(
        [iv for iv in block.iter_vars if int(iv.iter_type) == 0])}
    reduction = {iv.var.name for iv in block.iter_vars if int(iv.iter_type) != 0}
    reads = []
    for read in block.reads:
        names = {v.name for dim in read.region for v in tirx.analysis.undefined_vars(dim.min)}
        if reduction and not names & reduction:
            continue
        reads.append(frozenset(spatial[n] for n in names if n in spatial))
    return reads


def window_of(mod: tvm.IRModule) -> tuple[dict[int, tuple[int, int]], int] | None:
    """For a kernel whose anchor block reads a window of taps (a convolution larger than 1x1):
    ({spatial loop (by position, as ``spatial_reads``): (stride, span)}, depth). A block of p
    outputs along loop i reads stride * (p - 1) + span inputs of the window's buffer, and
    ``depth`` channels of it a pixel: 0 where its channels are the block's own (depthwise),
    else those the reduction reads (a stem's 3). None for any other kernel."""
    from tvm import s_tir, tirx

    block = s_tir.analysis.find_anchor_sblock(mod)
    if block is None:
        return None
    spatial = {iv.var.name: i for i, iv in enumerate(
        [iv for iv in block.iter_vars if int(iv.iter_type) == 0])}
    taps = {iv.var.name: int(iv.dom.extent) for iv in block.iter_vars
            if int(iv.iter_type) != 0}
    for read in block.reads:
        slides, depth = {}, 1
        for dim in read.region:
            variables = list(tirx.analysis.undefined_vars(dim.min))
            names = [v.name for v in variables]
            moving = [n for n in names if n in spatial]
            sliding = [n for n in names if n in taps and taps[n] > 1]
            if len(moving) == 1 and len(sliding) == 1 and len(names) == 2:
                mapping = tirx.IndexMap(variables, [dim.min], None)
                steps = [mapping.map_indices([tirx.IntImm(str(v.ty), int(v.name == name))
                                              for v in variables])[0]
                         for name in (moving[0], sliding[0])]
                if all(isinstance(step, tirx.IntImm) and int(step) >= 1 for step in steps):
                    stride, dilation = (int(step) for step in steps)
                    slides[spatial[moving[0]]] = (stride, dilation * (taps[sliding[0]] - 1) + 1)
                    continue
            if spatial and max(spatial.values()) in {spatial[n] for n in moving}:
                depth = 0  # the block's channels
            elif not moving:
                depth *= math.prod(taps.get(n, 1) for n in names)
        if len(slides) >= 2:
            return slides, depth
    return None


# TVM allocates a buffer of this many bytes or more (a block's padded copy) from the heap, per
# iteration of the parallel loop around it (LowerTVMBuiltin: kMaxStackAlloca)
STACK_BYTES = 1024


def register_block(extents: list[int], reads: list[frozenset[int]], regs: tiles.Registers,
                   memory_operands: bool,
                   window: tuple[dict[int, tuple[int, int]], int] | None = None,
                   vector_inputs: bool = False) -> tuple[int, ...]:
    """The S3 tile of each spatial loop (the last one vectorized) with the most multiply-adds
    per load: a block of B outputs costs, per reduction step, B / lanes vector FMAs and, per
    buffer read, one load for each distinct element it reads (a broadcast scalar when the
    vectorized loop does not index it, a vector when it does): pixels x channels reuse the
    input across the channel vectors and the weights across the pixels. Masked lanes count as
    lost work. Ties: more accumulators, then (``window``, ``window_of``: a kernel with a window
    of taps, whose padding is copied per block with its halo) the smaller copy, then blocks
    along the inner loops. A window's copy must stay under STACK_BYTES: TVM puts a larger one
    on the heap, an allocation and a free per block (on ShuffleNet 1x's depthwise kernels 1.0
    M instructions of TVM's runtime an inference, counted on the emulated arm64 device).

    The register file holds the accumulators, one broadcast and the weight vectors. On x86
    (``memory_operands``: an FMA may take a load as operand) LLVM still keeps a weight vector
    that several pixels use in a register, so a block of more pixels needs them too; it also
    wants a register of its own, and past that it spills the broadcasts (a store and a reload
    each). There a block may exceed the file by one register, at the price of half a load per
    pixel, and a weight vector (streamed from L2, where the broadcast input stays in L1 across
    the channel blocks) costs two loads. Measured on Zen 3 (AVX2, kernels alone, session 19):
    MobileNet's 1x1 convolutions at 14x14 and 28x28 go from 7 x 16 (14 accumulators, 555-701
    stack loads and stores per 896 FMAs) to 4 x 16 (8 accumulators, none): 35-45 -> 41-73
    GFLOP/s; ShuffleNet 1x's stage-2/3 group convolutions 1.2-2x faster (stage 3's 7-call
    expansion 40 -> 80 GFLOP/s); at 7x7 the 7 x 16 block stays (7 x 8, without spills, ran 30%
    slower), as do blocks that fit (the stems' 4 x 24). On NEON (32 registers, no FMA memory
    operand) the count is the plain one, with a register for each broadcast input vector
    where the input is read a vector of reduction steps at a time (``vector_inputs``:
    ShuffleNet v2's 116 channels got 28 pixels x 4 channels, 28 accumulators and 28 input
    vectors, reloaded once an FMA: 24.2 M instructions for 10.5 M FMAs), unmeasured on a
    device; there ``window`` is given:
    ShuffleNet 1x's stride-1 depthwise convolutions at 28x28 get 4 x 7 pixels instead of 1 x 28,
    a padded copy of 6 x 9 pixels per block instead of 3 x 30: 0.62 M instructions a call
    instead of 0.89 M (counted on the emulated arm64 device, session 25); x86's blocks, chosen
    by time, are left as they were."""
    slides, depth = window or ({}, 0)
    *outer, channels = extents
    last = len(extents) - 1
    # whole vectors, or the whole loop: a block that ends inside a vector repeats a masked,
    # misaligned tail in every block (4-5x slower measured: 40 channels as 2 x 20 on AVX2)
    vector_choices = sorted({d for d in _divisors(channels) if d % regs.lanes == 0}
                            | {channels})
    weight_cost = 2 if memory_operands else 1
    # x86, a block of an odd vector count: 16 registers, AVX-512's 32 included (there, such
    # blocks of 20-28 accumulators ran 1.4-2.8x slower than 8-16 on ShuffleNet's 1x1 group
    # convolutions, each kernel timed alone; whole 1, 2 or 4 vectors keep the file: MobileNet's
    # 14 x 32 ran faster in the network than 4 x 32. Emerald Rapids, session 21)
    best, best_key, heap_best, heap_key = None, None, None, None
    for c3 in vector_choices:
        vectors = math.ceil(c3 / regs.lanes)
        lane_use = c3 / (vectors * regs.lanes)
        budget = (min(regs.count, X86_BLOCK_REGISTERS) if memory_operands and odd_vector(c3, regs)
                  else regs.count)
        for pixels in itertools.product(*(_divisors(e) for e in outer)):
            count = math.prod(pixels)
            accumulators = count * vectors
            spill = 0.0
            if memory_operands:
                # one pixel uses each weight vector once: as an FMA operand, no register
                live = accumulators + (vectors if count > 1 else 0) + 1
                if live > budget + 1:
                    continue
                if live > budget - 1:  # LLVM's own register taken: broadcasts spilled
                    spill = count / 2
            elif accumulators + vectors + (max(1, sum(
                    math.prod(pixels[i] for i in read if i != last)
                    for read in reads if last not in read)) if vector_inputs else 1) > budget:
                # NEON: a broadcast operand read a vector of reduction steps at a time
                # (space.vector_input_loads) holds a register a pixel across those steps
                continue
            loads = sum(math.prod(pixels[i] for i in read if i != last)
                        * (vectors * weight_cost if last in read else 1) for read in reads)
            intensity = accumulators / max(1, loads + spill) * lane_use
            # a window's producer (the padding) is copied per block with its halo
            copied = math.prod(slides[i][0] * (p - 1) + slides[i][1] if i in slides else p
                               for i, p in enumerate(pixels)) * (depth or c3) if slides else 0
            key = (round(intensity, 6), accumulators, -copied, tuple(reversed(pixels)))
            if copied * 4 >= STACK_BYTES:  # fp32: kept only if no block's copy fits
                if heap_key is None or key > heap_key:
                    heap_best, heap_key = (*pixels, c3), key
            elif best_key is None or key > best_key:
                best, best_key = (*pixels, c3), key
    best = best if best is not None else heap_best
    if best is None:  # a vector too wide for the file: one vector's worth
        return (*([1] * len(outer)), min(channels, regs.lanes))
    return best


def odd_vector(channels: int, regs: tiles.Registers) -> bool:
    """Whether a block of ``channels`` is not 1, 2 or 4 whole vectors: LLVM keeps the
    accumulators of such a block in memory unless its loops are unrolled whole, and on x86
    it fits 16 registers at most (``register_block``, ``reduction_tiles``)."""
    vectors, rest = divmod(channels, regs.lanes)
    return rest != 0 or vectors not in (1, 2, 4)


def spatial_tiles(extents: list[int], block: tuple[int, ...], cores: int) -> list[list[int]]:
    """S0 S1 S2 S3 of each spatial loop: the register block in S3, S2 = 1, and in S0 of the
    outer loops enough parallel jobs for ``cores`` (none for one core). The rest in S1, where
    the pixel loops run outside the channel loops: each block of pixels meets every weight
    (ShuffleNet 1x in the network: 9.1-13.3 ms, against 10.6-16.4 with the output channels and
    groups in S0, the weights stationary)."""
    jobs_wanted = 1 if cores <= 1 else cores * JOBS_PER_CORE
    decisions, jobs = [], 1
    for extent, inner in zip(extents, block):
        rest = extent // inner
        s0 = 1
        if jobs < jobs_wanted:
            s0 = min((d for d in _divisors(rest) if jobs * d >= jobs_wanted), default=rest)
            jobs *= s0
        decisions.append([s0, rest // s0, 1, inner])
    return decisions


def reduction_tiles(extents: list[int], pixels: int = 1, lanes: int = 0) -> list[list[int]]:
    """R0 R1 of each reduction loop: the window loops whole inside (3x3: 9 taps), the rest of
    MAX_INNER_REDUCTION to the channel loop (the last).

    ``pixels``: the register block's S3 loops but the vectorized one, given for a block of an
    odd vector count (``odd_vector``), whose nest of R1 and pixels UNROLL must unroll whole:
    TVM unrolls a nest of at most that many steps and leaves a larger one a loop, and LLVM
    keeps such a block's accumulators in memory across it (14 pixels x 20 channels with 40
    reduction steps on AVX-512: 560 steps, 56 FMAs and 1,836 stack accesses in the kernel's
    code, 26x slower than 4 pixels; benchmarks/RESULTS.md, session 21). Whole 1, 2 or 4
    vectors stay in registers across the loop (MobileNet's 14 x 32 with R1 = 64 ran faster in
    the network than unrolled). So R1 is capped at UNROLL // pixels.

    ``lanes`` (NEON, where the input is read a vector of reduction steps at a time,
    ``space.vector_input_loads``, which needs R1 a multiple of a vector): the channel loop's
    inner factor is the largest such divisor when there is one. ShuffleNet v2 1.0x's 116
    channels gave R1 = 58, no vector loads, a broadcast load per FMA (its heaviest kernel
    24.2 M instructions for 10.5 M FMAs, counted on the emulated arm64 device); R1 = 4 reads
    them four at a time."""
    decisions, room = [], min(MAX_INNER_REDUCTION, max(1, UNROLL // max(1, pixels)))
    for i, extent in enumerate(extents):
        if i < len(extents) - 1 and extent <= room:
            inner = extent
        else:
            fits = [d for d in _divisors(extent) if d <= max(1, room)]
            whole = [d for d in fits
                     if lanes and i == len(extents) - 1 and d % lanes == 0]
            inner = max(whole or fits)
        room = max(1, room // inner)
        decisions.append([extent // inner, inner])
    return decisions


# ---------------------------------------------------------------------------- the schedule


def _context(mod: tvm.IRModule, target: tvm.target.Target):
    from tvm.s_tir import meta_schedule as ms

    from .tune.builders import import_tensor_intrinsics

    import_tensor_intrinsics()  # TuneContext imports them; fast this way
    return ms.TuneContext(mod=mod, target=target, space_generator=space.space_generator(target),
                          task_name="default", rand_state=0, num_threads=1).clone()


def _split_of(trace, sample) -> object | None:
    """The Split instruction that uses the loop factors ``sample`` (a SamplePerfectTile)
    returned."""
    for inst in trace.insts:
        if inst.kind.name == "Split" and any(inp.same_as(sample.outputs[0])
                                            for inp in inst.inputs):
            return inst
    return None


def _tile_choice(trace, reads, regs: tiles.Registers, cores: int, memory_operands: bool,
                 window: tuple[dict[int, tuple[int, int]], int] | None = None):
    """(SamplePerfectTile instructions, their decisions, the S1 loop of each spatial loop, the
    register block) for an SSRSRS trace; None for any other."""
    insts = [i for i in trace.insts if i.kind.name == "SamplePerfectTile"]
    decisions = [[int(v) for v in trace.decisions[i]] for i in insts]
    spatial = tiles.split_levels(decisions)
    if spatial is None:
        return None
    extents = [math.prod(d) for d in decisions]
    # NEON reads the input a vector of reduction steps at a time where R1 can be a multiple
    # of a vector (reduction_tiles)
    vector_inputs = not memory_operands and extents[-1] % regs.lanes == 0
    block = register_block(extents[:spatial], reads, regs, memory_operands, window,
                           vector_inputs)
    chosen = (spatial_tiles(extents[:spatial], block, cores)
              + reduction_tiles(extents[spatial:],
                                math.prod(block[:-1]) if odd_vector(block[-1], regs) else 1,
                                0 if memory_operands else regs.lanes))
    splits = [_split_of(trace, inst) for inst in insts[:spatial]]
    return insts, chosen, [s.outputs[1] if s is not None else None for s in splits], block


def _reverse_compute_at(trace) -> object | None:
    return next((i for i in trace.insts if i.kind.name == "ReverseComputeAt"), None)


def _apply(mod: tvm.IRModule, trace, postprocs, lanes: int = 0):
    """``trace`` applied to ``mod``, with the input loaded ``lanes`` at a time (``lanes``: 0
    for none) and the space's postprocessors; None if one rejects it."""
    from tvm import s_tir

    sch = s_tir.Schedule(mod)
    trace.apply_to_schedule(sch, remove_postproc=True)
    if lanes:
        space.vector_input_loads(sch, lanes)
    sch.enter_postproc()
    if not all(postproc.apply(sch) for postproc in postprocs):
        return None
    return sch


def _with_categoricals(trace):
    """``trace`` with every unroll choice at UNROLL (or the largest offered)."""
    for inst in trace.insts:
        if inst.kind.name == "SampleCategorical":
            candidates = [int(c) for c in inst.attrs[0]]
            pick = candidates.index(UNROLL) if UNROLL in candidates else len(candidates) - 1
            trace = trace.with_decision(inst, pick, remove_postproc=True)
    return trace


MAX_LOCATIONS = 32  # compute locations looked at per producer (a kernel has a dozen loops)


def _rv_position(trace, rv) -> tuple[int, int] | None:
    """(instruction index, output index) of the instruction of ``trace`` that made ``rv``."""
    for i, inst in enumerate(trace.insts):
        for j, out in enumerate(inst.outputs):
            if out.same_as(rv):
                return i, j
    return None


def _compute_locations(mod: tvm.IRModule, trace, anchors: list, guess: int = 0):
    """``trace`` with each SampleComputeLocation at the first of ``anchors`` (the register
    block's outer loop, then the loops around it, inner first) that is one of its choices,
    else at the root (a copy of its own, never inlined into the multiply-add loop); a loop of
    one iteration was never one of MetaSchedule's choices in the kernels looked at. A choice
    is an index into the producer's valid locations, outermost first: each is tried, ``guess``
    first, until the sampled loop is the first anchor, else all are and the innermost anchor
    found wins (a trace applied to a schedule makes new random variables: they are matched by
    position)."""
    from tvm import s_tir

    positions = [_rv_position(trace, loop) for loop in anchors if loop is not None]
    positions = [p for p in positions if p is not None]
    for inst in [i for i in trace.insts if i.kind.name == "SampleComputeLocation"]:
        found: dict[int, int] = {}  # anchor (by preference) -> the choice that samples it
        sample = _rv_position(trace, inst.outputs[0])
        order = [guess, *(k for k in range(MAX_LOCATIONS) if k != guess)]
        for k in (order if positions else []):
            probe = s_tir.Schedule(mod)
            try:
                trace.with_decision(inst, k, remove_postproc=True).apply_to_schedule(
                    probe, remove_postproc=True)
            except Exception:  # noqa: BLE001 - past the last location: TVM rejects the index
                if k == guess:
                    continue
                break
            insts = probe.trace.insts
            sampled = probe.get_sref(insts[sample[0]].outputs[sample[1]])
            for rank, (at, out) in enumerate(positions):
                if sampled.same_as(probe.get_sref(insts[at].outputs[out])):
                    found.setdefault(rank, k)
            if 0 in found:
                break
        chosen = found[min(found)] if found else -1
        trace = trace.with_decision(inst, chosen, remove_postproc=True)
    return trace


def default_schedule(mod: tvm.IRModule, target: tvm.target.Target) -> Default | None:
    """The default schedule of one kernel (a task's module) for ``target``; None for a kernel
    MetaSchedule does not tile (pooling, concatenation, transposes, reductions: TVM's own
    loops, which LLVM vectorizes, ran them 2-8x faster than the space's annotations,
    benchmarks/RESULTS.md) or whose space rejects the decisions: it then stays as TVM writes
    it. On NEON a kernel that only moves data gets ``copies.copy_schedule`` where it applies."""
    reads = spatial_reads(mod)
    has_rule = "schedule_rule" in (mod["main"].attrs or {})
    regs = tiles.registers(target)
    # x86 FMAs take a memory operand: the weight vectors need no register of their own
    memory_operands = space.memory_operands(target)
    if not reads and not has_rule and not memory_operands:
        sch = copies.copy_schedule(mod, regs.lanes)
        return Default(sch, ()) if sch is not None else None
    # a multiply-add of two tensors (data and weights); pooling reads one, and its custom
    # schedule rule is not registered for CPUs (TVM warns about it on every space it makes)
    if not reads or len(reads) < 2 or has_rule:
        return None
    # a producer writing its output shuffled: the decisions of the kernel it was made from
    base = shuffle_writes.unshuffled(mod["main"])
    context = _context(mod if base is None else tvm.IRModule({"main": base}), target)
    try:
        spaces = context.generate_design_space()
    except Exception as err:  # noqa: BLE001 - TVM raises TVMError, ValueError...
        log.debug("no design space for a kernel: %s", first_line(err))
        return None
    cores = int(target.attrs.get("num-cores", 1))
    # NEON: a window's padded copy is part of the block's cost (x86's blocks were timed)
    kernel_window = window_of(mod)
    window = None if memory_operands else kernel_window
    for design in spaces:
        trace = design.trace
        choice = _tile_choice(trace, reads, regs, cores, memory_operands, window)
        if choice is None:
            continue
        insts, decisions, s1_loops, block = choice
        s1_loop = s1_loops[-1]
        rca = _reverse_compute_at(trace)
        # the cache write at the register block's outer loop: the accumulators in registers
        if rca is None or s1_loop is None or not rca.inputs[1].same_as(s1_loop):
            continue
        for inst, decision in zip(insts, decisions):
            trace = trace.with_decision(inst, decision, remove_postproc=True)
        # the anchor is usually the last of the S0 and S1 loops that enclose the block; a
        # producer without a window that the channel loop does not index (channel ranges
        # gathered for a 1x1 convolution, passes.channel_ranges) goes outside that loop, or
        # the nearest one around it: its tile, the block's pixels by every input channel, is
        # copied once for all of them
        anchors, guess = [s1_loop], 2 * len(block) - 1
        pixel_reads = [read for read in reads if len(block) - 1 not in read and read]
        if pixel_reads and kernel_window is None:
            anchors = s1_loops[max(max(read) for read in pixel_reads)::-1]
            guess -= 1
        trace = _compute_locations(mod, _with_categoricals(trace), anchors, guess)
        # NEON: the input loaded a vector at a time, where the kernel allows it
        for lanes in ([] if memory_operands else [regs.lanes]) + [0]:
            try:
                sch = _apply(mod, trace, context.space_generator.postprocs, lanes)
            except (RuntimeError, ValueError) as err:  # TVM: InternalError, ScheduleError...
                log.debug("default schedule rejected (vector input loads %d): %s", lanes,
                          first_line(err))
                continue
            if sch is not None:
                if not memory_operands:  # NEON: an RGB stem's padding copied a row at a time
                    copies.row_copies(sch, regs.lanes)
                return Default(sch, block)
    return None


# A default's record in a database that only applies schedules (compile): never timed, never
# written to a tuning database (tune times a default before recording it).
UNTIMED_SECS = [1.0]
