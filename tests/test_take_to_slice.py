"""``take`` of a constant index becomes the slice it means; other gathers stay gathers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import tvm
from torch import nn
from tvm import relax
from tvm.script import ir as I
from tvm.script import relax as R

from conftest import relax_ops
from tvmshuffle import frontends, pipeline
from tvmshuffle.passes import take_to_slice


class HalvesByIndex(nn.Module):
    """ShuffleNet v2's channel split as some public code writes it: reshape to (b*c/2, 2, h*w),
    permute, reshape to (2, b, c/2, h, w), take [0] and [1]."""

    def forward(self, x):
        b, c, h, w = x.shape
        y = x.reshape(b * c // 2, 2, h * w).permute(1, 0, 2).reshape(2, -1, c // 2, h, w)
        return torch.cat((y[0] * 2, y[-1]), dim=1)


def test_an_index_taken_from_the_torch_idiom_is_a_slice_and_computes_the_same():
    x = np.random.default_rng(0).standard_normal((1, 8, 4, 4)).astype("float32")
    imported = frontends.load_module(HalvesByIndex().eval(), x, "halves")
    assert relax_ops(imported.mod).count("relax.take") == 2
    rewritten = take_to_slice(imported.mod)
    assert "relax.take" not in relax_ops(rewritten)
    assert relax_ops(rewritten).count("relax.strided_slice") == 2
    tvm.ir.assert_structural_equal(take_to_slice(rewritten), rewritten)  # idempotent
    vm = relax.VirtualMachine(relax.build(rewritten, "llvm"), tvm.cpu())
    got = vm["main"](tvm.runtime.tensor(x)).numpy()
    np.testing.assert_array_equal(got, HalvesByIndex()(torch.from_numpy(x)).numpy())
    assert "relax.take" not in relax_ops(pipeline.optimize(imported.mod))


@pytest.mark.parametrize("index", [np.array([0, 2], "int64"), np.array(3, "int64")],
                         ids=["gather", "out_of_range"])
def test_other_gathers_stay_gathers(index):
    """An index that is not a run of consecutive values, or out of range, is left to take."""

    @I.ir_module
    class Before:
        @R.function
        def main(x: R.Tensor((2, 3), "float32")):
            with R.dataflow():
                y = R.take(x, R.const(index), axis=1)
                R.output(y)
            return y

    tvm.ir.assert_structural_equal(take_to_slice(Before), Before)


def test_a_variable_index_stays_a_gather():
    @I.ir_module
    class Before:
        @R.function
        def main(x: R.Tensor((2, 3), "float32"), i: R.Tensor((), "int64")):
            with R.dataflow():
                y = R.take(x, i, axis=1)
                R.output(y)
            return y

    tvm.ir.assert_structural_equal(take_to_slice(Before), Before)


def test_a_run_of_indices_is_one_slice():
    @I.ir_module
    class Before:
        @R.function
        def main(x: R.Tensor((2, 5), "float32")):
            with R.dataflow():
                y = R.take(x, R.const(np.array([1, 2, 3], "int64")), axis=1)
                R.output(y)
            return y

    after = take_to_slice(Before)
    assert relax_ops(after) == ["relax.strided_slice"]
    x = np.arange(10, dtype="float32").reshape(2, 5)
    vm = relax.VirtualMachine(relax.build(after, "llvm"), tvm.cpu())
    np.testing.assert_array_equal(vm["main"](tvm.runtime.tensor(x)).numpy(), x[:, 1:4])
