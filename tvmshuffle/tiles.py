"""Register-tile neighbours of a tuned schedule, for `tvmshuffle tune --refine`.

MetaSchedule's CPU rule tiles a convolution or matmul block "SSRSRS": each spatial loop split
into four levels (S0 S1 S2 S3), each reduction loop into two (R0 R1), ordered
S0 S1 R0 S2 R1 S3. The S3 levels together are the block of outputs kept in vector registers while
the innermost reduction runs; the last spatial loop is vectorized. The evolutionary search
samples these splits at random and, in the budgets a user gives it, often stops at a register
block of half a vector or of a few accumulators (on ShuffleNet 1x's 1x1 group convolutions on
Zen 4: 8 output channels where 16 fill an AVX-512 register; see benchmarks/RESULTS.md,
session 11). This module lists, around a schedule's tile decisions, the register blocks worth
timing: every combination of divisors for the S3 levels whose accumulators fill 2 to all but
four of the target's vector registers (the last spatial loop a whole number of half vectors, or
its whole extent), the rest of each loop in S1 (S0, the parallel level, kept when it still
divides), S2 at 1; then, for the reduction, every inner factor (R1) up to 64. Pure: decisions
in, decisions out; `tune.refine` times them.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

SPATIAL_LEVELS = 4  # S0 S1 S2 S3
REDUCTION_LEVELS = 2  # R0 R1
MAX_INNER_REDUCTION = 64  # MetaSchedule's max_innermost_factor for CPU tiling


@dataclass(frozen=True)
class Registers:
    """The vector register file a register block has to fit."""

    count: int  # architectural vector registers
    lanes: int  # fp32 lanes in one


def registers(target) -> Registers:
    """Of a TVM LLVM target: AVX-512 32 x 16, AVX2 16 x 8, AArch64 NEON 32 x 4, else 16 x 4."""
    import tvm

    triple = str(target.attrs.get("mtriple", ""))
    if triple.startswith(("aarch64", "arm64")):
        return Registers(32, 4)
    if triple.startswith("arm"):
        return Registers(16, 4)
    has = tvm.target.codegen.target_has_features
    if has("avx512f", target):
        return Registers(32, 16)
    if has("avx2", target) or has("avx", target):
        return Registers(16, 8)
    return Registers(16, 4)


def split_levels(decisions: list[list[int]]) -> int | None:
    """How many spatial loops lead the tile decisions when they are SSRSRS's (spatial loops of
    four levels, then reduction loops of two), else None."""
    lengths = [len(d) for d in decisions]
    spatial = 0
    while spatial < len(lengths) and lengths[spatial] == SPATIAL_LEVELS:
        spatial += 1
    if spatial == 0 or any(n != REDUCTION_LEVELS for n in lengths[spatial:]):
        return None
    return spatial


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _spatial(decision: list[int], inner: int) -> list[int]:
    extent = math.prod(decision)
    outer = decision[0] if (extent // inner) % decision[0] == 0 else 1
    return [outer, extent // (inner * outer), 1, inner]


def register_blocks(decisions: list[list[int]], regs: Registers) -> list[list[list[int]]]:
    """Decisions with every register block (S3 levels) that fits ``regs``, the reduction as in
    ``decisions``; those nearest half the register file first (a block that leaves registers
    for the inputs), the start's own block excluded."""
    spatial = split_levels(decisions)
    if spatial is None:
        return []
    extents = [math.prod(d) for d in decisions[:spatial]]
    half = max(1, regs.lanes // 2)
    choices = []
    for i, extent in enumerate(extents):
        if i == spatial - 1:  # the vectorized loop
            choices.append([d for d in _divisors(extent) if d % half == 0 or d == extent])
        else:
            choices.append(_divisors(extent))
    found = []
    start = tuple(d[3] for d in decisions[:spatial])
    for inner in itertools.product(*choices):
        if inner == start:
            continue
        vectors = math.prod(inner[:-1]) * math.ceil(inner[-1] / regs.lanes)
        if not 2 <= vectors <= regs.count - 4:
            continue
        found.append((abs(math.log2(vectors / (regs.count / 2))),
                      [_spatial(d, s3) for d, s3 in zip(decisions[:spatial], inner)]
                      + [list(d) for d in decisions[spatial:]]))
    found.sort(key=lambda pair: pair[0])
    return [candidate for _, candidate in found]


def reduction_splits(decisions: list[list[int]]) -> list[list[list[int]]]:
    """Decisions with every inner factor (R1, up to 64) of each reduction loop, the spatial
    loops as in ``decisions``; the start's own excluded."""
    spatial = split_levels(decisions)
    if spatial is None:
        return []
    extents = [math.prod(d) for d in decisions[spatial:]]
    choices = [[d for d in _divisors(e) if d <= MAX_INNER_REDUCTION] for e in extents]
    start = tuple(d[1] for d in decisions[spatial:])
    return [[list(d) for d in decisions[:spatial]] + [[e // r, r] for e, r in zip(extents, inner)]
            for inner in itertools.product(*choices) if inner != start]
