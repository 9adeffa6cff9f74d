"""``take`` with a constant index rewritten as the slice it means.

PyTorch's ``y[0]`` (``aten.select``) and ONNX's Gather with a constant scalar index import as
``take(x, const i, axis)``: ShuffleNet v2 code that splits its channels by reshaping to
``(2, b, c/2, h, w)`` and taking ``[0]`` and ``[1]`` gets one gather kernel per half, and TVM
prints a warning about fast-mode gathers with out-of-bounds indices for each (104 lines per
compile of ShuffleNet v2 1.0x). A constant index is a slice: ``strided_slice`` of one element
on the axis, then ``squeeze`` of it for a scalar index, or a slice of the run for a 1-d
index of consecutive ascending values. The slices are index maps that fuse with their
neighbours like any other; the result is the same tensor, element for element.

Left alone: a non-constant index, an index out of range (``take`` decides what that means),
``take`` without an axis (on the flattened tensor), any other 1-d index.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.relax.dpl import is_const, is_op, rewrite_call, wildcard

from . import ledger


def _slice(call: relax.Call, data: relax.Expr, index: np.ndarray) -> relax.Expr | None:
    if call.attrs.axis is None or not isinstance(data.ty, relax.TensorType):
        return None
    shape = data.ty.shape
    if shape is None or not all(isinstance(d, tvm.tirx.IntImm) for d in shape.values):
        return None
    dims = [int(d) for d in shape.values]
    axis = int(call.attrs.axis) % len(dims)
    if index.dtype.kind not in "iu" or index.ndim > 1 or index.size == 0:
        return None
    values = index.reshape(-1).astype(np.int64)
    values = np.where(values < 0, values + dims[axis], values)
    if values.min() < 0 or values.max() >= dims[axis]:
        return None
    if index.ndim == 1 and not np.array_equal(values, np.arange(values[0],
                                                                 values[0] + len(values))):
        return None
    begin, end = int(values[0]), int(values[-1]) + 1
    sliced = relax.op.strided_slice(data, axes=[axis], begin=[begin], end=[end],
                                    assume_inbound=True)  # checked above
    return relax.op.squeeze(sliced, axis=[axis]) if index.ndim == 0 else sliced


def _rewrite(func: relax.Function) -> relax.Function:
    data, index = wildcard(), is_const()
    pattern = is_op("relax.take")(data, index)

    def rewriter(expr: relax.Expr, matches) -> relax.Expr:
        found = _slice(matches[pattern], matches[data], matches[index].value.numpy())
        if found is None:
            return expr
        ledger.note("constant_takes_as_slices")
        return found

    return rewrite_call(pattern, rewriter, func)


@tvm.transform.module_pass(opt_level=0, name="tvmshuffle.TakeToSlice")
def take_to_slice(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
    """Rewrite every ``take`` with a constant in-range index along an axis as a slice."""
    for gv, func in list(mod.functions.items()):
        if isinstance(func, relax.Function):
            mod[gv] = _rewrite(func)
    return mod
