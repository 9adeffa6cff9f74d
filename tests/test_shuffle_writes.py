"""NEON: a fused channel shuffle written by the convolution before it (passes/shuffle_writes)."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import relax

from tvmshuffle import defaults, frontends, pipeline, target
from tvmshuffle.passes import ledger
from tvmshuffle.passes import shuffle_writes as sw

SMALL = frontends.ModelSpec("shufflenet_v1_g3_0.25x", (64, 64))


@pytest.fixture(scope="module")
def imported():
    return frontends.load(SMALL)


def _gathers(mod: tvm.IRModule) -> dict[str, np.ndarray]:
    """Every kernel with a padding copy, and the channel each of its channels reads."""
    found = {}
    for gvar, func in mod.functions.items():
        if isinstance(func, tvm.tirx.PrimFunc):
            source = sw.gather_source(func)
            if source is not None:
                found[gvar.name_hint] = source[1]
    return found


def test_group_shuffles_recognised_and_nothing_else():
    assert sw.shuffle_groups(sw.group_shuffle(3, 20)) == 3
    assert sw.shuffle_groups(sw.group_shuffle(2, 58)) == 2
    assert sw.shuffle_groups(np.arange(60)) is None  # no shuffle
    reversed_ = np.arange(60)[::-1].copy()
    assert sw.shuffle_groups(reversed_) is None  # a permutation, not a group shuffle
    inverse = np.argsort(sw.group_shuffle(3, 20))  # the inverse shuffle is a 20-group one
    assert sw.shuffle_groups(inverse) == 20


def test_neon_producers_write_every_shuffle_x86_keeps_the_gather(imported):
    """For NEON every ShuffleNet v1 shuffle (15 after a group convolution, the first of stage
    2 after a dense one) is written by its producer and its depthwise reader copies plainly;
    x86 keeps the gather in the depthwise convolution's padding copy."""
    optimized = pipeline.optimize(imported.mod)
    with ledger.recording() as arm_counts:
        arm = pipeline.fuse(optimized, target.resolve("arm").tvm_target)
    with ledger.recording() as host_counts:
        host = pipeline.fuse(optimized, target.resolve("host").tvm_target)
    assert arm_counts["shuffles_written_by_producers"] == 16, arm_counts
    assert not host_counts["shuffles_written_by_producers"], host_counts
    arm_gathers, host_gathers = _gathers(arm), _gathers(host)
    assert arm_gathers and all(np.array_equal(src, np.arange(len(src)))
                               for src in arm_gathers.values()), arm_gathers
    assert sum(sw.shuffle_groups(src) == 3 for src in host_gathers.values()) >= 5, host_gathers
    producers = [f for f in arm.functions.values()
                 if isinstance(f, tvm.tirx.PrimFunc) and sw.ATTR in (f.attrs or {})]
    ranks = sorted(int(f.attrs[sw.ATTR][1]) for f in producers)
    assert ranks[0] == 4 and ranks[-1] == 5, ranks  # the dense producer and group ones
    # idempotent: nothing left to rewrite
    tvm.ir.assert_structural_equal(sw.shuffle_writes(arm), arm)


def test_written_shuffle_computes_the_same_network(imported):
    """The rewrite is exact: the host build of the module with its shuffles written by the
    producers gives the network's output (the reference), and so does the module without."""
    tgt = target.resolve("host").tvm_target
    fused = pipeline.fuse(pipeline.optimize(imported.mod), tgt)
    written = sw.shuffle_writes(fused)
    assert not _gathers(written) or all(np.array_equal(src, np.arange(len(src)))
                                        for src in _gathers(written).values())
    x = np.random.default_rng(0).standard_normal(imported.input_shape).astype("float32")
    outputs = []
    for mod in (fused, written):
        exe = tvm.compile(pipeline.lower_fused(mod, tgt, None), target=tgt, relax_pipeline=None)
        out = relax.VirtualMachine(exe, tvm.cpu())["main"](tvm.runtime.tensor(x))
        outputs.append(out.numpy() if hasattr(out, "numpy") else out[0].numpy())
    expected = imported.reference(x)[0]
    assert np.abs(outputs[0] - expected).max() < 1e-4
    assert np.abs(outputs[1] - expected).max() < 1e-4


def test_default_schedule_of_a_writing_producer_keeps_its_register_block(imported):
    """A producer that writes shuffled gets the default of the kernel it was made from (the
    epilogue inside the register block), not a schedule with the epilogue left outside."""
    tgt = target.resolve("arm").tvm_target
    arm = pipeline.fuse(pipeline.optimize(imported.mod), tgt)
    producer = next(f for f in arm.functions.values()
                    if isinstance(f, tvm.tirx.PrimFunc) and sw.ATTR in (f.attrs or {})
                    and int(f.attrs[sw.ATTR][1]) == 5)
    base = sw.unshuffled(producer)
    assert base is not None and sw.ATTR not in (base.attrs or {})
    written = defaults.default_schedule(tvm.IRModule({"main": producer}), tgt)
    plain = defaults.default_schedule(tvm.IRModule({"main": base}), tgt)
    assert written is not None and plain is not None and written.block == plain.block
    # as many loop nests at the root (one): the epilogue runs inside the register block's loops
    def nests(default) -> int:
        return sum(line.startswith("    for ")
                   for line in default.schedule.mod["main"].script().splitlines())

    assert nests(written) == nests(plain) == 1
