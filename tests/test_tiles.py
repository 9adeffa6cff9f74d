"""Tile neighbours of a schedule (`tune --refine`): which register blocks and reduction splits
are listed, for which register files."""

from __future__ import annotations

import math

import pytest
import tvm
from tvmshuffle import tiles

# the best schedule MetaSchedule found for ShuffleNet 1x's stage-2 1x1 group convolution
# (loops n, h, w, g, o, k: 1, 28, 28, 3, 80, 20), as stored in schedules/host-znver5
STAGE2 = [[1, 1, 1, 1], [28, 1, 1, 1], [1, 2, 2, 7], [1, 3, 1, 1], [1, 10, 1, 8], [10, 2]]
AVX512 = tiles.Registers(32, 16)


def test_register_blocks_fit_the_register_file_and_keep_the_loops():
    found = tiles.register_blocks(STAGE2, AVX512)
    assert found, "the stage-2 group convolution has register blocks to try"
    vectors = []
    for decisions in found:
        assert [math.prod(d) for d in decisions] == [math.prod(d) for d in STAGE2]
        assert decisions[-1] == STAGE2[-1], "the reduction is left as it was"
        spatial = decisions[:-1]
        assert all(len(d) == 4 and d[2] == 1 for d in spatial)
        inner = [d[3] for d in spatial]
        assert inner[-1] % 8 == 0 or inner[-1] == 80, "whole half vectors of channels"
        count = math.prod(inner[:-1]) * math.ceil(inner[-1] / 16)
        assert 2 <= count <= 28
        vectors.append(count)
    assert tuple(d[3] for d in STAGE2[:-1]) not in {tuple(d[3] for d in c[:-1]) for c in found}
    # nearest half the register file first
    distance = [abs(math.log2(v / 16)) for v in vectors]
    assert distance == sorted(distance)
    # the parallel level is kept where it still divides the loop: h's 28 outer with h3 == 1
    assert all(c[1][0] == 28 for c in found if c[1][3] == 1)
    assert [1, 5, 1, 16] in [c[4] for c in found], "a block of whole 16-lane vectors"


def test_a_smaller_register_file_gets_smaller_blocks():
    neon = tiles.register_blocks(STAGE2, tiles.Registers(32, 4))
    avx2 = tiles.register_blocks(STAGE2, tiles.Registers(16, 8))
    assert neon and avx2
    for found, regs in ((neon, tiles.Registers(32, 4)), (avx2, tiles.Registers(16, 8))):
        for decisions in found:
            inner = [d[3] for d in decisions[:-1]]
            assert math.prod(inner[:-1]) * math.ceil(inner[-1] / regs.lanes) <= regs.count - 4


def test_reduction_splits():
    found = tiles.reduction_splits(STAGE2)
    assert sorted(d[-1][1] for d in found) == [1, 4, 5, 10, 20], "every divisor of 20 but 2"
    assert all(d[:-1] == STAGE2[:-1] and math.prod(d[-1]) == 20 for d in found)
    # a 3x3 convolution over 256 channels: inner factors stop at 64
    conv = [[1, 1, 1, 1], [1, 13, 1, 1], [13, 1, 1, 1], [1, 6, 1, 64], [3, 1], [1, 3], [64, 4]]
    inner = {d[-1][1] for d in tiles.reduction_splits(conv)}
    assert max(inner) == 64 and 128 not in inner


@pytest.mark.parametrize("decisions", [
    [],  # an untuned kernel kept as its best: no tiles
    [[2, 2], [4, 4]],  # no spatial loop of four levels
    [[1, 1, 1, 1], [4, 4], [1, 2, 1, 1]],  # a spatial loop after a reduction
    [[1, 1, 1, 1], [2, 2, 2]],
])
def test_other_tilings_get_no_neighbours(decisions):
    assert tiles.split_levels(decisions) is None
    assert tiles.register_blocks(decisions, AVX512) == []
    assert tiles.reduction_splits(decisions) == []


@pytest.mark.parametrize("spec, regs", [
    ({"kind": "llvm", "mtriple": "x86_64-unknown-linux-gnu", "mcpu": "znver4"}, (32, 16)),
    ({"kind": "llvm", "mtriple": "x86_64-unknown-linux-gnu", "mcpu": "haswell"}, (16, 8)),
    ({"kind": "llvm", "mtriple": "x86_64-unknown-linux-gnu"}, (16, 4)),
    ({"kind": "llvm", "mtriple": "aarch64-linux-android", "mcpu": "kryo"}, (32, 4)),
    ({"kind": "llvm", "mtriple": "armv7a-linux-gnueabihf"}, (16, 4)),
])
def test_register_files_of_targets(spec, regs):
    assert tiles.registers(tvm.target.Target(spec)) == tiles.Registers(*regs)
