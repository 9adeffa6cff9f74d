"""The instruction counter's reading side: A64 encodings classed, functions named as kernels,
counts attributed through the emulator's mapping (the counted runs are in test_deploy.py)."""

from __future__ import annotations

import pytest
from tvmshuffle import insncount

# encodings as GNU as (binutils-aarch64-linux-gnu) assembles them
ENCODINGS = [
    (0x4E22CC20, "fmla v0.4s, v1.4s, v2.4s", "vector_fma", 4),
    (0x0E22CC20, "fmla v0.2s, v1.2s, v2.2s", "vector_fma", 2),
    (0x4E62CC20, "fmla v0.2d, v1.2d, v2.2d", "vector_fma", 2),
    (0x4EA2CC20, "fmls v0.4s, v1.4s, v2.4s", "vector_fma", 4),
    (0x4FA21820, "fmla v0.4s, v1.4s, v2.s[3]", "vector_fma", 4),
    (0x4FA25020, "fmls v0.4s, v1.4s, v2.s[1]", "vector_fma", 4),
    (0x0F821020, "fmla v0.2s, v1.2s, v2.s[0]", "vector_fma", 2),
    (0x4E22D420, "fadd v0.4s, v1.4s, v2.4s", "simd_fp_other", 0),
    (0x4E22F420, "fmax v0.4s, v1.4s, v2.4s", "simd_fp_other", 0),
    (0x1F020C20, "fmadd s0, s1, s2, s3", "simd_fp_other", 0),
    (0x4E040420, "dup v0.4s, v1.s[0]", "simd_fp_other", 0),
    (0x3DC00420, "ldr q0, [x1, #16]", "loads", 0),
    (0x3D800420, "str q0, [x1, #16]", "stores", 0),
    (0xAD400440, "ldp q0, q1, [x2]", "loads", 0),
    (0xA9BF07E0, "stp x0, x1, [sp, #-16]!", "stores", 0),
    (0x4C407800, "ld1 {v0.4s}, [x0]", "loads", 0),
    (0x4C007800, "st1 {v0.4s}, [x0]", "stores", 0),
    (0x4D40C800, "ld1r {v0.4s}, [x0]", "loads", 0),
    (0xF8627820, "ldr x0, [x1, x2, lsl #3]", "loads", 0),
    (0x39000020, "strb w0, [x1]", "stores", 0),
    (0xBD400020, "ldr s0, [x1]", "loads", 0),
    (0x58000040, "ldr x0, <literal>", "loads", 0),
    (0x14000000, "b", "branches", 0),
    (0x94000000, "bl", "branches", 0),
    (0xB4000000, "cbz x0", "branches", 0),
    (0xD65F03C0, "ret", "branches", 0),
    (0x8B020020, "add x0, x1, x2", "scalar_other", 0),
    (0x9B020C20, "madd x0, x1, x2, x3", "scalar_other", 0),
    (0xD28000A0, "mov x0, #5", "scalar_other", 0),
]


@pytest.mark.parametrize("word, text, kind, lanes", ENCODINGS, ids=[e[1] for e in ENCODINGS])
def test_a64_instructions_are_classed_by_encoding(word, text, kind, lanes):
    assert insncount.classify(word) == (kind, lanes), text


@pytest.mark.parametrize("symbol, kernel", [
    ("__tvm_ffi_fused_conv2d_add_relu1_prepacked", "fused_conv2d_add_relu1"),
    ("fused_conv2d_add_relu1_prepacked_compute_", "fused_conv2d_add_relu1"),
    ("fused_matmul_add181_compute_", "fused_matmul_add181"),
    ("__tvm_ffi_transpose1", "transpose1"),
    ("__extendhfsf2", "__extendhfsf2"),
])
def test_a_kernels_functions_are_named_as_the_kernel(symbol, kernel):
    assert insncount.kernel_of(symbol) == kernel


def test_a_kernel_sums_its_classes_and_lanes():
    kernel = insncount.KernelCount("k", macs=400)
    kernel.add(0x4E22CC20, 100)  # fmla .4s x 100: 400 lanes
    kernel.add(0x3DC00420, 50)  # ldr q x 50
    kernel.add(0x14000000, 10)  # b x 10
    assert (kernel.instructions, kernel.vector_fma, kernel.loads, kernel.branches) == \
        (160, 100, 50, 10)
    assert kernel.lane_utilisation == 1.0 and kernel.per_mac == 0.4
    kernel.add(0x0E22CC20, 100)  # fmla .2s x 100: 200 more lanes, half of each used
    assert kernel.lane_utilisation == pytest.approx(400 / 600)
    assert insncount.KernelCount("copy").lane_utilisation is None
