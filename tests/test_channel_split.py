"""The channel split pass: ShuffleNet v2's concat -> shuffle -> split, in every idiom, rebuilt
from its sources exactly; look-alikes untouched; what is left of the data movement counted."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import tvm
from torch import nn
from tvm import relax
from tvm.script import ir as I
from tvm.script import relax as R

from conftest import compile_and_run, export_to_relax, relax_ops, run_on_host
from tvmshuffle import frontends, models, pipeline, target
from tvmshuffle.passes import fold_channel_split, take_to_slice

CHANNELS = 12
MOVING = ("relax.reshape", "relax.permute_dims", "relax.split", "relax.squeeze")


def _shuffle(x: torch.Tensor, idiom: str) -> torch.Tensor:
    n, c, h, w = x.shape
    if idiom == "paper":
        return x.reshape(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)
    if idiom == "functional":
        return nn.functional.channel_shuffle(x, 2)
    if idiom == "module":
        return nn.ChannelShuffle(2)(x)
    assert idiom == "none"  # the split below shuffles (Megvii's form)
    return x


def _split(x: torch.Tensor, idiom: str) -> tuple[torch.Tensor, torch.Tensor]:
    n, c, h, w = x.shape
    if idiom == "chunk":
        return x.chunk(2, dim=1)
    if idiom == "split":
        return torch.split(x, c // 2, dim=1)
    if idiom == "slice":
        return x[:, :c // 2], x[:, c // 2:]
    assert idiom == "megvii"  # shuffle and split in one: reshape, permute, reshape, [0], [1]
    x = x.reshape(n * c // 2, 2, h * w).permute(1, 0, 2).reshape(2, -1, c // 2, h, w)
    return x[0], x[1]


class _V2Units(nn.Module):
    """A stem, a stride-2-like unit (two branches from one input), two stride-1 units, and a
    head that reads the last unit both with a dense 1x1 convolution and with a depthwise one."""

    def __init__(self, shuffle: str, split: str):
        super().__init__()
        self.shuffle, self.split = shuffle, split
        half = CHANNELS // 2
        self.stem = nn.Conv2d(4, 8, 1)
        self.left = nn.Conv2d(8, half, 1)
        self.right = nn.Conv2d(8, half, 3, padding=1)
        self.branches = nn.ModuleList(
            nn.Sequential(nn.Conv2d(half, half, 1), nn.ReLU(),
                          nn.Conv2d(half, half, 3, padding=1, groups=half),
                          nn.Conv2d(half, half, 1), nn.ReLU()) for _ in range(2))
        self.head = nn.Conv2d(CHANNELS, CHANNELS, 1)
        self.dw = nn.Conv2d(CHANNELS, CHANNELS, 3, padding=1, groups=CHANNELS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = _shuffle(torch.cat([self.left(x), self.right(x)], dim=1), self.shuffle)
        for branch in self.branches:
            left, right = _split(x, self.split)
            x = _shuffle(torch.cat([left, branch(right)], dim=1), self.shuffle)
        return self.head(x) + self.dw(x)


IDIOMS = [("paper", "chunk"), ("functional", "split"), ("module", "slice"), ("none", "megvii"),
          ("paper", "megvii")]
SHAPE = (1, 4, 6, 6)


def _import(model: nn.Module, path: str, tmp_path) -> tvm.IRModule:
    if path == "torch":
        return export_to_relax(model, SHAPE)
    path = frontends.export_onnx(model, SHAPE, tmp_path / "m.onnx")
    return frontends.load(frontends.ModelSpec(str(path))).mod


@pytest.mark.parametrize("path", ["torch", "onnx"])
@pytest.mark.parametrize("shuffle,split", IDIOMS)
def test_every_idiom_is_rebuilt_from_its_sources_exactly(shuffle, split, path, tmp_path):
    """No reshape, transpose, split or squeeze is left of any idiom from either importer; what
    remains is channel ranges of the branches (strided_slice, concat) and one gather for the
    depthwise reader; the result is PyTorch's."""
    torch.manual_seed(0)
    model = _V2Units(shuffle, split).eval()
    mod = _import(model, path, tmp_path)
    folded = fold_channel_split(take_to_slice(relax.transform.FoldConstant()(mod)))
    # the biases' reshapes are constants: fold them as the pipeline does
    ops = relax_ops(relax.transform.FoldConstant()(folded))
    assert not [op for op in ops if op in MOVING], ops
    # the depthwise conv reads the logical order: a gather, unless the last unit does not
    # shuffle (Megvii's form), when its sources in order are that order
    assert ops.count("relax.take") == (0 if shuffle == "none" else 1), ops
    x = np.random.default_rng(0).standard_normal(SHAPE).astype("float32")
    expected = model(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(run_on_host(folded, x), expected, rtol=0, atol=1e-5)
    # the whole graph pipeline, channels-last: the gather is made channels-last too, and the
    # only transposes left are the two layout edges
    optimized = pipeline.optimize(mod)
    ops = relax_ops(optimized)
    assert ops.count("relax.permute_dims") == 2 and "relax.reshape" not in ops, ops
    np.testing.assert_allclose(run_on_host(optimized, x), expected, rtol=0, atol=1e-5)


class _DenseLike(nn.Module):
    """A shuffled concat read by a convolution and by the next concat, which is left alone:
    the tensor must stay defined for it while the convolution reads the sources."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(4, 4, 1), nn.Conv2d(8, 8, 1)

    def forward(self, x):
        s = models.channel_shuffle(torch.cat([x, self.a(x)], dim=1), 2)
        # the flatten moves channels into pixels: left as it is, it reads ``s`` through the cat
        return torch.cat([s, self.b(s)], dim=1).flatten(1)


def test_a_terminal_also_read_inside_its_region_stays_defined():
    torch.manual_seed(0)
    model = _DenseLike().eval()
    mod = _import(model, "torch", None)
    folded = fold_channel_split(take_to_slice(relax.transform.FoldConstant()(mod)))
    ops = relax_ops(relax.transform.FoldConstant()(folded))
    assert ops.count("relax.reshape") == 1 and "relax.permute_dims" not in ops, ops  # flatten
    x = np.random.default_rng(0).standard_normal(SHAPE).astype("float32")
    np.testing.assert_allclose(run_on_host(folded, x), model(torch.from_numpy(x)).detach().numpy(),
                               rtol=0, atol=1e-5)


def test_pass_is_idempotent():
    """The pass on its own output changes nothing."""
    mod = _import(_V2Units("paper", "chunk"), "torch", None)
    once = relax.transform.DeadCodeElimination()(fold_channel_split(take_to_slice(mod)))
    tvm.ir.assert_structural_equal(fold_channel_split(once), once)


@I.ir_module
class ConcatThenSplitHeight:
    @R.function
    def main(x: R.Tensor((1, 4, 4, 4), "float32"), w: R.Tensor((4, 8, 1, 1), "float32")):
        with R.dataflow():
            a = R.concat((x, x), axis=1)
            b = R.reshape(a, R.shape([1, 8, 2, 2, 4]))  # splits H: moves pixels, not channels
            c = R.permute_dims(b, axes=[0, 1, 3, 2, 4])
            d = R.reshape(c, R.shape([1, 8, 4, 4]))
            e = R.nn.conv2d(d, w)
            R.output(e)
        return e


@I.ir_module
class ConcatThenSwapHW:
    @R.function
    def main(x: R.Tensor((1, 4, 4, 4), "float32"), w: R.Tensor((4, 8, 1, 1), "float32")):
        with R.dataflow():
            a = R.concat((x, x), axis=1)
            b = R.permute_dims(a, axes=[0, 1, 3, 2])
            e = R.nn.conv2d(b, w)
            R.output(e)
        return e


@I.ir_module
class ConcatOnHeight:
    @R.function
    def main(x: R.Tensor((1, 4, 4, 4), "float32"), w: R.Tensor((4, 4, 1, 1), "float32")):
        with R.dataflow():
            a = R.concat((x, x), axis=2)
            b = R.strided_slice(a, axes=[2], begin=[2], end=[6])
            e = R.nn.conv2d(b, w)
            R.output(e)
        return e


@pytest.mark.parametrize("before", [ConcatThenSplitHeight, ConcatThenSwapHW, ConcatOnHeight])
def test_look_alikes_are_left_untouched(before):
    """Concat followed by operators that move pixels, not whole channels, does not change."""
    tvm.ir.assert_structural_equal(fold_channel_split(before), before)


def test_shufflenet_v2_copy_kernels_are_the_layout_edges_only():
    """ShuffleNet v2 0.5x, lowered: the only kernels that do no arithmetic are the two layout
    edges, called once each. The gathers the split pass leaves (one of channel ranges per
    unit's dense reader: 13 stride-1 units, the 2 stride-2 units' 1x1 branch, conv5; one more
    with a take per stride-2 unit's depthwise reader) are the reading convolutions' input
    stages and the takes are in weights (passes/channel_ranges.py). Without the pass: more
    kernels, called more often."""
    from tvmshuffle.passes import ledger

    imported = frontends.load(frontends.ModelSpec("shufflenet_v2_0.5x", (64, 64)))
    tgt = target.resolve("host").tvm_target
    with tgt:
        with ledger.recording() as on:
            fused = pipeline.copy_kernels(pipeline.lower(pipeline.optimize(imported.mod), tgt))
        plain = pipeline.copy_kernels(pipeline.lower(pipeline.optimize(imported.mod, False),
                                                     tgt))
    # the manifest's channel_passes: a rebuilt tensor a unit, two of them with a take
    assert on["split_regions_rebuilt"] == 16, on
    assert on["split_regions_gathered"] == 2, on
    assert on["split_regions_in_conv_weights"] == 14, on
    # each stride-2 unit's take ends in the 1x1 convolution after its depthwise one; the
    # readers: 16 dense 1x1 convolutions and the 2 depthwise ones
    assert on["gathers_folded_into_weights"] == 2, on
    assert on["ranges_read_by_convolutions"] == 16 + 2, on
    assert set(fused.values()) == {1}, fused
    assert len(fused) == 2 and all("transpose" in name for name in fused), fused
    assert sum(plain.values()) > sum(fused.values()) + 10, plain


@pytest.mark.slow
@pytest.mark.parametrize("name,path", [("shufflenet_v2_1.0x", "torch"),
                                       ("shufflenet_v2_0.5x", "onnx")])
def test_shufflenet_v2_numerics_with_the_pass(name, path, tmp_path):
    """ShuffleNet v2 with the pass matches its reference within 1e-5 through both importers
    (ONNX Runtime's reference agrees with PyTorch's: test_numerics)."""
    size = (64, 64)
    spec = frontends.ModelSpec(name, size)
    if path == "onnx":
        model_path = frontends.export_onnx(models.build(name), (1, 3, *size), tmp_path / "m.onnx")
        spec = frontends.ModelSpec(str(model_path))
    manifest, result = compile_and_run(spec, tmp_path / "out")
    assert manifest["fuse_shuffle"]
    assert manifest["channel_passes"]["split_regions_rebuilt"] == 16  # one a unit
    assert result.max_abs_err < 1e-5
