"""On NEON, a 1x1 group convolution's bias is its accumulators' first value.

What it does. After BatchNorm folding every ShuffleNet convolution is followed by a per-channel
bias add, which FuseOps puts in the convolution's kernel as an epilogue: the accumulators
start at zero (one ``movi`` a vector) and, once the reduction is done, each gets the bias
added (one ``fadd`` a vector, the bias vectors loaded again for every register block). This
pass, run on a module before TVM legalizes and fuses it, writes each

    y = add(group_conv2d_nhwgc(x, w), b)          (b a constant, one value a channel)

as one convolution whose reduction starts from the bias (TIR's ``T.init``): the same
multiply-adds, no epilogue for the bias. The sums are the same ones, added in another order
(the bias first): equal within fp32 rounding.

Only for cores whose FMA takes no memory operand (NEON, ``space.memory_operands``): on x86
the kernels stay those its shipped database was tuned on. Only the NHWGC group convolutions
``group_axis`` makes (the network's 1x1 convolutions but the first; the others are TVM's own
operators). Left alone: an add of a tensor that is not a per-channel constant (a residual).
"""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.relax.dpl import is_const, is_op, rewrite_call, wildcard

from .channel_shuffle import _static_shape as _shape
from .channel_shuffle import rewrite_functions

KERNEL_BLOCK = "conv2d_nhwgc"  # the block group_axis's kernel computes in

_TEMPLATE = '''
@T.prim_func(private=True, s_tir=True)
def main(data: T.Buffer(({n}, {h}, {w}, {g}, {ci}), "{dtype}"),
         weight: T.Buffer(({g}, {ci}, {co}), "{dtype}"),
         bias: T.Buffer(({bias}), "{dtype}"),
         out: T.Buffer(({n}, {h}, {w}, {g}, {co}), "{dtype}")):
    T.func_attr({{"tirx.noalias": True}})
    for n, h, w, g, o, k in T.grid({n}, {h}, {w}, {g}, {co}, {ci}):
        with T.sblock("{block}"):
            v_n, v_h, v_w, v_g, v_o, v_k = T.axis.remap("SSSSSR", [n, h, w, g, o, k])
            with T.init():
                out[v_n, v_h, v_w, v_g, v_o] = bias[{bias_index}]
            out[v_n, v_h, v_w, v_g, v_o] = (
                out[v_n, v_h, v_w, v_g, v_o]
                + data[v_n, v_h, v_w, v_g, v_k] * weight[v_g, v_k, v_o])
'''


def _i64(value: int) -> str:
    return f"T.int64({value})"


def biased_kernel(data: tuple[int, ...], weight: tuple[int, ...], bias: tuple[int, ...],
                  dtype: str) -> tvm.tirx.PrimFunc:
    """group_axis's 1x1 group convolution with its reduction starting at ``bias`` ((1, 1, 1,
    g, o/g) or (1, 1, 1, 1, 1), broadcast over pixels)."""
    from tvm.script import tirx as T

    n, h, w, g, ci = data
    co = weight[2]
    index = [_i64(0)] * 3 + [("v_g" if bias[3] > 1 else _i64(0)),
                             ("v_o" if bias[4] > 1 else _i64(0))]
    text = _TEMPLATE.format(n=_i64(n), h=_i64(h), w=_i64(w), g=_i64(g), ci=_i64(ci),
                            co=_i64(co), dtype=dtype, block=KERNEL_BLOCK,
                            bias=", ".join(_i64(d) for d in bias),
                            bias_index=", ".join(index))
    return tvm.script.from_source(text, extra_vars={"T": T})


def _is_group_axis_kernel(func) -> bool:
    from tvm import s_tir

    if not isinstance(func, tvm.tirx.PrimFunc) or len(func.params) != 3:
        return False
    try:
        s_tir.Schedule(func).get_sblock(KERNEL_BLOCK)
    except Exception:  # noqa: BLE001 - no such block: another kernel
        return False
    return True


def _rewrite(mod: tvm.IRModule, name: str, builder: relax.BlockBuilder) -> relax.Function:
    conv = is_op("relax.call_tir")(wildcard(), wildcard())
    bias = is_const()
    pattern = is_op("relax.add")(conv, bias) | is_op("relax.add")(bias, conv)
    made: dict = {}

    def rewriter(expr: relax.Call, matches) -> relax.Expr:
        call, constant = matches[conv], matches[bias]
        gvar, args = call.args[0], call.args[1]
        if not (isinstance(gvar, tvm.ir.GlobalVar) and _is_group_axis_kernel(mod[gvar])):
            return expr
        out, data, weight = _shape(call), _shape(args.fields[0]), _shape(args.fields[1])
        values = constant.value.numpy()
        if out is None or data is None or weight is None or expr.ty.dtype != call.ty.dtype:
            return expr
        shaped = values.reshape((1,) * (5 - values.ndim) + values.shape) \
            if values.ndim <= 5 else None
        if (shaped is None or shaped.shape[:3] != (1, 1, 1)
                or shaped.shape[3] not in (1, out[3]) or shaped.shape[4] not in (1, out[4])
                or _shape(expr) != out):
            return expr
        key = (data, weight, shaped.shape, str(call.ty.dtype))
        if key not in made:
            made[key] = builder.add_func(biased_kernel(data, weight, shaped.shape,
                                                       str(call.ty.dtype)),
                                         "group_conv2d_nhwgc_bias")
        return relax.call_tir(made[key], [args.fields[0], args.fields[1],
                                          relax.const(shaped, str(values.dtype))], call.ty)

    return rewrite_call(pattern, rewriter, mod[name])


@tvm.transform.module_pass(opt_level=0, name="tvmshuffle.BiasInit")
def bias_init(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
    """Every group_axis convolution followed by a per-channel constant add: one convolution
    whose accumulators start at the constant."""
    return rewrite_functions(mod, _rewrite)


def _init_reads(func: tvm.tirx.PrimFunc) -> set[int]:
    """Indices of the parameters the anchor block's init reads (a bias)."""
    from tvm import s_tir

    from .shuffle_writes import _loads

    block = s_tir.analysis.find_anchor_sblock(tvm.IRModule({"main": func}))
    init = getattr(block, "init", None) if block is not None else None
    if init is None or type(init).__name__ != "BufferStore":
        return set()
    sources = [load.source for load in _loads(init.value)]
    return {i for i, param in enumerate(func.params)
            if any(param.same_as(source) for source in sources)}


@tvm.transform.module_pass(opt_level=0, name="tvmshuffle.KeepInitLayouts")
def keep_init_layouts(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
    """A bias read by an accumulator's init keeps its layout: MetaSchedule's layout rewrite
    (``RewriteLayout``, prepacked weights) handles buffers read by the multiply-adds only,
    and fails on one read in an init. Its ``layout_free_buffers`` lose such parameters."""
    mod = mod.clone()  # the caller's module stays as it was
    for gvar, func in list(mod.functions.items()):
        free = (func.attrs or {}).get("layout_free_buffers") \
            if isinstance(func, tvm.tirx.PrimFunc) else None
        if free is None:
            continue
        kept = [int(i) for i in free if int(i) not in _init_reads(func)]
        if len(kept) != len(free):
            mod[gvar] = func.with_attr("layout_free_buffers", kept)
    return mod
