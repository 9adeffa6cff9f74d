"""Default schedules derived from the target (`defaults.py`): the register block each vector
register file gets, the reduction split, and kernels built with them computing what TVM's
unscheduled loops compute; `compile` saying which kernels got which."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import tvm
from tvmshuffle import defaults, frontends, target, tiles, tune

from conftest import invoke

AVX2, AVX512, NEON = tiles.Registers(16, 8), tiles.Registers(32, 16), tiles.Registers(32, 4)
# ShuffleNet 1x's stage-3 1x1 group convolution, loops n, h, w, g, o: the input is indexed by
# n, h, w, g (and the reduction), the weights by g, o
STAGE3 = [1, 14, 14, 3, 160]
STAGE3_READS = [frozenset({0, 1, 2, 3}), frozenset({3, 4})]


def _accumulators(block, regs):
    return math.prod(block[:-1]) * math.ceil(block[-1] / regs.lanes)


@pytest.mark.parametrize("regs, memory_operands", [(AVX2, True), (AVX512, True),
                                                   (NEON, False)])
def test_register_block_is_an_outer_product_that_fits_the_file(regs, memory_operands):
    """The block is pixels x whole vectors of output channels (never along the groups, which
    share nothing), as many accumulators as fit beside a broadcast and the weight vectors (on
    x86, whose FMAs take a memory operand, one register more, spilled)."""
    block = defaults.register_block(STAGE3, STAGE3_READS, regs, memory_operands)
    vectors = math.ceil(block[-1] / regs.lanes)
    assert block[-1] % regs.lanes == 0 and 160 % block[-1] == 0
    assert block[3] == 1, "no block along the groups"
    assert math.prod(block[:-1]) > 1 and vectors > 1, "pixels x channel vectors"
    # on x86 a block of an odd vector count fills at most 16 registers, AVX-512's 32 included
    file = (min(regs.count, defaults.X86_BLOCK_REGISTERS)
            if memory_operands and defaults.odd_vector(block[-1], regs) else regs.count)
    live = _accumulators(block, regs) + vectors + 1
    assert live <= file + (1 if memory_operands else 0)
    assert _accumulators(block, regs) >= file // 2, "at least half the file accumulates"


def test_an_avx512_block_of_odd_vectors_fills_16_registers():
    """AVX-512's 32 registers: a block of 1, 2 or 4 whole vectors may use them all (MobileNet's
    14 x 32); one of another width (20, 40, 80 channels: 1.25, 2.5, 5 vectors) fills 16 at
    most, as on AVX2 (there blocks of 20-28 accumulators ran 1.4-2.8x slower than 8-16,
    Emerald Rapids, each kernel alone; ShuffleNet 1x 14.9 -> 5.5 ms in the network)."""
    dense_reads = [frozenset({0, 1, 2}), frozenset({3})]
    assert _accumulators(defaults.register_block([1, 14, 14, 512], dense_reads, AVX512, True),
                         AVX512) > 16
    for channels in (20, 40, 80):
        block = defaults.register_block([1, 28, 28, 3, channels], STAGE3_READS, AVX512, True)
        assert not defaults.odd_vector(block[-1], AVX512) or \
            _accumulators(block, AVX512) <= 16, (channels, block)
    assert defaults.odd_vector(20, AVX512) and defaults.odd_vector(80, AVX512)
    assert not defaults.odd_vector(32, AVX512) and not defaults.odd_vector(64, AVX512)


def test_an_avx2_block_leaves_llvm_a_register_where_it_can():
    """At 14x14 and 28x28 AVX2 gets 4 pixels x 2 vectors (8 accumulators, 2 weight vectors, a
    broadcast: no spill), not 7 x 2 (17 registers: every broadcast went through the stack, 1.2-
    1.6x slower measured); at 7x7, where 4 pixels do not divide, 7 x 2 stays (7 x 1 ran 30%
    slower); a stem's 4 x 24 (16 registers) fits."""
    dense_reads = [frozenset({0, 1, 2}), frozenset({3})]
    for side in (14, 28):
        block = defaults.register_block([1, side, side, 512], dense_reads, AVX2, True)
        assert math.prod(block[:-1]) == 4 and block[-1] == 16
    assert defaults.register_block([1, 7, 7, 1024], dense_reads, AVX2, True)[1:] == (1, 7, 16)
    assert defaults.register_block([1, 112, 112, 24], dense_reads, AVX2, True)[-1] == 24


def test_avx2_and_neon_blocks_differ_as_their_files_do():
    """A target with more, narrower registers (NEON 32 x 4) gets a block of more vectors than
    AVX2's 16 x 8."""
    avx2 = defaults.register_block(STAGE3, STAGE3_READS, AVX2, True)
    neon = defaults.register_block(STAGE3, STAGE3_READS, NEON, False)
    assert _accumulators(neon, NEON) > _accumulators(avx2, AVX2)


def test_channels_not_a_multiple_of_the_vector_are_blocked_whole_or_in_whole_vectors():
    """A channel block ends on a vector boundary or at the loop's end: 40 channels on AVX2 are
    blocked as 8 or 40, never 20 (a masked tail repeated in every block, measured 4-5x slower);
    20 channels are one block of 20."""
    forty = defaults.register_block([1, 28, 28, 3, 40], STAGE3_READS, AVX2, True)
    assert forty[-1] in (8, 40)
    twenty = defaults.register_block([1, 28, 28, 3, 20], STAGE3_READS, AVX2, True)
    assert twenty[-1] == 20


def test_a_neon_window_gets_the_block_with_the_smallest_padded_copy():
    """On NEON a kernel with a window of taps (its padding copied per block with its halo)
    takes, of the blocks with as many accumulators, the squarest: ShuffleNet 1x's depthwise
    convolution at 28x28 gets 4 x 7 pixels (a 6 x 9 copy), not 1 x 28 (3 x 30); without a
    window the block is as before. A copy of 1 KB or more (which TVM allocates on the heap,
    once a block) is taken only if no block's copy is smaller: at 14x14 the 2 x 14 block's
    4 x 16 x 4 floats give way to 2 x 7."""
    depthwise = [1, 28, 28, 60]
    reads = [frozenset({0, 1, 2, 3}), frozenset({3})]  # input: pixels and channels; weights
    three = ({1: (1, 3), 2: (1, 3)}, 0)  # 3x3, stride 1, the block's own channels
    assert defaults.register_block(depthwise, reads, NEON, False, window=three) == (1, 4, 7, 4)
    assert defaults.register_block(depthwise, reads, NEON, False) == (1, 1, 28, 4)
    assert defaults.register_block([1, 14, 14, 120], reads, NEON, False) == (1, 2, 14, 4)
    assert defaults.register_block([1, 14, 14, 120], reads, NEON, False,
                                   window=three) == (1, 2, 7, 4)


def test_window_geometry_read_from_the_kernel():
    """The window a kernel's anchor reads: stride and span along the pixel loops, and the
    channels its copy holds a pixel (the block's own for a depthwise convolution, the 3 input
    channels for an RGB stem)."""
    from tvm import te, topi

    def window(data_shape, weight_shape, stride, groups):
        data = te.placeholder(data_shape, name="data")
        weight = te.placeholder(weight_shape, name="weight")
        out = topi.nn.group_conv2d_nhwc(data, weight, stride, 1, 1, groups) if groups > 1 \
            else topi.nn.conv2d_nhwc(data, weight, stride, 1, 1)
        return defaults.window_of(tvm.IRModule({"main": te.create_prim_func([data, weight,
                                                                             out])}))

    assert window((1, 28, 28, 60), (3, 3, 1, 60), 1, 60) == ({1: (1, 3), 2: (1, 3)}, 0)
    assert window((1, 56, 56, 60), (3, 3, 1, 60), 2, 60) == ({1: (2, 3), 2: (2, 3)}, 0)
    assert window((1, 224, 224, 3), (3, 3, 3, 24), 2, 1) == ({1: (2, 3), 2: (2, 3)}, 3)
    assert window((1, 28, 28, 60), (1, 1, 60, 60), 1, 1) is None  # 1x1: no window


def test_reduction_tiles_keep_the_window_whole_and_stop_at_64():
    """R1: a 3x3 window inside whole, the channel loop's inner factor the largest divisor that
    keeps the inner reduction within MetaSchedule's 64; a 1x1 convolution's channels whole
    when they fit."""
    assert defaults.reduction_tiles([3, 3, 256]) == [[1, 3], [1, 3], [64, 4]]
    assert defaults.reduction_tiles([1, 1, 24]) == [[1, 1], [1, 1], [1, 24]]
    assert defaults.reduction_tiles([960]) == [[15, 64]]


def test_neon_reads_its_input_a_vector_at_a_time_with_registers_for_it():
    """On NEON the channel loop's inner factor is a multiple of a vector where one divides it
    (ShuffleNet v2's 116 channels: 4, not 58), so the input can be read four reduction steps
    at a time; the block then keeps a register for each pixel's input vector: 4 channels x
    14 pixels, not x 28 (28 accumulators and 28 inputs in 32 registers)."""
    assert defaults.reduction_tiles([116]) == [[2, 58]]
    assert defaults.reduction_tiles([116], lanes=4) == [[29, 4]]
    assert defaults.reduction_tiles([1, 1, 80], lanes=4) == [[1, 1], [1, 1], [2, 40]]
    assert defaults.reduction_tiles([3, 3, 3], lanes=4) == [[1, 3], [1, 3], [1, 3]]
    reads = [frozenset({0, 1, 2}), frozenset({3})]  # input: pixels; weights: channels
    assert defaults.register_block([1, 14, 14, 116], reads, NEON, False) == (1, 2, 14, 4)
    block = defaults.register_block([1, 14, 14, 116], reads, NEON, False, vector_inputs=True)
    assert math.prod(block[:-1]) * 2 + 1 <= NEON.count, block
    # ShuffleNet v1's group convolutions keep their 2 x 2 pixels x 20 channels
    assert defaults.register_block(STAGE3, STAGE3_READS, NEON, False, vector_inputs=True) == \
        defaults.register_block(STAGE3, STAGE3_READS, NEON, False)


def test_the_inner_reduction_and_the_block_unroll_whole():
    """R1 x the block's pixels stays within the unroll limit (512) for a block of an odd vector
    count: TVM leaves a larger nest a loop, and LLVM keeps such a block's accumulators in memory
    (14 pixels x 20 channels x 40 steps on AVX-512: 26x slower)."""
    assert defaults.reduction_tiles([1, 1, 80], pixels=14) == [[1, 1], [1, 1], [4, 20]]
    assert defaults.reduction_tiles([1, 1, 80]) == [[1, 1], [1, 1], [2, 40]]
    assert defaults.reduction_tiles([1, 1, 80], pixels=4) == [[1, 1], [1, 1], [2, 40]]
    for pixels in (1, 2, 4, 7, 8, 14, 16, 28):
        inner = math.prod(r[1] for r in defaults.reduction_tiles([3, 3, 256], pixels=pixels))
        assert inner * pixels <= defaults.UNROLL or inner == 1, (pixels, inner)


def test_spatial_tiles_put_the_block_in_s3_and_jobs_in_s0():
    """S3 holds the register block and S2 is 1; one core gets no parallel split, four cores
    get at least 16 jobs at the outer level."""
    block = (1, 1, 7, 1, 32)
    one = defaults.spatial_tiles(STAGE3, block, 1)
    assert [d[3] for d in one] == list(block) and all(d[2] == 1 for d in one)
    assert all(d[0] == 1 for d in one)
    assert [math.prod(d) for d in one] == STAGE3
    four = defaults.spatial_tiles(STAGE3, block, 4)
    assert math.prod(d[0] for d in four) >= 16
    assert [math.prod(d) for d in four] == STAGE3


@pytest.fixture(scope="module")
def small_tasks():
    imported = frontends.load(frontends.ModelSpec("shufflenet_v1_g3_0.25x", (64, 64)))
    config = tune.TuneConfig(target=target.resolve("host"), db_dir=Path("unused"))
    return config.target.tvm_target, tune.extract_tasks(imported.mod, config)


def _run(mod, target_, args):
    """``mod`` built whole, with its weight layout rewrite (the tasks prepack their weights,
    records.DEFAULT_METHOD) as a block of its own: it takes the weights as imported."""
    from tvm.driver import build as tvm_build

    lib = tvm_build(mod, target=target_)
    outs = [tvm.runtime.tensor(a) for a in args]
    lib[lib.entry_name](*outs)
    return outs[-1].numpy()


def test_default_schedules_compute_what_the_unscheduled_kernels_compute(small_tasks):
    """Every kind of kernel that gets a default (the stem, 1x1 group convolutions, the fused
    shuffle + depthwise convolutions, the classifier's matmul) gives the unscheduled kernel's
    output; pooling and data movement keep TVM's loops (no default)."""
    target_, tasks = small_tasks
    rng = np.random.default_rng(0)
    kinds = set()
    for task in tasks:
        mod = task.extracted.dispatched[0]
        default = defaults.default_schedule(mod, target_)
        if task.kind == "other":
            assert default is None, task.name
            continue
        assert default is not None, task.name
        kinds.add(task.kind)
        args = [rng.standard_normal([int(d) for d in p.ty.shape]).astype("float32")
                for p in mod["main"].params]
        args[-1][:] = 0
        expected = _run(mod, target_, args)
        got = _run(default.schedule.mod, target_, args)
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4, err_msg=task.name)
    assert kinds == {"conv", "grouped", "depthwise", "dense"}


def test_default_schedule_is_deterministic(small_tasks):
    """The same kernel and target give the same trace: a default is no random sample."""
    target_, tasks = small_tasks
    task = next(t for t in tasks if t.kind == "grouped")
    mod = task.extracted.dispatched[0]
    first = defaults.default_schedule(mod, target_).schedule.trace
    second = defaults.default_schedule(mod, target_).schedule.trace
    assert "\n".join(first.as_python()) == "\n".join(second.as_python())


@pytest.mark.slow
def test_compile_says_which_kernels_got_defaults(tmp_path):
    """`compile --no-db` gives the tiled kernels their defaults and says so per kernel in
    manifest.json; `--no-default-schedules` leaves TVM's loops everywhere; both match
    PyTorch."""
    small = ("shufflenet_v1_g3_0.25x", "--input-size", "64x64", "--no-db", "--json")
    for flags, out in (((), tmp_path / "default"), (("--no-default-schedules",),
                                                     tmp_path / "loops")):
        result = invoke("compile", *small, *flags, "-o", str(out))
        assert result.exit_code == 0, result.output
        run = invoke("run", str(out), "--repeat", "2", "--json")
        assert run.exit_code == 0 and json.loads(run.stdout)["max_abs_err"] < 1e-4
    with_defaults = json.loads((tmp_path / "default" / "manifest.json").read_text())["tuning"]
    loops = json.loads((tmp_path / "loops" / "manifest.json").read_text())["tuning"]
    sources = list(with_defaults["schedules"].values())
    assert sources.count("default") >= 10 and "record" not in sources
    assert with_defaults["tuned_kernels"] == [] and with_defaults["default_schedules"]
    # with no database the defaults read their weights prepacked, repacked at build time
    assert with_defaults["prepacked_weights"] and not loops["prepacked_weights"]
    kernels = json.loads((tmp_path / "default" / "manifest.json").read_text())["kernels"]
    assert any(name.endswith("_prepacked") for name in kernels)
    assert set(loops["schedules"].values()) == {"tvm"} and not loops["default_schedules"]


def test_remembered_defaults_are_the_derived_ones(small_tasks, tmp_path, monkeypatch):
    """The cache folder gives back each kernel's derived default (same trace, same register
    block, same kernels without one) without deriving again; a damaged entry is derived
    again and rewritten; another version of the derivation code reads none of the entries."""
    from tvmshuffle import schedule_cache
    from tvmshuffle.tune.tasks import _signature

    target_, tasks = small_tasks
    monkeypatch.setenv(schedule_cache.CACHE_ENV, str(tmp_path))
    monkeypatch.setattr(schedule_cache, "_memory", {})
    derived = {t.name: defaults.default_schedule(t.extracted.dispatched[0], target_)
               for t in tasks}
    for task in tasks:  # derived now, and stored
        schedule_cache.default_schedule(task.extracted.dispatched[0], target_)
    entries = sorted(tmp_path.glob("defaults/*/*.json"))
    assert len(entries) == len({schedule_cache._key(t.extracted.dispatched[0], target_)
                                for t in tasks})

    def from_disk():
        monkeypatch.setattr(schedule_cache, "_memory", {})
        monkeypatch.setattr(defaults, "default_schedule", _must_not_derive)
        return {t.name: schedule_cache.default_schedule(t.extracted.dispatched[0], target_)
                for t in tasks}

    def _must_not_derive(*_args):
        raise AssertionError("derived again")

    for name, got in from_disk().items():
        want = derived[name]
        assert (got is None) == (want is None), name
        if want is not None:
            assert _signature(got.schedule.trace) == _signature(want.schedule.trace)
            assert got.block == want.block
            tvm.ir.assert_structural_equal(got.schedule.mod, want.schedule.mod)
    monkeypatch.undo()
    monkeypatch.setenv(schedule_cache.CACHE_ENV, str(tmp_path))
    monkeypatch.setattr(schedule_cache, "_memory", {})
    grouped = next(t for t in tasks if t.kind == "grouped").extracted.dispatched[0]
    entry = next(p for p in entries if p.stem == schedule_cache._key(grouped, target_))
    entry.write_text('{"trace": "not a trace", "block": [1]}')
    again = schedule_cache.default_schedule(grouped, target_)
    assert again is not None and json.loads(entry.read_text())["trace"] != "not a trace"
    monkeypatch.setattr(schedule_cache, "_memory", {})
    monkeypatch.setattr(schedule_cache, "_code_version", lambda: "another-version")
    schedule_cache.default_schedule(grouped, target_)
    assert (tmp_path / "defaults" / "another-version").is_dir()


def test_neon_blocks_load_their_input_a_vector_at_a_time(small_tasks):
    """On NEON a 1x1 group convolution whose inner reduction is a multiple of 4 steps reads
    its input 4 steps at a time into a small buffer (the FMAs broadcast its lanes), which the
    build puts on the stack, not in TVM's workspace pool; on x86, whose FMAs broadcast from
    memory, every block reads the input directly."""
    from tvm.driver import build as tvm_build

    def cache_reads(default):
        return sum("cache_read" in line for line in default.schedule.trace.as_python())

    arm = target.resolve("arm").tvm_target
    host, tasks = small_tasks
    vectorized = 0
    for task in [t for t in tasks if t.kind == "grouped"]:
        mod = task.extracted.dispatched[0]
        neon = defaults.default_schedule(mod, arm)
        # the design space's own cache reads (the weights' layout) are in both
        extra = cache_reads(neon) - cache_reads(defaults.default_schedule(mod, host))
        assert extra in (0, 1), task.name
        if extra:
            assert "T.vectorized(T.int64(4))" in neon.schedule.mod.script(), task.name
            vectorized += 1
            llvm_ir = tvm_build(neon.schedule.mod, target=arm).inspect_source("ll")
            workspaces = re.findall(r"%(\w+) = tail call ptr %\d+\(i32 1, i32 %dev_id", llvm_ir)
            assert not [w for w in workspaces if not w.startswith("param_")], workspaces
    assert vectorized >= 3  # ShuffleNet 0.25x at 64x64: the kernels of 20 input channels a group


def test_neon_vectors_are_one_register_wide_in_defaults_and_in_tuning(small_tasks):
    """On NEON no vectorized loop of a default is a multiple of 4 lanes wider than 4 (a
    20-channel block as five registers, not a <20 x float> LLVM splits and partly keeps on the
    stack), and the design
    space tuning samples from has the same postprocessor after MetaSchedule's vectorization;
    x86 keeps MetaSchedule's space as it is."""
    from tvm import s_tir
    from tvm.s_tir import meta_schedule as ms
    from tvmshuffle import space

    arm = target.resolve("arm").tvm_target
    host, tasks = small_tasks
    wide = re.compile(r"T\.vectorized\(T\.int64\((\d+)\)\)")
    twenty = 0
    for task in [t for t in tasks if t.kind in ("grouped", "depthwise", "conv")]:
        mod = task.extracted.dispatched[0]
        neon = defaults.default_schedule(mod, arm)
        widths = {int(w) for w in wide.findall(neon.schedule.mod.script())}
        # left as they are: the stem's padding (its 3 channels), blocks of 10 or 30 channels
        # (whole loops, not whole vectors)
        assert not [w for w in widths if w > 4 and w % 4 == 0], (task.name, widths)
        twenty += neon.block[-1] == 20
    assert twenty, "ShuffleNet 0.25x has 20-channel blocks"
    names = [type(p).__name__ for p in space.postprocs(arm)]
    at = next(i for i, n in enumerate(names) if "RewriteParallelVectorizeUnroll" in n)
    assert "RegisterVectors" in names[at + 1] and "RewriteReductionBlock" in names[at + 2]
    assert [type(p).__name__ for p in space.postprocs(host)] == [
        type(p).__name__ for p in ms.postproc.Postproc.create("llvm")]
    # a candidate the search makes: the space's own sample, postprocessed
    grouped = next(t for t in tasks if t.kind == "grouped").extracted.dispatched[0]
    context = ms.TuneContext(mod=grouped, target=arm, space_generator=space.space_generator(arm),
                             task_name="t", rand_state=1, num_threads=1).clone()
    sample = context.generate_design_space()[0]
    sch = s_tir.Schedule(grouped)
    sample.trace.apply_to_schedule(sch, remove_postproc=True)
    sch.enter_postproc()
    assert all(p.apply(sch) for p in context.space_generator.postprocs)
    assert not [w for w in wide.findall(sch.mod.script()) if int(w) > 4 and int(w) % 4 == 0]


def test_neon_kernels_that_only_move_data_are_one_vectorized_loop_nest(small_tasks):
    """On NEON a kernel that only moves data (a stride-2 unit's concat + ReLU between two
    reshapes: four loop nests through three buffers as TVM writes it) becomes one loop nest
    vectorized 4 lanes wide, computing what the unscheduled kernel computes; pooling keeps
    TVM's loops, and so does every such kernel on x86."""
    arm = target.resolve("arm").tvm_target
    host, tasks = small_tasks
    rng = np.random.default_rng(0)
    scheduled = 0
    for task in [t for t in tasks if t.kind == "other"]:
        mod = task.extracted.dispatched[0]
        neon = defaults.default_schedule(mod, arm)
        assert defaults.default_schedule(mod, host) is None, task.name
        if "pool" in task.name:
            assert neon is None, task.name
        if neon is None:
            continue
        script = neon.schedule.mod.script()
        assert script.count("T.sblock(") == 2, task.name  # the root and one block
        assert "T.vectorized(T.int64(4))" in script, task.name
        args = [rng.standard_normal([int(d) for d in p.ty.shape]).astype("float32")
                for p in mod["main"].params]
        args[-1][:] = 0
        np.testing.assert_array_equal(_run(neon.schedule.mod, host, args),
                                      _run(mod, host, args), err_msg=task.name)
        scheduled += "concatenate" in task.name
    assert scheduled >= 2, "ShuffleNet 0.25x's stride-2 units' concatenations"


def test_neon_stem_padding_copied_a_row_at_a_time():
    """On NEON an RGB stem's padding copy (3 channels a pixel, at the kernel's root) has its
    pixel and channel loops fused and each row's interior split from the padding columns;
    the schedule computes what the unscheduled kernel computes. x86's default keeps TVM's
    copy."""
    from tvm import te, topi

    from tvmshuffle import copies

    data = te.placeholder((1, 32, 32, 3), name="data")
    weight = te.placeholder((3, 3, 3, 8), name="weight")
    mod = tvm.IRModule({"main": te.create_prim_func(
        [data, weight, topi.nn.conv2d_nhwc(data, weight, 2, 1, 1)])})
    host = target.resolve("host").tvm_target

    def pad_blocks(sch):
        return [sch.get(b).name_hint for b in sch.get_child_blocks(sch.get_sblock("root"))
                if sch.get(b).name_hint.startswith("pad_temp")]

    neon = defaults.default_schedule(mod, target.resolve("arm").tvm_target)
    assert neon is not None and pad_blocks(neon.schedule) != ["pad_temp"]
    x86 = defaults.default_schedule(mod, host)
    assert x86 is not None and pad_blocks(x86.schedule) == ["pad_temp"]
    assert copies.row_copies(x86.schedule, 4)  # the same step on a schedule that runs here
    assert pad_blocks(x86.schedule) != ["pad_temp"]
    rng = np.random.default_rng(0)
    args = [rng.standard_normal([int(d) for d in p.ty.shape]).astype("float32")
            for p in mod["main"].params]
    args[-1][:] = 0
    np.testing.assert_allclose(_run(x86.schedule.mod, host, args), _run(mod, host, args),
                               rtol=1e-5, atol=1e-5)
