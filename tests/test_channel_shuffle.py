"""The channel shuffle pass: recognition of every idiom, exact rewrites, no kernel left."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import tvm
from torch import nn
from tvm import relax
from tvm.script import ir as I
from tvm.script import relax as R

from conftest import compile_and_run, export_to_relax, run_on_host
from tvmshuffle import frontends, models, pipeline, target
from tvmshuffle.passes import channel_shuffle as cs
from tvmshuffle.passes import sink_channel_shuffle


class _Net(nn.Module):
    """Group conv -> BN -> ReLU -> depthwise -> BN -> group conv, with the shuffle at a chosen
    place and written in a chosen idiom."""

    def __init__(self, idiom: str, where: str, groups: int = 3, channels: int = 12):
        super().__init__()
        self.idiom, self.where, self.g = idiom, where, groups
        self.gconv = nn.Conv2d(channels, channels, 1, groups=groups, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.dw = nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.gconv2 = nn.Conv2d(channels, channels, 1, groups=groups, bias=True)
        for bn in (self.bn1, self.bn2):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 1.5)
            nn.init.uniform_(bn.weight, 0.5, 1.5)
            nn.init.uniform_(bn.bias, -0.5, 0.5)

    def shuffle(self, x):
        n, c, h, w = x.shape
        g = self.g
        if self.idiom == "paper":
            return x.reshape(n, g, c // g, h, w).transpose(1, 2).reshape(n, c, h, w)
        if self.idiom == "inverse":  # the (n, c/g, g) grouping some public code uses
            return x.view(n, c // g, g, h, w).permute(0, 2, 1, 3, 4).contiguous().view(n, c, h, w)
        if self.idiom == "flatten":
            return x.view(n, g, c // g, h, w).transpose(1, 2).contiguous().flatten(1, 2)
        if self.idiom == "functional":
            return nn.functional.channel_shuffle(x, g)
        raise ValueError(self.idiom)

    def forward(self, x):
        y = self.gconv(x)
        if self.where == "after_gconv":
            y = self.shuffle(y)
        y = torch.relu(self.bn1(y))
        if self.where == "after_relu":
            y = self.shuffle(y)
        y = self.bn2(self.dw(y))
        if self.where == "after_dw":
            y = self.shuffle(y)
        return self.gconv2(y)


def _calls(mod: tvm.IRModule) -> list[relax.Call]:
    calls = []
    relax.analysis.post_order_visit(
        mod["main"], lambda e: calls.append(e)
        if isinstance(e, relax.Call) and isinstance(e.op, tvm.ir.Op) else None)
    return calls


def _ops(mod: tvm.IRModule) -> list[str]:
    return [call.op.name for call in _calls(mod)]


def _assert_fused(ops: list[str], layout: str) -> None:
    """No shuffle chain left: no reshape, and no transpose but the two NHWC<->NCHW ones that
    ConvertLayout puts at the network's input and output."""
    assert "relax.reshape" not in ops and "relax.nn.batch_norm" not in ops
    assert ops.count("relax.permute_dims") == (2 if layout == "NHWC" else 0), ops
    assert ops.count("relax.call_tir") == 1


@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
@pytest.mark.parametrize("idiom", ["paper", "inverse", "flatten", "functional"])
@pytest.mark.parametrize("where", ["after_gconv", "after_relu", "after_dw"])
def test_every_idiom_and_position_is_fused_exactly(idiom, where, layout):
    """Each shuffle idiom, wherever it sits, in either conv layout, is fused into the
    convolution after it and gives the same numbers."""
    torch.manual_seed(0)
    net = _Net(idiom, where)
    mod = export_to_relax(net, (1, 12, 8, 8))
    assert "relax.permute_dims" in _ops(mod)
    fused = pipeline.optimize(mod, layout=layout)
    ops = _ops(fused)
    _assert_fused(ops, layout)
    if layout == "NHWC":
        convs = [c for c in _calls(fused) if c.op.name == "relax.nn.conv2d"]
        assert convs and all(str(c.attrs.data_layout) == "NHWC" for c in convs)
    x = frontends.fixed_input((1, 12, 8, 8))
    with torch.no_grad():
        expected = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(run_on_host(fused, x), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
def test_onnx_form_is_fused(tmp_path, layout):
    """ONNX Reshape(const 5-D) -> Transpose(0,2,1,3,4) -> Reshape imports and fuses too."""
    torch.manual_seed(1)
    net = _Net("paper", "after_relu").eval()
    path = frontends.export_onnx(net, (1, 12, 8, 8), tmp_path / "net.onnx")
    imported = frontends.load(frontends.ModelSpec(str(path)))
    assert "relax.permute_dims" in _ops(imported.mod)
    fused = pipeline.optimize(imported.mod, layout=layout)
    _assert_fused(_ops(fused), layout)
    x = frontends.fixed_input((1, 12, 8, 8))
    np.testing.assert_allclose(run_on_host(fused, x), imported.reference(x)[0], atol=1e-5, rtol=0)


def test_permutation_is_the_papers_shuffle():
    """The recognised permutation and its TIR index expression both give the paper's shuffle."""
    g, n = 3, 4
    permutation = cs.ChannelPermutation((g, n), (1, 0))
    x = torch.arange(g * n, dtype=torch.float32).reshape(1, g * n, 1, 1)
    expected = models.channel_shuffle(x, g).flatten().numpy().astype(int)
    np.testing.assert_array_equal(permutation.source(), expected)
    expr = permutation.source_index(tvm.tirx.Var("c", "int64"))
    assert [_evaluate(expr, o) for o in range(g * n)] == list(expected)


def _evaluate(expr, value: int) -> int:
    """Value of an index expression over one variable (Var, IntImm, +, *, //, %)."""
    name = type(expr).__name__
    if name == "Var":
        return value
    if name == "IntImm":
        return int(expr.value)
    a, b = _evaluate(expr.a, value), _evaluate(expr.b, value)
    operations = {"FloorDiv": lambda: a // b, "FloorMod": lambda: a % b,
                  "Add": lambda: a + b, "Mul": lambda: a * b}
    return operations[name]()


@I.ir_module
class SinkBefore:
    @R.function
    def main(x: R.Tensor((1, 6, 4, 4), "float32")):
        with R.dataflow():
            a = R.reshape(x, R.shape([1, 2, 3, 4, 4]))
            b = R.permute_dims(a, axes=[0, 2, 1, 3, 4])
            c = R.reshape(b, R.shape([1, 6, 4, 4]))
            d = R.nn.relu(c)
            R.output(d)
        return d


@I.ir_module
class SinkExpected:
    @R.function
    def main(x: R.Tensor((1, 6, 4, 4), "float32")):
        with R.dataflow():
            d = R.nn.relu(x)
            a = R.reshape(d, R.shape([1, 2, 3, 4, 4]))
            b = R.permute_dims(a, axes=[0, 2, 1, 3, 4])
            c = R.reshape(b, R.shape([1, 6, 4, 4]))
            R.output(c)
        return c


def test_sink_moves_shuffle_past_relu():
    """A shuffle followed by ReLU becomes ReLU followed by the shuffle."""
    after = relax.transform.DeadCodeElimination()(sink_channel_shuffle(SinkBefore))
    tvm.ir.assert_structural_equal(after, SinkExpected)


@I.ir_module
class SpatialTranspose:
    @R.function
    def main(x: R.Tensor((1, 6, 4, 4), "float32"), w: R.Tensor((6, 1, 3, 3), "float32")):
        with R.dataflow():
            a = R.reshape(x, R.shape([1, 2, 3, 4, 4]))
            b = R.permute_dims(a, axes=[0, 1, 2, 4, 3])  # swaps H and W: not a channel shuffle
            c = R.reshape(b, R.shape([1, 6, 4, 4]))
            d = R.nn.relu(c)
            e = R.nn.conv2d(d, w, padding=[1, 1, 1, 1], groups=6)
            R.output(e)
        return e


@I.ir_module
class SplitsHeight:
    @R.function
    def main(x: R.Tensor((1, 6, 4, 4), "float32"), w: R.Tensor((6, 1, 3, 3), "float32")):
        with R.dataflow():
            a = R.reshape(x, R.shape([1, 6, 2, 2, 4]))  # splits H, not C
            b = R.permute_dims(a, axes=[0, 1, 3, 2, 4])
            c = R.reshape(b, R.shape([1, 6, 4, 4]))
            e = R.nn.conv2d(c, w, padding=[1, 1, 1, 1], groups=6)
            R.output(e)
        return e


@I.ir_module
class NotMergedBack:
    @R.function
    def main(x: R.Tensor((1, 6, 4, 4), "float32")):
        with R.dataflow():
            a = R.reshape(x, R.shape([1, 2, 3, 4, 4]))
            b = R.permute_dims(a, axes=[0, 2, 1, 3, 4])
            c = R.reshape(b, R.shape([1, 3, 8, 4]))  # a different tensor shape
            d = R.nn.relu(c)
            R.output(d)
        return d


@pytest.mark.parametrize("before", [SpatialTranspose, SplitsHeight, NotMergedBack])
def test_look_alikes_are_left_untouched(before):
    """Reshape-transpose chains that are not channel permutations do not change."""
    from tvmshuffle.passes import fuse_channel_shuffle

    expected = before
    tvm.ir.assert_structural_equal(fuse_channel_shuffle(sink_channel_shuffle(before)), expected)


def test_pass_is_idempotent():
    """Running the graph passes on their own output changes nothing."""
    imported = frontends.load(frontends.ModelSpec("shufflenet_v1_g3_0.25x", (64, 64)))
    once = pipeline.optimize(imported.mod)
    tvm.ir.assert_structural_equal(pipeline.optimize(once), once)


@pytest.mark.parametrize("layout", ["NHWGC", "NHWC", "NCHW"])
def test_shufflenet_1x_g3_has_no_data_movement_kernel(layout):
    """TVM's default pipeline leaves six shuffle kernels in ShuffleNet 1x g3; the pass none.
    (In NHWGC the unfused shuffles also absorb the 5-d -> 4-d view of the group convolution
    before them, which ``data_movement_kernels``, matching input and output shapes, does not
    count: the six are checked in the other layouts.)"""
    imported = frontends.load(frontends.ModelSpec("shufflenet_v1_g3_1.0x"))
    tgt = target.resolve("host").tvm_target
    if layout != "NHWGC":
        plain = pipeline.lower(pipeline.optimize(imported.mod, False, layout), tgt)
        assert len(pipeline.data_movement_kernels(plain)) == 6
    fused = pipeline.lower(pipeline.optimize(imported.mod, True, layout), tgt)
    assert pipeline.data_movement_kernels(fused) == []
    assert sum("shuffled_conv2d" in k for k in pipeline.kernel_names(fused)) == 6


def test_copy_kernels_are_those_that_do_no_arithmetic():
    """Concatenation, gather (take), strided slice, transpose and padding store only what they
    load: counted, with their calls; ReLU, addition and pooling compute: not counted."""

    @I.ir_module
    class Ops:
        @R.function
        def main(x: R.Tensor((1, 4, 8, 8), "float32"), i: R.Tensor((2,), "int64")):
            with R.dataflow():
                a = R.concat((x, x), axis=1)
                b = R.take(a, i, axis=1)
                c = R.strided_slice(b, axes=[1], begin=[0], end=[2], strides=[2])
                d = R.permute_dims(c, [0, 2, 3, 1])
                e = R.nn.pad(d, (0, 0, 1, 1, 1, 1, 0, 0))
                f = R.nn.relu(e)
                g = R.add(f, f)
                h = R.nn.max_pool2d(R.permute_dims(g, [0, 3, 1, 2]))
                j = R.permute_dims(h, [0, 2, 3, 1])
                R.output(j)
            return j

    copies = pipeline.copy_kernels(relax.transform.LegalizeOps()(Ops))
    kinds = sorted(name.rstrip("0123456789") for name in copies)
    assert kinds == ["concatenate", "pad", "strided_slice", "take", "transpose", "transpose",
                     "transpose"], copies
    assert set(copies.values()) == {1}


def test_shufflenet_copy_kernels_are_the_layout_edges_with_the_pass():
    """With the pass, ShuffleNet v1 keeps two kernels that do no arithmetic (the NCHW -> NHWC
    layout change of the input and back before the classifier), one call each, and the pass
    counts the 16 shuffles it fused; without it, every channel shuffle is one more kernel,
    called once per unit, and nothing is counted as fused."""
    from tvmshuffle.passes import ledger

    imported = frontends.load(frontends.ModelSpec("shufflenet_v1_g3_0.25x", (64, 64)))
    tgt = target.resolve("host").tvm_target
    with tgt:
        with ledger.recording() as on:
            fused = pipeline.lower(pipeline.optimize(imported.mod), tgt)
        with ledger.recording() as off:
            plain = pipeline.lower(pipeline.optimize(imported.mod, False), tgt)
    # what the manifest's channel_passes says: each unit's shuffle fused, none without the pass
    assert on["shuffles_fused_into_convolutions"] == 16 and not any(off.values()), (on, off)
    edges = pipeline.copy_kernels(fused)
    assert len(edges) == 2 and all("transpose" in name for name in edges), edges
    assert sum(edges.values()) == 2
    unfused = pipeline.copy_kernels(plain)
    assert len(unfused) == 2 + 6 and sum(unfused.values()) == 2 + 16, unfused  # 16 units


def test_fused_kernels_are_tuning_tasks():
    """MetaSchedule's task extraction sees every fused shuffle+conv kernel as a task."""
    from tvm.s_tir import meta_schedule as ms

    imported = frontends.load(frontends.ModelSpec("shufflenet_v1_g3_0.25x", (64, 64)))
    tgt = target.resolve("host").tvm_target
    with tgt:
        mod = relax.pipeline.zero_pipeline()(pipeline.optimize(imported.mod))
    tasks = ms.relax_integration.extract_tasks(mod, tgt)
    names = [task.task_name for task in tasks]
    assert sum("shuffled_conv2d" in name for name in names) == 6, names


@pytest.mark.slow
@pytest.mark.parametrize("path,groups", [("torch", 3), ("torch", 8), ("onnx", 2), ("onnx", 4)])
def test_shufflenet_numerics_with_the_pass(groups, path, tmp_path):
    """ShuffleNet v1 for g = 2, 3, 4, 8 with the pass matches its reference within 1e-5."""
    name, size = f"shufflenet_v1_g{groups}_1.0x", (64, 64)
    spec = frontends.ModelSpec(name, size)
    if path == "onnx":
        model_path = frontends.export_onnx(models.build(name), (1, 3, *size), tmp_path / "m.onnx")
        spec = frontends.ModelSpec(str(model_path))
    manifest, result = compile_and_run(spec, tmp_path / "out")
    assert manifest["fuse_shuffle"] and manifest["data_movement_kernels"] == []
    assert result.max_abs_err < 1e-5
