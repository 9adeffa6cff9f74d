"""The model zoo: architecture per the ShuffleNet paper and FLOPs per its Table 1."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from tvmshuffle import flops, frontends, models
from tvmshuffle.errors import BadInputError


def mflops(name: str, size=(224, 224)) -> float:
    imported = frontends.load(frontends.ModelSpec(name, size), decompose=False)
    return flops.count(imported.mod).mflops


@pytest.mark.parametrize("groups,paper", [(1, 143), (2, 140), (3, 137), (4, 133), (8, 137)])
def test_shufflenet_1x_flops_match_table_1(groups, paper):
    """ShuffleNet 1x complexity for each group count is Table 1's within 3%."""
    assert mflops(f"shufflenet_v1_g{groups}_1.0x") == pytest.approx(paper, rel=0.03)


@pytest.mark.parametrize("scale,paper", [(0.25, 13), (0.5, 38), (1.5, 292), (2.0, 524)])
def test_shufflenet_g3_scaled_flops_match_paper(scale, paper):
    """ShuffleNet s x (g=3) complexity is the paper's within 3%."""
    assert mflops(f"shufflenet_v1_g3_{scale}x") == pytest.approx(paper, rel=0.03)


@pytest.mark.parametrize("name,paper", [("mobilenet_v1_1.0", 569), ("mobilenet_v1_0.5", 149),
                                        ("mobilenet_v1_0.25", 41), ("alexnet", 720)])
def test_baseline_flops_match_paper(name, paper):
    """MobileNet v1 and AlexNet complexities are the paper's baselines within 3%."""
    assert mflops(name) == pytest.approx(paper, rel=0.03)


@pytest.mark.parametrize("scale,paper", [(0.5, 41), (1.0, 146), (1.5, 299), (2.0, 591)])
def test_shufflenet_v2_flops_match_table_5(scale, paper):
    """ShuffleNet v2 s x complexity is Table 5 of the v2 paper's within 3%."""
    assert mflops(f"shufflenet_v2_{scale}x") == pytest.approx(paper, rel=0.03)


def test_shufflenet_v2_structure_follows_table_5():
    """Stage widths 116/232/464 at 1x, repeats 4/8/4 with stride-2 first units whose two
    branches each give half the output, stride-1 units that split off half the channels
    untouched, conv5 of 1024 filters; outputs of order one."""
    net = models.build("shufflenet_v2_1.0x")
    units = list(net.stages)
    assert [u.stride for u in units] == [2, 1, 1, 1, 2] + [1] * 7 + [2, 1, 1, 1]
    for unit, width in zip(units, [116] * 4 + [232] * 8 + [464] * 4):
        assert unit.branch2[-1][0].out_channels == width // 2
        assert unit.branch2[1][0].groups == width // 2, "a depthwise 3x3 in the branch"
        if unit.stride == 1:
            assert unit.branch2[0][0].in_channels == width // 2, "the branch sees half"
            assert not hasattr(unit, "branch1")
        else:
            assert unit.branch1[-1][0].out_channels == width // 2
    assert net.conv5[0].out_channels == 1024 and net.fc.in_features == 1024
    assert models.build("shufflenet_v2_2.0x").conv5[0].out_channels == 2048
    x = torch.from_numpy(frontends.fixed_input((1, 3, 224, 224)))
    with torch.no_grad():
        y = net(x)
    assert 0.1 < float(y.std()) < 100


@pytest.mark.parametrize("name", ["shufflenet_v1_g8_0.25x", "mobilenet_v1_0.25"])
def test_layer_shapes_count_what_the_imported_module_counts(name):
    """`models` counts a zoo model from its layers' shapes on the meta device (no import):
    every layer's multiply-adds and kind as the imported Relax module's count has them, and
    the parameters of the weighted model."""
    fast = flops.count_module(models.shape_only(name), (1, 3, 224, 224))
    imported = flops.count(frontends.load(frontends.ModelSpec(name), decompose=False).mod)
    assert sorted((l.kind, l.macs) for l in fast.layers) == sorted(
        (l.kind, l.macs) for l in imported.layers)
    assert models.parameter_count(models.shape_only(name)) == models.parameter_count(
        models.build(name))


def test_channel_shuffle_is_the_papers_permutation():
    """Channel shuffle with g groups of n sends channel i*n+j to position j*g+i."""
    g, n = 3, 4
    x = torch.arange(g * n, dtype=torch.float32).reshape(1, g * n, 1, 1)
    y = models.channel_shuffle(x, g).flatten().tolist()
    expected = [0.0] * (g * n)
    for i in range(g):
        for j in range(n):
            expected[j * g + i] = float(i * n + j)
    assert y == expected


def test_shufflenet_structure_follows_table_1():
    """Stage widths, repeats, bottlenecks, groups and stride-2 concat units match Table 1."""
    net = models.build("shufflenet_v1_g3_1.0x")
    units = list(net.stages)
    assert len(units) == 16
    assert [u.stride for u in units] == [2, 1, 1, 1, 2] + [1] * 7 + [2, 1, 1, 1]
    assert net.conv1[0].out_channels == 24
    first = units[0]
    assert first.pw1[0].groups == 1, "first pointwise layer of Stage 2 is not grouped"
    assert first.pw1[0].out_channels == 60, "bottleneck is a quarter of the 240 outputs"
    assert first.pw2[0].out_channels == 240 - 24, "stride-2 branch gives out - in channels"
    assert isinstance(first.shortcut, nn.AvgPool2d) and first.shortcut.stride == 2
    for unit, width in zip(units, [240] * 4 + [480] * 8 + [960] * 4):
        assert unit.pw2[0].groups == 3
        assert unit.dw[0].groups == unit.dw[0].in_channels == width // 4
        assert len(unit.dw) == 2, "no ReLU after the depthwise convolution"
    assert all(u.pw1[0].groups == 3 for u in units[1:])
    assert net.fc.in_features == 960


def test_weights_are_seeded_and_outputs_nontrivial():
    """Two builds give identical weights, and outputs are of order one, not vanished."""
    a, b = models.build("mobilenet_v1_0.25"), models.build("mobilenet_v1_0.25")
    for pa, pb in zip(a.state_dict().values(), b.state_dict().values()):
        assert torch.equal(pa, pb)
    x = torch.from_numpy(frontends.fixed_input((1, 3, 224, 224)))
    with torch.no_grad():
        y = models.build("shufflenet_v1_g3_1.0x")(x)
    assert 0.1 < float(y.std()) < 100


def test_state_dict_round_trip(tmp_path):
    """A saved state_dict loads back; one for another architecture is refused in one line."""
    path = tmp_path / "w.pt"
    reference = models.build("shufflenet_v1_g8_0.25x", seed=7)
    torch.save(reference.state_dict(), path)
    loaded = models.build("shufflenet_v1_g8_0.25x", state_dict=path)
    assert torch.equal(loaded.fc.weight, reference.fc.weight)
    with pytest.raises(BadInputError, match="cannot load state_dict"):
        models.build("mobilenet_v1_0.25", state_dict=path)


def test_unknown_model_lists_close_matches():
    """A misspelt name says what was meant."""
    with pytest.raises(BadInputError, match="did you mean shufflenet_v1_g3_1.0x"):
        models.lookup("shufflenet_g3_1.0x")


def test_the_zoo_listing_is_counted_once_then_read_from_the_cache(tmp_path, monkeypatch):
    """`tvmshuffle models` counts the zoo once per version of the code, then reads it (no
    PyTorch import); a damaged cache entry is counted again and rewritten."""
    from tvmshuffle import cachedir, zoo_facts

    monkeypatch.setenv(cachedir.CACHE_ENV, str(tmp_path))
    count = zoo_facts._count
    first = zoo_facts.rows()
    assert {row["name"] for row in first} == set(models.model_names())
    monkeypatch.setattr(zoo_facts, "_count", lambda: pytest.fail("counted again"))
    assert zoo_facts.rows() == first
    entry = next((tmp_path / "zoo").glob("*.json"))
    entry.write_text('[{"name": "alex')
    monkeypatch.setattr(zoo_facts, "_count", count)
    assert zoo_facts.rows() == first
    assert json.loads(entry.read_text()) == first
